# dtx: make demo runs the main flow against the local servers; make test runs the tests.
GO ?= go
export CGO_ENABLED ?= 1

ifeq ($(CI),true)
export DTX_REQUIRE_DB=1
endif

.PHONY: test test-pgx demo bench devdb vet crash fuzz fuzz-short faults

devdb:
	@bash scripts/devdb.sh

vet:
	$(GO) vet ./...

test: devdb vet
	$(GO) test -race -count=1 ./...
	cd tests/orm && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	cd dtxtest && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	cd examples/signup && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	cd otel && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	cd tests/faults && $(GO) vet ./... && FAULTS_DURATION=60s $(GO) test -race -count=1 ./...
	$(MAKE) test-pgx
	$(MAKE) fuzz-short

# The pgx module (package dtxpgx) and, through pgx, every test of named
# transactions in named_test.go: an overlay links pgx/testdata's file into
# dtx's tests, which registers dtx+pgx, so servers() adds pgx on PostgreSQL.
test-pgx:
	cd pgx && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	ov=$$(mktemp) && printf '{"Replace":{"%s/zz_pgx_register_test.go":"%s/pgx/testdata/register_test.go.in"}}' "$(CURDIR)" "$(CURDIR)" >"$$ov" && \
	cd pgx && $(GO) test -race -count=1 -overlay "$$ov" -run '^TestNamed' github.com/dtx-go/dtx; rc=$$?; rm -f "$$ov"; exit $$rc

demo: devdb
	$(GO) run ./examples/demo

# Raw driver and dtx side by side, in rounds, then the dtx/raw table; see
# docs/performance.md (BENCHCOUNT, BENCHOUT, BENCHFLAGS; GOMAXPROCS=1 variant).
bench: devdb
	GO='$(GO)' bash scripts/bench.sh

# Crash recovery: SIGKILL at every protocol step and at random, then recover
# and check; then the multi-node trials (three coordinators on one store under
# SIGSTOP, kill and restart); see docs/reliability.md.
# DTX_CRASH_TRIALS=50 DTX_CRASH_MULTI_TRIALS=2 make crash for fewer.
DTX_CRASH_TRIALS ?= 1000
DTX_CRASH_MULTI_TRIALS ?= 10
DTX_CRASH_MULTI_SECONDS ?= 20
crash: devdb
	DTX_CRASH_TRIALS=$(DTX_CRASH_TRIALS) $(GO) test -run '^TestCrash$$' -count=1 -timeout 120m -v .
	DTX_CRASH_MULTI_TRIALS=$(DTX_CRASH_MULTI_TRIALS) DTX_CRASH_MULTI_SECONDS=$(DTX_CRASH_MULTI_SECONDS) \
		$(GO) test -run '^TestCrashMulti$$' -count=1 -timeout 120m -v .

# Fuzzing (go test -fuzz), FUZZTIME per target; the seed corpora in
# testdata/fuzz also run as plain tests in make test. FuzzNamesOnServers
# needs the servers (DTX_PG_DSN, DTX_MYSQL_DSN). FUZZFLAGS e.g. -parallel=1.
FUZZTIME ?= 1m
FUZZ_TARGETS = FuzzQuoting FuzzFileLogDecoder FuzzFileLogDamage FuzzDecisionEncoding FuzzNamesOnServers
fuzz: devdb
	set -e; for f in $(FUZZ_TARGETS); do \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) $(FUZZFLAGS) . ; \
	done

# The short run make test ends with, as execution counts: a -fuzztime
# duration can end in a bare "context deadline exceeded" failure with no
# crasher on Go 1.26 (golang/go#75804, a race in the fuzzing coordinator,
# fixed in Go 1.27), which would turn CI red at random. The counts are what
# 3 s gave each target here; the servers' target is slower per input.
fuzz-short:
	$(MAKE) fuzz FUZZTIME=10000x FUZZFLAGS=-parallel=2 FUZZ_TARGETS='FuzzQuoting FuzzFileLogDecoder FuzzFileLogDamage FuzzDecisionEncoding'
	$(MAKE) fuzz FUZZTIME=300x FUZZFLAGS=-parallel=2 FUZZ_TARGETS=FuzzNamesOnServers

# The nemesis harness (tests/faults): coordinators of one store under kill -9,
# SIGSTOP, proxy faults, server crashes and netns partitions, on servers of
# its own (never the machine's); see docs/reliability.md. make test runs a
# 60 s schedule. FAULTS_SEED=<n> replays a schedule; FAULTS_NODES,
# FAULTS_WORKERS, FAULTS_SEGMENT, FAULTS_STORE, FAULTS_NETNS=0.
FAULTS_DURATION ?= 30m
faults:
	cd tests/faults && FAULTS_DURATION=$(FAULTS_DURATION) $(GO) test -run '^TestFaults$$' -count=1 -timeout 0 -v ./...
