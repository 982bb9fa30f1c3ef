// Command benchratio turns `go test -bench -benchmem` output of dtx's
// benchmarks into a Markdown table of median ns/op per benchmark, the dtx/raw
// throughput ratio (raw ns/op ÷ dtx ns/op) and the allocs/op delta.
//
// It pairs benchmarks whose names differ only in their /impl= part:
// impl=raw is the baseline, impl=dtx the wrapped driver, impl=raw1pc the
// plain one-phase transaction shown for context. Run the benchmarks 6 times
// or more (scripts/bench.sh does, alternating which side goes first).
//
// BenchmarkGlobal (the coordinator) gets a table of its own: impl=coord
// against the slowest impl=single-* (latency ratio, goal ≤ 1.15), against
// impl=seq, impl=coord-sqllog against coord, and fsyncs/op.
//
//	go run ./scripts/benchratio bench.out
//	go test -run '^$' -bench . -benchmem -count 6 . | go run ./scripts/benchratio
package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// goals are the dtx/raw throughput each benchmark family must reach, and the
// most allocs/op dtx may add (-1: no goal).
var goals = map[string]struct {
	ratio  float64
	allocs float64
}{
	"Passthrough": {0.99, 1},
	"NamedCycle":  {0.97, -1},
}

type sample struct {
	ns, allocs []float64
	extra      map[string][]float64 // other metrics by unit: p50-ms, fsyncs/op
}

type group struct {
	name  string // the benchmark name without Benchmark and /impl=
	base  string // its first part: Passthrough, NamedCycle
	impls map[string]*sample
}

func main() {
	var in io.Reader = os.Stdin
	if len(os.Args) > 1 {
		var rs []io.Reader
		for _, p := range os.Args[1:] {
			f, err := os.Open(p)
			if err != nil {
				fmt.Fprintln(os.Stderr, "benchratio:", err)
				os.Exit(2)
			}
			defer f.Close()
			rs = append(rs, f)
		}
		in = io.MultiReader(rs...)
	}
	groups, err := parse(in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchratio:", err)
		os.Exit(2)
	}
	if len(groups) == 0 {
		fmt.Fprintln(os.Stderr, "benchratio: no benchmark with an /impl= part in the input")
		os.Exit(1)
	}
	report(os.Stdout, groups)
}

func parse(r io.Reader) ([]*group, error) {
	var order []*group
	byName := map[string]*group{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue // not a result line
		}
		name, impl, ok := split(strings.TrimPrefix(f[0], "Benchmark"))
		if !ok {
			continue
		}
		var ns, allocs float64 = -1, -1
		extra := map[string]float64{}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			switch f[i+1] {
			case "ns/op":
				ns = v
			case "allocs/op":
				allocs = v
			default:
				extra[f[i+1]] = v
			}
		}
		if ns < 0 {
			continue
		}
		g := byName[name]
		if g == nil {
			g = &group{name: name, base: strings.SplitN(name, "/", 2)[0], impls: map[string]*sample{}}
			byName[name] = g
			order = append(order, g)
		}
		s := g.impls[impl]
		if s == nil {
			s = &sample{}
			g.impls[impl] = s
		}
		s.ns = append(s.ns, ns)
		if allocs >= 0 {
			s.allocs = append(s.allocs, allocs)
		}
		for unit, v := range extra {
			if s.extra == nil {
				s.extra = map[string][]float64{}
			}
			s.extra[unit] = append(s.extra[unit], v)
		}
	}
	return order, sc.Err()
}

