#!/usr/bin/env bash
# Regenerates manifests/install.yaml: the chart rendered with its default
# values (release "scopegate", namespace "scopegate"), its CRD and the
# namespace, for `kubectl apply --server-side -f manifests/install.yaml`.
# Run it after any change to charts/scopegate and commit the result;
# .ci/chart-test.sh fails while it is stale.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=.ci/chart-tools.sh
source .ci/chart-tools.sh
"$CHART_PYTHON" .ci/chart_tool.py render-install
