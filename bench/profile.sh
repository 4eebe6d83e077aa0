#!/usr/bin/env bash
# A CPU profile of this service under GetUser load, as a flame graph PNG:
#
#   bench/profile.sh [MODE] [OUT.png]      # make profile PROFILE_MODE=chart
#
# MODE is one of bench/modes.sh's: warn, chart-no-otlp, chart (the default:
# JSON call logs at info and every call exported to a local OTLP sink);
# AUTH=1 adds authentication, an admin token on every call.
# The release server runs on CPU 0 and h2load on CPU 1, as in the
# benchmarks; `perf record --call-graph dwarf` samples the server only.
# Writes OUT (default bench/results/flamegraph-MODE.png) and prints the
# frames with the largest inclusive share. Needs perf (linux-perf) and the
# benchmark venv (bench/install-deps.sh, for matplotlib).
#
#   FLAT=1 bench/profile.sh chart    # no graph: the functions with the
#                                    # largest self time, by thread
#
# The flat list answers "which function burns the CPU" (memcpy, malloc,
# encoding) where the flame graph answers "on whose behalf".
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-chart}
OUT=${2:-bench/results/flamegraph-$MODE.png}
N=${N:-150000}
for tool in perf h2load; do
  command -v "$tool" >/dev/null || { echo "$tool missing (apt-get install linux-perf nghttp2-client)" >&2; exit 2; }
done
python=.tools/bench-venv/bin/python
[ -x "$python" ] || bench/install-deps.sh >&2
cargo build --locked --release -q --bin user-service
cargo build --locked --release -q -p bench-bare

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port=${PROFILE_PORT:-55300}
sink_port=$((port + 2))
. bench/modes.sh
mode_env "$MODE" target/release/user-service "$sink_port"
if [ "$MODE" = chart ]; then
  taskset -c 1 target/release/otlp-sink --addr "127.0.0.1:$sink_port" --count-file "$work/spans.json" >/dev/null 2>&1 &
  pids+=($!)
fi
# Logs go to a file, as the chart's do to the node's log files.
env "${env[@]}" taskset -c 0 target/release/user-service \
  --grpc-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$((port + 1))" >"$work/log" 2>&1 &
pid=$!
pids+=("$pid")
wait_ready $((port + 1))
target/release/bench-client create --addr "127.0.0.1:$port" --email profile@example.com --name Profile \
  | python3 -c "$GET_USER_FRAME" >"$work/req"
url=http://127.0.0.1:$port/user.v1.UserService/GetUser
taskset -c 1 h2load -n 20000 -c 8 -m 32 -d "$work/req" "${H[@]}" "${auth[@]}" "$url" >/dev/null 2>&1

if [ -n "${FLAT:-}" ]; then
  perf record -q -F 3999 -p "$pid" -o "$work/perf.data" &
else
  perf record -q -F 999 --call-graph dwarf,32768 -p "$pid" -o "$work/perf.data" &
fi
perf_pid=$!
sleep 0.3
taskset -c 1 h2load -n "$N" -c 8 -m 32 -d "$work/req" "${H[@]}" "${auth[@]}" "$url" | grep -E "^finished in|^status codes"
kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
if [ -n "${FLAT:-}" ]; then
  perf report -i "$work/perf.data" --no-children --sort comm,sym --stdio 2>/dev/null \
    | grep -v '^#' | grep -v '^$' | head -"${TOP:-40}"
  exit 0
fi
mkdir -p "$(dirname "$OUT")"
perf script -i "$work/perf.data" 2>/dev/null \
  | "$python" bench/flamegraph.py -o "$OUT" --top 40 \
      --title "user-service, $MODE, GetUser under h2load -c 8 -m 32 (server on CPU 0): $(git rev-parse --short HEAD)"
echo "wrote $OUT"
