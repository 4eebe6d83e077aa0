# Process bookkeeping of the local cluster (sourced): every daemon the
# cluster starts writes its PID to $CLUSTER_STATE/pids/NAME.pid, and only
# those PIDs are ever signalled.
# shellcheck shell=bash
PIDS="$CLUSTER_STATE/pids"
LOGS="$CLUSTER_STATE/logs"

# alive NAME : the recorded process is running (and is the same program)
alive() {
  local f="$PIDS/$1.pid" pid exe
  [ -s "$f" ] || return 1
  read -r pid exe <"$f"
  [ -d "/proc/$pid" ] || return 1
  # A recycled PID would point at another program.
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$exe" ]
}

# spawn NAME BINARY ARGS... : start a daemon in the background, in a
# session of its own (a Ctrl-C meant for make or the tests must not kill
# it half-way: stop.sh takes everything down in order), log to
# $LOGS/NAME.log, record its PID next to the binary's path
spawn() {
  local name=$1 bin=$2 pid i; shift 2
  mkdir -p "$PIDS" "$LOGS"
  rm -f "$PIDS/$name.pid.new"
  # The shell writes its own PID, then becomes the daemon (exec).
  # shellcheck disable=SC2016 # expanded by that shell
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$PIDS/$name.pid.new" "$bin" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
  for ((i = 0; i < 50; i++)); do
    [ -s "$PIDS/$name.pid.new" ] && break
    sleep 0.1
  done
  read -r pid <"$PIDS/$name.pid.new" || die "$name did not start"
  rm -f "$PIDS/$name.pid.new"
  printf '%s %s\n' "$pid" "$(readlink -f "$bin")" >"$PIDS/$name.pid"
}

# kill_kubepods : SIGKILL every process left in the kubelet's cgroups.
# start.sh refuses to run when a kubepods cgroup exists, so whatever is in
# them is a container of this cluster (also when containerd died first).
kill_kubepods() {
  local f pid
  for f in $(find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -name cgroup.procs 2>/dev/null); do
    while read -r pid; do
      kill -KILL "$pid" 2>/dev/null || true
    done <"$f"
  done
}

# stop_recorded NAME [SECONDS] : TERM, then KILL after SECONDS
stop_recorded() {
  local name=$1 wait=${2:-10} pid exe i
  if alive "$name"; then
    read -r pid exe <"$PIDS/$name.pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait * 10; i++)); do
      [ -d "/proc/$pid" ] || break
      sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
      log "$name ($pid) did not stop in ${wait}s: KILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.2
    fi
  fi
  rm -f "$PIDS/$name.pid"
}

# wait_for WHAT SECONDS COMMAND... : poll until COMMAND succeeds
wait_for() {
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  return 1
}
