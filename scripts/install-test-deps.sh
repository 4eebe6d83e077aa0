#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian 12 machine (as
# root), and nothing when it is already there. Versions are pinned: Debian
# packages by the release, Go tools by module version.
set -euo pipefail
cd "$(dirname "$0")/.."

GRPCURL_VERSION=v1.9.3
GRPC_HEALTH_PROBE_VERSION=v0.4.61
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
fi

# A prometheus daemon started by the package would hold port 9090 and
# scrape nothing useful; stop it if one is running.
if pgrep -x prometheus >/dev/null 2>&1 && [ -z "${KEEP_SYSTEM_PROMETHEUS:-}" ]; then
  (service prometheus stop || pkill -x prometheus) >/dev/null 2>&1 || true
fi

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

# make bench-smoke: h2load, ghz, the grpc-go peer, the Python venv.
bench/install-deps.sh

log "test dependencies ready"
