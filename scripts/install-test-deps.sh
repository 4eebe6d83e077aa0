#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine (as
# root), and nothing when it is already there. Versions are pinned: Debian
# packages by the release, Go tools by module version.
set -euo pipefail
cd "$(dirname "$0")/.."

GRPCURL_VERSION=v1.9.3
GRPC_HEALTH_PROBE_VERSION=v0.4.61
CARGO_DENY_VERSION=0.20.2
# The cluster tests (tests/cluster, scripts/test-cluster.sh).
PYTEST_VERSION=9.2.0
# Prometheus for the cluster tests' kubernetes_sd scrape: Debian's 2.42 is
# built without Kubernetes discovery. Module v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_MODULE_VERSION=v0.316.0
PROMETHEUS_VERSION=3.16.0
TOOLS_BIN="$PWD/.tools/bin"

log() { printf '==> %s\n' "$*"; }

need_apt=()
command -v pg_virtualenv >/dev/null 2>&1 || need_apt+=(postgresql postgresql-common)
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)

if [ "${#need_apt[@]}" -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  # Package scripts must not start daemons: tests start their own
  # PostgreSQL cluster and Prometheus on free loopback ports.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
  # The prometheus package we just installed would otherwise start its
  # daemon at the next boot; keep it off (nothing running is stopped).
  if [[ " ${need_apt[*]} " == *" prometheus "* ]]; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable prometheus >/dev/null 2>&1 || true
    elif command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
  fi
fi

# A Prometheus (or PostgreSQL) already running on this machine is left
# alone: the tests start their own instances on free loopback ports and stop
# only the processes they started.

mkdir -p "$TOOLS_BIN"
go_tool() { # name module version
  local name=$1 module=$2 version=$3
  local stamp="$TOOLS_BIN/.$name-$version"
  if [ ! -x "$TOOLS_BIN/$name" ] || [ ! -e "$stamp" ]; then
    command -v go >/dev/null 2>&1 || { echo "go is needed to install $name" >&2; exit 1; }
    log "go install $module@$version"
    GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod go install "$module@$version"
    rm -f "$TOOLS_BIN/.$name-"*
    touch "$stamp"
  fi
}
go_tool grpcurl github.com/fullstorydev/grpcurl/cmd/grpcurl "$GRPCURL_VERSION"
go_tool grpc-health-probe github.com/grpc-ecosystem/grpc-health-probe "$GRPC_HEALTH_PROBE_VERSION"

# cargo-deny is built once per version into the user cache (a build takes
# minutes) and linked into .tools/bin, so a fresh checkout reuses it.
deny_root="${XDG_CACHE_HOME:-$HOME/.cache}/user-service/cargo-deny-$CARGO_DENY_VERSION"
if [ ! -x "$deny_root/bin/cargo-deny" ]; then
  log "cargo install cargo-deny $CARGO_DENY_VERSION"
  cargo install --locked --version "$CARGO_DENY_VERSION" cargo-deny --root "$deny_root"
fi
ln -sf "$deny_root/bin/cargo-deny" "$TOOLS_BIN/cargo-deny"

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
cluster_venv="$PWD/.tools/cluster-venv"
if ! "$cluster_venv/bin/python" -c "import pytest, sys; sys.exit(pytest.__version__ != '$PYTEST_VERSION')" 2>/dev/null; then
  log "python venv for the cluster tests (pytest $PYTEST_VERSION)"
  rm -rf "$cluster_venv"
  python3 -m venv "$cluster_venv"
  "$cluster_venv/bin/pip" install -q --disable-pip-version-check "pytest==$PYTEST_VERSION"
fi

# make bench-smoke: h2load, ghz, the grpc-go peer, the Python venv.
bench/install-deps.sh

log "test dependencies ready"
