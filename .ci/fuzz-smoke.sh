#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ and runs each for a few seconds
# (FUZZ_SECONDS, default 20): a smoke test that they build and that nothing
# crashes early. Long runs: docs/security.md.
#
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1
# lets the machine's stable toolchain accept them, so no nightly is needed.
# cargo-fuzz itself is installed into .tools/cargo (git-ignored) if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECONDS_PER_TARGET="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1
export PATH="$PWD/.tools/cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2 --root .tools/cargo
fi

cd fuzz
cargo fuzz build
passed=0 failed=0
for target in $(cargo fuzz list); do
  mkdir -p "corpus/$target"
  log="$(mktemp)"
  if cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$SECONDS_PER_TARGET" >"$log" 2>&1; then
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1)
    echo "fuzz $target: ok ($runs in ${SECONDS_PER_TARGET}s)"
    passed=$((passed + 1))
  else
    echo "fuzz $target: FAILED"; tail -30 "$log"
    failed=$((failed + 1))
  fi
  rm -f "$log"
done
echo "fuzz tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
