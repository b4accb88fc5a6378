# Cellar's build, test and benchmark entry points.
#
#   make build   build bin/cellar
#   make test    install what is missing, lint, start MinIO, fake-gcs-server
#                and Azurite on 127.0.0.1, run every test, stop the servers
#   make lint    go vet, staticcheck, gofmt
#   make bench   storage benchmarks against the same real servers
#   make demo    the first-run demo on a local file:// repository
#
# Test servers and tools are installed at pinned versions under $(TOOLS),
# outside the repository, so a second run does not rebuild them.

SHELL       := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO          ?= go
TOOLS       ?= $(HOME)/.cache/cellar/tools
STAMPS      := $(TOOLS)/stamps

MINIO_VERSION       := v0.0.0-20260212201848-7aac2a2c5b7c
FAKE_GCS_VERSION    := v1.56.1
AZURITE_VERSION     := 3.35.0
STATICCHECK_VERSION := v0.8.2
BENCHSTAT_VERSION   := v0.0.0-20260908200009-22c9c6c9d4da

# disable_grpc_modules leaves the Google Cloud Storage client's gRPC
# transport (xDS, RLS, Envoy's protobufs) out of the binary: Cellar speaks
# GCS's JSON API, and those packages' initialisation cost every process
# call, as archive_command makes one per WAL file, about 6 ms.
export GOFLAGS := -tags=disable_grpc_modules

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null)
LDFLAGS := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# Tests run with the race detector off (the SDKs make it very slow on two
# cores) and a generous timeout; the 1 GiB memory-bound uploads dominate.
TEST_FLAGS ?= -count=1 -timeout 60m

.PHONY: all build test lint tools postgres bench demo clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/cellar ./cmd/cellar

tools: postgres $(STAMPS)/minio-$(MINIO_VERSION) $(STAMPS)/fake-gcs-server-$(FAKE_GCS_VERSION) \
	$(STAMPS)/azurite-$(AZURITE_VERSION) $(STAMPS)/staticcheck-$(STATICCHECK_VERSION)

# PostgreSQL 15 for the end-to-end tests, and, when the tests run as root,
# the ordinary user PostgreSQL runs as (it refuses to run as root). The
# zstd command line tool: tests check that it reads what Cellar writes.
postgres:
	@test -x /usr/lib/postgresql/15/bin/initdb || { echo "installing PostgreSQL 15"; apt-get update -qq && apt-get install -y -qq postgresql-15; }
	@command -v zstd >/dev/null || { echo "installing zstd"; apt-get update -qq && apt-get install -y -qq zstd; }
	@if [ "$$(id -u)" = 0 ] && ! id cellartest >/dev/null 2>&1; then echo "adding user cellartest for the PostgreSQL tests"; useradd -m cellartest; fi

$(STAMPS)/minio-$(MINIO_VERSION):
	@mkdir -p $(TOOLS)/bin $(STAMPS)
	@echo "installing MinIO $(MINIO_VERSION) (a few minutes the first time)"
	GOBIN=$(TOOLS)/bin $(GO) install github.com/minio/minio@$(MINIO_VERSION)
	@touch $@

$(STAMPS)/fake-gcs-server-$(FAKE_GCS_VERSION):
	@mkdir -p $(TOOLS)/bin $(STAMPS)
	GOBIN=$(TOOLS)/bin $(GO) install github.com/fsouza/fake-gcs-server@$(FAKE_GCS_VERSION)
	@touch $@

$(STAMPS)/azurite-$(AZURITE_VERSION):
	@mkdir -p $(TOOLS)/node $(STAMPS)
	@command -v npm >/dev/null || { echo "installing Node.js and npm for Azurite"; apt-get update -qq && apt-get install -y -qq nodejs npm; }
	npm install --silent --no-audit --no-fund --prefix $(TOOLS)/node azurite@$(AZURITE_VERSION)
	@touch $@

$(STAMPS)/staticcheck-$(STATICCHECK_VERSION):
	@mkdir -p $(TOOLS)/bin $(STAMPS)
	GOBIN=$(TOOLS)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@touch $@

lint: $(STAMPS)/staticcheck-$(STATICCHECK_VERSION)
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/bin/staticcheck ./...

test: tools lint
	testdata/servers.sh $(TOOLS) $(GO) test $(TEST_FLAGS) ./...

