#!/usr/bin/env bash
# Applies the rendered chart to a real kube-apiserver and proves its RBAC is
# enough and no more, with a token of the chart's own ServiceAccount.
#
#   .ci/chart-apply.sh            # starts (and stops) its own control plane
#   SCOPEGATE_BIN=target/debug/scopegate .ci/chart-apply.sh   # + runs scopegate (step 4)
#   .ci/chart-apply.sh DIR        # uses a running tests/kube/start.sh DIR; it
#                                 # leaves objects behind, so prefer a fresh one
#
# No kubelet or controller-manager runs, so no pod starts; the API server
# still validates every object (schemas, defaulting, admission, RBAC):
#   1. every value set of .ci/chart_tool.py (defaults, watchNamespaces,
#      autoscaling, serviceMonitor, the rest) is applied with
#      `kubectl apply --server-side`; a PodSecurity warning fails it;
#   2. the Deployment's pod template is created as a Pod (server dry run) in
#      the release namespace, which enforces the "restricted" Pod Security
#      Standard: the API server's PodSecurity admission must accept it (and
#      rejects a privileged variant, so the check can fail);
#   3. as system:serviceaccount:scopegate-system:scopegate (a real token):
#      reading TokenPolicies, patching their status (server-side apply) and
#      get/create/update of a Lease in its namespace work; everything else
#      tried is Forbidden (PUT status, spec changes, create/delete
#      TokenPolicies, Secrets, Pods, Lease patch/delete or in other
#      namespaces, and with watchNamespaces anything outside them);
#   4. with SCOPEGATE_BIN set, `scopegate serve --kubernetes` runs outside the
#      cluster with that token (cluster-wide, then with --namespace for the
#      watchNamespaces RBAC): it becomes ready, takes the status-writer Lease,
#      writes a TokenPolicy's status and logs no Forbidden error;
#   5. manifests/install.yaml applies cleanly too.
# Last line: "chart apply tests: N passed, M failed"; exit status non-zero on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
# The release namespace of the rendered chart (.ci/chart_tool.py NAMESPACE).
NS=scopegate-system

# shellcheck source=.ci/chart-tools.sh
source .ci/chart-tools.sh

if [ $# -ge 1 ]; then
  DIR="$(cd "$1" && pwd)"
  [ -f "$DIR/kubeconfig" ] || { echo "$DIR/kubeconfig missing: run tests/kube/start.sh $DIR first" >&2; exit 2; }
  own_plane=0
else
  DIR="$(mktemp -d "${TMPDIR:-/tmp}/scopegate-chart-apply.XXXXXX")"
  own_plane=1
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/scopegate-chart-render.XXXXXX")"
cleanup() {
  rm -rf "$WORK"
  if [ "$own_plane" = 1 ]; then tests/kube/stop.sh "$DIR"; fi
}
trap cleanup EXIT
if [ "$own_plane" = 1 ]; then tests/kube/start.sh "$DIR" >/dev/null; fi

KUBECTL="${KUBECTL:-}"
if [ -z "$KUBECTL" ]; then
  KUBECTL="$(printf '%s\n' "$ROOT"/.tools/kube/v*/kubectl | sort -V | tail -n1)"
fi
[ -x "$KUBECTL" ] || { echo "no kubectl: run tests/kube/build.sh (or set KUBECTL)" >&2; exit 2; }
admin() { "$KUBECTL" --kubeconfig "$DIR/kubeconfig" "$@"; }

passed=0; failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# apply NAME FILE: server-side apply as admin; fails on an error or on any
# PodSecurity warning. The helm test Pod is applied too: the restricted
# namespace's PodSecurity admission checks it like the Deployment's pods.
apply() {
  local name="$1" file="$2" out
  # The helm test Pod is immutable: delete it first, as Helm does for a test
  # hook (helm.sh/hook-delete-policy: before-hook-creation).
  admin -n "$NS" delete pod -l app.kubernetes.io/component=test --ignore-not-found >/dev/null 2>&1 || true
  if out="$(admin apply --server-side --force-conflicts --field-manager=chart-apply -f "$file" 2>&1)"; then
    if grep -qi 'violate PodSecurity' <<<"$out"; then
      fail "$name: PodSecurity warning: $out"
    else
      pass "$name applies server-side ($(grep -c . <<<"$out") objects)"
    fi
  else
    fail "$name: kubectl apply: $out"
  fi
}

# The restricted namespace, the namespaces of the watchNamespaces set, and
# the kinds the chart expects to exist (its CRD; ServiceMonitor's stand-in).
admin apply --server-side -f - >/dev/null <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: scopegate-system
  labels: {pod-security.kubernetes.io/enforce: restricted, pod-security.kubernetes.io/enforce-version: latest}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: payments}
