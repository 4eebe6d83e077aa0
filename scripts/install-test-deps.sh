#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine (as
# root), and nothing when it is already there. Versions are pinned: Debian
# packages by the release, Go tools by module version, Python packages by
# version in a virtualenv.
#
# Usage: scripts/install-test-deps.sh          everything `make test` needs
#        scripts/install-test-deps.sh deploy   only what the deployment tests
#                                              (scripts/test-deploy.sh) need
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-all}
case "$MODE" in all | deploy) ;; *) echo "usage: $0 [deploy]" >&2; exit 2 ;; esac

GRPCURL_VERSION=v1.9.3
GRPC_HEALTH_PROBE_VERSION=v0.4.61
CARGO_DENY_VERSION=0.20.2
HELM_VERSION=v3.22.0
# Official helm builds default to the Kubernetes minor of their client-go
# (v0.37 for helm v3.22.0); `go install` must set it the same way, or helm
# assumes Kubernetes 1.20 and refuses the chart's kubeVersion >=1.27.
HELM_K8S_MINOR=37
# The Python tests' virtualenv (tests/deploy, tests/cluster): the test
# runner, and kubernetes-validate (schemas ship inside the wheel).
KUBERNETES_VALIDATE_VERSION=1.37.0
PYTEST_VERSION=9.2.0
# Go toolchain fetched from the module proxy when no Go >= 1.21 is installed.
GO_TOOLCHAIN_VERSION=1.26.8
TOOLS="$PWD/.tools"
TOOLS_BIN="$TOOLS/bin"
export PATH="$TOOLS_BIN:$TOOLS/go/bin:$PATH"
# Prometheus for the cluster tests' kubernetes_sd scrape: Debian's 2.42 is
# built without Kubernetes discovery. Module v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_MODULE_VERSION=v0.316.0
PROMETHEUS_VERSION=3.16.0

log() { printf '==> %s\n' "$*"; }
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

need_apt=()
command -v pg_virtualenv >/dev/null 2>&1 || need_apt+=(postgresql postgresql-common)
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v python3 >/dev/null 2>&1 && python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3 python3-venv)

