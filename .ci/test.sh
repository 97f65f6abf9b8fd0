#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the external tools the
# tests use (Envoy, grpcurl, oauth2-mock-server) into .tools/, builds a real
# kube-apiserver, kubectl and etcd from the Go module proxy (.tools/kube/; ~10
# minutes the first time, seconds after), starts that control plane on
# loopback, then runs formatting, lint and every test. This is the README's
# test command and exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

.ci/install-tools.sh
# shellcheck source=.ci/env.sh
source .ci/env.sh

# A real Kubernetes control plane for tests/kube.rs, stopped on exit.
KUBE_BIN="$(tests/kube/build.sh | tail -n1)"
export KUBE_BIN
export SCOPEGATE_KUBECTL="$KUBE_BIN/kubectl"
SCOPEGATE_TEST_KUBE_DIR="$(mktemp -d)"
export SCOPEGATE_TEST_KUBE_DIR
tests/kube/start.sh "$SCOPEGATE_TEST_KUBE_DIR" >/dev/null

log="$(mktemp)"
cleanup() {
  tests/kube/stop.sh "$SCOPEGATE_TEST_KUBE_DIR" || true
  rm -f "$log"
}
trap cleanup EXIT

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

cargo test --locked 2>&1 | tee "$log"

# One closing line over every test binary (unit, integration, doc tests).
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "all tests: %d passed, %d failed\n", passed, failed }' "$log"
