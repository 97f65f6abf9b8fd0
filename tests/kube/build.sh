#!/usr/bin/env bash
# Builds a real kube-apiserver, kubectl and etcd from the Go module proxy for
# envtest-style integration tests, into <repo>/.tools/kube/<k8s-version>/
# (git-ignored). Idempotent: a binary already present is not rebuilt, so a warm
# run takes well under a second.
#
#   kube-apiserver  k8s.io/kubernetes/cmd/kube-apiserver   (version from go.mod)
#   kubectl         k8s.io/kubernetes/cmd/kubectl
#   etcd            go.etcd.io/etcd/server/v3               (the version k8s.io/kubernetes pins)
#
# Prints the binary directory as its last line of stdout, so
#   KUBE_BIN="$(tests/kube/build.sh | tail -n1)"
# works.
#
# etcd: by default it is built from this module too (it shares most of its
# dependencies with kube-apiserver, so it costs little extra). Debian's
# etcd-server is 3.4.23, which kube-apiserver 1.37 still talks to but which is
# far below the etcd it is released with (3.7); set KUBE_ETCD=debian to use
# /usr/bin/etcd from Debian's package instead (installed via apt-get, with its
# service kept from starting).
#
# Environment:
#   KUBE_TOOLS_DIR   output dir (default <repo>/.tools/kube/<k8s-version>)
#   KUBE_ETCD        build (default) | debian
#   GOMODCACHE, GOCACHE are honoured as usual.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"

log() { printf '%s\n' "$*" >&2; }

# Version pins come from go.mod / go.sum (the single source of truth).
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$HERE/go.mod")"
ETCD_VERSION="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ { print $2; exit }' "$HERE/go.mod")"
[ -n "$K8S_VERSION" ] && [ -n "$ETCD_VERSION" ] || { log "cannot read versions from $HERE/go.mod"; exit 1; }

OUT="${KUBE_TOOLS_DIR:-$REPO_ROOT/.tools/kube/$K8S_VERSION}"
mkdir -p "$OUT"

# The Go build is heavy (2 cores): never starve a parallel build.
NICE=(nice -n 19)

export CGO_ENABLED=0
# Use the machine's Go when it is new enough for go.mod's `go` line; otherwise
# let the go command fetch the toolchain go.mod asks for from the module proxy.
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"
[ "$GOTOOLCHAIN" = local ] && export GOTOOLCHAIN=auto
# -mod=readonly: go.mod/go.sum are committed and must already be complete.
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"

# Version stamps that kubernetes' own build (hack/lib/version.sh) sets, so that
# `kubectl version` and the apiserver's /version report the real release.
k8s_minor="${K8S_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION"
  K8S_LDFLAGS+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  K8S_LDFLAGS+=" -X $pkg.gitTreeState=clean"
  K8S_LDFLAGS+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

# build NAME PACKAGE LDFLAGS: go build into $OUT/NAME unless it already exists.
build() {
  local name="$1" pkg="$2" ldflags="$3"
  if [ -x "$OUT/$name" ]; then
    return 0
  fi
  log "building $name ($pkg) -> $OUT/$name"
  local start=$SECONDS
  (cd "$HERE" && "${NICE[@]}" go build -ldflags="$ldflags" -o "$OUT/.$name.tmp" "$pkg")
  mv -f "$OUT/.$name.tmp" "$OUT/$name"
  log "built $name in $((SECONDS - start))s"
}

build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$K8S_LDFLAGS"
build kubectl k8s.io/kubernetes/cmd/kubectl "$K8S_LDFLAGS"

case "${KUBE_ETCD:-build}" in
  build)
    build etcd go.etcd.io/etcd/server/v3 "-s -w"
    ;;
  debian)
    if [ ! -x /usr/bin/etcd ]; then
      log "installing Debian etcd-server (service kept from starting)"
      # policy-rc.d exit 101 = "action forbidden": invoke-rc.d starts nothing.
      policy=/usr/sbin/policy-rc.d
      had_policy=0; [ -e "$policy" ] && had_policy=1
      if [ "$had_policy" = 0 ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"
      fi
      (export DEBIAN_FRONTEND=noninteractive
       apt-get update -qq && apt-get install -y -qq --no-install-recommends etcd-server >&2) || {
        [ "$had_policy" = 0 ] && rm -f "$policy"; exit 1; }
      [ "$had_policy" = 0 ] && rm -f "$policy"
      # Without systemd nothing should run; stop it anyway if something did.
      if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
        systemctl disable --now etcd >/dev/null 2>&1 || true
      fi
    fi
    ln -sfn /usr/bin/etcd "$OUT/etcd"
    ;;
  *) log "KUBE_ETCD must be build or debian"; exit 1 ;;
esac

echo "kube-apiserver $K8S_VERSION: $OUT/kube-apiserver"
echo "kubectl $K8S_VERSION: $OUT/kubectl"
echo "etcd $("$OUT/etcd" --version 2>/dev/null | awk '/etcd Version/ {print $3}'): $OUT/etcd"
echo "$OUT"