if [ "${#need_apt[@]}" -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  apt_install_quietly "${need_apt[@]}"
  # The prometheus package would otherwise start its daemon at the next
  # boot; keep it off.
  if [[ " ${need_apt[*]} " == *" prometheus "* ]]; then
    disable_at_boot prometheus
  fi
fi

# A Prometheus (or PostgreSQL) already running on this machine is left
# alone: the tests start their own instances on free loopback ports and stop
# only the processes they started.

mkdir -p "$TOOLS_BIN"

go_minor() { go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p'; }

ensure_go() { # Go >= 1.21, which fetches newer toolchains from the proxy itself
  if command -v go >/dev/null 2>&1 && [ "$(go_minor)" -ge 21 ] 2>/dev/null; then
    return
  fi
  if ! command -v go >/dev/null 2>&1; then
    log "apt-get install golang-go (to bootstrap)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends golang-go ca-certificates >/dev/null
  fi
  # Debian 12's Go (1.19) cannot switch toolchains: fetch the pinned one as
  # the golang.org/toolchain module, as newer go commands do.
  local arch module dir
  arch=$(go env GOARCH)
  module="golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-$arch"
  log "go mod download $module"
  dir=$(cd / && GOFLAGS='' go mod download -json "$module" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then die "could not download $module"; fi
  rm -rf "$TOOLS/go"
  cp -r "$dir" "$TOOLS/go"
  chmod -R u+w "$TOOLS/go"
  chmod +x "$TOOLS/go/bin/"* "$TOOLS/go/pkg/tool/"*/*
  hash -r
  [ "$(go_minor)" -ge 21 ] || die "go in PATH is still $(go version)"
}

go_tool() { # name module version
  local name=$1 module=$2 version=$3
  local stamp="$TOOLS_BIN/.$name-$version"
  if [ ! -x "$TOOLS_BIN/$name" ] || [ ! -e "$stamp" ]; then
    ensure_go
    log "go install $module@$version"
    GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod go install "$module@$version"
    rm -f "$TOOLS_BIN/.$name-"*
    touch "$stamp"
  fi
}
go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
go_tool grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe "$GRPC_HEALTH_PROBE_VERSION"

# helm, built from its module at the pinned version (no prebuilt binary
# can be downloaded here).
helm_version() { "$1" version --template '{{.Version}}' 2>/dev/null || true; }
if [ "$(helm_version "$TOOLS_BIN/helm")" != "$HELM_VERSION" ]; then
  ensure_go
  log "go install helm.sh/helm/v3/cmd/helm@$HELM_VERSION (compiles for a few minutes)"
  # helm's go.mod has no replace directives, so `go install module@version`
  # works; the -X flags are those of helm's Makefile.
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
  done
  GOBIN="$TOOLS_BIN" GOTOOLCHAIN=auto go install -trimpath -ldflags "$ldflags" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  [ "$(helm_version "$TOOLS_BIN/helm")" = "$HELM_VERSION" ] || die "built helm reports $(helm_version "$TOOLS_BIN/helm")"
fi

# The Python tests' virtualenv, rebuilt when a pin changes.
VENV="$TOOLS/venv"
if ! "$VENV/bin/python" -c "import kubernetes_validate.version as k, pytest, sys
sys.exit(k.__version__ != '$KUBERNETES_VALIDATE_VERSION' or pytest.__version__ != '$PYTEST_VERSION')" 2>/dev/null; then
  log "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION pytest==$PYTEST_VERSION"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "pytest==$PYTEST_VERSION"
fi

if [ "$MODE" = deploy ]; then
  log "deployment test dependencies ready"
  exit 0
fi

# cargo-deny is built once per version into the user cache (a build takes
# minutes) and linked into .tools/bin, so a fresh checkout reuses it.
deny_root="${XDG_CACHE_HOME:-$HOME/.cache}/user-service/cargo-deny-$CARGO_DENY_VERSION"
if [ ! -x "$deny_root/bin/cargo-deny" ]; then
  log "cargo install cargo-deny $CARGO_DENY_VERSION"
  cargo install --locked --version "$CARGO_DENY_VERSION" cargo-deny --root "$deny_root"
fi
ln -sf "$deny_root/bin/cargo-deny" "$TOOLS_BIN/cargo-deny"

# make bench-smoke: h2load, ghz, the grpc-go peer, the Python venv.
bench/install-deps.sh

# The local cluster (scripts/test-cluster.sh): containerd, runc, CNI
# plugins, umoci, iptables, conntrack from Debian. Kubernetes itself is
# built (and cached) by deploy/cluster/build.sh when the cluster starts.
deploy/cluster/install-deps.sh
# Prometheus with Kubernetes discovery only (remove_all_sd drops the cloud
# SDKs it would otherwise compile), built once into the user cache; the
# cluster tests call it by this path, Debian's prometheus stays the one in
# PATH for everything else.
prom_root="${XDG_CACHE_HOME:-$HOME/.cache}/user-service/prometheus-$PROMETHEUS_VERSION"
if [ ! -x "$prom_root/bin/prometheus" ]; then
  command -v go >/dev/null 2>&1 || { echo "go is needed to build Prometheus $PROMETHEUS_VERSION" >&2; exit 1; }
  log "go install prometheus $PROMETHEUS_VERSION (kubernetes_sd only)"
  v=github.com/prometheus/common/version
  GOBIN="$prom_root/bin" GOFLAGS=-mod=mod go install -p 2 -trimpath \
    -tags netgo,remove_all_sd,enable_kubernetes_sd \
    -ldflags "-s -w -X $v.Version=$PROMETHEUS_VERSION -X $v.Branch=release -X $v.Revision=$PROMETHEUS_MODULE_VERSION" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION"
fi

log "test dependencies ready"
