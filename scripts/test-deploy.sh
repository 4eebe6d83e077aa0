#!/usr/bin/env bash
# Deployment checks: the Helm chart (lint, render over several value sets,
# strict Kubernetes schemas, facts about the rendered objects, values that
# must be refused), the Prometheus rules (promtool check + unit tests) and
# the Grafana dashboard. Installs pinned tools into .tools/ when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.19.0
KUBERNETES_VALIDATE_VERSION=1.37.0
KUBE_VERSION=1.30.0
TOOLS="$PWD/.tools"
CHART=helm/user-service
export PATH="$TOOLS/bin:$PATH"

log() { printf '==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

# --- tools --------------------------------------------------------------
mkdir -p "$TOOLS/bin"
if [ ! -x "$TOOLS/bin/helm" ] || [ ! -e "$TOOLS/bin/.helm-$HELM_VERSION" ]; then
  log "go install helm $HELM_VERSION"
  GOBIN="$TOOLS/bin" GOFLAGS=-mod=mod go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -f "$TOOLS/bin/.helm-"*; touch "$TOOLS/bin/.helm-$HELM_VERSION"
fi
if [ ! -x "$TOOLS/venv/bin/kubernetes-validate" ] || [ ! -e "$TOOLS/venv/.kv-$KUBERNETES_VALIDATE_VERSION" ]; then
  log "pip install kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  python3 -m venv "$TOOLS/venv"
  "$TOOLS/venv/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  touch "$TOOLS/venv/.kv-$KUBERNETES_VALIDATE_VERSION"
fi
command -v promtool >/dev/null || scripts/install-test-deps.sh
PY="$TOOLS/venv/bin/python"

# --- single sources of truth --------------------------------------------
log "chart copies of the alert rules and the dashboard are current"
cmp deploy/prometheus/alerts.yaml "$CHART/files/alerts.yaml" \
  || fail "$CHART/files/alerts.yaml differs from deploy/prometheus/alerts.yaml (cp it)"
cmp grafana/dashboards/user-service.json "$CHART/files/dashboard.json" \
  || fail "$CHART/files/dashboard.json differs from grafana/dashboards/user-service.json (cp it)"

# --- Prometheus rules ---------------------------------------------------
log "promtool check rules / test rules"
promtool check rules deploy/prometheus/alerts.yaml
(cd deploy/prometheus && promtool test rules alerts_test.yaml)

# --- dashboard ----------------------------------------------------------
log "dashboard"
"$PY" scripts/check_dashboard.py grafana/dashboards/user-service.json

# --- chart --------------------------------------------------------------
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
sets=(default "$CHART"/ci/*.yaml)
for set in "${sets[@]}"; do
  name=$(basename "$set" .yaml)
  args=()
  [ "$set" != default ] && args=(-f "$set")
  log "helm lint --strict ($name)"
  helm lint --strict "$CHART" "${args[@]}" --kube-version "$KUBE_VERSION" >/dev/null \
    || { helm lint --strict "$CHART" "${args[@]}" --kube-version "$KUBE_VERSION"; fail "lint $name"; }
  log "helm template ($name) + strict schemas for Kubernetes $KUBE_VERSION"
  helm template release "$CHART" "${args[@]}" --namespace users --kube-version "$KUBE_VERSION" >"$out/$name.yaml"
  # --quiet prints only warnings and failures. The operator and Gateway API
  # kinds have no bundled schema; check_manifests.py checks their wiring.
  "$TOOLS/venv/bin/kubernetes-validate" --strict --quiet -k "$KUBE_VERSION" "$out/$name.yaml" \
    >"$out/$name.validate" 2>&1 || true
  if grep -v "Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\|GRPCRoute\) " "$out/$name.validate" | grep -q .; then
    cat "$out/$name.validate"
    fail "schema validation of $name"
  fi
  "$PY" scripts/check_manifests.py "$name" "$out/$name.yaml" deploy/prometheus/alerts.yaml grafana/dashboards/user-service.json
done

log "values the chart must refuse"
refuse() { # description, text the error must contain, helm args...
  local what=$1 expect=$2; shift 2
  if helm template release "$CHART" --kube-version "$KUBE_VERSION" "$@" >"$out/refused" 2>&1; then
    fail "accepted: $what"
  fi
  grep -q -- "$expect" "$out/refused" || { cat "$out/refused"; fail "refused $what, but not for mentioning '$expect'"; }
  printf '    refused: %s\n' "$what"
}
refuse "an unknown top-level key" "replicas" --set replicas=3
refuse "an unknown nested key" "typo" --set service.typo=1
refuse "zero replicas" "replicaCount" --set replicaCount=0
refuse "an unknown store type" "store.type" --set store.type=mysql
refuse "a non-postgres URL" "store.postgres.url" --set store.type=postgres --set store.postgres.url=mysql://x
refuse "postgres without a URL or Secret" "existingSecret" --set store.type=postgres
refuse "several replicas on the memory store" "store.type=memory" --set replicaCount=3
refuse "a grace period shorter than drain + timeout" "terminationGracePeriodSeconds" --set terminationGracePeriodSeconds=10
refuse "a service type the chart does not support" "service.type" --set service.type=NodePort
refuse "a bad log format" "config.logFormat" --set config.logFormat=xml

log "deployment checks passed"
