#!/usr/bin/env bash
# Builds the Kubernetes binaries, etcd and CoreDNS once per version into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/user-service/k8s-<version>/bin
# from the Go module proxy (the only place they can be had here: no
# release downloads, no images). A version stamp is written only after every
# binary is built and answers --version, so an interrupted build restarts.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/cluster/versions.sh
source "$here/versions.sh"

stamp="$K8S_BIN/.built-$K8S_VERSION-etcd-$ETCD_VERSION-coredns-$COREDNS_VERSION"
if [ -e "$stamp" ]; then
  log "Kubernetes $K8S_VERSION binaries cached in $K8S_BIN"
  exit 0
fi
command -v go >/dev/null 2>&1 || die "go is needed to build Kubernetes (Go >= 1.25)"
mkdir -p "$K8S_BIN" "$GOMODCACHE" "$GOCACHE"

# Two parallel compiles bound memory to ~3 GB on a 2-core machine; -s -w
# strips (~770 MB instead of ~1.2 GB); -trimpath keeps cache paths out.
GO_BUILD=(go build -p "${GO_BUILD_PARALLEL:-2}" -trimpath)
timed() { # label command...
  local label=$1 start=$SECONDS; shift
  "$@"
  log "$label built in $((SECONDS - start)) s"
}

# ---- Kubernetes -------------------------------------------------------------
# `go install k8s.io/kubernetes/cmd/...@v1.37.2` is refused: its go.mod
# replaces every k8s.io/<staging> module with ./staging/src/... A scratch
# module that requires k8s.io/kubernetes and replaces each of those with its
# published v0.37.x version builds the same code.
k8s_mod="$K8S_CACHE/src/kubernetes"
mkdir -p "$k8s_mod"
gomod_file=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
{
  echo "module local/k8s-build"
  echo
  sed -n 's/^go \([0-9.]*\)$/go \1/p' "$gomod_file" | head -1
  echo
  echo "require k8s.io/kubernetes $K8S_VERSION"
  echo
  # Only the staging modules are replaced; sample-cli-plugin and
  # sample-controller are not published at this version (nor needed).
  sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/.*#\1#p' "$gomod_file" |
    grep -v -e '^k8s.io/sample-cli-plugin$' -e '^k8s.io/sample-controller$' |
    while read -r m; do echo "replace $m => $m $K8S_STAGING_VERSION"; done
} >"$k8s_mod/go.mod"
grep -q '^replace k8s.io/api =>' "$k8s_mod/go.mod" || die "no staging replace lines found in $gomod_file"
echo 'package tools' >"$k8s_mod/doc.go"

k8s_ldflags="-s -w"
major=${K8S_VERSION#v}; major=${major%%.*}
minor=${K8S_VERSION#v*.}; minor=${minor%%.*}
# Without the stamp the servers report v0.0.0-master and a chart's
# kubeVersion constraint fails.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
(
  cd "$k8s_mod"
  log "resolving k8s.io/kubernetes $K8S_VERSION"
  go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" >/dev/null
  # Smallest first: a broken toolchain shows up in seconds, not minutes.
  for cmd in kube-proxy kubectl kubelet kube-scheduler kube-controller-manager kube-apiserver; do
    if [ -x "$K8S_BIN/$cmd" ] && "$K8S_BIN/$cmd" --version 2>/dev/null | grep "$K8S_VERSION" >/dev/null; then
      continue
    fi
    pkg="k8s.io/kubernetes/cmd/$cmd"
    timed "$cmd" "${GO_BUILD[@]}" -ldflags "$k8s_ldflags" -o "$K8S_BIN/$cmd" "$pkg"
  done
)

# ---- etcd ---------------------------------------------------------------------
# Same trick: the server and etcdctl modules replace their sibling modules
# with the published versions of the same release.
etcd_mod="$K8S_CACHE/src/etcd"
mkdir -p "$etcd_mod"
{
  echo "module local/etcd-build"
  echo
  echo "go 1.24"
  echo
  echo "require ("
  echo "  go.etcd.io/etcd/server/v3 $ETCD_VERSION"
  echo "  go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION"
  echo ")"
  for m in api/v3 client/pkg/v3 client/v3 pkg/v3 etcdutl/v3; do
    echo "replace go.etcd.io/etcd/$m => go.etcd.io/etcd/$m $ETCD_VERSION"
  done
} >"$etcd_mod/go.mod"
echo 'package tools' >"$etcd_mod/doc.go"
(
  cd "$etcd_mod"
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" >/dev/null
  etcd_ldflags="-s -w"
  [ -x "$K8S_BIN/etcd" ] || timed etcd "${GO_BUILD[@]}" -ldflags "$etcd_ldflags" -o "$K8S_BIN/etcd" go.etcd.io/etcd/server/v3
  [ -x "$K8S_BIN/etcdctl" ] || timed etcdctl "${GO_BUILD[@]}" -ldflags "$etcd_ldflags" -o "$K8S_BIN/etcdctl" go.etcd.io/etcd/etcdctl/v3
)

# ---- CoreDNS ------------------------------------------------------------------
# Service names (the chart's `helm test` dials the Service by name) need
# cluster DNS. CoreDNS runs on the host, on the bridge gateway address.
if [ ! -x "$K8S_BIN/coredns" ]; then
  timed coredns env GOBIN="$K8S_BIN" go install -p "${GO_BUILD_PARALLEL:-2}" -trimpath \
    -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
fi

# ---- check and stamp ----------------------------------------------------------
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl coredns; do
  [ -x "$K8S_BIN/$b" ] || die "$b missing from $K8S_BIN after the build"
done
"$K8S_BIN/kube-apiserver" --version | grep "$K8S_VERSION" >/dev/null || die "kube-apiserver does not report $K8S_VERSION"
"$K8S_BIN/etcd" --version | grep "${ETCD_VERSION#v}" >/dev/null || die "etcd does not report $ETCD_VERSION"
rm -f "$K8S_BIN"/.built-*
touch "$stamp"
log "Kubernetes $K8S_VERSION, etcd $ETCD_VERSION, CoreDNS $COREDNS_VERSION in $K8S_BIN ($(du -sh "$K8S_BIN" | cut -f1))"
