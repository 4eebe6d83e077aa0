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

phase "install test tools"
scripts/install-test-deps.sh
export PATH="$PWD/.tools/bin:$PATH"

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

phase "the chart on a local cluster (install, probes, helm test, upgrade under load, uninstall)"
# Builds Kubernetes once into ${XDG_CACHE_HOME:-$HOME/.cache}/user-service
# (~20 min cold on 2 cores), then starts, tests and stops the cluster.
scripts/test-cluster.sh

phase "all tests passed"
