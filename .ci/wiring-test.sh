#!/usr/bin/env bash
# Proves the wiring recipes against the real schemas of what they wire into:
#
#   1. the real CRDs of Istio, Envoy Gateway and Gateway API (../shared/crds,
#      unmodified; beside the repository in CI) are applied to a real
#      kube-apiserver, and every recipe object is server-side applied with
#      --dry-run=server --validate=strict: manifests/istio/*.yaml (but the two
#      mesh-config files), manifests/gateway-api/, manifests/envoy-gateway/,
#      and the chart rendered with its Envoy Gateway value set (SecurityPolicy,
#      ReferenceGrant, the Istio provider ConfigMap, the helm test Pod, ...);
#      a kubectl warning fails a recipe too;
#   2. the Istio mesh-config fragments (not a CRD) are decoded strictly into
#      the real istio.mesh.v1alpha1.MeshConfig proto by tests/meshconfig
#      (Go, istio.io/api from the module proxy): manifests/istio/istiod-values.yaml,
#      istiooperator-overlay.yaml, the provider NOTES.txt prints, the chart's
#      provider ConfigMap and the meshConfig snippets of docs/;
#   3. manifests/envoy/envoy.yaml and examples/mcp/envoy.yaml pass
#      `envoy --mode validate` as shipped;
#   4. negative cases, so that each check can fail: a copy of a recipe with a
#      misspelled field must be REJECTED by the API server (unknown field),
#      by the MeshConfig decoder and by Envoy.
#
#   .ci/wiring-test.sh            # starts (and stops) its own control plane
#   .ci/wiring-test.sh DIR        # uses a running tests/kube/start.sh DIR
#                                 # (installs the third-party CRDs into it)
#
# Needs: tests/kube/build.sh's kubectl (or KUBECTL), Go (for tests/meshconfig),
# Envoy (SCOPEGATE_ENVOY or .tools/venv/bin/envoy; .ci/install-tools.sh).
# WIRING_CRDS overrides the CRD directory.
# Last line: "wiring tests: N passed, M failed"; exit status non-zero on failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
CRDS="${WIRING_CRDS:-$ROOT/../shared/crds}"
[ -d "$CRDS/istio" ] && [ -d "$CRDS/envoy-gateway" ] && [ -d "$CRDS/gateway-api" ] || {
  echo "no third-party CRDs at $CRDS (expected ../shared/crds beside the repository, or WIRING_CRDS)" >&2; exit 2; }

# shellcheck source=.ci/chart-tools.sh
source .ci/chart-tools.sh

KUBECTL="${KUBECTL:-}"
if [ -z "$KUBECTL" ]; then
  KUBECTL="$(printf '%s\n' "$ROOT"/.tools/kube/v*/kubectl | sort -V | tail -n1)"
fi
[ -x "$KUBECTL" ] || { echo "no kubectl: run tests/kube/build.sh (or set KUBECTL)" >&2; exit 2; }
ENVOY="${SCOPEGATE_ENVOY:-$ROOT/.tools/venv/bin/envoy}"
[ -x "$ENVOY" ] || { echo "no envoy at $ENVOY: run .ci/install-tools.sh (or set SCOPEGATE_ENVOY)" >&2; exit 2; }
MESHCONFIG_CHECK="$(tests/meshconfig/build.sh | tail -n1)"

if [ $# -ge 1 ]; then
  DIR="$(cd "$1" && pwd)"
  [ -f "$DIR/kubeconfig" ] || { echo "$DIR/kubeconfig missing: run tests/kube/start.sh $DIR first" >&2; exit 2; }
  own_plane=0
else
  DIR="$(mktemp -d "${TMPDIR:-/tmp}/scopegate-wiring.XXXXXX")"
  own_plane=1
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/scopegate-wiring-work.XXXXXX")"
cleanup() {
  rm -rf "$WORK"
  if [ "$own_plane" = 1 ]; then tests/kube/stop.sh "$DIR"; fi
}
trap cleanup EXIT
if [ "$own_plane" = 1 ]; then tests/kube/start.sh "$DIR" >/dev/null; fi
admin() { "$KUBECTL" --kubeconfig "$DIR/kubeconfig" "$@"; }

passed=0; failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }

