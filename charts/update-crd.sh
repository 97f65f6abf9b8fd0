#!/usr/bin/env bash
# Regenerates the TokenPolicy CustomResourceDefinition from the binary into
# both places that ship it (they must stay byte-identical; .ci/chart-test.sh
# checks that):
#   manifests/crds/tokenpolicies.scopegate.dev.yaml
#   charts/scopegate/crds/tokenpolicies.scopegate.dev.yaml
#
#   charts/update-crd.sh                 # builds with cargo, then runs `scopegate crd`
#   SCOPEGATE_BIN=path charts/update-crd.sh   # uses that binary instead
#
# Run it whenever src/policy/spec.rs (the schema) changes, then commit both.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin="${SCOPEGATE_BIN:-}"
if [ -z "$bin" ]; then
  nice -n 10 cargo build --quiet --locked --bin scopegate
  bin=target/debug/scopegate
fi

name=tokenpolicies.scopegate.dev.yaml
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
"$bin" crd >"$tmp"
grep -q '^kind: CustomResourceDefinition$' "$tmp" || {
  echo "'$bin crd' did not print a CustomResourceDefinition" >&2; exit 1; }
for dest in manifests/crds charts/scopegate/crds; do
  mkdir -p "$dest"
  cp "$tmp" "$dest/$name"
  echo "wrote $dest/$name"
done
