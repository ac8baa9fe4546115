# The two commands a newcomer needs: `make run` and `make test`. Everything they depend on is
# installed on first use (Debian packages via apt-get, the broker and mongod into
# ~/.cache/eventpipe); see README.md.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
STACK := target/debug/stack
PIPELINECTL := target/debug/pipelinectl

# `make run` uses the default ports and a durable (sqlite) broker; `make test` a second stack
# on ports shifted by 100 with an in-memory broker, so both can run side by side.
RUN_STACK := --name default
TEST_STACK := --name test --port-offset 100 --storage memory

# Build dependencies of the -sys crates (bundled librdkafka with TLS/zstd, aws-lc) and the
# Redis Cluster nodes.
DEBIAN_PACKAGES := pkg-config libssl-dev zlib1g-dev libzstd-dev cmake redis-server redis-tools

BINARIES := ingest-writer audit-writer aggregator cache-updater

.PHONY: deps build run test stack-up stack-down stack-status test-stack-up test-stack-down \
        lint schemas-check chaos chaos-ci chaos-stack-up bench bench-runtime bench-ingest bench-cache bench-aggregate

deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	  done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

build: deps
	$(CARGO) build --workspace --bins

stack-up: build
	$(STACK) up $(RUN_STACK) > target/stack.env
	@cat target/stack.env

stack-down:
	$(STACK) down $(RUN_STACK)

stack-status:
	$(STACK) status $(RUN_STACK)

test-stack-up: build
	$(STACK) up $(TEST_STACK) > target/test-stack.env

test-stack-down:
	$(STACK) down --name test

# Unit tests, the integration tests against the real local stack, then a CI-sized chaos run
# (its own stack: a durable broker is restarted) judged by `pipelinectl verify`.
test: test-stack-up
	set -a; source target/test-stack.env; set +a; \
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) chaos-ci

# `make run`: the whole pipeline on the local stack until Ctrl-C. Sizes can be changed:
# `make run RUN_EVENTS=1000000 RUN_RATE=5000`. Event times are 1 ms apart and end about now, so
# none is ahead of the clock (the aggregator sends those to `.late`).
RUN_EVENTS ?= 100000
RUN_RATE ?= 2000

run: stack-up
	set -a; source target/stack.env; set +a; \
	$(PIPELINECTL) topics; \
	$(PIPELINECTL) schemas; \
	pids=(); \
	for b in $(BINARIES); do target/debug/$$b --config pipelines/$$b.toml & pids+=($$!); done; \
	trap 'kill -TERM "$${pids[@]}" 2>/dev/null || true; wait' EXIT; \
	$(PIPELINECTL) produce --seed $$(date +%s) --count $(RUN_EVENTS) --rate $(RUN_RATE) --duplicates 0.01 --out-of-order 0.02 --poison 0.001 \
	  --step-ms 1 --start-time-ms $$(( $$(date +%s%3N) - $(RUN_EVENTS) )); \
	echo "make run: producer finished; the consumers keep running until Ctrl-C (stack: make stack-status)"; \
	wait

# Consumer runtime overhead: raw rdkafka consume+decode vs. the runtime with a no-op sink, on
# the test stack (in-memory broker), release build. `make bench-runtime BENCH_EVENTS=500000 BENCH_RUNS=5`.
BENCH_EVENTS ?= 200000
BENCH_RUNS ?= 3

bench-runtime: test-stack-up
	$(CARGO) build --release -p pipelinectl
	set -a; source target/test-stack.env; set +a; \
	target/release/pipelinectl bench runtime --events $(BENCH_EVENTS) --runs $(BENCH_RUNS)

# ingest-writer end to end vs. raw batched writes of the same documents (no Kafka) and a naive
# one-update_one-per-record consumer. `make bench-ingest BENCH_INGEST_EVENTS=200000`.
BENCH_INGEST_EVENTS ?= 100000
BENCH_NAIVE_EVENTS ?= 5000

bench-ingest: test-stack-up
	$(CARGO) build --release -p pipelinectl
	set -a; source target/test-stack.env; set +a; \
	target/release/pipelinectl bench ingest --events $(BENCH_INGEST_EVENTS) \
	  --naive-events $(BENCH_NAIVE_EVENTS) --runs $(BENCH_RUNS)

# cache-updater end to end vs. the same Redis commands as raw fred pipelines (no Kafka).
# `make bench-cache BENCH_CACHE_EVENTS=200000`.
BENCH_CACHE_EVENTS ?= 100000

bench-cache: test-stack-up
	$(CARGO) build --release -p pipelinectl
	set -a; source target/test-stack.env; set +a; \
	target/release/pipelinectl bench cache --events $(BENCH_CACHE_EVENTS) --runs $(BENCH_RUNS)

# aggregator: events folded and bucket writes per second vs. raw consume+decode.
BENCH_AGGREGATE_EVENTS ?= 200000

bench-aggregate: test-stack-up
	$(CARGO) build --release -p pipelinectl
	set -a; source target/test-stack.env; set +a; \
	target/release/pipelinectl bench aggregate --events $(BENCH_AGGREGATE_EVENTS) --runs $(BENCH_RUNS)

# `make chaos`: the four binaries (release build, 2 members each) on their own stack (durable
# broker, ports shifted by 200) while 1M records are produced at 2,000/s; 20 members killed with
# SIGKILL, the broker and mongod restarted, a Redis master killed; then `pipelinectl verify`.
# Size it with `make chaos CHAOS_FLAGS="--events 200000 --rate 1500 --kills 8"`.
CHAOS_STACK := --name chaos --port-offset 200
CHAOS_FLAGS ?=

chaos-stack-up: build
	$(STACK) up $(CHAOS_STACK) > target/chaos-stack.env

chaos: chaos-stack-up
	$(CARGO) build --release --workspace --bins
	set -a; source target/chaos-stack.env; set +a; \
	target/release/pipelinectl chaos --stack chaos $(CHAOS_FLAGS)

# The CI-sized run inside `make test` (debug binaries, every kind of fault, a few minutes).
chaos-ci: chaos-stack-up
	set -a; source target/chaos-stack.env; set +a; \
	$(PIPELINECTL) chaos --stack chaos --events 30000 --rate 600 --kills 4 $(CHAOS_FLAGS)

# `make bench`: every benchmark in one go (release build) on the test stack (in-memory broker,
# so the broker is not the bottleneck), plus latency at half of each measured rate and peak RSS
# under a 1M-record backlog; the report goes to bench/results.md.
# Smaller: `make bench BENCH_FLAGS="--events 20000 --runs 1 --rss-events 100000"`.
BENCH_FLAGS ?=

bench: test-stack-up
	$(CARGO) build --release --workspace --bins
	set -a; source target/test-stack.env; set +a; \
	target/release/pipelinectl bench all $(BENCH_FLAGS)

# Each schema version can read every earlier one (BACKWARD_TRANSITIVE) and the samples match.
schemas-check:
	$(CARGO) test -p eventpipe-events schemas

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
