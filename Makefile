# Galaxy Forge: the two commands of the README (`make run`, `make test`)
# install what is missing, build and run. `make bench` prints the benchmarks.

SHELL := /bin/bash
CARGO ?= cargo
DATA_DIR ?= data/demo
# Debian/Ubuntu packages needed to build: a C compiler for bundled SQLite.
APT_BUILD := build-essential pkg-config

.PHONY: run test bench deps pg-deps fmt clippy

deps:
	@missing=""; \
	for p in $(APT_BUILD); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup) first"; exit 1; }

# PostgreSQL server binaries (initdb, pg_ctl) for the PostgreSQL tests and
# benchmark, which start a throwaway cluster of their own; installed only
# when none is found.
pg-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing: postgresql"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql; }

run: deps
	$(CARGO) build --release -p galaxy --bin galaxy-demo
	./target/release/galaxy-demo --data-dir $(DATA_DIR)

test: deps pg-deps
	$(CARGO) test --workspace --all-targets

bench: deps
	$(CARGO) build --release -p galaxy --bin galaxy-bench
	./target/release/galaxy-bench

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets
