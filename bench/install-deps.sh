#!/usr/bin/env bash
# Installs what the benchmark harness (bench/bench.py) needs, and nothing
# when it is already there: h2load (Debian nghttp2-client), ghz, buf and the
# two Go protobuf plugins, the grpc-go peer binary, and a Python venv with
# grpcio, grpcio-tools and matplotlib. Every version is pinned; everything
# is cached under .tools/ and keyed by version (or by source hash for the
# Go peer), so a second run only checks stamps.
set -euo pipefail
cd "$(dirname "$0")/.."

GHZ_VERSION=v0.120.0
BUF_VERSION=v1.75.0
# protoc-gen-go must not be newer than the google.golang.org/protobuf
# runtime in bench/peers/go/go.mod; protoc-gen-go-grpc v1.6 output needs
# grpc-go >= 1.64.
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.0

TOOLS="$PWD/.tools"
TOOLS_BIN="$TOOLS/bin"
mkdir -p "$TOOLS_BIN"
log() { printf '==> %s\n' "$*"; }

if ! command -v h2load >/dev/null 2>&1; then
  log "apt-get install nghttp2-client (h2load)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nghttp2-client >/dev/null
fi
command -v taskset >/dev/null 2>&1 || { echo "taskset (util-linux) is needed" >&2; exit 1; }

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
go_tool ghz github.com/bojand/ghz/cmd/ghz "$GHZ_VERSION"
go_tool buf github.com/bufbuild/buf/cmd/buf "$BUF_VERSION"
go_tool protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go "$PROTOC_GEN_GO_VERSION"
go_tool protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc "$PROTOC_GEN_GO_GRPC_VERSION"

# The grpc-go peer: code generated from proto/ by buf with the local
# plugins (no system protoc), rebuilt when the proto, the Go sources or the
# tool versions change.
peer_src=bench/peers/go
peer_key=$(cat proto/user/v1/user_service.proto "$peer_src"/*.go "$peer_src"/go.mod "$peer_src"/go.sum \
  "$peer_src"/buf.gen.yaml <(echo "$BUF_VERSION $PROTOC_GEN_GO_VERSION $PROTOC_GEN_GO_GRPC_VERSION") |
  sha256sum | cut -c1-16)
if [ ! -x "$TOOLS_BIN/user-peer-go" ] || [ ! -e "$TOOLS_BIN/.user-peer-go-$peer_key" ]; then
  log "build the grpc-go peer"
  rm -rf "$peer_src/gen"
  (cd "$peer_src" && PATH="$TOOLS_BIN:$PATH" buf generate ../../../proto --template buf.gen.yaml)
  (cd "$peer_src" && go build -trimpath -o "$TOOLS_BIN/user-peer-go" .)
  rm -f "$TOOLS_BIN/.user-peer-go-"*
  touch "$TOOLS_BIN/.user-peer-go-$peer_key"
fi

# The Python venv (grpcio peer, stub generation, chart). Keyed by the pinned
# requirements and the interpreter version.
req=bench/peers/python/requirements.txt
venv_key=$(cat "$req" <(python3 -c 'import sys; print(sys.version)') | sha256sum | cut -c1-16)
venv="$TOOLS/bench-venv"
if [ ! -x "$venv/bin/python" ] || [ ! -e "$venv/.key-$venv_key" ]; then
  log "python venv for the benchmark ($req)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -r "$req"
  touch "$venv/.key-$venv_key"
fi

log "benchmark tools ready"
