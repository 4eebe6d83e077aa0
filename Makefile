# The two commands a newcomer needs:
#   cargo run --release     run the service (in-memory store, ports 50051/8080)
#   make test               install test tools and run every test
.PHONY: run test lint fmt build release fuzz bench bench-smoke bench-ghz profile clean-tools proto-release soak overload cluster-up cluster-down test-cluster

run:
	cargo run --release

test:
	scripts/test.sh

build:
	cargo build --locked

release:
	cargo build --locked --release

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

# The cargo-fuzz targets (fuzz/, RELIABILITY.md "Fuzzing"), each for
# FUZZ_SECONDS (default 60); fails if any crashes. Needs the nightly
# toolchain; installs cargo-fuzz into the user cache. Not part of make test.
fuzz:
	FUZZ_SECONDS=$(or $(FUZZ_SECONDS),60) fuzz/run.sh

# The comparison harness (bench/README.md): rewrites the generated section
# of BENCHMARKS.md and bench/results/. BENCH_ARGS=--rounds 5 for more rounds.
bench:
	BENCH_COMMAND='make bench$(if $(BENCH_ARGS), BENCH_ARGS="$(BENCH_ARGS)")' python3 bench/bench.py $(BENCH_ARGS)

# Every benchmarked server starts and answers, traces arrive, the report
# renders (into a temporary directory). Checks, not speeds.
bench-smoke:
	BENCH_COMMAND="make bench-smoke" python3 bench/bench.py --smoke

# A flame graph of the server under GetUser load (bench/profile.sh):
# bench/results/flamegraph-$(PROFILE_MODE).png. Needs perf.
profile:
	bench/profile.sh $(or $(PROFILE_MODE),chart)

# Ten minutes per store (memory, PostgreSQL) at half of the measured
# GetUser capacity: RSS and open fds must stay flat (bench/soak.py; the
# latest figures are in RELIABILITY.md). SOAK_ARGS="--minutes 2" to shorten.
soak:
	pg_virtualenv -t python3 bench/soak.py $(SOAK_ARGS)

# The release build with grpc.max_concurrent_requests set (512, the chart's
# value for one CPU, and a small one), open-loop at twice its GetUser and
# its CreateUser capacity: accepted and refused calls' latency, RSS, health;
# then 50 connections x 1000 open WatchUsers streams (bench/overload.py;
# the latest figures are in RELIABILITY.md). OVERLOAD_ARGS="--limits 32".
overload:
	python3 bench/overload.py $(OVERLOAD_ARGS)

# The older ghz scenarios against this service alone (CreateUser, health).
bench-ghz:
	bench/run.sh

# Record proto/ as the released user.v1 contract that `buf breaking`
# (scripts/check-contract.sh) compares against. Run when releasing.
proto-release:
	.tools/bin/buf build -o proto/released/user-v1.binpb

clean-tools:
	rm -rf .tools

# A single-node Kubernetes on this machine (root; deploy/cluster/,
# docs/cluster.md): built once into ${XDG_CACHE_HOME:-$$HOME/.cache}/user-service,
# left running with the working tree's image as user-service:dev. The last
# line printed is the export KUBECONFIG=... to use.
cluster-up:
	deploy/cluster/up.sh

cluster-down:
	deploy/cluster/stop.sh

# The chart on that cluster (tests/cluster): cluster-up, the tests, and
# cluster-down whatever happens. Part of make test.
test-cluster:
	scripts/test-cluster.sh
