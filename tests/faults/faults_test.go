package faults

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dtx-go/dtx/internal/bank"
	_ "github.com/go-sql-driver/mysql"
	_ "github.com/lib/pq"
)

// TestFaultsChild is a coordinator process of TestFaults.
func TestFaultsChild(t *testing.T) {
	raw := os.Getenv(ChildEnv)
	if raw == "" {
		t.Skip("a coordinator process of TestFaults")
	}
	err := RunChild(raw)
	fmt.Fprintln(os.Stderr, "child:", err)
	os.Exit(3)
}

// stores are the shared decision stores segments rotate through: the
// decision committed in the PostgreSQL or the MariaDB branch (the
// default design), or an SQLLog table in either database.
var stores = []string{"inpg", "sqlmy", "inmy", "sqlpg"}

// settings are TestFaults' environment variables.
type settings struct {
	duration, segment time.Duration
	seed              uint64
	nodes, workers    int
	store             string
	netns             bool
}

func readSettings(t *testing.T) settings {
	s := settings{duration: 60 * time.Second, segment: 8 * time.Minute, nodes: 3, workers: 4, netns: true,
		seed: uint64(time.Now().UnixNano())}
	durs := map[string]*time.Duration{"FAULTS_DURATION": &s.duration, "FAULTS_SEGMENT": &s.segment}
	for name, p := range durs {
		if v := os.Getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				t.Fatalf("%s=%q: want a duration such as 90s or 30m", name, v)
			}
			*p = d
		}
	}
	ints := map[string]*int{"FAULTS_NODES": &s.nodes, "FAULTS_WORKERS": &s.workers}
	for name, p := range ints {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				t.Fatalf("%s=%q: want a positive number", name, v)
			}
			*p = n
		}
	}
	if v := os.Getenv("FAULTS_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("FAULTS_SEED=%q: want a number", v)
		}
		s.seed = n
	}
	if v := os.Getenv("FAULTS_STORE"); v != "" {
		if !strings.Contains(" "+strings.Join(stores, " ")+" ", " "+v+" ") {
			t.Fatalf("FAULTS_STORE=%q: want one of %v", v, stores)
		}
		s.store = v
	}
	s.netns = os.Getenv("FAULTS_NETNS") != "0"
	return s
}

