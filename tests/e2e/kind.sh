#!/usr/bin/env bash
# End to end on a real cluster made with kind: installs the CRD, RBAC and
# scopegate (from a locally built image), applies the example policies and
# checks that they become READY and that a Check is answered.
#
#   tests/e2e/kind.sh            # needs: kind, docker (engine), kubectl
#
# Skips (exit 0, with a message) when kind or a Docker engine is missing —
# e.g. on this project's CI machines, which have neither.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

skip() { echo "SKIP tests/e2e/kind.sh: $*"; exit 0; }
command -v kind >/dev/null || skip "kind is not installed"
command -v kubectl >/dev/null || skip "kubectl is not installed"
docker info >/dev/null 2>&1 || skip "no Docker engine is running"

CLUSTER="${KIND_CLUSTER:-scopegate-e2e}"
IMAGE="scopegate:e2e"
trap 'kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true' EXIT

docker build -t "$IMAGE" .
kind create cluster --name "$CLUSTER" --wait 120s
kind load docker-image "$IMAGE" --name "$CLUSTER"

if [ -d charts/scopegate ] && command -v helm >/dev/null; then
  helm install scopegate charts/scopegate --namespace scopegate-system --create-namespace \
    --set image.repository=scopegate --set image.tag=e2e --set image.pullPolicy=Never --wait
else
  kubectl create namespace scopegate-system
  kubectl apply --server-side -f manifests/crds/
  kubectl apply --server-side -f manifests/rbac.yaml
  kubectl -n scopegate-system create deployment scopegate --image="$IMAGE" -- \
    scopegate serve --kubernetes
  kubectl -n scopegate-system patch deployment scopegate --type=json -p \
    '[{"op":"add","path":"/spec/template/spec/serviceAccountName","value":"scopegate"},
      {"op":"add","path":"/spec/template/spec/containers/0/imagePullPolicy","value":"Never"}]'
  kubectl -n scopegate-system rollout status deployment/scopegate --timeout=120s
fi

kubectl create namespace shop --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f examples/policies/dev.yaml
kubectl wait --for=jsonpath='{.status.observedGeneration}'=1 tokenpolicy/orders-dev --timeout=60s
kubectl get tp -A

kubectl -n scopegate-system port-forward deployment/scopegate 19001:9001 >/dev/null &
forward=$!
trap 'kill $forward 2>/dev/null; kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true' EXIT
sleep 2
out="$(cargo run -q -- check --addr 127.0.0.1:19001 --host orders.localhost --path /healthz)"
echo "$out"
case "$out" in ALLOW*) echo "kind e2e: 1 passed, 0 failed" ;; *) echo "kind e2e: 0 passed, 1 failed"; exit 1 ;; esac
