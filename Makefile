# Galaxy Forge: the two commands of the README (`make run`, `make test`)
# install what is missing, build and run. `make bench` prints the benchmarks.

SHELL := /bin/bash
CARGO ?= cargo
DATA_DIR ?= data/demo
# Debian/Ubuntu packages needed to build: a C compiler for bundled SQLite;
# WebKitGTK and friends for the Tauri desktop app (src-tauri).
APT_BUILD := build-essential pkg-config libssl-dev file libwebkit2gtk-4.1-dev libgtk-3-dev librsvg2-dev libayatana-appindicator3-dev libxdo-dev
# ...and to test it in a real window without a screen.
APT_TEST := xvfb xauth webkit2gtk-driver imagemagick python3-pip rpm desktop-file-utils
TAURI_DRIVER_VERSION := 2.1.0

.PHONY: run test bench deps pg-deps fmt clippy demo screenshot tauri-driver test-clients node tauri-cli package test-package

deps:
	@missing=""; \
	for p in $(APT_BUILD) $(APT_TEST); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install the Rust toolchain (rustup) first"; exit 1; }

# PostgreSQL server binaries (initdb, pg_ctl) for the PostgreSQL tests and
# benchmark, which start a throwaway cluster of their own; installed only
# when none is found.
pg-deps:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing: postgresql"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# The backend on 127.0.0.1:7071 (data in data/cloud) and the desktop app.
# Without a display the backend runs in the foreground and one line says
# how to see the app.
CLOUD_LISTEN ?= 127.0.0.1:7071
CLOUD_DATA_DIR ?= data/cloud

run: deps
	$(CARGO) build --release -p galaxy-desktop -p galaxy-forge --bin galaxy-desktop --bin galaxy-cloud
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then \
	  ./target/release/galaxy-cloud --listen $(CLOUD_LISTEN) --data-dir $(CLOUD_DATA_DIR) & cloud=$$!; \
	  trap 'kill $$cloud 2>/dev/null; wait $$cloud 2>/dev/null' EXIT INT TERM; \
	  ./target/release/galaxy-desktop; \
	else \
	  echo "No display here: the backend runs below on http://$(CLOUD_LISTEN); to see the app, run 'make screenshot' (it opens the app under Xvfb and saves target/screenshots/run.png) or run 'make run' in a desktop session."; \
	  exec ./target/release/galaxy-cloud --listen $(CLOUD_LISTEN) --data-dir $(CLOUD_DATA_DIR); \
	fi

screenshot: deps
	$(CARGO) build --release -p galaxy-desktop
	scripts/desktop-screenshot.sh target/release/galaxy-desktop target/screenshots/run.png

demo: deps
	$(CARGO) build --release -p galaxy --bin galaxy-demo
	./target/release/galaxy-demo --data-dir $(DATA_DIR)

# The pinned version: another one (an older install) is replaced.
tauri-driver:
	@$(CARGO) install --list | grep -q '^tauri-driver v$(TAURI_DRIVER_VERSION):' || { \
	  echo "installing: tauri-driver $(TAURI_DRIVER_VERSION)"; \
	  $(CARGO) install tauri-driver --version $(TAURI_DRIVER_VERSION) --locked; }

# The official clients some tests drive, pinned, installed into target/
# (never system-wide): the Azure Event Grid publisher SDKs for Python and
# JavaScript, the Durable Functions library for Node.js (its client), and
# the schemathesis fuzzer that checks the OpenAPI document against the
# server (in a folder of its own: its dependencies are its own).
PY_CLIENTS := target/test-clients/python
FUZZER := target/test-clients/schemathesis
SCHEMATHESIS_VERSION := 4.32.5
NODE_CLIENTS := target/test-clients/node
EVENTGRID_SDK_VERSION := 4.22.0
EVENTGRID_JS_VERSION := 5.12.0
DURABLE_FUNCTIONS_JS_VERSION := 3.5.0
test-clients: node
	@[ -d $(PY_CLIENTS)/azure/eventgrid ] && grep -q "^Version: $(EVENTGRID_SDK_VERSION)$$" $(PY_CLIENTS)/azure_eventgrid-*.dist-info/METADATA 2>/dev/null || { \
	  echo "installing: azure-eventgrid $(EVENTGRID_SDK_VERSION) into $(PY_CLIENTS)"; \
	  python3 -m pip install --quiet --disable-pip-version-check --upgrade --target $(PY_CLIENTS) azure-eventgrid==$(EVENTGRID_SDK_VERSION); }
	@grep -q "^Version: $(SCHEMATHESIS_VERSION)$$" $(FUZZER)/schemathesis-*.dist-info/METADATA 2>/dev/null || { \
	  echo "installing: schemathesis $(SCHEMATHESIS_VERSION) into $(FUZZER)"; \
	  rm -rf $(FUZZER); \
	  python3 -m pip install --quiet --disable-pip-version-check --target $(FUZZER) schemathesis==$(SCHEMATHESIS_VERSION); }
	@grep -q '"version": "$(EVENTGRID_JS_VERSION)"' $(NODE_CLIENTS)/node_modules/@azure/eventgrid/package.json 2>/dev/null || { \
	  echo "installing: @azure/eventgrid $(EVENTGRID_JS_VERSION) into $(NODE_CLIENTS)"; \
	  mkdir -p $(NODE_CLIENTS) && npm install --prefix $(NODE_CLIENTS) --no-audit --no-fund --silent @azure/eventgrid@$(EVENTGRID_JS_VERSION); }
	@grep -q '"version": "$(DURABLE_FUNCTIONS_JS_VERSION)"' $(NODE_CLIENTS)/node_modules/durable-functions/package.json 2>/dev/null || { \
	  echo "installing: durable-functions $(DURABLE_FUNCTIONS_JS_VERSION) into $(NODE_CLIENTS)"; \
	  mkdir -p $(NODE_CLIENTS) && npm install --prefix $(NODE_CLIENTS) --no-audit --no-fund --silent durable-functions@$(DURABLE_FUNCTIONS_JS_VERSION); }