// TestFaults runs the nemesis schedule; see doc.go and docs/reliability.md.
// FAULTS_DURATION (default 60s), FAULTS_SEGMENT (8m: a longer run is cut
// into segments, each a fresh world with the next store), FAULTS_SEED,
// FAULTS_NODES (3), FAULTS_WORKERS (4 per node), FAULTS_STORE (one store
// for every segment), FAULTS_NETNS=0 (no namespaces).
func TestFaults(t *testing.T) {
	if os.Getenv(ChildEnv) != "" {
		t.Skip("child")
	}
	cfg := readSettings(t)
	fmt.Printf("faults: seed=%d duration=%v nodes=%d workers=%d (replay: FAULTS_SEED=%d FAULTS_DURATION=%v)\n",
		cfg.seed, cfg.duration, cfg.nodes, cfg.workers, cfg.seed, cfg.duration)
	if cfg.netns {
		if why := NetnsUsable(); why != "" {
			fmt.Printf("faults: network namespaces unusable here (%s): the partition fault is left out; the proxies' black hole is the nearest fault that runs\n", why)
			cfg.netns = false
		}
	} else {
		fmt.Println("faults: FAULTS_NETNS=0: the partition fault is left out")
	}
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	env, cleanup, err := NewEnv(ctx, bin, os.TempDir(), cfg.nodes, cfg.workers, cfg.netns, func(f string, a ...any) {
		t.Logf(f, a...)
	})
	if err != nil {
		if os.Getenv("DTX_REQUIRE_DB") != "1" && strings.Contains(err.Error(), ErrNoServers.Error()) {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	fmt.Printf("faults: private servers created and started in %v\n", env.Srv.Startup.Round(time.Millisecond))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		if _, ok := <-sig; ok {
			fmt.Println("faults: interrupted: removing the servers and namespaces")
			cleanup()
			os.Exit(1)
		}
	}()
	defer signal.Stop(sig)

	vs, err := env.Control(ctx)
	if err != nil {
		t.Fatalf("control: %v", err)
	}
	want := []string{"committed in PostgreSQL only", "reported OK but not committed", "1 branches left prepared"}
	for _, w := range want {
		if !strings.Contains(strings.Join(vs, "\n"), w) {
			t.Fatalf("control: the checks missed %q; they said %q", w, vs)
		}
	}
	t.Logf("control (damaged on purpose): the checks saw %q", vs)

	rng := mrand.New(mrand.NewPCG(cfg.seed, 0x5eed))
	var results []*Result
	start := time.Now()
	for i := 0; time.Since(start) < cfg.duration; i++ {
		d := min(cfg.segment, cfg.duration-time.Since(start))
		store := cfg.store
		if store == "" {
			store = stores[(int(cfg.seed%uint64(len(stores)))+i)%len(stores)]
		}
		r, err := env.Segment(ctx, fmt.Sprintf("s%d", i+1), store, d, rng)
		if err != nil {
			t.Fatalf("segment %d (%s): harness: %v", i+1, store, err)
		}
		results = append(results, r)
		t.Logf("segment %d: %s, %v: faults %v, outcomes %v, %d recovery pass(es), %d coordinator(s) killed at the drain, %d violation(s)", i+1, store, r.Duration.Round(time.Second), r.Faults, r.Outcomes, r.Passes, r.Killed, len(r.Violations))
		for _, v := range r.Violations {
			t.Errorf("segment %d (%s): %s", i+1, store, v)
		}
		if len(r.Violations) > 0 {
			t.Logf("segment %d: coordinators' stderr: %s", i+1, r.Stderr)
		}
		for _, e := range r.FaultErrs {
			t.Logf("segment %d: fault not applied as planned: %s", i+1, e)
		}
	}
	table := Table(results, env.Kinds, cfg.seed, time.Since(start))
	fmt.Print(table)
	t.Log("\n" + table)
	total := map[Kind]int{}
	for _, r := range results {
		for k, n := range r.Faults {
			total[k] += n
		}
	}
	for _, k := range env.Kinds {
		if total[k] == 0 {
			t.Errorf("fault %q was never applied", k)
		}
	}
}

// Table renders the run's results as the Markdown tables of
// docs/reliability.md.
func Table(rs []*Result, kinds []Kind, seed uint64, took time.Duration) string {
	var b strings.Builder
	total := map[Kind]int{}
	missed := 0
	var sum Result
	sum.Outcomes = map[string]int{}
	var stores []string
	for _, r := range rs {
		for k, n := range r.Faults {
			total[k] += n
		}
		missed += r.Missed
		for c, n := range r.Outcomes {
			sum.Outcomes[c] += n
		}
		sum.Acked += r.Acked
		sum.Committed += r.Committed
		sum.Prepared += r.Prepared
		sum.Pending += r.Pending
		sum.Hidden += r.Hidden
		sum.Killed += r.Killed
		sum.Violations = append(sum.Violations, r.Violations...)
		stores = append(stores, r.Store)
	}
	fmt.Fprintf(&b, "faults: seed=%d duration=%v segments=%d stores=%s\n\n", seed, took.Round(time.Second), len(rs), strings.Join(stores, ","))
	fmt.Fprintf(&b, "| fault | applied |\n|---|---|\n")
	all := 0
	for _, k := range kinds {
		fmt.Fprintf(&b, "| %s | %d |\n", k, total[k])
		all += total[k]
	}
	fmt.Fprintf(&b, "| **all** | **%d** |\n\n", all)
	if missed > 0 {
		fmt.Fprintf(&b, "(%d reply drops were armed but no statement hit them within 5 s: not counted)\n\n", missed)
	}
	o := sum.Outcomes
	fmt.Fprintf(&b, "| globals reported | acknowledged (OK + pending) | rolled back | outcome unknown | other errors | committed in both | violations | branches left prepared | decisions left pending | hidden orphans |\n|---|---|---|---|---|---|---|---|---|---|\n")
	reported := 0
	for _, n := range o {
		reported += n
	}
	fmt.Fprintf(&b, "| %d | %d (%d + %d) | %d | %d | %d | %d | %d | %d | %d | %d |\n",
		reported, sum.Acked, o[bank.OK], o[bank.Pending], o[bank.Rolled], o[bank.Unknown], o[bank.Failed]+o[bank.Heuristic],
		sum.Committed, len(sum.Violations), sum.Prepared, sum.Pending, sum.Hidden)
	return b.String()
}
