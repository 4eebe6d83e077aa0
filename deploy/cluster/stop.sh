#!/usr/bin/env bash
# Tears the local cluster down: the containers (through our own
# containerd), the daemons by their recorded PIDs, kube-proxy's iptables
# chains, the mounts and network namespaces under the state directory, the
# bridge, the kubelet's cgroups, and the host settings start.sh changed.
# Idempotent: with nothing running it only tidies what is left.
# Logs stay in $CLUSTER_STATE/logs for a post-mortem.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/cluster/versions.sh
source "$here/versions.sh"
# shellcheck source=deploy/cluster/network.sh
source "$here/network.sh"
# shellcheck source=deploy/cluster/proc.sh
source "$here/proc.sh"

S="$CLUSTER_STATE"
[ -d "$S" ] || exit 0
CONTAINERD_SOCK="$S/containerd/containerd.sock"

# 1. No more restarts: the kubelet goes first.
stop_recorded kubelet 15

# 2. Every container of our containerd (its socket is ours alone).
if alive containerd; then
  for ns in k8s.io default; do
    ctr_=(ctr --address "$CONTAINERD_SOCK" -n "$ns")
    for t in $("${ctr_[@]}" tasks ls -q 2>/dev/null); do
      "${ctr_[@]}" tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for t in $("${ctr_[@]}" tasks ls -q 2>/dev/null); do
      "${ctr_[@]}" tasks delete -f "$t" >/dev/null 2>&1 || true
    done
    for c in $("${ctr_[@]}" containers ls -q 2>/dev/null); do
      "${ctr_[@]}" containers delete "$c" >/dev/null 2>&1 || true
    done
  done
fi
# The runc shims of our containerd name its socket on their command line;
# any still alive (containerd gone first, say) are ours to stop.
for p in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
  case "$cmd" in
    *containerd-shim*"-address $CONTAINERD_SOCK "*) kill -KILL "${p#/proc/}" 2>/dev/null || true ;;
  esac
done

# Anything still in the kubelet's cgroups (containerd gone before its
# containers, say).
kill_kubepods
sleep 0.5

# 3. The daemons, last started first.
for d in coredns kube-proxy containerd kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop_recorded "$d" 15
done

# 4. iptables: kube-proxy removes its own chains; the kubelet's
# (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) and anything
# kube-proxy left go here. start.sh refuses to run while any KUBE-* chain
# exists, so every KUBE-* chain now is this cluster's.
if [ -x "$K8S_BIN/kube-proxy" ] && [ -e "$S/kube-proxy.yaml" ]; then
  "$K8S_BIN/kube-proxy" --cleanup >>"$LOGS/kube-proxy-cleanup.log" 2>&1 || log "kube-proxy --cleanup failed (see $LOGS/kube-proxy-cleanup.log)"
fi
if [ -e "$S/iptables.ours" ]; then
  for ipt in iptables ip6tables; do
    for table in filter nat mangle; do
      rules=$("$ipt-save" -t "$table" 2>/dev/null) || continue
      # Jumps from the built-in chains into ours, then our chains.
      { grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' <<<"$rules" || true; } | while read -r _ rule; do
        # shellcheck disable=SC2086 # the rule's words, as iptables-save printed them
        eval "$ipt -t $table -D $rule" 2>/dev/null || true
      done
      chains=$(sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p' <<<"$rules")
      for c in $chains; do "$ipt" -t "$table" -F "$c" 2>/dev/null || true; done
      for c in $chains; do "$ipt" -t "$table" -X "$c" 2>/dev/null || log "could not delete $ipt $table $c"; done
    done
  done
  rm -f "$S/iptables.ours"
fi

# 5. Mounts under the state directory (overlay rootfs, shm, secrets,
# network namespaces), deepest first.
mapfile -t mounts < <(awk -v s="$S/" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
for m in "${mounts[@]}"; do
  umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
done

# 6. The bridge (veths went with their namespaces).
if [ -e "$S/bridge.created" ] && ip link show "$BRIDGE" >/dev/null 2>&1; then
  ip link delete "$BRIDGE"
fi
rm -f "$S/bridge.created"

# 7. The kubelet's cgroups (cgroupfs driver: kubepods in each hierarchy),
# deepest first. They are empty once the containers are gone.
kill_kubepods
sleep 0.5
for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
  [ -d "${root}kubepods" ] || continue
  find "${root}kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  [ -d "${root}kubepods" ] && log "could not remove ${root}kubepods (processes left in it?)"
done

# 8. Host settings back as they were.
if [ -e "$S/sysctls.saved" ]; then
  while read -r k v; do
    echo "$v" >"/proc/sys/$k" 2>/dev/null || log "could not restore $k"
  done <"$S/sysctls.saved"
  rm -f "$S/sysctls.saved"
fi

# 9. Data goes; logs stay for a look after a failed run.
rm -rf "$S"/{etcd,containerd,cni,kubelet,pod-logs,pids,coredns,pki} "$S/kube-proxy.yaml"
log "cluster stopped (logs in $LOGS)"
