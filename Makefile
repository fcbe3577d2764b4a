# pgshift: the entry points for people and CI.
#   make demo   a throwaway Postgres, a sample schema, traffic on old and new versions, a migration
#   make test   unit and integration tests against a real PostgreSQL 15 (started by the tests)
#   make bench  benchmarks, written to docs/benchmarks.md
#   make lint   rustfmt and clippy, warnings as errors
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build release deps test lint fmt demo bench clean

all: build

deps:
	@tests/support/deps.sh

build:
	$(CARGO) build

release:
	$(CARGO) build --release

test: deps
	$(CARGO) test --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

demo: deps release
	@tests/demo/demo.sh

bench: deps release
	@tests/support/deps.sh bench
	@tests/bench/backfill.sh
	@tests/bench/proxy.sh
	@tests/bench/daemon.sh
	@tests/bench/constraints.sh
	@tests/bench/copier_share.sh

clean:
	$(CARGO) clean
