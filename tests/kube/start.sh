#!/usr/bin/env bash
# Starts a throw-away control plane for integration tests: etcd + a real
# kube-apiserver on 127.0.0.1 (free ports), RBAC on, an admin token in
# group system:masters, and writes DIR/kubeconfig for that admin.
#
#   tests/kube/start.sh DIR      # DIR is created; it holds all state and logs
#   kubectl --kubeconfig DIR/kubeconfig get ns
#   tests/kube/stop.sh DIR       # kills both and removes the state
#
# Binaries: $KUBE_BIN if set, else tests/kube/build.sh is run (a no-op once the
# binaries exist; the first cold build takes a long while).
#
# Files written in DIR:
#   kubeconfig        admin kubeconfig (CA embedded, bearer token)
#   env.sh            shell vars: KUBECONFIG, KUBE_APISERVER_URL, KUBE_TOKEN,
#                     KUBE_CA_FILE, ETCD_URL (source it)
#   etcd.pid, kube-apiserver.pid, etcd.log, kube-apiserver.log
#   etcd/ (data), pki/ (apiserver self-signed serving cert + CA, SA keys), token.csv
#
# Both processes run under `timeout $KUBE_TTL` (default 7200 s) in their own
# session, so even a test run that never calls stop.sh leaves nothing behind
# for long.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf '%s\n' "$*" >&2; }

[ $# -eq 1 ] || { log "usage: $0 DIR"; exit 2; }
mkdir -p "$1"
DIR="$(cd "$1" && pwd)"
TTL="${KUBE_TTL:-7200}"
READY_TIMEOUT="${KUBE_READY_TIMEOUT:-120}"

if [ -e "$DIR/kube-apiserver.pid" ] || [ -e "$DIR/etcd.pid" ]; then
  log "$DIR already has a running control plane (run stop.sh $DIR first)"
  exit 1
fi

BIN="${KUBE_BIN:-}"
if [ -z "$BIN" ]; then
  BIN="$("$HERE/build.sh" | tail -n1)"
fi
for b in etcd kube-apiserver; do
  [ -x "$BIN/$b" ] || { log "missing $BIN/$b (run tests/kube/build.sh)"; exit 1; }
done

# Ask the kernel for a free loopback port. Another process could take it
# before we bind it, so each server start is retried with new ports.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

started=()
cleanup_on_error() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    log "start failed (rc=$rc); stopping what was started. Logs in $DIR"
    "$HERE/stop.sh" --keep-logs "$DIR" || true
  fi
}
trap cleanup_on_error EXIT

