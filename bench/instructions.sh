#!/usr/bin/env bash
# User-space instructions per GetUser call, counted by callgrind: a figure
# that machine noise does not move, for per-call changes too small for
# time pairs (bench/ab.sh) to see on a shared machine.
#
#   bench/instructions.sh [BINARY] [MODE...]   # modes: bare warn
#                                              # chart-no-otlp chart (bench/modes.sh)
#   AUTH=1 bench/instructions.sh target/release/user-service chart-no-otlp
#
# Each server runs under `valgrind --tool=callgrind`. 3000 calls warm it up
# (connections, caches, the method's metric handles), the counters are
# zeroed, h2load sends N more (default 20000; -c 8 -m 32, as ab.sh) and
# the counters are dumped: total instructions of every thread / N. `bare`
# is bench/bare's tonic server holding the same user.
#
# What it does not count: the kernel (syscalls, the network stack), cache
# misses and waiting, so its ratios are not CPU ratios. Under callgrind the
# server is ~50x slower, so requests queue and are read in larger batches
# than at full speed; repeat runs of one build agree within ~0.3 % on a
# quiet machine, less when other work shares it (batching follows timing).
# KEEP=DIR keeps each dump as DIR/callgrind.MODE.out, for
# `callgrind_annotate --inclusive=yes` (which function's share grew).
#
# CACHE=1 adds callgrind's cache and branch simulation (~3x slower still)
# and prints, per call, first-level instruction and data cache misses and
# mispredicted branches beside the instructions, and a cycle estimate that
# weighs them: instructions + 12 per L1 miss + 15 per misprediction (an L1
# miss that hits L2 costs ~12 cycles on current x86 cores, a mispredicted
# branch ~15). A simulated cache, not the machine's, so read it as which
# build touches more memory and code, not as a measured time.
# Needs valgrind (apt-get install valgrind) and h2load (nghttp2-client).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/user-service}
shift || true
MODES=("$@")
[ ${#MODES[@]} -gt 0 ] || MODES=(bare warn chart-no-otlp)
N=${N:-20000}
for tool in valgrind callgrind_control h2load; do
  command -v "$tool" >/dev/null || { echo "$tool missing (apt-get install valgrind nghttp2-client)" >&2; exit 2; }
done
cargo build --locked --release -q -p bench-bare
. bench/modes.sh

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
sink_port=${INSTR_SINK_PORT:-55417}
port=${INSTR_PORT:-55420}
taskset -c 1 target/release/otlp-sink --addr "127.0.0.1:$sink_port" --count-file "$work/spans.json" >/dev/null 2>&1 &
pids+=($!)
# Every server loads the same user from a seed file (store.seed_file for
# this service), so all answer the same record and no password is hashed
# under valgrind. The hash is bench.py's PHC: well-formed, of no known
# password.
phc='$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hzZWVkc2FsdDAwMA$Oq7nTWzGDMB2r8kLgYhTtBDBwJ8HqRkC1bLUyR5fqWY'
uid=0190b4d6-7f3a-7c41-9a51-1f2e3d4c5b6a
echo "{\"id\":\"$uid\",\"email\":\"instructions@example.com\",\"name\":\"Instructions\",\"password_hash\":\"$phc\"}" \
  >"$work/seed.jsonl"
echo "{\"id\":\"$uid\"}" | python3 -c "$GET_USER_FRAME" >"$work/req"

count() { # mode -> prints instructions per call
  local mode=$1 env=() auth=() cg=(valgrind --tool=callgrind "--callgrind-out-file=$work/cg.out")
  [ -z "${CACHE:-}" ] || cg+=(--cache-sim=yes --branch-sim=yes)
  port=$((port + 2))
  rm -f "$work"/cg.out*
  if [ "$mode" = bare ]; then
    taskset -c 0 "${cg[@]}" target/release/bare-tonic --addr "127.0.0.1:$port" --seed "$work/seed.jsonl" \
      >"$work/log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    for _ in $(seq 200); do
      timeout 5 h2load -n 1 -d "$work/req" "${H[@]}" "http://127.0.0.1:$port/user.v1.UserService/GetUser" 2>/dev/null \
        | grep -q "status codes: 1 2xx" && break
      sleep 0.1
    done
  else
    mode_env "$mode" "$BIN" "$sink_port"
    env+=("USER_SERVICE__STORE__SEED_FILE=$work/seed.jsonl")
    env "${env[@]}" taskset -c 0 "${cg[@]}" "$BIN" --grpc-addr "127.0.0.1:$port" --admin-addr "127.0.0.1:$((port + 1))" \
      >"$work/log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait_ready $((port + 1)) 1200
  fi
  local url=http://127.0.0.1:$port/user.v1.UserService/GetUser
  timeout 300 taskset -c 1 h2load -n 3000 -c 8 -m 32 -d "$work/req" "${H[@]}" "${auth[@]}" "$url" >/dev/null 2>&1
  callgrind_control -z "$pid" >/dev/null 2>&1
  timeout 900 taskset -c 1 h2load -n "$N" -c 8 -m 32 -d "$work/req" "${H[@]}" "${auth[@]}" "$url" >"$work/h2load" 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  grep -q "status codes: $N 2xx" "$work/h2load" || { echo "$mode: not every call answered:" >&2; cat "$work/h2load" >&2; exit 1; }
  # The dump made by `-d` (the final one at exit has the shutdown only).
  local dump
  dump=$(ls "$work"/cg.out.* 2>/dev/null | head -1)
  [ -n "$dump" ] || { echo "$mode: callgrind wrote no dump" >&2; exit 1; }
  [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$dump" "$KEEP/callgrind.$mode.out"; }
  # Per call, from the dump's event names: the instructions, and with
  # CACHE=1 the misses, mispredictions and the cycle estimate as columns.
  awk -v n="$N" -v cache="${CACHE:-}" '
    /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
    /^(summary|totals):/ {
      ir = $col["Ir"] / n
      if (!cache) { printf "%d", ir + 0.5; exit }
      i1 = $col["I1mr"] / n; d1 = ($col["D1mr"] + $col["D1mw"]) / n
      bm = ($col["Bcm"] + $col["Bim"]) / n
      printf "%d | %d | %d | %d | %d", ir + 0.5, i1 + 0.5, d1 + 0.5, bm + 0.5, ir + 12 * (i1 + d1) + 15 * bm + 0.5
      exit
    }' "$dump"
}

if [ -n "${CACHE:-}" ]; then
  echo "| mode | instructions | I1 misses | D1 misses | mispredicted | cycle estimate |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
else
  echo "| mode | instructions per call |"
  echo "| --- | ---: |"
fi
for mode in "${MODES[@]}"; do
  echo "| $mode$([ -n "${AUTH:-}" ] && [ "$mode" != bare ] && echo ' (auth)') | $(count "$mode") |"
done
