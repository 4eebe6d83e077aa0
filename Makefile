# The two commands a newcomer needs:
#   cargo run --release     run the service (in-memory store, ports 50051/8080)
#   make test               install test tools and run every test
.PHONY: run test lint fmt build release bench clean-tools

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
	cargo clippy --locked --all-targets -- -D warnings

fmt:
	cargo fmt --all

bench:
	bench/run.sh

clean-tools:
	rm -rf .tools