# run NAME CMD...: start CMD detached (own session, stdin closed, output to
# DIR/NAME.log) under a time limit, and record its pid.
run() {
  local name="$1"; shift
  setsid timeout --kill-after=10 "$TTL" "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

alive() { kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

t0=$(date +%s.%N)

# --- etcd --------------------------------------------------------------------
mkdir -p "$DIR/etcd"
etcd_extra=()
if "$BIN/etcd" --help 2>&1 | grep -q -- '--unsafe-no-fsync'; then
  etcd_extra+=(--unsafe-no-fsync)   # test data: no fsync, much faster
fi
for attempt in 1 2 3; do
  ETCD_PORT="$(free_port)"; ETCD_PEER_PORT="$(free_port)"
  ETCD_URL="http://127.0.0.1:$ETCD_PORT"
  peer="http://127.0.0.1:$ETCD_PEER_PORT"
  run etcd "$BIN/etcd" \
    --name=scopegate-test \
    --data-dir="$DIR/etcd" \
    --listen-client-urls="$ETCD_URL" --advertise-client-urls="$ETCD_URL" \
    --listen-peer-urls="$peer" --initial-advertise-peer-urls="$peer" \
    --initial-cluster="scopegate-test=$peer" \
    --log-level=warn \
    "${etcd_extra[@]}"
  ok=0
  for _ in $(seq 1 200); do
    if curl -fsS "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"'; then ok=1; break; fi
    alive etcd || break
    sleep 0.1
  done
  [ "$ok" = 1 ] && break
  kill "$(cat "$DIR/etcd.pid")" 2>/dev/null || true
  wait "$(cat "$DIR/etcd.pid")" 2>/dev/null || true
  rm -f "$DIR/etcd.pid"; rm -rf "$DIR/etcd"; mkdir -p "$DIR/etcd"
  log "etcd did not come up (attempt $attempt), see $DIR/etcd.log"
done
[ "$ok" = 1 ] || exit 1
t_etcd=$(date +%s.%N)

# --- credentials -------------------------------------------------------------
mkdir -p "$DIR/pki"
if [ ! -f "$DIR/pki/sa.key" ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$DIR/pki/sa.key" 2>/dev/null
  openssl pkey -in "$DIR/pki/sa.key" -pubout -out "$DIR/pki/sa.pub" 2>/dev/null
fi
if [ ! -f "$DIR/token.csv" ]; then
  # token,user,uid,"group1,group2"
  printf '%s,admin,admin,"system:masters"\n' "$(openssl rand -hex 32)" >"$DIR/token.csv"
  chmod 600 "$DIR/token.csv"
fi
TOKEN="$(cut -d, -f1 "$DIR/token.csv")"

# --- kube-apiserver ------------------------------------------------------------
# The serving cert is self-generated into --cert-dir (apiserver.crt holds the
# serving cert followed by its self-signed CA; valid for 127.0.0.1/localhost).
# --endpoint-reconciler-type=none: the default reconciler refuses a loopback
# --advertise-address ("may not be in the loopback range"); with none, the
# `kubernetes` Service simply has no endpoints. --service-cluster-ip-range only
# allocates ClusterIPs in etcd; nothing is routed there.
for attempt in 1 2 3; do
  API_PORT="$(free_port)"
  rm -f "$DIR/pki/apiserver.crt" "$DIR/pki/apiserver.key"
  run kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers="$ETCD_URL" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$API_PORT" \
    --cert-dir="$DIR/pki" \
    --authorization-mode=RBAC \
    --token-auth-file="$DIR/token.csv" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$DIR/pki/sa.pub" \
    --service-account-signing-key-file="$DIR/pki/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 \
    --allow-privileged=true \
    --profiling=false \
    --endpoint-reconciler-type=none \
    ${KUBE_APISERVER_EXTRA_ARGS:-}
  ok=0
  deadline=$(( $(date +%s) + READY_TIMEOUT ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ -s "$DIR/pki/apiserver.crt" ] && \
       [ "$(curl -sS --cacert "$DIR/pki/apiserver.crt" -H "Authorization: Bearer $TOKEN" \
              "https://127.0.0.1:$API_PORT/readyz" 2>/dev/null)" = ok ]; then
      ok=1; break
    fi
    alive kube-apiserver || break
    sleep 0.2
  done
  [ "$ok" = 1 ] && break
  kill "$(cat "$DIR/kube-apiserver.pid")" 2>/dev/null || true
  wait "$(cat "$DIR/kube-apiserver.pid")" 2>/dev/null || true
  rm -f "$DIR/kube-apiserver.pid"
  log "kube-apiserver did not become ready (attempt $attempt), see $DIR/kube-apiserver.log"
  grep -q 'address already in use' "$DIR/kube-apiserver.log" || break
done
[ "$ok" = 1 ] || exit 1
t_api=$(date +%s.%N)

API_URL="https://127.0.0.1:$API_PORT"
CA_DATA="$(base64 -w0 <"$DIR/pki/apiserver.crt")"
umask 077
cat >"$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: scopegate-test
  cluster:
    server: $API_URL
    certificate-authority-data: $CA_DATA
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: scopegate-test
  context:
    cluster: scopegate-test
    user: admin
current-context: scopegate-test
EOF
cat >"$DIR/env.sh" <<EOF
export KUBECONFIG='$DIR/kubeconfig'
export KUBE_APISERVER_URL='$API_URL'
export KUBE_TOKEN='$TOKEN'
export KUBE_CA_FILE='$DIR/pki/apiserver.crt'
export ETCD_URL='$ETCD_URL'
export KUBE_BIN='$BIN'
EOF

trap - EXIT
awk -v a="$t0" -v e="$t_etcd" -v k="$t_api" 'BEGIN {
  printf "etcd healthy after %.1fs, kube-apiserver ready after %.1fs (total %.1fs)\n", e-a, k-e, k-a }' >&2
echo "kube-apiserver $API_URL, etcd $ETCD_URL" >&2
echo "$DIR/kubeconfig"
