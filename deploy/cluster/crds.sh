#!/usr/bin/env bash
# Applies the custom resource definitions the chart's optional objects
# need: ServiceMonitor and PrometheusRule (Prometheus Operator) and the
# standard Gateway API (GRPCRoute). The YAML comes from the projects' own Go
# modules at pinned versions (the module proxy is reachable; release
# downloads are not).
# Usage: KUBECONFIG=... crds.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=deploy/cluster/versions.sh
source "$here/versions.sh"
: "${KUBECONFIG:?set KUBECONFIG (make cluster-up prints it)}"

module_dir() { # module@version -> its directory in the module cache
  (cd "$CACHE_ROOT" && go mod download -json "$1") |
    python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(d["Error"]) if d.get("Error") else print(d["Dir"])'
}
po=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")
gw=$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
files=(
  "$po/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
  "$po/example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"
)
for f in "$gw"/config/crd/standard/gateway.networking.k8s.io_*.yaml; do
  # The ValidatingAdmissionPolicy file is not a CRD.
  case "$f" in *_vap_*) continue ;; esac
  files+=("$f")
done
args=()
for f in "${files[@]}"; do
  [ -f "$f" ] || die "$f is not in the module"
  args+=(-f "$f")
done
# Server-side: the CRDs are too large for the last-applied annotation.
"$K8S_BIN/kubectl" apply --server-side --force-conflicts "${args[@]}" >/dev/null
"$K8S_BIN/kubectl" wait --for condition=Established --timeout 60s \
  crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com \
  crd/grpcroutes.gateway.networking.k8s.io >/dev/null
log "CRDs: prometheus-operator $PROMETHEUS_OPERATOR_VERSION, gateway-api $GATEWAY_API_VERSION"
