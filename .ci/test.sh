#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the external tools the
# tests use (Envoy, grpcurl, oauth2-mock-server) into .tools/, builds a real
# kube-apiserver, kubectl and etcd from the Go module proxy (.tools/kube/; ~10
# minutes the first time, seconds after), starts that control plane on
# loopback, then runs formatting, lint, every test and a short fuzz smoke
# (cargo-fuzz into .tools/cargo; the targets build with the stable toolchain
# under RUSTC_BOOTSTRAP=1, ~8 minutes the first time). This is the README's
# test command and exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

.ci/install-tools.sh
# shellcheck source=.ci/env.sh
source .ci/env.sh
# A one-shot build gains nothing from incremental state, which would add GBs.
export CARGO_INCREMENTAL=0

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

# The shipped policy tests (`scopegate test`), offline.
for examples in examples/policies manifests/examples; do
  target/debug/scopegate test "$examples" 2>&1 | tee -a "$log"
done

# Kubernetes mode under policy churn (benches/kube_churn.sh; the numbers are
# in docs/performance.md): a short smoke run of the benchmark, on the debug
# build and the control plane above, in a namespace of its own. Its figures
# are printed, never judged; it fails only if it cannot run or if no policy
# edit is ever served (Kubernetes mode applying no change at all).
KUBE_CHURN_PROFILE=debug KUBE_CHURN_KUBE_DIR="$SCOPEGATE_TEST_KUBE_DIR" \
  KUBE_CHURN_POLICIES=1000 KUBE_CHURN_SECONDS=15 KUBE_CHURN_BASELINE_SECONDS=3 \
  benches/kube_churn.sh 2>&1 | tee -a "$log"
echo "kube churn smoke tests: 1 passed, 0 failed" | tee -a "$log"

# The Helm chart: lint, render, schema and policy checks; then applied to a
# real kube-apiserver of its own, with RBAC proven by its ServiceAccount.
export SCOPEGATE_BIN="$PWD/target/debug/scopegate"
.ci/chart-test.sh 2>&1 | tee -a "$log"
.ci/chart-apply.sh 2>&1 | tee -a "$log"

# The wiring recipes (manifests/istio, envoy-gateway, gateway-api, the chart's
# SecurityPolicy) against the real Istio, Envoy Gateway and Gateway API CRDs
# of ../shared/crds on the control plane above, the mesh config against
# Istio's MeshConfig proto, envoy.yaml against Envoy; misspelled copies must
# be rejected.
.ci/wiring-test.sh "$SCOPEGATE_TEST_KUBE_DIR" 2>&1 | tee -a "$log"

# The libFuzzer targets, built with AddressSanitizer and run briefly each
# (the long runs are in docs/security.md).
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" .ci/fuzz-smoke.sh 2>&1 | tee -a "$log"

# One closing line over everything above (cargo's unit, integration and doc
# tests, the kube churn smoke, the chart and wiring tests, the fuzz smoke).
awk '/^test result:/ { passed += $4; failed += $6 }
     /^[a-z ]+tests: [0-9]+ passed, [0-9]+ failed$/ { n = split($0, w, " "); passed += w[n-3]; failed += w[n-1] }
     END { printf "all tests: %d passed, %d failed\n", passed, failed }' "$log"