// split takes the /impl=X part out of a benchmark name; the -GOMAXPROCS
// suffix stays on the name.
func split(full string) (name, impl string, ok bool) {
	procs := ""
	if i := strings.LastIndexByte(full, '-'); i > 0 {
		if _, err := strconv.Atoi(full[i+1:]); err == nil {
			full, procs = full[:i], full[i:]
		}
	}
	parts := strings.Split(full, "/")
	for i, p := range parts {
		if v, found := strings.CutPrefix(p, "impl="); found {
			rest := slices.Delete(slices.Clone(parts), i, i+1)
			return strings.Join(rest, "/") + procs, v, true
		}
	}
	return "", "", false
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(xs))
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// paired returns the smallest and largest per-round ratio raw/dtx, pairing
// the i-th raw result with the i-th dtx result (the same round when each
// round ran both once).
func paired(raw, dtx []float64) (lo, hi float64, ok bool) {
	if len(raw) != len(dtx) || len(raw) < 2 {
		return 0, 0, false
	}
	lo, hi = raw[0]/dtx[0], raw[0]/dtx[0]
	for i := range raw {
		r := raw[i] / dtx[i]
		lo, hi = min(lo, r), max(hi, r)
	}
	return lo, hi, true
}

func report(w io.Writer, groups []*group) {
	if slices.ContainsFunc(groups, func(g *group) bool { return g.impls["raw"] != nil && g.impls["dtx"] != nil }) {
		reportRatios(w, groups)
	}
	reportGlobal(w, groups)
}