---
apiVersion: v1
kind: Namespace
metadata: {name: elsewhere}
---
# What kube-controller-manager (not running here) creates in every namespace;
# the helm test Pod needs it to be admitted.
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: scopegate-system}
YAML
apply "CRD (charts/scopegate/crds)" charts/scopegate/crds/tokenpolicies.scopegate.dev.yaml
admin apply --server-side -f charts/testdata/servicemonitor-crd.yaml >/dev/null
admin wait --for=condition=Established --timeout=60s \
  crd/tokenpolicies.scopegate.dev crd/servicemonitors.monitoring.coreos.com >/dev/null

# One TokenPolicy per namespace, to read and to patch the status of.
for ns in shop payments elsewhere; do
  # Own hosts per namespace, so that no policy loses its hosts to another.
  sed -e "s/namespace: shop/namespace: $ns/" -e "s/orders\.example\.com\"/orders.$ns.example.com\"/" \
    -e "s/orders\.shop\.svc/orders.$ns.svc/" manifests/examples/auth0-tokenpolicy.yaml >"$WORK/policy-$ns.yaml"
  apply "example TokenPolicy in $ns" "$WORK/policy-$ns.yaml"
done

"$CHART_PYTHON" .ci/chart_tool.py render "$WORK" >/dev/null

# --- as the chart's ServiceAccount -------------------------------------------
API="$(admin config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
sa_kubectl() {
  "$KUBECTL" --server="$API" \
    --certificate-authority="$DIR/pki/apiserver.crt" --token="$SA_TOKEN" "$@"
}
# expect allowed|forbidden DESCRIPTION KUBECTL-ARGS...|FUNCTION ARGS...: run a
# real request as the ServiceAccount; "forbidden" must fail with Forbidden,
# not another error.
expect() {
  local want="$1" what="$2" out rc; shift 2
  if [[ "$1" != -* ]] && declare -F -- "$1" >/dev/null; then
    out="$("$@" 2>&1)" && rc=0 || rc=$?
  else
    out="$(sa_kubectl "$@" 2>&1)" && rc=0 || rc=$?
  fi
  case "$want:$rc" in
    allowed:0) pass "$what: allowed" ;;
    forbidden:0) fail "$what: allowed, but must be forbidden" ;;
    forbidden:*)
      if grep -q 'Forbidden\|forbidden' <<<"$out"; then pass "$what: forbidden"
      else fail "$what: failed, but not with Forbidden: $out"; fi ;;
    *) fail "$what: must be allowed: $out" ;;
  esac
}
# http_expect allowed|forbidden DESCRIPTION METHOD PATH [PATCH]: one
# raw API request with the ServiceAccount's token, for verbs kubectl cannot
# send alone (its `patch --subresource=status` GETs the status first;
# scopegate's status writer sends a server-side apply PATCH without a GET).
# A .../status path gets an apply patch, any other a JSON merge patch.
http_expect() {
  local want="$1" what="$2" method="$3" path="$4" body="${5:-}" code content_type=application/merge-patch+json
  case "$path" in */status) content_type=application/apply-patch+yaml; path="$path?fieldManager=scopegate&force=true" ;; esac
  code="$(curl -sS -o "$WORK/http.out" -w '%{http_code}' -X "$method" \
    --cacert "$DIR/pki/apiserver.crt" -H "Authorization: Bearer $SA_TOKEN" \
    -H "Content-Type: $content_type" ${body:+--data "$body"} "$API$path")"
  case "$want:$code" in
    allowed:2??) pass "$what: allowed" ;;
    forbidden:403) pass "$what: forbidden" ;;
    *) fail "$what: HTTP $code, want $want: $(head -c 300 "$WORK/http.out")" ;;
  esac
}
# A server-side apply of the status, as scopegate's status writer sends it.
status_patch='{"apiVersion":"scopegate.dev/v1alpha1","kind":"TokenPolicy","status":{"observedGeneration":1}}'
tp_path() { echo "/apis/scopegate.dev/v1alpha1/namespaces/$1/tokenpolicies/orders-api${2:-}"; }
# update_lease NS: GET the Lease, then PUT it back changed (verbs get + update).
update_lease() {
  sa_kubectl -n "$1" get lease scopegate-leader -o json \
    | sed 's/"holderIdentity": *"[^"]*"/"holderIdentity": "chart-apply-2"/' \
    | sa_kubectl replace -f -
}
# update_status NS: GET the TokenPolicy, PUT it to the status subresource.
update_status() {
  sa_kubectl -n "$1" get tokenpolicy orders-api -o json | sa_kubectl replace --subresource=status -f -
}
lease() {
  printf 'apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: %s, namespace: %s}\nspec: {holderIdentity: chart-apply}\n' "$1" "$2"
}

