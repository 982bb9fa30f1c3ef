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

demo: devdb
	$(GO) run ./examples/demo

# Raw driver and dtx side by side; see docs/performance.md.
bench: devdb
	$(GO) test -run '^$$' -bench . -benchmem -count 6 -timeout 60m . | tee bench.out
