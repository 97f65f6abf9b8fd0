#!/usr/bin/env bash
# End-to-end check of the test control plane: build (if needed), start, use it
# with kubectl (namespaces, API discovery, RBAC, a CRD whose CEL rule rejects a
# bad object), stop. Exits non-zero on any failure; leaves no process behind.
#
#   tests/kube/smoke.sh [DIR]     # DIR defaults to a fresh temp dir
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${1:-$(mktemp -d "${TMPDIR:-/tmp}/scopegate-kube.XXXXXX")}"

BIN="${KUBE_BIN:-$("$HERE/build.sh" | tail -n1)}"
export KUBE_BIN="$BIN"
trap '"$HERE/stop.sh" "$DIR"' EXIT
"$HERE/start.sh" "$DIR" >/dev/null
# shellcheck disable=SC1091
source "$DIR/env.sh"
k() { "$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" "$@"; }

fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

k get ns
k get ns default >/dev/null || fail "no default namespace"
resources="$(k api-resources)"
printf '%s\n' "$resources" | sed -n 1,5p
grep -q '^customresourcedefinitions ' <<<"$resources" || fail "no CRD API"
k version
[ "$(k auth whoami -o jsonpath='{.status.userInfo.username}')" = admin ] || fail "not admin"

# RBAC is enforced: a fresh service account may do nothing.
k create serviceaccount smoke-probe >/dev/null
token="$(k create token smoke-probe)"
[ "$(k auth can-i list pods --as=system:serviceaccount:default:smoke-probe || true)" = no ] \
  || fail "RBAC not enforced"
if "$BIN/kubectl" --server="$KUBE_APISERVER_URL" --certificate-authority="$KUBE_CA_FILE" \
     --token="$token" get pods >/dev/null 2>&1; then
  fail "service account token was allowed to list pods"
fi

# CRD with a structural schema and a CEL rule.
k apply -f "$HERE/testdata/widget-crd.yaml"
k wait --for=condition=Established crd/widgets.smoke.scopegate.dev --timeout=60s
widget() {
  printf 'apiVersion: smoke.scopegate.dev/v1\nkind: Widget\nmetadata: {name: %s, namespace: default}\nspec: {minReplicas: %s, maxReplicas: %s}\n' "$@"
}
widget good 1 3 | k apply -f -
if out="$(widget bad 5 3 | k apply -f - 2>&1)"; then
  fail "CEL rule did not reject the bad Widget"
fi
printf '%s\n' "$out"
case "$out" in
  *"minReplicas must not exceed maxReplicas"*) ;;
  *) fail "bad Widget rejected for another reason: $out" ;;
esac
k get widgets -n default

echo "kube smoke test: 1 passed, 0 failed"