# --- defaults: cluster-wide --------------------------------------------------
apply "[defaults]" "$WORK/defaults.yaml"
pod_from_template() {  # the Deployment's pod template as a Pod
  admin -n "$NS" get deployment scopegate -o json | "$CHART_PYTHON" -c '
import json, sys
d = json.load(sys.stdin)
t = d["spec"]["template"]
print(json.dumps({"apiVersion": "v1", "kind": "Pod",
  "metadata": {"name": "scopegate-pss-probe", "namespace": sys.argv[1], "labels": t["metadata"]["labels"]},
  "spec": t["spec"]}))' "$NS"
}
if out="$(pod_from_template | admin create --dry-run=server -f - 2>&1)"; then
  pass "[defaults] pod template admitted under enforced restricted Pod Security"
else
  fail "[defaults] pod template rejected: $out"
fi
# The same check must be able to fail: a root, privileged variant is rejected.
if out="$(pod_from_template | "$CHART_PYTHON" -c '
import json, sys
p = json.load(sys.stdin)
p["spec"]["containers"][0]["securityContext"] = {"privileged": True, "runAsUser": 0}
print(json.dumps(p))' | admin create --dry-run=server -f - 2>&1)"; then
  fail "[defaults] a privileged pod was admitted: the restricted namespace does not enforce"
else
  if grep -q 'violates PodSecurity' <<<"$out"; then
    pass "[defaults] a privileged pod is rejected (enforcement is on)"
  else
    fail "[defaults] privileged pod rejected for another reason: $out"
  fi
fi

SA_TOKEN="$(admin -n "$NS" create token scopegate --duration=1h)"
expect allowed   "[defaults] list TokenPolicies in all namespaces"   get tokenpolicies.scopegate.dev -A
expect allowed   "[defaults] watch TokenPolicies"                    get tokenpolicies.scopegate.dev -A --watch-only --request-timeout=2s
expect allowed   "[defaults] get a TokenPolicy"                      -n elsewhere get tokenpolicy orders-api
http_expect allowed "[defaults] PATCH a TokenPolicy's status"    PATCH "$(tp_path shop /status)" "$status_patch"
expect forbidden "[defaults] PUT a TokenPolicy's status"             update_status shop
http_expect forbidden "[defaults] PATCH a TokenPolicy's spec"    PATCH "$(tp_path shop)" '{"spec":{"mode":"audit"}}'
expect forbidden "[defaults] create a TokenPolicy"                   -n shop create -f "$WORK/policy-shop.yaml" --dry-run=server
expect forbidden "[defaults] delete a TokenPolicy"                   -n shop delete tokenpolicy orders-api --dry-run=server
expect forbidden "[defaults] list Secrets"                           -n "$NS" get secrets
expect forbidden "[defaults] list Pods"                              -n "$NS" get pods
expect allowed   "[defaults] create a Lease in its namespace"        create -f <(lease scopegate-leader "$NS")
expect allowed   "[defaults] get and update that Lease"              update_lease "$NS"
http_expect forbidden "[defaults] PATCH that Lease"                PATCH /apis/coordination.k8s.io/v1/namespaces/$NS/leases/scopegate-leader '{"spec":{"holderIdentity":"x"}}'
expect forbidden "[defaults] delete that Lease"                      -n "$NS" delete lease scopegate-leader --dry-run=server
expect forbidden "[defaults] create a Lease in another namespace"    create -f <(lease scopegate-leader shop)

