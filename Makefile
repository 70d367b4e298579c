# DKV — see README.md.
#   make demo            local cluster doing real work, then stops it (KEEP=1 keeps its logs)
#   make demo-ha         the same over the HA registry (3 etcd members, 2 servers): kills a server, then the coordinator (KEEP=1 too)
#   make ha-bench        HA registry figures, median / max over RUNS fresh clusters (default 5)
#   make test            fmt check, clippy, every test; ends naming every skipped test (CI=true: a missing tool fails)
#   make run-server      server from config.json
#   make run-node        a node on an ephemeral loopback port (ADDR=host:port to pick)
#   make run-client      scripted demo client against the server (ADDR=server to pick)

CARGO   ?= cargo
CONFIG  ?= config.json
# Where cargo puts the release binaries (CARGO_TARGET_DIR, if set).
BIN     := $(or $(CARGO_TARGET_DIR),target)/release
# The server address from config.json (server-ip-port), overridable. It may be a
# comma-separated list of servers (quoted below, so spaces after commas work).
SERVER  ?= $(shell sed -n 's/.*"server-ip-port" *: *"\([^"]*\)".*/\1/p' $(CONFIG) 2>/dev/null | head -n1)
ifeq ($(SERVER),)
SERVER  := 127.0.0.1:12345
endif

.PHONY: rolling-restart fetch build run-server run-node run-client demo demo-ha ha-bench test clean failover-bench soak durability-bench sim chaos bench-compare bench fuzz

build: fetch
	$(CARGO) build --release --bins

run-server: build
	$(BIN)/dkv-server -c $(CONFIG)

run-node: build
	$(BIN)/dkv-node "$(SERVER)" -c $(CONFIG) --listen $(or $(ADDR),127.0.0.1:0)

run-client: build
	$(BIN)/dkv-client demo "$(or $(ADDR),$(SERVER))"

# KEEP=1 keeps the processes' logs (and etcd's data) and says where.
demo: build
	BIN="$(BIN)" bash scripts/demo.sh

demo-ha: build
	BIN="$(BIN)" bash scripts/demo-ha.sh

# Server kill, failover with a server down, etcd leader kill, standalone
# server restart and the throughput cost of HA, each run on fresh clusters.
ha-bench: build
	RUNS=$(or $(RUNS),5) bash scripts/ha-bench.sh

# Crates come from crates.io the first time (or after Cargo.lock changed),
# for this machine's target only; afterwards the local cache is enough and
# this step is silent and offline. If the download fails, the build goes on
# and names what it misses.
fetch:
	@host="$$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"; \
	target="$${host:+--target $$host}"; \
	$(CARGO) fetch --offline $$target >/dev/null 2>&1 || { \
		echo "fetching crates from crates.io (first run only; later runs work offline)..."; \
		$(CARGO) fetch $$target || echo "cargo fetch failed; building with the crates already here"; }

# Tests that lack a prerequisite (a tool, root) fail under CI=true and are
# skipped otherwise; each skip is recorded under the target directory
# (tests/common/skip.rs) and the last line names every skipped test and why,
# also when tests failed.
test: fetch
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	@skips="$$($(CARGO) metadata --format-version 1 --no-deps --offline 2>/dev/null \
		| sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"; \
	skips="$${skips:-$(CURDIR)/target}/test-skips"; \
	rm -rf "$$skips"; mkdir -p "$$skips"; export DKV_TEST_SKIPS="$$skips"; \
	status=0; \
	if command -v npm >/dev/null 2>&1 && [ ! -d tests/js/node_modules ]; then \
		echo "npm ci --prefix tests/js (ioredis for the Sentinel test; first run only)"; \
		npm ci --prefix tests/js --no-audit --no-fund --loglevel=error || true; \
	fi; \
	echo "$(CARGO) test --doc"; $(CARGO) test --doc || status=1; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		echo "$(CARGO) nextest run --no-fail-fast"; $(CARGO) nextest run --no-fail-fast || status=1; \
	else \
		echo "$(CARGO) test --no-fail-fast"; $(CARGO) test --no-fail-fast || status=1; \
	fi; \
	bash scripts/test-skips.sh "$$skips"; \
	exit $$status

clean:
	$(CARGO) clean

# Failover time over RUNS kill -9 runs with default settings.
failover-bench: build
	RUNS=$(or $(RUNS),10) bash scripts/failover-bench.sh

# Every node restarted in turn (SIGTERM, restart on its data directory) under
# a write loop, RUNS times; fails on a write lost, failed or of unknown outcome.
rolling-restart: build
	RUNS=$(or $(RUNS),3) bash scripts/rolling-restart.sh

