#!/usr/bin/env bash
# Builds the images the cluster and its tests run, as OCI layouts with
# umoci (no Docker here), and imports them into the cluster's containerd:
#   pause   localhost/user-service-pause:1           the pod sandbox
#   app     docker.io/library/user-service:dev       the release binaries
#   probe   localhost/grpc-health-probe:$GRPC_HEALTH_PROBE_VERSION  (helm test)
# Usage: image.sh [pause|app|probe|all]   (default all)
#
# The app image has deploy/Dockerfile's runtime layout: /user-service and
# /userctl, uid/gid 65532, ENTRYPOINT ["/user-service"], CMD ["serve"],
# ports 50051 and 8080. The Dockerfile's base (distroless cc) is glibc and
# libgcc: the same shared libraries are copied from this host (ldd), which
# builds the binary, so they match it. tests/cluster checks the layout
# against the Dockerfile.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=deploy/cluster/versions.sh
source "$here/versions.sh"

S="$CLUSTER_STATE"
CONTAINERD_SOCK="$S/containerd/containerd.sock"
WORK="$CACHE_ROOT/images"
mkdir -p "$WORK"
command -v umoci >/dev/null 2>&1 || die "umoci is missing: run deploy/cluster/install-deps.sh"
ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1 || die "the cluster's containerd is not running (make cluster-up)"

# new_image NAME : an empty layout $WORK/NAME with a fresh rootfs to fill
new_image() {
  local name=$1
  rm -rf "${WORK:?}/$name"
  mkdir -p "$WORK/$name"
  umoci init --layout "$WORK/$name/oci"
  umoci new --image "$WORK/$name/oci:latest"
  umoci unpack --image "$WORK/$name/oci:latest" "$WORK/$name/bundle" >/dev/null
  ROOTFS="$WORK/$name/bundle/rootfs"
  # distroless's nonroot user and group, and a writable /tmp.
  mkdir -p "$ROOTFS"/{etc,tmp,home/nonroot}
  chmod 1777 "$ROOTFS/tmp"
  chown 65532:65532 "$ROOTFS/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$ROOTFS/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$ROOTFS/etc/group"
  printf 'hosts: files dns\n' >"$ROOTFS/etc/nsswitch.conf"
}

# finish_image NAME REF [umoci config args...] : one layer, the config, then
# an import under REF (an OCI tar, annotated with REF's tag)
finish_image() {
  local name=$1 ref=$2; shift 2
  local tag=${ref##*:} base=${ref%:*}
  umoci repack --image "$WORK/$name/oci:latest" "$WORK/$name/bundle"
  umoci config --image "$WORK/$name/oci:latest" --tag "$tag" \
    --os linux --architecture amd64 "$@"
  # Only the configured tag goes into the tar.
  umoci rm --image "$WORK/$name/oci:latest"
  tar -C "$WORK/$name/oci" -cf "$WORK/$name/image.tar" .
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --all-platforms \
    --base-name "$base" "$WORK/$name/image.tar" >/dev/null
  ctr --address "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -x "$ref" >/dev/null || die "$ref did not appear in containerd after the import"
  log "image $ref imported ($(du -b "$WORK/$name/image.tar" | awk '{printf "%.1f MB", $1/1e6}') tar)"
}

# static_go OUT [go build args...] PACKAGE : a static Go binary
static_go() {
  local out=$1; shift
  CGO_ENABLED=0 go build -trimpath -tags netgo -o "$out" "$@"
}

pause_image() {
  local bin="$K8S_CACHE/pause"
  if [ ! -x "$bin" ] || [ "$here/pause/main.go" -nt "$bin" ]; then
    (cd "$here/pause" && static_go "$bin" -ldflags "-s -w" .)
  fi
  new_image pause
  install -m 0755 "$bin" "$ROOTFS/pause"
  finish_image pause localhost/user-service-pause:1 --config.entrypoint /pause --config.user 65535:65535
}

probe_image() {
  local bin="$K8S_CACHE/grpc-health-probe-$GRPC_HEALTH_PROBE_VERSION"
  if [ ! -x "$bin" ]; then
    # Built from its module (the version the test suite pins); static, so
    # the image needs nothing else.
    local mod="$K8S_CACHE/src/grpc-health-probe"
    mkdir -p "$mod"
    printf 'module local/probe-build\n\ngo 1.24\n\nrequire github.com/grpc-ecosystem/grpc-health-probe %s\n' \
      "$GRPC_HEALTH_PROBE_VERSION" >"$mod/go.mod"
    echo 'package tools' >"$mod/doc.go"
    (cd "$mod" && go get "github.com/grpc-ecosystem/grpc-health-probe@$GRPC_HEALTH_PROBE_VERSION" >/dev/null &&
      static_go "$bin" -ldflags "-s -w -X main.versionTag=$GRPC_HEALTH_PROBE_VERSION" \
        github.com/grpc-ecosystem/grpc-health-probe)
  fi
  new_image probe
  # The upstream image's layout (ko): the binary at /ko-app, uid 65532.
  mkdir -p "$ROOTFS/ko-app"
  install -m 0755 "$bin" "$ROOTFS/ko-app/grpc-health-probe"
  finish_image probe "localhost/grpc-health-probe:$GRPC_HEALTH_PROBE_VERSION" \
    --config.entrypoint /ko-app/grpc-health-probe --config.user 65532:65532
}

app_image() {
  local target="${CARGO_TARGET_DIR:-$repo/target}"
  (cd "$repo" && cargo build --release --locked --bin user-service --bin userctl)
  local bin="$target/release/user-service" ctl="$target/release/userctl"
  new_image app
  install -m 0755 "$bin" "$ROOTFS/user-service"
  install -m 0755 "$ctl" "$ROOTFS/userctl"
  # distroless cc: glibc, libgcc_s, the loader; whatever ldd lists for
  # either binary, copied to the same paths.
  local lib
  for lib in $({ ldd "$bin"; ldd "$ctl"; } | awk '$1 ~ /^\// {print $1} $3 ~ /^\// {print $3}' | sort -u); do
    mkdir -p "$ROOTFS$(dirname "$lib")"
    cp -L "$lib" "$ROOTFS$lib"
  done
  # Root certificates, as distroless ships them (OTLP over https, JWKS).
  if [ -e /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$ROOTFS/etc/ssl/certs"
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/"
  fi
  finish_image app docker.io/library/user-service:dev \
    --config.entrypoint /user-service --config.cmd serve --config.user 65532:65532 \
    --config.exposedports 50051/tcp --config.exposedports 8080/tcp --config.workingdir /
  # Image size for docs/cluster.md: the compressed layer as stored.
  du -b "$WORK/app/image.tar" | cut -f1 >"$WORK/app/size-bytes"
}

case "${1:-all}" in
  pause) pause_image ;;
  app) app_image ;;
  probe) probe_image ;;
  all) pause_image; app_image; probe_image ;;
  *) die "usage: image.sh [pause|app|probe|all]" ;;
esac
