#!/usr/bin/env bash
# Installs what the local cluster needs from Debian 12 (as root), and
# nothing when it is already there: the container runtime (containerd,
# runc), the CNI plugins, umoci for the images, iptables and conntrack for
# kube-proxy. Versions are pinned by the Debian release. Package scripts
# must not start daemons: the cluster starts its own containerd.
set -euo pipefail
# shellcheck source=scripts/lib/apt.sh
source "$(cd "$(dirname "$0")/../.." && pwd)/scripts/lib/apt.sh"

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
  apt_install_quietly "${need[@]}"
  # Keep Debian's containerd service off at boot; ours runs with its own
  # config and state directories.
  disable_at_boot containerd
fi
for pkg in "${!probe[@]}"; do
  [ -e "${probe[$pkg]}" ] || { echo "ERROR: $pkg is installed but ${probe[$pkg]} is missing" >&2; exit 1; }
done
