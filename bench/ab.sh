#!/usr/bin/env bash
# Side-by-side A/B of two builds of this service on GetUser: CPU µs per
# call (server on CPU 0, h2load on CPU 1), modes and builds interleaved,
# so machine noise hits both alike. Used for the before/after figures of
# each per-call optimisation in BENCHMARKS.md.
#
#   bench/ab.sh OLD_BINARY NEW_BINARY [ROUNDS]   # e.g. a saved copy of an
#                                                # older target/release/user-service
# Modes (bench/modes.sh): warn, chart-no-otlp, chart; MODES="chart" runs
# only the named ones. AUTH=1 turns authentication on and sends an admin
# token with every call.
# The user to read is created through the API, so builds from before
# store.seed_file compare too.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1; B=$2; ROUNDS=${3:-3}; N=${N:-100000}
command -v h2load >/dev/null || { echo "h2load missing: apt-get install nghttp2-client" >&2; exit 2; }
cargo build --locked --release -q -p bench-bare
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
sink_port=${AB_SINK_PORT:-54317}
taskset -c 1 target/release/otlp-sink --addr "127.0.0.1:$sink_port" --count-file "$work/spans.json" >/dev/null 2>&1 &
pids+=($!)
port=${AB_PORT:-55100}
. bench/modes.sh
one() { # binary mode -> prints CPU µs per call
  local bin=$1 mode=$2; port=$((port + 2))
  local env auth
  mode_env "$mode" "$bin" "$sink_port"
  env "${env[@]}" taskset -c 0 "$bin" --grpc-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$((port + 1))" >"$work/log" 2>&1 &
  local pid=$!
  wait_ready $((port + 1))
  target/release/bench-client create --addr "127.0.0.1:$port" --email "ab$port@example.com" --name AB \
    | python3 -c "$GET_USER_FRAME" >"$work/req"
  local url=http://127.0.0.1:$port/user.v1.UserService/GetUser
  timeout 60 taskset -c 1 h2load -n 20000 -c 8 -m 32 -d "$work/req" "${H[@]}" "${auth[@]}" "$url" >/dev/null 2>&1
  local t0 t1; t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  timeout 120 taskset -c 1 h2load -n "$N" -c 8 -m 32 -d "$work/req" "${H[@]}" "${auth[@]}" "$url" >"$work/h2load" 2>&1
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  grep -q "status codes: $N 2xx" "$work/h2load" || { echo "not every call answered:" >&2; cat "$work/h2load" >&2; exit 1; }
  python3 -c "print('%.1f' % (($t1 - $t0) / $(getconf CLK_TCK) * 1e6 / $N))"
}
echo "| round | mode | A µs/call | B µs/call | B/A |"
echo "| ---: | --- | ---: | ---: | ---: |"
for r in $(seq "$ROUNDS"); do
  for mode in ${MODES:-warn chart-no-otlp chart}; do
    # Which build goes first alternates by round, so a drift in the
    # machine's speed does not always favour the same one.
    if [ $((r % 2)) = 1 ]; then a=$(one "$A" "$mode"); b=$(one "$B" "$mode")
    else b=$(one "$B" "$mode"); a=$(one "$A" "$mode"); fi
    echo "| $r | $mode | $a | $b | $(python3 -c "print('%.2f' % ($b / $a))") |"
  done
done
