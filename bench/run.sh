#!/usr/bin/env bash
# Load benchmarks of the release build, driven by ghz (the gRPC load
# generator). Prints a Markdown table; BENCHMARKS.md records a run and the
# machine it ran on. Everything runs on loopback and stops by itself.
#
#   bench/run.sh              # all scenarios
#   DURATION=10s bench/run.sh # shorter runs
set -euo pipefail
cd "$(dirname "$0")/.."

GHZ_VERSION=v0.120.0
DURATION=${DURATION:-20s}
TOOLS_BIN="$PWD/.tools/bin"
export PATH="$TOOLS_BIN:$PATH"

if [ ! -x "$TOOLS_BIN/ghz" ] || [ ! -e "$TOOLS_BIN/.ghz-$GHZ_VERSION" ]; then
  mkdir -p "$TOOLS_BIN"
  GOBIN="$TOOLS_BIN" GOFLAGS=-mod=mod go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
  touch "$TOOLS_BIN/.ghz-$GHZ_VERSION"
fi
scripts/install-test-deps.sh >/dev/null

cargo build --locked --release --quiet
GRPC=127.0.0.1:${BENCH_GRPC_PORT:-55051}
ADMIN=127.0.0.1:${BENCH_ADMIN_PORT:-58080}
work=$(mktemp -d)
USER_SERVICE__LOG__LEVEL=warn target/release/user-service --grpc-addr "$GRPC" --admin-addr "$ADMIN" \
  >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 100); do curl -sf "http://$ADMIN/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$server/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$server/status"; }
idle_rss=$(rss_kib)

# Seed: one user to read, 1000 users to stream.
id=$(grpcurl -plaintext -d '{"email":"bench@example.com","name":"Bench","password":"correct horse battery"}' \
  "$GRPC" user.v1.UserService/CreateUser | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
python3 - "$work/bulk.json" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    json.dump([{"email": f"seed{i}@example.com", "name": f"Seed {i}", "password": "correct horse battery"} for i in range(999)], f)
PY
ghz --insecure --call user.v1.UserService/BulkCreateUsers -D "$work/bulk.json" -n 1 -c 1 --timeout 120s "$GRPC" >/dev/null

row() { # name, ghz json report
  python3 - "$1" "$2" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
ms = lambda ns: ns / 1e6
lat = {d["percentage"]: d["latency"] for d in r.get("latencyDistribution") or []}
codes = ", ".join(f"{k}: {v}" for k, v in (r.get("statusCodeDistribution") or {}).items())
print(f"| {name} | {r['rps']:.0f} | {ms(lat.get(50, 0)):.2f} | {ms(lat.get(99, 0)):.2f} | {codes} |")
PY
}

echo "| scenario | req/s | p50 ms | p99 ms | status codes |"
echo "| --- | ---: | ---: | ---: | --- |"
ghz --insecure --call user.v1.UserService/GetUser -d "{\"user_id\":\"$id\"}" -c 50 -z "$DURATION" \
  --connections 4 -O json "$GRPC" >"$work/get.json"
row "GetUser (unary, 50 concurrent, 4 connections)" "$work/get.json"
ghz --insecure --call grpc.health.v1.Health/Check -d '{"service":"user.v1.UserService"}' -c 50 -z "$DURATION" \
  --connections 4 -O json "$GRPC" >"$work/health.json"
row "Health/Check (readiness)" "$work/health.json"
ghz --insecure --call user.v1.UserService/ListUsers -d '{"page_size":0}' -c 4 -z "$DURATION" \
  -O json "$GRPC" >"$work/list.json"
row "ListUsers (1000-user stream, 4 concurrent)" "$work/list.json"
ghz --insecure --call user.v1.UserService/CreateUser \
  -d '{"email":"load{{.RequestNumber}}-{{.TimestampUnix}}@example.com","name":"Load","password":"correct horse battery"}' \
  -c 8 -z "$DURATION" -O json "$GRPC" >"$work/create.json"
row "CreateUser (argon2id hash per call, 8 concurrent)" "$work/create.json"

echo
echo "Server memory: idle RSS $((idle_rss / 1024)) MiB, RSS after load $(( $(rss_kib) / 1024 )) MiB, peak RSS $(( $(hwm_kib) / 1024 )) MiB."
