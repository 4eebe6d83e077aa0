#!/usr/bin/env bash
# Deployment tests: the Helm chart, the Prometheus rules and the Grafana
# dashboard, as pytest tests in tests/deploy/. Runs on a fresh Debian 12
# machine as root that reaches only package registries; the tools are
# installed, at pinned versions, by `scripts/install-test-deps.sh deploy`
# (helm, promtool, grpcurl, PostgreSQL, and a virtualenv with
# kubernetes-validate and pytest under .tools/).
#
# The dashboard and the rules are checked against the metric names that a
# real user-service exports on /metrics: the tests start the built binary
# (cargo builds it when there is none) on loopback ports, with a throwaway
# PostgreSQL cluster from pg_virtualenv.
#
# Usage: scripts/test-deploy.sh [PYTEST ARGS...]   e.g. -k lint, -x
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh deploy

TOOLS="$PWD/.tools"
export HELM="$TOOLS/bin/helm" GRPCURL="$TOOLS/bin/grpcurl"
PROMTOOL=$(command -v promtool)
export PROMTOOL
printf '==> tools: helm %s, %s, %s\n' "$("$HELM" version --template '{{.Version}}')" \
  "$("$TOOLS/venv/bin/kubernetes-validate" --version)" "$(promtool --version 2>&1 | head -1)"

# pg_virtualenv creates a temporary cluster, exports PGHOST/PGPORT/PGUSER/
# PGPASSWORD for it, runs the command and drops the cluster afterwards. When
# the command fails it also prints the tail of every PostgreSQL log on the
# machine, which says nothing about the chart: pytest's status is carried
# out in a file instead, so a failure shows pytest's report alone.
status=$(mktemp)
trap 'rm -f "$status"' EXIT
pg_virtualenv sh -c '"$@"; echo $? >"$0"' "$status" "$TOOLS/venv/bin/python" -m pytest tests/deploy "$@"
rc=$(cat "$status")
exit "${rc:-1}"