# scopegate itself, outside the cluster, with the ServiceAccount's token: its
# watcher and status writer must work with exactly these permissions. Needs
# SCOPEGATE_BIN; skipped when that build has no Kubernetes mode yet.
# run_scopegate_as_service_account LABEL POLICY_NS [SERVE-ARGS...]: the
# TokenPolicy orders-api in POLICY_NS must get a status from it.
run_scopegate_as_service_account() {
  local label="$1" policy_ns="$2" bin="${SCOPEGATE_BIN:-}"; shift 2
  if [ -z "$bin" ]; then echo "skip $label scopegate --kubernetes as the ServiceAccount (set SCOPEGATE_BIN)"; return; fi
  cat >"$WORK/sa-kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "$API", certificate-authority: "$DIR/pki/apiserver.crt"}}]
users: [{name: scopegate, user: {token: "$SA_TOKEN"}}]
contexts: [{name: test, context: {cluster: test, user: scopegate, namespace: $NS}}]
current-context: test
KCFG
  local admin_port pid ready=0
  admin_port="$("$CHART_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  KUBECONFIG="$WORK/sa-kubeconfig" POD_NAME="scopegate-for-$policy_ns" POD_NAMESPACE="$NS" \
    timeout 300 "$bin" serve --kubernetes "$@" --listen 127.0.0.1:0 --admin-listen "127.0.0.1:$admin_port" \
    >"$WORK/scopegate.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    if curl -fsS "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$ready" = 0 ] && grep -q 'not in this build' "$WORK/scopegate.log"; then
    echo "skip $label scopegate --kubernetes as the ServiceAccount ($bin has no Kubernetes mode yet)"
    wait "$pid" 2>/dev/null || true
    return
  fi
  if [ "$ready" = 1 ]; then
    pass "$label scopegate --kubernetes${*:+ $*} as the ServiceAccount becomes ready"
  else
    fail "$label scopegate --kubernetes${*:+ $*} as the ServiceAccount never became ready: $(tail -n 20 "$WORK/scopegate.log")"
  fi
  local cond=""
  for _ in $(seq 1 600); do
    cond="$(admin -n "$policy_ns" get tokenpolicy orders-api -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}')"
    [ -n "$cond" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -n "$cond" ]; then pass "$label scopegate wrote $policy_ns/orders-api's status (Ready reason $cond)"
  else fail "$label scopegate wrote no status for $policy_ns/orders-api: $(tail -n 20 "$WORK/scopegate.log")"; fi
  local holder
  holder="$(admin -n "$NS" get lease scopegate-status-writer -o jsonpath='{.spec.holderIdentity}' 2>&1)"
  case "$holder" in
    "scopegate-for-$policy_ns-"*) pass "$label scopegate holds the status-writer Lease" ;;
    *) fail "$label the status-writer Lease is not held by scopegate: $holder" ;;
  esac
  if grep -qi 'forbidden' "$WORK/scopegate.log"; then
    fail "$label scopegate hit a Forbidden error: $(grep -i -m3 forbidden "$WORK/scopegate.log")"
  else
    pass "$label scopegate needed no permission it lacks (no Forbidden in its log)"
  fi
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
run_scopegate_as_service_account "[defaults]" shop

# --- watchNamespaces: shop and payments only ---------------------------------
admin delete --ignore-not-found -f "$WORK/defaults.yaml" --wait=false >/dev/null
apply "[watch-namespaces]" "$WORK/watch-namespaces.yaml"
SA_TOKEN="$(admin -n "$NS" create token scopegate --duration=1h)"
expect allowed   "[watch-namespaces] list TokenPolicies in shop"      -n shop get tokenpolicies.scopegate.dev
expect allowed   "[watch-namespaces] watch TokenPolicies in payments" -n payments get tokenpolicies.scopegate.dev --watch-only --request-timeout=2s
http_expect allowed "[watch-namespaces] PATCH status in payments" PATCH "$(tp_path payments /status)" "$status_patch"
expect forbidden "[watch-namespaces] list TokenPolicies cluster-wide" get tokenpolicies.scopegate.dev -A
expect forbidden "[watch-namespaces] list TokenPolicies in elsewhere" -n elsewhere get tokenpolicies.scopegate.dev
http_expect forbidden "[watch-namespaces] PATCH status in elsewhere" PATCH "$(tp_path elsewhere /status)" "$status_patch"
expect allowed   "[watch-namespaces] get and update its Lease"        update_lease "$NS"
# A fresh policy (no status yet) in a watched namespace, for scopegate to report on.
admin -n payments delete tokenpolicy orders-api --wait=true >/dev/null
admin apply --server-side -f "$WORK/policy-payments.yaml" >/dev/null
run_scopegate_as_service_account "[watch-namespaces]" payments --namespace shop --namespace payments
admin delete --ignore-not-found -f "$WORK/watch-namespaces.yaml" --wait=false >/dev/null

# --- the other value sets, and install.yaml -----------------------------------
for set in autoscaling service-monitor everything-else; do
  apply "[$set]" "$WORK/$set.yaml"
done
apply "manifests/install.yaml" manifests/install.yaml

echo "chart apply tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
