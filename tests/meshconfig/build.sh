#!/usr/bin/env bash
# Builds meshconfig-check (main.go: Istio mesh-config fragments decoded
# strictly into the real istio.mesh.v1alpha1.MeshConfig of istio.io/api, the
# version in go.mod) into <repo>/.tools/meshconfig/ and prints its path as the
# last line of stdout:
#
#   MESHCONFIG_CHECK="$(tests/meshconfig/build.sh | tail -n1)"
#
# Always runs `go build`: the Go build cache makes a warm build take about a
# second, and a changed main.go or go.mod is never missed. Cold, it downloads
# istio.io/api and its few dependencies (~30 MB) from the Go module proxy and
# builds in ~30 s.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="$(cd "$HERE/../.." && pwd)/.tools/meshconfig"
mkdir -p "$OUT"
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
[ "$GOTOOLCHAIN" = local ] && export GOTOOLCHAIN=auto
# -mod=readonly: go.mod/go.sum are committed and must already be complete.
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
(cd "$HERE" && nice -n 10 go build -o "$OUT/meshconfig-check" .)
echo "$OUT/meshconfig-check"
