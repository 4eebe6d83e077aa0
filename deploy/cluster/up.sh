#!/usr/bin/env bash
# make cluster-up: a single-node Kubernetes on this machine with the
# working tree's image imported, left running. Each step is its own script
# (and skips work already done):
#   install-deps.sh  Debian packages (containerd, runc, CNI plugins, umoci, ...)
#   build.sh         Kubernetes, etcd, CoreDNS from the Go module proxy, cached
#   start.sh         certificates (certs.sh), daemons, node Ready
#   image.sh         user-service:dev and the helm test probe image
# The last line printed is the `export KUBECONFIG=...` to paste.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/cluster/versions.sh
source "$here/versions.sh"

phase() { # label command...
  local label=$1 start=$SECONDS; shift
  "$@"
  log "$label: $((SECONDS - start)) s"
}
phase "install-deps" "$here/install-deps.sh"
phase "build" "$here/build.sh"
phase "start" "$here/start.sh"
phase "image user-service:dev" "$here/image.sh" app
phase "image grpc-health-probe" "$here/image.sh" probe
cat >&2 <<MSG
==> cluster running; try the chart with
      helm install user-service helm/user-service --set image.repository=user-service \\
        --set image.tag=dev --set image.pullPolicy=Never \\
        --set tests.image.repository=localhost/grpc-health-probe --set tests.image.pullPolicy=Never
    and stop it with make cluster-down
MSG
echo "export KUBECONFIG=$CLUSTER_STATE/pki/admin.kubeconfig"
