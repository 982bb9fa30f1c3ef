#!/usr/bin/env bash
# bench.sh runs dtx's benchmarks (bench_test.go) in rounds and prints the
# dtx/raw table (scripts/benchratio); see docs/performance.md.
#
# Each round is one run of every benchmark (-test.count 1), so a raw result
# and its dtx partner are always measured minutes, not an hour, apart; even
# rounds run the dtx side of each pair first (DTX_BENCH_DTX_FIRST=1).
#
# Environment:
#   BENCHCOUNT  rounds (default 6; the table wants at least 6)
#   BENCHOUT    where results go (default bench.out; overwritten)
#   BENCHFLAGS  more test flags, e.g. "-test.bench=NamedCycle -test.benchtime=3s"
#   GOMAXPROCS  e.g. 1, for the GOMAXPROCS=1 variant
#   BENCHPGX    1 (default) also measures pgx on PostgreSQL: the test binary is
#               built from the pgx module with pgx/testdata's file linked in
#               (as make test-pgx does); 0 for lib/pq and MariaDB only
set -euo pipefail
cd "$(dirname "$0")/.."

GO=${GO:-go}
count=${BENCHCOUNT:-6}
out=${BENCHOUT:-bench.out}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [ "${BENCHPGX:-1}" = 1 ]; then
	printf '{"Replace":{"%s/zz_pgx_register_test.go":"%s/pgx/testdata/register_test.go.in"}}' "$PWD" "$PWD" >"$tmp/overlay.json"
	(cd pgx && "$GO" test -c -overlay "$tmp/overlay.json" -o "$tmp/dtx.test" github.com/dtx-go/dtx)
else
	"$GO" test -c -o "$tmp/dtx.test" .
fi
: >"$out"
for i in $(seq 1 "$count"); do
	first=raw
	[ $((i % 2)) = 0 ] && first=dtx
	echo "bench: round $i of $count ($first first)${GOMAXPROCS:+, GOMAXPROCS=$GOMAXPROCS}" >&2
	# shellcheck disable=SC2086 # BENCHFLAGS is a list of flags
	DTX_BENCH_DTX_FIRST=$([ "$first" = dtx ] && echo 1 || echo 0) \
		"$tmp/dtx.test" -test.run '^$' -test.bench . -test.benchmem -test.count 1 \
		-test.timeout 60m ${BENCHFLAGS:-} | tee -a "$out"
done

echo
echo "Medians of $count rounds from $out${GOMAXPROCS:+ (GOMAXPROCS=$GOMAXPROCS)}:"
echo
"$GO" run ./scripts/benchratio "$out"
bs=$(command -v benchstat || true)
[ -z "$bs" ] && [ -x "$("$GO" env GOPATH)/bin/benchstat" ] && bs=$("$GO" env GOPATH)/bin/benchstat
if [ -n "$bs" ]; then
	echo
	"$bs" -col '/impl@(raw dtx raw1pc)' "$out"
else
	echo
	echo "(for confidence intervals: go install golang.org/x/perf/cmd/benchstat@latest, then benchstat -col '/impl@(raw dtx raw1pc)' $out)"
fi
