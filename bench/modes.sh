# Sourced by bench/ab.sh, bench/profile.sh and bench/instructions.sh: how
# each benchmark mode starts this service, in one place.
#
#   mode_env MODE BINARY SINK_PORT   # sets the arrays `env` and `auth`
#
# Modes: warn (log.level=warn, no exporter), chart-no-otlp (JSON logs at
# info, as the chart writes them), chart (the same + every call exported
# to an OTLP sink on SINK_PORT, which the caller runs). AUTH=1 turns
# authentication on (an HS256 secret, as the chart does); `auth` then holds
# h2load's header with an admin token minted by BINARY's own `token`
# command, so builds of different ages compare fairly.

H=(-H 'content-type: application/grpc' -H 'te: trailers')

# GetUser's request frame for the user id in the JSON on stdin (what
# `bench-client create` prints): gRPC's 5-byte prefix + field 1.
GET_USER_FRAME='import json, sys
uid = json.load(sys.stdin)["id"].encode()
msg = b"\x0a" + bytes([len(uid)]) + uid
sys.stdout.buffer.write(b"\x00" + len(msg).to_bytes(4, "big") + msg)'

mode_env() {
  local mode=$1 bin=$2 sink_port=$3
  env=(USER_SERVICE__SHUTDOWN__DRAIN_DELAY=0s USER_SERVICE__LOG__FORMAT=json)
  auth=()
  if [ -n "${AUTH:-}" ]; then
    env+=(USER_SERVICE__AUTH__ENABLED=true USER_SERVICE__AUTH__JWT_SECRET=ab-bench-secret-ab-bench-secret-0123456789)
    auth=(-H "authorization: Bearer $(env "${env[@]}" "$bin" token --sub ab --role admin --ttl 1h)")
  fi
  case $mode in
    warn) env+=(USER_SERVICE__LOG__LEVEL=warn) ;;
    chart-no-otlp) env+=(USER_SERVICE__LOG__LEVEL=info) ;;
    chart) env+=(USER_SERVICE__LOG__LEVEL=info OTEL_TRACES_SAMPLER=parentbased_always_on
                 OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$sink_port") ;;
    *) echo "unknown mode $mode (warn, chart-no-otlp, chart)" >&2; return 2 ;;
  esac
}

# Waits until the admin port on $1 answers /readyz: at most $2 tries, 50 ms
# apart (default 100, 5 s; a server under callgrind needs more).
wait_ready() {
  for _ in $(seq "${2:-100}"); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "the server on admin port $1 never became ready" >&2
  return 1
}
