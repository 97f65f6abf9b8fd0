#!/usr/bin/env bash
# The Helm chart's checks, with a real Helm engine (helm-python-sdk: Helm v4's
# Go SDK), kubernetes-validate and yamllint, installed into .tools/venv:
#   - helm lint --strict, and the chart rendered with its defaults and four
#     other value sets (watchNamespaces, autoscaling, serviceMonitor, the rest);
#     every object validated against Kubernetes 1.33 and the newest schemas
#     kubernetes-validate knows (strict), yamllint, restricted Pod Security,
#     the Deployment/Service/PDB contract, RBAC == manifests/rbac.yaml;
#   - values.schema.json (and the template's own checks) reject bad values;
#   - manifests/install.yaml is current; the two CRD copies are identical;
#     the examples are valid TokenPolicies.
# With SCOPEGATE_BIN=path/to/scopegate, the CRD is also compared with
# `scopegate crd` and the examples are compiled with `scopegate validate`.
#
# Last line: "chart tests: N passed, M failed"; exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=.ci/chart-tools.sh
source .ci/chart-tools.sh
exec "$CHART_PYTHON" .ci/chart_tool.py test
