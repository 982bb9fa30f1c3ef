# dtx: make demo runs the main flow against the local servers; make test runs the tests.
GO ?= go
export CGO_ENABLED ?= 1

ifeq ($(CI),true)
export DTX_REQUIRE_DB=1
endif

.PHONY: test demo bench devdb vet crash

devdb:
	@bash scripts/devdb.sh

vet:
	$(GO) vet ./...

test: devdb vet
	$(GO) test -race -count=1 ./...
	cd tests/orm && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	cd dtxtest && $(GO) vet ./... && $(GO) test -race -count=1 ./...
	cd examples/signup && $(GO) vet ./... && $(GO) test -race -count=1 ./...

demo: devdb
	$(GO) run ./examples/demo

# Raw driver and dtx side by side, in rounds, then the dtx/raw table; see
# docs/performance.md (BENCHCOUNT, BENCHOUT, BENCHFLAGS; GOMAXPROCS=1 variant).
bench: devdb
	GO='$(GO)' bash scripts/bench.sh

# Crash recovery: SIGKILL at every protocol step and at random, then recover
# and check; see docs/reliability.md. DTX_CRASH_TRIALS=50 make crash for fewer.
DTX_CRASH_TRIALS ?= 1000
crash: devdb
	DTX_CRASH_TRIALS=$(DTX_CRASH_TRIALS) $(GO) test -run '^TestCrash$$' -count=1 -timeout 120m -v .
