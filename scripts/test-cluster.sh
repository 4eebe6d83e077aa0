#!/usr/bin/env bash
# The chart on a real single-node Kubernetes (deploy/cluster): start the
# cluster (make cluster-up: cached build, fresh state, the working tree's
# image), run tests/cluster with pytest, and tear the cluster down whatever
# happens (trap). Needs root; see docs/cluster.md for what each test proves.
#   scripts/test-cluster.sh [pytest args...]   e.g. -k rollout
set -euo pipefail
cd "$(dirname "$0")/.."

# pytest is pinned in the tests' own venv (scripts/install-test-deps.sh).
PYTEST="$PWD/.tools/venv/bin/pytest"
[ -x "$PYTEST" ] || { echo "ERROR: $PYTEST is missing: run scripts/install-test-deps.sh" >&2; exit 1; }
export PATH="$PWD/.tools/bin:$PATH"
for tool in helm grpcurl psql; do
  command -v "$tool" >/dev/null 2>&1 || { echo "ERROR: $tool is missing: run scripts/install-test-deps.sh" >&2; exit 1; }
done

start=$SECONDS
# Stopped on every exit, a failed test or Ctrl-C included: the signals
# become an ordinary exit, so the EXIT trap runs for them too.
trap 'deploy/cluster/stop.sh' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
kubeconfig_line=$(deploy/cluster/up.sh | tail -n 1)
export KUBECONFIG="${kubeconfig_line#export KUBECONFIG=}"
echo "==> cluster up in $((SECONDS - start)) s"

tests_start=$SECONDS
"$PYTEST" -p no:cacheprovider -v -rA tests/cluster "$@"
echo "==> cluster tests passed in $((SECONDS - tests_start)) s (with cluster start: $((SECONDS - start)) s)"