# Saturating write load; fails on a false failover. DURATION in s, CLIENTS writers.
soak: build
	DURATION=$(or $(DURATION),60) CLIENTS=$(or $(CLIENTS),32) bash scripts/soak.sh

# Restart / catch-up times for KEYS keys and write throughput per fsync policy.
durability-bench: build
	KEYS=$(or $(KEYS),1000000) bash scripts/durability-bench.sh

# Deterministic simulation: SEED=n replays one seed (with TRACE=1 printing
# every event); SEEDS=N runs seeds 1..N (FIRST=m: m..N; odd seeds with three servers over a
# shared store, even seeds with one). make test runs 40.
sim:
	DKV_SIM_SEED=$(SEED) DKV_SIM_SEEDS=$(or $(SEEDS),200) DKV_SIM_FIRST=$(FIRST) DKV_SIM_TRACE=$(TRACE) \
		$(CARGO) test --release --lib sim::tests::simulated -- --nocapture

# Chaos against real processes in network namespaces (root): the HA registry
# (2 servers over 3 etcd members) and the standalone server, one after the
# other. DURATION in s, each; SEED picks the nemesis schedule. Namespaces are
# removed on exit and Ctrl-C.
chaos:
	@tag=$$(( $$$$ % 10000 )); \
	trap 'for ns in $$(ip netns list | grep -o "^dkv$${tag}[a-z0-9]*"); do ip netns del $$ns; done; \
	      for l in $$(ip -o link | grep -o "dkv$${tag}[a-z0-9]*" | sort -u); do ip link del $$l 2>/dev/null; done' EXIT HUP INT TERM; \
	DKV_CHAOS_TAG=$$tag DKV_CHAOS_SECONDS=$(or $(DURATION),60) DKV_CHAOS_SEED=$(SEED) \
		$(CARGO) test --release --test chaos -- --nocapture --test-threads=1

# DKV, Redis (primary + 2 replicas) and etcd (3 members) side by side.
bench-compare: build
	DURATION=$(or $(DURATION),5) MEMKEYS=$(or $(MEMKEYS),1000000) bash scripts/bench-compare.sh

# The standard matrix on a local 3-node cluster; writes bench/results-<date>.json.
bench: build
	DURATION=$(or $(DURATION),5) bash scripts/bench.sh

# Fuzzes every decoder for SECONDS each (cargo-fuzz/libFuzzer on stable Rust,
# --sanitizer none); fails if any target crashes, hangs or runs out of memory.
# Seeds: fuzz/corpus/<target> and fuzz/regressions/<target> (kept crashes,
# replayed first); new inputs: fuzz/work/<target>; crashes:
# fuzz/artifacts/<target>; logs: fuzz/logs/; dictionaries: fuzz/dict/. See
# fuzz/README.md. JOBS: build parallelism (default 1).
FUZZ_TARGETS ?= frames resp beacon record config
FUZZ_FLAGS   := --sanitizer none --debug-assertions
fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install --locked --version '^0.13' cargo-fuzz
	cd fuzz && CARGO_BUILD_JOBS=$(or $(JOBS),1) $(CARGO) fuzz build $(FUZZ_FLAGS)
	@cd fuzz && failed=""; \
	for t in $(FUZZ_TARGETS); do \
		mkdir -p work/$$t artifacts/$$t logs; \
		echo "== fuzz $$t for $(or $(SECONDS),60) s"; \
		dict=""; if [ -f dict/$$t.dict ]; then dict="-dict=dict/$$t.dict"; fi; \
		seeds="corpus/$$t"; if [ -d regressions/$$t ]; then seeds="$$seeds regressions/$$t"; fi; \
		if ! CARGO_BUILD_JOBS=$(or $(JOBS),1) $(CARGO) fuzz run $(FUZZ_FLAGS) $$t work/$$t $$seeds -- \
			-max_total_time=$(or $(SECONDS),60) -timeout=10 -rss_limit_mb=2048 $$dict \
			-print_final_stats=1 >logs/$$t.txt 2>&1; then \
			failed="$$failed $$t"; tail -n 40 logs/$$t.txt; \
		fi; \
		grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' logs/$$t.txt || true; \
	done; \
	if [ -n "$$failed" ]; then \
		echo "fuzz: crash in:$$failed (inputs under fuzz/artifacts/, logs in fuzz/logs/)" >&2; exit 1; \
	fi; \
	echo "fuzz: no crash in $(FUZZ_TARGETS)"
