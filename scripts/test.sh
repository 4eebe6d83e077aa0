#!/usr/bin/env bash
# The whole test suite, as CI runs it: install tools, lint, unit and
# integration tests against a throwaway PostgreSQL cluster, then the
# deployment checks (Helm chart, alert rules, dashboards), and last the
# chart on a real single-node Kubernetes (scripts/test-cluster.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each phase's line carries the seconds since the start, so a slow run's
# log says where its time went.
phase() { echo "==> [$SECONDS s] $*"; }

# Kubernetes for the last phase builds from the start, in the background at
# the lowest CPU priority: on a fresh machine its ~20 minutes of compiling
# then use the CPU the phases before leave idle (downloads, test runs)
# instead of running alone at the end. With the cache warm it is done at
# once. Its own session, so an early failure stops the whole build.
k8s_log=$(mktemp)
setsid nice -n 19 deploy/cluster/build.sh >"$k8s_log" 2>&1 &
k8s_build=$!
trap 'kill -- -"$k8s_build" 2>/dev/null || true; rm -f "$k8s_log"' EXIT

phase "install test tools"
scripts/install-test-deps.sh
export PATH="$PWD/.tools/bin:$PATH"
# One cargo target directory in the user cache for every checkout: a fresh
# clone on a machine that ran the tests before then compiles only its own
# crates, not its hundreds of dependencies three times over (clippy, the tests'
# debug build, the release build the benchmark smoke and the cluster image
# use). Cargo's fingerprints decide what is stale, so sharing it is safe;
# its lock serialises two runs at once. Everything the tests run honours
# CARGO_TARGET_DIR; set it to keep the build elsewhere.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/user-service/cargo-target}"

phase "cargo fmt --check"
cargo fmt --all -- --check

phase "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

phase "cargo deny (licences, banned crates, sources; policy in deny.toml)"
cargo deny --locked check --hide-inclusion-graph licenses bans sources

phase "architecture (dependency rules of ARCHITECTURE.md)"
scripts/check-architecture.sh

phase "contract (buf lint, buf breaking against the released user.v1)"
scripts/check-contract.sh

phase "cargo test (with a throwaway PostgreSQL cluster)"
# pg_virtualenv creates a temporary cluster, exports PGHOST/PGPORT/PGUSER/
# PGPASSWORD for it, runs the command and drops the cluster afterwards.
# USER_SERVICE_TEST_REQUIRE_DB: a PostgreSQL test that finds no PostgreSQL
# fails here (a plain `cargo test` lets it pass with a notice instead), so
# no test is skipped by the test command.
USER_SERVICE_TEST_REQUIRE_DB=1 pg_virtualenv cargo test --locked --all-targets

phase "benchmark smoke (every compared server answers, spans arrive, the report renders)"
make bench-smoke

phase "deployment checks"
scripts/test-deploy.sh

phase "waiting for the Kubernetes build (started with the run)"
if ! wait "$k8s_build"; then
  cat "$k8s_log" >&2
  echo "ERROR: deploy/cluster/build.sh failed (its output above)" >&2
  exit 1
fi
cat "$k8s_log"

phase "the chart on a local cluster (install, probes, helm test, upgrade under load, uninstall)"
# Kubernetes is built by now (above, cached in
# ${XDG_CACHE_HOME:-$HOME/.cache}/user-service); this starts, tests and
# stops the cluster.
scripts/test-cluster.sh

phase "all tests passed"
