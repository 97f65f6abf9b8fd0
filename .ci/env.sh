# Source this (after .ci/install-tools.sh) to point the e2e tests at the tools:
#   source .ci/env.sh
# Works from bash; paths are absolute, computed from this file's location.
_scopegate_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SCOPEGATE_ENVOY="$_scopegate_root/.tools/venv/bin/envoy"
export SCOPEGATE_GRPCURL="$_scopegate_root/.tools/venv/bin/grpcurl"
export SCOPEGATE_OAUTH2_MOCK_SERVER="$_scopegate_root/.tools/node/node_modules/.bin/oauth2-mock-server"
unset _scopegate_root