$(STAMPS)/benchstat-$(BENCHSTAT_VERSION):
	@mkdir -p $(TOOLS)/bin $(STAMPS)
	GOBIN=$(TOOLS)/bin $(GO) install golang.org/x/perf/cmd/benchstat@$(BENCHSTAT_VERSION)
	@touch $@

# Storage throughput (MB/s up and down, bytes allocated per op) for every
# backend against the same real servers, 256 MiB objects, six runs each;
# benchstat prints the medians. The page cache is dropped first where we
# may (root), as the machine is shared and noisy.
#
# Then WAL archiving side by side with pgBackRest (testdata/bench-wal.sh):
# 100 real segments pushed and fetched one process call at a time against a
# TLS MinIO, interleaved, page cache dropped before each batch, medians of
# three runs. Then full base backups side by side with pgBackRest
# (testdata/bench-backup.sh): pgbench scale 100 and a 6-million-row mixed
# table, cellar zstd and s2 against pgBackRest zst level 1, interleaved,
# page cache dropped before each run, medians of three runs. Then many
# files side by side with pgBackRest (testdata/bench-manyfiles.sh): 50,000
# one-row tables, about 300,000 files (BENCH_MANY_FILES=250000 for over a
# million, about 1.5 million), to local repositories: cellar backup --fast,
# restore and verify against pgbackrest backup and restore, interleaved,
# page cache dropped before each command, medians of three runs of wall
# time and peak RSS; then the bytes cellar list-backups reads from the
# repository per backup, counted by strace.
#
# Then incremental backups side by side with pgBackRest
# (testdata/bench-incr.sh): on pgbench scale 100 and the 6-million-row
# mixed table (with a primary key), to local repositories, each round a
# full backup by each tool, one `pgbench -c 4 -j 2 -T 60` (on the mixed
# set, updates near the table's end and inserts), then `cellar backup
# --type incr` against `pgbackrest backup --type=incr` of that same change,
# the tools alternating in going first, page cache dropped before each run,
# medians of three rounds of wall time, peak RSS, bytes read from disk
# (/usr/bin/time %I) and bytes the repository grew by; then the restore of
# a full and 3 incrementals against that of a full of the same data.
#
# Then encryption (testdata/bench-encrypt.sh): backup, restore, wal-push
# and wal-fetch of pgbench scale 100 and 32 of its WAL segments with
# encryption = none and encryption = age, interleaved, to local
# repositories, page cache dropped before each, medians of three.
#
# Then restore drills (testdata/bench-drill.sh): `cellar drill` of the
# pgbench scale 100 backup with 30 s of pgbench WAL to replay (its file
# restore, start and replay, and total) beside `cellar restore` alone,
# interleaved, page cache dropped before each, medians of three.
#
# Then `cellar retention` on a synthetic MinIO repository of 200 backups
# and 50,000 WAL objects (cmd/cellar/internal/retbench): wall time and
# storage requests counted by a proxy, the result checked.
#
# Last, WAL streaming (testdata/bench-stream.sh): pgbench for 60 s at 4
# clients with no streaming, asynchronous and synchronous receive-wal to
# MinIO (TPS, commit latency), and the stream-method backup of pgbench
# scale 100 against the local method; interleaved, medians of three.
bench: tools build $(STAMPS)/benchstat-$(BENCHSTAT_VERSION)
	@sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
	testdata/servers.sh $(TOOLS) $(GO) test -run '^$$' -bench . -benchtime 3x -count 6 ./cloud/... | tee bench.out
	$(TOOLS)/bin/benchstat bench.out
	$(GO) build -o bin/walbench ./cmd/cellar/internal/walbench
	testdata/bench-wal.sh $(TOOLS) bin/cellar bin/walbench 100 3
	testdata/bench-backup.sh $(TOOLS) bin/cellar 3
	testdata/bench-manyfiles.sh $(TOOLS) bin/cellar 3
	testdata/bench-incr.sh $(TOOLS) bin/cellar 3
	testdata/bench-encrypt.sh $(TOOLS) bin/cellar 3
	testdata/bench-drill.sh $(TOOLS) bin/cellar 3
	$(GO) build -o bin/retbench ./cmd/cellar/internal/retbench
	CELLARTEST_SERVERS=s3 testdata/servers.sh $(TOOLS) bin/retbench bin/cellar
	testdata/bench-stream.sh $(TOOLS) bin/cellar 3

demo: postgres build
	@testdata/demo.sh bin/cellar

clean:
	rm -rf bin