# The pinned JavaScript clients' dependencies (@azure/core-*, @azure/functions)
# declare Node.js >= 20 (some distributions ship 18): an older one is
# named, not silently used.
NODE_MIN := 20
node:
	@command -v npm >/dev/null || { \
	  echo "installing: nodejs npm"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	@v=$$(node --version 2>/dev/null | sed 's/^v//; s/\..*//'); \
	[ -n "$$v" ] && [ "$$v" -ge $(NODE_MIN) ] || \
	  echo "warning: Node.js $$(node --version 2>/dev/null || echo missing) found; the pinned JavaScript clients' dependencies (tests/durable_client.rs, tests/events.rs) declare >= $(NODE_MIN): if they fail, install Node.js $(NODE_MIN) or newer"

# Tauri's CLI (its bundler makes the .deb and .rpm): the npm package ships
# it prebuilt, pinned, installed into target/tools (never system-wide).
TAURI_CLI_VERSION := 2.12.5
TAURI_CLI_DIR := target/tools/tauri-cli
TAURI := $(CURDIR)/$(TAURI_CLI_DIR)/node_modules/.bin/tauri
tauri-cli: node
	@grep -q '"version": "$(TAURI_CLI_VERSION)"' $(TAURI_CLI_DIR)/node_modules/@tauri-apps/cli/package.json 2>/dev/null || { \
	  echo "installing: @tauri-apps/cli $(TAURI_CLI_VERSION) into $(TAURI_CLI_DIR)"; \
	  mkdir -p $(TAURI_CLI_DIR) && npm install --prefix $(TAURI_CLI_DIR) --no-audit --no-fund --silent @tauri-apps/cli@$(TAURI_CLI_VERSION); }

# The packages players install: target/release/bundle/{deb,rpm}/.
package: deps tauri-cli
	cd src-tauri && $(TAURI) build --bundles deb,rpm
	@ls -l target/release/bundle/deb/*.deb target/release/bundle/rpm/*.rpm

# The same packages from a debug build (it shares the test build's
# dependencies): src-tauri/tests/package.rs installs and drives them. The
# same cargo run builds the empty-window fixture the desktop benchmark
# compares against (its smoke run is part of the tests), which
# `cargo test` itself would only build as a test harness.
test-package: deps tauri-cli
	cd src-tauri && $(TEST_ENV) $(TAURI) build --debug --bundles deb,rpm -- -p galaxy-desktop -p tauri-empty-window

# On CI (a clean clone, built once) incremental compilation only costs disk.
TEST_ENV := $(if $(CI),CARGO_INCREMENTAL=0,)
test: deps pg-deps tauri-driver test-clients test-package
	@df -h . | awk 'NR==2 {print "disk: " $$4 " free where the build runs"}'
	$(TEST_ENV) $(CARGO) test --workspace --all-targets

bench: deps pg-deps tauri-driver
	$(CARGO) build --release -p galaxy --bin galaxy-bench
	./target/release/galaxy-bench
	$(CARGO) build --release -p cloud --bin galaxy-cloud-bench
	./target/release/galaxy-cloud-bench
	$(CARGO) build --release --bin galaxy-cloud --bin galaxy-pg-bench
	./target/release/galaxy-pg-bench
	$(CARGO) build --release --bin galaxy-cloud --bin galaxy-sync-bench
	./target/release/galaxy-sync-bench
	$(CARGO) build --release --bin galaxy-cloud --bin galaxy-events-bench
	./target/release/galaxy-events-bench
	$(CARGO) build --release --bin galaxy-cloud --bin galaxy-conn-bench
	./target/release/galaxy-conn-bench
	$(MAKE) package
	$(CARGO) build --release -p tauri-empty-window
	$(CARGO) bench -p galaxy-desktop --bench desktop

fmt:
	$(CARGO) fmt --all

clippy:
	$(CARGO) clippy --workspace --all-targets