# --- the real CRDs -------------------------------------------------------------
crd_files=("$CRDS"/istio/*.yaml "$CRDS"/envoy-gateway/*.yaml "$CRDS"/gateway-api/*.yaml)
crd_args=()
for f in "${crd_files[@]}"; do crd_args+=(-f "$f"); done
if out="$(admin apply --server-side --force-conflicts --field-manager=wiring-test "${crd_args[@]}" 2>&1)"; then
  pass "third-party CRDs applied from $CRDS ($(grep -c . <<<"$out") CRDs)"
else
  fail "applying the CRDs of $CRDS: $out"
fi
mapfile -t crd_names < <(admin get crd -o name | grep -E 'istio\.io|envoyproxy\.io|gateway\.networking\.k8s\.io')
admin wait --for=condition=Established --timeout=120s "${crd_names[@]}" >/dev/null
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
# What kube-controller-manager (not running here) creates in every namespace;
# Pods (the helm test one) need it to be admitted.
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: scopegate-system}
YAML

# dry_run FILE: a strict server-side apply, not persisted; prints kubectl's
# output and fails on an error.
dry_run() {
  admin apply --server-side --dry-run=server --validate=strict --field-manager=wiring-test -f "$1" 2>&1
}

# expect_valid LABEL FILE: every object of FILE is accepted, without warnings.
expect_valid() {
  local label="$1" file="$2" out
  if out="$(dry_run "$file")"; then
    if grep -qi '^warning' <<<"$out"; then
      fail "$label: accepted with warnings: $out"
    else
      pass "$label: $(grep -c 'serverside-applied' <<<"$out") objects valid (server dry run, strict)"
    fi
  else
    fail "$label: rejected: $out"
  fi
}

# expect_rejected LABEL FILE FIELD TYPO: a copy of FILE with its first
# "FIELD:" key misspelled as TYPO must be refused as an unknown field (with
# --server-side, the API server says "field not declared in schema").
expect_rejected() {
  local label="$1" file="$2" field="$3" typo="$4" copy out
  copy="$WORK/typo-$(basename "$file")"
  sed "0,/^\([ -]*\)$field:/s//\1$typo:/" "$file" >"$copy"
  if ! grep -q "$typo:" "$copy"; then
    fail "$label: no \"$field:\" key in $file to misspell"
  elif out="$(dry_run "$copy")"; then
    fail "$label: a copy with $field misspelled as $typo was ACCEPTED: $out"
  elif reason="$(grep -Eo "[^ ]*$typo: field not declared in schema|unknown field \"[^\"]*$typo\"" <<<"$out")"; then
    pass "$label: $field misspelled as $typo is rejected (${reason%%$'\n'*})"
  else
    fail "$label: the misspelled copy failed, but not as an unknown field: $out"
  fi
}

# --- 1. every recipe object against the real schemas ----------------------------
recipes=(
  manifests/istio/authorizationpolicy.yaml
  manifests/istio/mcp-authorizationpolicy.yaml
  manifests/istio/ambient-waypoint.yaml
  manifests/gateway-api/gateway.yaml
  manifests/envoy-gateway/securitypolicy.yaml
  manifests/envoy-gateway/backend.yaml
)
# Every YAML file of manifests/istio, envoy-gateway and gateway-api is either
# a recipe above or a mesh-config fragment (step 2): a new file cannot go
# unchecked.
mesh_fragments=(manifests/istio/istiod-values.yaml manifests/istio/istiooperator-overlay.yaml)
for f in manifests/istio/*.yaml manifests/envoy-gateway/*.yaml manifests/gateway-api/*.yaml; do
  if [[ " ${recipes[*]} ${mesh_fragments[*]} " != *" $f "* ]]; then
    fail "$f is neither a listed recipe nor a mesh-config fragment: add it to .ci/wiring-test.sh"
  fi
done
for f in "${recipes[@]}"; do expect_valid "$f" "$f"; done

"$CHART_PYTHON" .ci/chart_tool.py render "$WORK/chart" >/dev/null
expect_valid "chart [envoy-gateway] value set (SecurityPolicy, ReferenceGrant, provider ConfigMap, helm test Pod, ...)" \
  "$WORK/chart/envoy-gateway.yaml"

# --- 2. the mesh config, strictly against istio.mesh.v1alpha1.MeshConfig --------
# mesh_check LABEL FILE: tests/meshconfig decodes it (unknown fields fail).
mesh_check() {
  local label="$1" file="$2" out
  if out="$("$MESHCONFIG_CHECK" "$file" 2>&1)"; then
    pass "$label: valid istio.mesh.v1alpha1.MeshConfig (${out#*MeshConfig (}"
  else
    fail "$label: $out"
  fi
}
for f in "${mesh_fragments[@]}"; do mesh_check "$f" "$f"; done
"$CHART_PYTHON" - "$WORK" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, ".ci")
import chart_tool as c
out = Path(sys.argv[1])
(out / "notes-mesh.yaml").write_text(c.notes_blocks(c.render({}))[0])
mesh = [b for _, b in c.docs_yaml_blocks() if "extensionProviders:" in b]
assert mesh, "no meshConfig snippet in docs/"
for i, block in enumerate(mesh):
    (out / f"docs-mesh-{i}.yaml").write_text(block)
PY
mesh_check "chart NOTES.txt provider snippet" "$WORK/notes-mesh.yaml"
mesh_check "chart istio.providerConfigMap (data.mesh)" "$WORK/chart/envoy-gateway.yaml"
for f in "$WORK"/docs-mesh-*.yaml; do mesh_check "docs/ meshConfig snippet $(basename "$f" .yaml)" "$f"; done

# --- 3. the shipped Envoy bootstraps --------------------------------------------
for f in manifests/envoy/envoy.yaml examples/mcp/envoy.yaml; do
  if out="$("$ENVOY" --mode validate -c "$f" 2>&1)"; then
    pass "$f passes envoy --mode validate as shipped"
  else
    fail "$f: envoy --mode validate: $(tail -n 5 <<<"$out")"
  fi
done

# --- 4. each check can fail: misspelled copies are rejected ----------------------
expect_rejected "manifests/envoy-gateway/securitypolicy.yaml" manifests/envoy-gateway/securitypolicy.yaml failOpen failOpne
expect_rejected "manifests/envoy-gateway/backend.yaml" manifests/envoy-gateway/backend.yaml appProtocols appProtocol
expect_rejected "manifests/istio/authorizationpolicy.yaml" manifests/istio/authorizationpolicy.yaml provider providr
expect_rejected "manifests/istio/ambient-waypoint.yaml" manifests/istio/ambient-waypoint.yaml gatewayClassName gatewayClass
expect_rejected "manifests/gateway-api/gateway.yaml" manifests/gateway-api/gateway.yaml hostnames hostname
sed 's/failOpen: false/failOpen: false\n        fialOpen: true/' manifests/istio/istiod-values.yaml >"$WORK/typo-istiod-values.yaml"
if out="$("$MESHCONFIG_CHECK" "$WORK/typo-istiod-values.yaml" 2>&1)"; then
  fail "a mesh config with a misspelled fialOpen was ACCEPTED: $out"
elif grep -q 'unknown field "fialOpen"' <<<"$out"; then
  pass "manifests/istio/istiod-values.yaml: fialOpen is rejected by the MeshConfig decoder"
else
  fail "the misspelled mesh config failed, but not as an unknown field: $out"
fi
sed 's/failure_mode_allow: false/failure_mode_alow: false/' manifests/envoy/envoy.yaml >"$WORK/typo-envoy.yaml"
if out="$("$ENVOY" --mode validate -c "$WORK/typo-envoy.yaml" 2>&1)"; then
  fail "an envoy.yaml with failure_mode_alow passed envoy --mode validate"
elif grep -q 'failure_mode_alow' <<<"$out"; then
  pass "manifests/envoy/envoy.yaml: failure_mode_alow is rejected by envoy --mode validate"
else
  fail "the misspelled envoy.yaml failed for another reason: $(tail -n 3 <<<"$out")"
fi

echo "wiring tests: $passed passed, $failed failed"
[ "$failed" = 0 ]
