# shellcheck shell=bash
# Sourced by the install scripts: Debian packages installed without
# starting their daemons. Package scripts would otherwise start PostgreSQL,
# Prometheus or containerd with the distribution's config, while the tests
# start their own instances (free loopback ports, private state
# directories). Nothing already running is stopped.

# apt_install_quietly PKG...: apt-get install with invoke-rc.d refusing
# every start (policy-rc.d exit 101), then the services kept off at boot.
apt_install_quietly() {
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  [ "$created_policy" = 1 ] && rm -f "$policy"
  return 0
}

# disable_at_boot SERVICE: whichever init the machine has.
disable_at_boot() {
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable "$1" >/dev/null 2>&1 || true
  elif command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d "$1" disable >/dev/null 2>&1 || true
  fi
}
