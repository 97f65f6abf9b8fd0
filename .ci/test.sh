#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the external tools the
# tests use (Envoy, grpcurl, oauth2-mock-server) into .tools/, then runs
# formatting, lint and every test. This is the README's test command and
# exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

.ci/install-tools.sh
# shellcheck source=.ci/env.sh
source .ci/env.sh

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --locked 2>&1 | tee "$log"

# One closing line over every test binary (unit, integration, doc tests).
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "all tests: %d passed, %d failed\n", passed, failed }' "$log"
