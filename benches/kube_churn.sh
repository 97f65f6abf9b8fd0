#!/usr/bin/env bash
# Kubernetes mode at N policies under churn (issue 25), in one command:
#
#   benches/kube_churn.sh                                  # N = 1,000, 10 edits/s for 60 s
#   KUBE_CHURN_POLICIES=10000 benches/kube_churn.sh        # the issue's 10,000 (~10 min)
#   KUBE_CHURN_SCOPEGATE=/other/checkout/target/release/scopegate benches/kube_churn.sh
#   benches/kube_churn.sh --help                           # every knob (flag or KUBE_CHURN_* env var)
#
# Runs benches/kube_churn/main.rs (built by `cargo bench`, release profile,
# with the scopegate binary it measures unless KUBE_CHURN_SCOPEGATE names
# another) against a real kube-apiserver and etcd of its own
# (tests/kube/start.sh in a temporary directory, stopped at the end; binaries
# from $KUBE_BIN, else tests/kube/build.sh), or against a running one with
# KUBE_CHURN_KUBE_DIR=DIR. It prints a table and one key=value line per
# figure (docs/performance.md says what each means), and exits 0 unless it
# could not run (2) or no edit was served at all (1). Slow figures never
# fail it.
#
# KUBE_CHURN_PROFILE=debug builds and measures the debug build instead
# (`cargo test --bench`: what .ci/test.sh's smoke run uses, reusing the test
# build; its figures are not the ones to compare).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -z "${KUBE_BIN:-}" ]; then
  KUBE_BIN="$(tests/kube/build.sh | tail -n1)"
fi
export KUBE_BIN

case "${KUBE_CHURN_PROFILE:-release}" in
  release) exec cargo bench --locked --bench kube_churn -- "$@" ;;
  debug) exec cargo test --locked --bench kube_churn -- "$@" ;;
  *) echo "KUBE_CHURN_PROFILE must be release or debug" >&2; exit 2 ;;
esac