func reportRatios(w io.Writer, groups []*group) {
	fmt.Fprintln(w, "| benchmark | runs | raw ns/op | dtx ns/op | dtx/raw throughput | per-round range | goal | allocs/op raw → dtx | verdict |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	var ctx []*group
	for _, g := range groups {
		if g.impls["raw1pc"] != nil && g.impls["raw"] != nil {
			ctx = append(ctx, g)
		}
		raw, dtx := g.impls["raw"], g.impls["dtx"]
		if raw == nil || dtx == nil {
			continue
		}
		rawNs, dtxNs := median(raw.ns), median(dtx.ns)
		ratio := rawNs / dtxNs
		runs := fmt.Sprint(min(len(raw.ns), len(dtx.ns)))
		rng := "–"
		if lo, hi, ok := paired(raw.ns, dtx.ns); ok {
			rng = fmt.Sprintf("%.3f–%.3f", lo, hi)
		}
		allocs := "–"
		dAllocs := 0.0
		if len(raw.allocs) > 0 && len(dtx.allocs) > 0 {
			ra, da := median(raw.allocs), median(dtx.allocs)
			dAllocs = da - ra
			allocs = fmt.Sprintf("%g → %g (%+g)", ra, da, dAllocs)
		}
		goal, verdict := "–", "–"
		if gl, ok := goals[g.base]; ok {
			goal = fmt.Sprintf("≥ %.2f", gl.ratio)
			verdict = "ok"
			if ratio < gl.ratio {
				verdict = "BELOW"
			}
			if gl.allocs >= 0 {
				goal += fmt.Sprintf(", allocs %+g", gl.allocs)
				if allocs != "–" && dAllocs > gl.allocs {
					verdict = "BELOW"
				}
			}
			if n := min(len(raw.ns), len(dtx.ns)); n < 6 {
				verdict += " (n=" + strconv.Itoa(n) + ")"
			}
		}
		fmt.Fprintf(w, "| %s | %s | %.0f | %.0f | %.3f | %s | %s | %s | %s |\n",
			g.name, runs, rawNs, dtxNs, ratio, rng, goal, allocs, verdict)
	}
	if len(ctx) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Cost of two-phase commit itself (throughput relative to a raw one-phase transaction):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| benchmark | raw 1PC ns/op | raw 2PC ns/op | raw 2PC/1PC | dtx 2PC/1PC |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, g := range ctx {
		one, raw := median(g.impls["raw1pc"].ns), median(g.impls["raw"].ns)
		d := "–"
		if s := g.impls["dtx"]; s != nil {
			d = fmt.Sprintf("%.2f", one/median(s.ns))
		}
		fmt.Fprintf(w, "| %s | %.0f | %.0f | %.2f | %s |\n", g.name, one, raw, one/raw, d)
	}
}

// globalGoal is the most a global may take over the slowest single-database
// named 2PC cycle: latency coord ÷ single.
const globalGoal = 1.15

// reportGlobal prints the coordinator table: per BenchmarkGlobal benchmark,
// coord against the slowest single-* (by median ns/op, and by median p50),
// against seq, coord-sqllog against coord, and FileLog fsyncs per decision.
// The verdict is on the p50 ratio (at conc=1 it is the ns/op ratio; at
// conc>1 ns/op is wall time per global, not the latency of one).
func reportGlobal(w io.Writer, groups []*group) {
	var gs []*group
	for _, g := range groups {
		if g.base == "Global" && g.impls["coord"] != nil {
			gs = append(gs, g)
		}
	}
	if len(gs) == 0 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Coordinator: a global against the slowest single-database named 2PC cycle, latency goal coord/single ≤ 1.15; against the sequential loop (seq); fsyncs per decision:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| benchmark | runs | coord ns/op | single ns/op (slowest) | coord/single ns/op | coord p50 ms | single p50 ms | coord/single p50 | goal | coord/seq ns/op | coord-sqllog/coord ns/op | fsyncs/op | verdict |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	dash := func(ok bool, format string, v float64) string {
		if !ok {
			return "–"
		}
		return fmt.Sprintf(format, v)
	}
	for _, g := range gs {
		coord := g.impls["coord"]
		coordNs := median(coord.ns)
		coordP50, hasP50 := medianExtra(coord, "p50-ms")
		var single *sample
		singleName, singleNs, singleP50, singleHasP50 := "", 0.0, 0.0, false
		for name, s := range g.impls {
			if !strings.HasPrefix(name, "single") {
				continue
			}
			if ns := median(s.ns); ns > singleNs {
				single, singleName, singleNs = s, name, ns
			}
			if p, ok := medianExtra(s, "p50-ms"); ok && p > singleP50 {
				singleP50, singleHasP50 = p, true
			}
		}
		runs := len(coord.ns)
		if single != nil {
			runs = min(runs, len(single.ns))
		}
		seq := g.impls["seq"]
		sqllog := g.impls["coord-sqllog"]
		fsyncs, hasFsyncs := medianExtra(coord, "fsyncs/op")
		p50Ratio := coordP50 / singleP50
		verdict := "–"
		if single != nil {
			ratio := coordNs / singleNs
			if hasP50 && singleHasP50 {
				ratio = p50Ratio
			}
			verdict = "ok"
			if ratio > globalGoal {
				verdict = "ABOVE"
			}
			if runs < 6 {
				verdict += " (n=" + strconv.Itoa(runs) + ")"
			}
		}
		singleCol := "–"
		if single != nil {
			singleCol = fmt.Sprintf("%.0f (%s)", singleNs, strings.TrimPrefix(singleName, "single-"))
		}
		fmt.Fprintf(w, "| %s | %d | %.0f | %s | %s | %s | %s | %s | ≤ %.2f | %s | %s | %s | %s |\n",
			g.name, runs, coordNs, singleCol,
			dash(single != nil, "%.2f", coordNs/singleNs),
			dash(hasP50, "%.2f", coordP50), dash(singleHasP50, "%.2f", singleP50),
			dash(hasP50 && singleHasP50, "%.2f", p50Ratio), globalGoal,
			dash(seq != nil, "%.2f", coordNs/median(nsOf(seq))),
			dash(sqllog != nil, "%.2f", median(nsOf(sqllog))/coordNs),
			dash(hasFsyncs, "%.3f", fsyncs), verdict)
	}
}

func nsOf(s *sample) []float64 {
	if s == nil {
		return nil
	}
	return s.ns
}

func medianExtra(s *sample, unit string) (float64, bool) {
	xs := s.extra[unit]
	if len(xs) == 0 {
		return 0, false
	}
	return median(xs), true
}
