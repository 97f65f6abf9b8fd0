#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each for a few seconds
# (FUZZ_SECONDS, default 20): a smoke test that they build and that nothing
# crashes early. The long runs are documented in docs/security.md. Needs the
# nightly toolchain (rustup) and cargo-fuzz (installed here if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz smoke: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  echo "fuzz tests: 0 passed, 1 failed"
  exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2

cd fuzz
cargo +nightly fuzz build
passed=0 failed=0
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  if cargo +nightly fuzz run "$target" "corpus/$target" -- -max_total_time="$SECONDS_PER_TARGET" >"/tmp/fuzz-$target.log" 2>&1; then
    runs=$(grep -o 'Done [0-9]* runs' "/tmp/fuzz-$target.log" | tail -1)
    echo "fuzz $target: ok ($runs in ${SECONDS_PER_TARGET}s)"
    passed=$((passed + 1))
  else
    echo "fuzz $target: FAILED"; tail -30 "/tmp/fuzz-$target.log"
    failed=$((failed + 1))
  fi
done
echo "fuzz tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
