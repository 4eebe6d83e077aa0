#!/usr/bin/env bash
# Installs what the local cluster needs from Debian 12 (as root), and
# nothing when it is already there: the container runtime (containerd,
# runc), the CNI plugins, umoci for the images, iptables and conntrack for
# kube-proxy. Versions are pinned by the Debian release. Package scripts
# must not start daemons: the cluster starts its own containerd.
set -euo pipefail

# package -> a file it installs
declare -A probe=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [umoci]=/usr/bin/umoci
  [iptables]=/usr/sbin/iptables
  [conntrack]=/usr/sbin/conntrack
  [iproute2]=/usr/sbin/ip
)
need=()
for pkg in "${!probe[@]}"; do
  [ -e "${probe[$pkg]}" ] || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "ERROR: installing ${need[*]} needs root" >&2; exit 1; }
  printf '==> apt-get install %s\n' "${need[*]}" >&2
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
  # Keep Debian's containerd service off at boot; ours runs with its own
  # config and state directories.
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable containerd >/dev/null 2>&1 || true
  fi
fi
for pkg in "${!probe[@]}"; do
  [ -e "${probe[$pkg]}" ] || { echo "ERROR: $pkg is installed but ${probe[$pkg]} is missing" >&2; exit 1; }
done
