package dtx_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/internal/bank"
	"github.com/go-sql-driver/mysql"
)

// The crash harness. TestCrash runs trials; each starts this test binary
// again as a child (TestCrashChild) that runs globals moving money between
// an account table in PostgreSQL and one in MariaDB and writing a marker
// row per global into both, and that is SIGKILLed: by itself at a chosen
// protocol step (the coordinator's test hook), or by the parent at a
// random moment while 16 globals run concurrently. The parent then
// recovers in-process with a fresh Coordinator on the same node and log,
// and checks: the sum of balances is unchanged, every global's marker is
// in both databases or in neither, nothing of the node is left prepared
// in either database, and the log holds no pending decision.
//
// By default (CI) every kill point runs once with each log kind, plus a
// few random rounds. DTX_CRASH_TRIALS=N runs N trials cycling through log
// kinds and kill points (half of them random) and prints
// "crash: trials=N violations=V orphans=O"; `make crash` runs 1,000.

// crPoints are the deterministic kill points: the coordinator's hook
// points. Branch 0 is the one begun first, PostgreSQL or MariaDB at random.
var crPoints = []string{
	"before-prepare", "prepared:0", "prepared:1", "before-decide", "decided",
	"committed:0", "committed:1", "before-done", "before-commit-one-phase",
}

// crKinds are the stores a trial can keep outcomes in: "file" (FileLog),
// "sqlpg" and "sqlmy" (SQLLog in a table of a database that takes no part
// in the globals), "inpg" and "inmy" (the decision committed inside the
// PostgreSQL or MariaDB branch: CoordinatorOptions.Log nil). In the last
// two the decider's branch is never prepared, so its "prepared:<n>" and
// "committed:<n>" points pass only for the other branch, which is branch
// 0 or 1 at random.
var crKinds = []string{"file", "sqlpg", "sqlmy", "inpg", "inmy"}

const crRandom = "random"

// crConfig is what the parent tells the child, as JSON in DTX_CRASH_CHILD.
type crConfig struct {
	Log     string // "file", "sqlpg" or "sqlmy"
	LogPath string // the file log's directory, or the SQL log's table
	Node    string
	PgDSN   string // with application_name = Node
	MyDSN   string // with the trial's own database
	PgAcct  string
	PgMark  string
	Point   string // a kill point, or "random"
	Skip    int    // times the kill point passes before the kill
	Workers int
	Multi   bool // a node of a multi-node trial (crash_multi_test.go)
}

// TestCrashChild is the child process of TestCrash.
func TestCrashChild(t *testing.T) {
	raw := os.Getenv("DTX_CRASH_CHILD")
	if raw == "" {
		t.Skip("child process of TestCrash")
	}
	var cfg crConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "child: config:", err)
		os.Exit(2)
	}
	err := crChild(cfg)
	fmt.Fprintln(os.Stderr, "child:", err)
	os.Exit(3)
}

func crChild(cfg crConfig) error {
	ctx := context.Background()
	res, err := bank.Open(cfg.PgDSN, cfg.MyDSN)
	if err != nil {
		return err
	}
	pg, my := res["pg"], res["my"]
	opts := dtx.CoordinatorOptions{
		Resources:       res,
		Node:            cfg.Node,
		Timeout:         10 * time.Second,
		RecoverInterval: -1,
	}
	closeStore, err := bank.Store(ctx, &opts, cfg.Log, cfg.LogPath, cfg.PgDSN, cfg.MyDSN)
	if err != nil {
		return err
	}
	defer closeStore()
	if cfg.Multi {
		return crMultiChild(ctx, cfg, opts)
	}
	c, err := dtx.NewCoordinator(opts)
	if err != nil {
		return err
	}
	if err := pg.PingContext(ctx); err != nil {
		return err
	}
	if err := my.PingContext(ctx); err != nil {
		return err
	}
	if cfg.Point != crRandom {
		var hits atomic.Int64
		dtx.SetHook(func(p string) {
			if p == cfg.Point && hits.Add(1) > int64(cfg.Skip) {
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // never return into the protocol
			}
		})
	}
	onePhaseEvery := 5
	if cfg.Point == "before-commit-one-phase" {
		onePhaseEvery = 2
	}
	var errs atomic.Int64
	for w := 0; w < cfg.Workers; w++ {
		go func() {
			rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			for {
				var fn func(context.Context, *dtx.Global) error
				if rng.IntN(onePhaseEvery) == 0 {
					fn = bank.OnePhase(cfg.tables(), rng)
				} else {
					fn = bank.Transfer(cfg.tables(), rng)
				}
				if err := c.Do(ctx, fn); err != nil {
					if n := errs.Add(1); n <= 5 {
						fmt.Fprintln(os.Stderr, "child: global:", err)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}
		}()
	}
	fmt.Println("READY")
	time.Sleep(90 * time.Second)
	return fmt.Errorf("not killed after 90s (kill point %q not reached? %d globals failed)", cfg.Point, errs.Load())
}

// tables are the child's tables: MariaDB's in the trial's own database.
func (c crConfig) tables() bank.Tables {
	return bank.Tables{PgAcct: c.PgAcct, PgMark: c.PgMark, MyAcct: "acct", MyMark: "mark"}
}

// ---- parent ----

type crTrialSpec struct {
	log     string
	point   string
	skip    int
	workers int
	// sabotage commits the PostgreSQL branches by hand and then recovers
	// with an empty log, which rolls the MariaDB ones back: the control
	// trial that shows the checks catch a half-committed global.
	sabotage bool
}

func (s crTrialSpec) String() string {
	ctl := ""
	if s.sabotage {
		ctl = " (control: half committed on purpose)"
	}
	if s.point == crRandom {
		return fmt.Sprintf("%s/random/%dw%s", s.log, s.workers, ctl)
	}
	return fmt.Sprintf("%s/%s+%d/%dw%s", s.log, s.point, s.skip, s.workers, ctl)
}

type crResult struct {
	violations []string
	orphans    int
	harness    error // the trial could not be run or judged
	markers    int   // globals committed in both databases
	committed  int   // branches recovery committed
	rolledBack int   // branches recovery rolled back
	forgotten  int
	passes     int // Recover calls until nothing was left
	took       time.Duration
}

// crEnv is what all trials share.
type crEnv struct {
	pgDSN, myDSN string
	pg, my       *sql.DB // dtx, for recovery and listing
	pgRaw, myRaw *sql.DB
	dir          string
}

func TestCrash(t *testing.T) {
	env := crNewEnv(t)
	var plan []crTrialSpec
	n, _ := strconv.Atoi(os.Getenv("DTX_CRASH_TRIALS"))
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 7))
	if n <= 0 {
		for _, kind := range []string{"file", "inpg"} {
			for _, p := range crPoints {
				plan = append(plan, crTrialSpec{log: kind, point: p, skip: rng.IntN(3), workers: 4})
			}
		}
		for _, kind := range crKinds {
			plan = append(plan, crTrialSpec{log: kind, point: crRandom, workers: 16})
		}
	} else {
		kinds := crKinds
		var points []string
		points = append(points, crPoints...)
		for range crPoints {
			points = append(points, crRandom) // half the trials are random
		}
		for i := 0; i < n; i++ {
			s := crTrialSpec{log: kinds[i%len(kinds)], point: points[(i/len(kinds))%len(points)], workers: 16}
			if s.point != crRandom {
				s.skip = rng.IntN(6)
				s.workers = []int{1, 4, 16}[rng.IntN(3)]
			}
			plan = append(plan, s)
		}
	}

	// The control: the checks must see the damage a recovery without the
	// decisions does after a crash between two branch commits.
	ctl := crTrial(t, env, crTrialSpec{log: "file", point: "decided", workers: 1, sabotage: true}, rng)
	if ctl.harness != nil || len(ctl.violations) == 0 {
		t.Errorf("control trial: the checks saw no violation (harness: %v)", ctl.harness)
	} else {
		t.Logf("control trial (half committed on purpose): %d violation(s) seen, as it must: %s", len(ctl.violations), ctl.violations[0])
	}

	start := time.Now()
	var violations, orphans, harness, markers, committed, rolledBack, forgotten, multiPass int
	for i, spec := range plan {
		r := crTrial(t, env, spec, rng)
		violations += len(r.violations)
		orphans += r.orphans
		markers += r.markers
		committed += r.committed
		rolledBack += r.rolledBack
		forgotten += r.forgotten
		if r.passes > 1 {
			multiPass++
		}
		status := "ok"
		switch {
		case r.harness != nil:
			harness++
			status = "HARNESS: " + r.harness.Error()
			t.Errorf("trial %d %v: %v", i+1, spec, r.harness)
		case len(r.violations) > 0 || r.orphans > 0:
			status = fmt.Sprintf("VIOLATIONS %d ORPHANS %d: %s", len(r.violations), r.orphans, strings.Join(r.violations, "; "))
			t.Errorf("trial %d %v: %s", i+1, spec, status)
		}
		t.Logf("trial %d/%d %v: %d globals, recovery committed %d, rolled back %d, forgot %d in %d pass(es); %v; %s",
			i+1, len(plan), spec, r.markers, r.committed, r.rolledBack, r.forgotten, r.passes, r.took.Round(time.Millisecond), status)
	}
	summary := fmt.Sprintf("crash: trials=%d violations=%d orphans=%d", len(plan), violations, orphans)
	detail := fmt.Sprintf("crash: harness_failures=%d globals_committed=%d recovered_commits=%d recovered_rollbacks=%d decisions_forgotten=%d multi_pass_recoveries=%d duration=%s",
		harness, markers, committed, rolledBack, forgotten, multiPass, time.Since(start).Round(time.Second))
	t.Log(summary)
	t.Log(detail)
	fmt.Println(summary)
	fmt.Println(detail)
}

// crNewEnv opens what the trials of t share.
func crNewEnv(t *testing.T) *crEnv {
	pgs, mys := coPG(), coMy()
	return &crEnv{
		pgDSN: pgs.dsn, myDSN: mys.dsn,
		pg: open(t, pgs, pgs.wrapped), my: open(t, mys, mys.wrapped),
		pgRaw: open(t, pgs, pgs.raw), myRaw: open(t, mys, mys.raw),
		dir: t.TempDir(),
	}
}

// crTrial runs one trial; t only logs and registers nothing: a trial's
// outcome is its result.
func crTrial(t *testing.T, env *crEnv, spec crTrialSpec, rng *mrand.Rand) (r crResult) {
	start := time.Now()
	defer func() { r.took = time.Since(start) }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	node := "c" + token()
	prefix := "g." + node + "."
	pgAcct, pgMark, pgLog := "cra_"+node, "crm_"+node, "crl_"+node
	myDB := "dtxc_" + node

	// Tables: PostgreSQL's in the test database, MariaDB's in a database
	// of the trial's own, so that the child's sessions can be told apart.
	if err := crSetup(ctx, env, pgAcct, pgMark, myDB); err != nil {
		r.harness = err
		return r
	}
	defer crTeardown(t, env, prefix, []string{pgAcct, pgMark, pgLog}, myDB)

	pgDSN, err := crWithAppName(env.pgDSN, node)
	if err != nil {
		r.harness = err
		return r
	}
	mycfg, err := mysql.ParseDSN(env.myDSN)
	if err != nil {
		r.harness = err
		return r
	}
	mycfg.DBName = myDB
	myDSN := mycfg.FormatDSN()
	cfg := crConfig{Log: spec.log, Node: node, PgDSN: pgDSN, MyDSN: myDSN, PgAcct: pgAcct, PgMark: pgMark,
		Point: spec.point, Skip: spec.skip, Workers: spec.workers}
	switch spec.log {
	case "file":
		cfg.LogPath = filepath.Join(env.dir, node)
	case "sqlpg", "inpg":
		cfg.LogPath = pgLog
	case "sqlmy", "inmy":
		cfg.LogPath = "crlog"
	}

	hiddenBefore, err := bank.Hidden(ctx, env.myRaw)
	if err != nil {
		r.harness = err
		return r
	}

	// The child.
	js, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=10m")
	cmd.Env = append(os.Environ(), "DTX_CRASH_CHILD="+string(js))
	var stderr bank.Capped
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		r.harness = err
		return r
	}
	if err := cmd.Start(); err != nil {
		r.harness = err
		return r
	}
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		ok := false
		for sc.Scan() {
			if sc.Text() == "READY" && !ok {
				ok = true
				ready <- true
			}
		}
		if !ok {
			ready <- false
		}
	}()
	exited := make(chan error, 1)
	go func() {
		select {
		case ok := <-ready:
			if !ok {
				break
			}
			if spec.point == crRandom {
				time.Sleep(time.Duration(50+rng.IntN(451)) * time.Millisecond)
				cmd.Process.Kill() // SIGKILL
			}
		case <-time.After(60 * time.Second):
		}
	}()
	go func() { exited <- cmd.Wait() }()
	select {
	case <-exited:
	case <-time.After(120 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		r.harness = fmt.Errorf("child did not die by SIGKILL (%v): %s", cmd.ProcessState, stderr.String())
		return r
	}

	// Wait until the server has seen every session of the child end: a
	// statement the child sent just before it died (a PREPARE) may still
	// be running.
	if err := crWaitGone(ctx, env, node, myDB, false); err != nil {
		r.harness = err
		return r
	}

	// Recovery, in this process, as a restarted node would do it.
	logPath := cfg.LogPath
	if spec.sabotage {
		logPath = filepath.Join(env.dir, node+"-empty")
		ps, _ := dtx.ListPrepared(ctx, env.pg)
		for _, p := range ps {
			if strings.HasPrefix(p.Name, prefix) {
				dtx.CommitPrepared(ctx, env.pg, p.Name)
			}
		}
	}
	log, closeLog, err := bank.OpenLog(ctx, spec.log, logPath, env.pgDSN, myDSN)
	if err != nil {
		r.harness = fmt.Errorf("reopening the log: %w", err)
		return r
	}
	myDTX, err := sql.Open("dtx+mysql", myDSN) // the trial's database: inmy's table is there
	if err != nil {
		closeLog()
		r.harness = err
		return r
	}
	defer myDTX.Close()
	opts := dtx.CoordinatorOptions{
		Resources:       map[string]*sql.DB{"pg": env.pg, "my": myDTX},
		Node:            node,
		RecoverGrace:    time.Millisecond, // the child is dead: nothing is in flight
		RecoverInterval: -1,
	}
	opts.Log = log
	if strings.HasPrefix(spec.log, "in") {
		// The decision table of a resource, as the child had it.
		opts.Log = nil
		if _, err := bank.Store(ctx, &opts, spec.log, logPath, env.pgDSN, myDSN); err != nil { // in a resource: nothing to close
			closeLog()
			r.harness = err
			return r
		}
	}
	c, err := dtx.NewCoordinator(opts)
	if err != nil {
		closeLog()
		r.harness = err
		return r
	}
	var lastErr error
	for r.passes < 10 {
		rep, err := c.Recover(ctx)
		r.passes++
		r.committed += len(rep.Committed)
		r.rolledBack += len(rep.RolledBack)
		r.forgotten += len(rep.Forgotten)
		lastErr = err
		if err != nil {
			t.Logf("recovery pass %d: %v", r.passes, err)
		}
		if err == nil && len(rep.Waiting) == 0 {
			left, err := crLeft(ctx, env, log, node, prefix)
			if err == nil && left == 0 {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
	}

	c.Close()
	closeLog() // its sessions are in the trial's database too
	myDTX.Close()

	// Recovery released the locks the remaining sessions waited for: they
	// end now, rolled back.
	if err := crWaitGone(ctx, env, node, myDB, true); err != nil {
		r.harness = err
		return r
	}
	log, closeLog, err = bank.OpenLog(ctx, spec.log, logPath, env.pgDSN, myDSN)
	if err != nil {
		r.harness = fmt.Errorf("reopening the log: %w", err)
		return r
	}
	defer closeLog()

	// The checks.
	myRaw, err := sql.Open("mysql", myDSN)
	if err != nil {
		r.harness = err
		return r
	}
	defer myRaw.Close()
	res, err := bank.Check(ctx, env.pgRaw, myRaw, cfg.tables(), nil)
	if err != nil {
		r.harness = err
		return r
	}
	r.violations = append(r.violations, res.Violations...)
	r.markers = res.Markers
	for _, db := range []*sql.DB{env.pg, env.my} {
		ps, err := dtx.ListPrepared(ctx, db)
		if err != nil {
			r.harness = err
			return r
		}
		for _, p := range ps {
			if strings.HasPrefix(p.Name, prefix) {
				r.orphans++
				r.violations = append(r.violations, "still prepared: "+p.Name)
			}
		}
	}
	for try := 0; ; try++ {
		h, err := bank.Hidden(ctx, env.myRaw)
		if err != nil {
			r.harness = err
			return r
		}
		if h <= hiddenBefore {
			break
		}
		if try == 5 {
			r.orphans += h - hiddenBefore
			r.violations = append(r.violations, fmt.Sprintf("%d detached MariaDB transaction(s) not in XA RECOVER appeared (server-side orphan)", h-hiddenBefore))
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	ds, err := log.Pending(ctx, node)
	if err != nil {
		r.harness = err
		return r
	}
	for _, d := range ds {
		r.violations = append(r.violations, "decision still pending: "+d.Global)
	}
	if len(r.violations) > 0 {
		r.violations = append(r.violations, fmt.Sprintf("last recovery error: %v; child stderr: %s", lastErr, stderr.String()))
	}
	return r
}

// crLeft counts what the node still has prepared or pending.
func crLeft(ctx context.Context, env *crEnv, log dtx.Log, node, prefix string) (int, error) {
	n, err := bank.Prepared(ctx, prefix, env.pg, env.my)
	if err != nil {
		return 0, err
	}
	ds, err := log.Pending(ctx, node)
	return n + len(ds), err
}

func crSetup(ctx context.Context, env *crEnv, pgAcct, pgMark, myDB string) error {
	if _, err := env.myRaw.ExecContext(ctx, "CREATE DATABASE "+myDB); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	return bank.Setup(ctx, env.pgRaw, env.myRaw, bank.Tables{PgAcct: pgAcct, PgMark: pgMark, MyAcct: myDB + ".acct", MyMark: myDB + ".mark"})
}

// crTeardown rolls back what the node left prepared (after the trial has
// counted it) and drops the trial's tables, with lock timeouts.
func crTeardown(t *testing.T, env *crEnv, prefix string, pgTables []string, myDB string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, db := range []*sql.DB{env.pg, env.my} {
		ps, _ := dtx.ListPrepared(ctx, db)
		for _, p := range ps {
			if strings.HasPrefix(p.Name, prefix) {
				dtx.RollbackPrepared(ctx, db, p.Name)
			}
		}
	}
	if c, err := env.pgRaw.Conn(ctx); err == nil {
		c.ExecContext(ctx, "SET lock_timeout = '5s'")
		for _, tb := range pgTables {
			if _, err := c.ExecContext(ctx, "DROP TABLE IF EXISTS "+tb); err != nil {
				t.Logf("teardown: drop %s: %v", tb, err)
			}
		}
		c.ExecContext(ctx, "RESET lock_timeout")
		c.Close()
	}
	if myDB == "" {
		return
	}
	// The Conn is taken only when it is used: taken and left unclosed for
	// an empty myDB, it kept one MariaDB connection per call open until the
	// test binary exited (goleak found their driver goroutines).
	if c, err := env.myRaw.Conn(ctx); err == nil {
		c.ExecContext(ctx, "SET SESSION lock_wait_timeout = 5")
		if _, err := c.ExecContext(ctx, "DROP DATABASE IF EXISTS "+myDB); err != nil {
			t.Logf("teardown: drop database %s: %v", myDB, err)
		}
		c.ExecContext(ctx, "SET SESSION lock_wait_timeout = DEFAULT")
		c.Close()
	}
}

// crWaitGone waits until neither server has a session of the child left.
// Before recovery (strict false) it leaves out sessions blocked in a row
// lock wait: those wait for locks of branches the dead child left prepared,
// and notice that their client is gone only once recovery has released
// them; they are in the middle of an UPDATE of an unprepared transaction,
// which then ends rolled back. Every other session of the child must be
// gone first, so that no PREPARE, COMMIT or log write it sent is still
// running when recovery looks.
func crWaitGone(ctx context.Context, env *crEnv, node, myDB string, strict bool) error {
	pgq := "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
	// MariaDB: the child's statements that can wait for a row lock are its
	// UPDATEs of acct (innodb_trx, which would tell lock waits exactly, is
	// a cache that frequent reads keep stale for every session).
	myq := "SELECT COUNT(*) FROM information_schema.processlist WHERE db = ?"
	if !strict {
		pgq += " AND wait_event_type IS DISTINCT FROM 'Lock'"
		myq += " AND (info IS NULL OR info NOT LIKE 'UPDATE acct %')"
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var p, m int
		if err := env.pgRaw.QueryRowContext(ctx, pgq, node).Scan(&p); err != nil {
			return err
		}
		if err := env.myRaw.QueryRowContext(ctx, myq, myDB).Scan(&m); err != nil {
			return err
		}
		if p == 0 && m == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var what []string
			rows, err := env.myRaw.QueryContext(ctx, "SELECT CONCAT_WS(' | ', id, command, time, state, info) FROM information_schema.processlist WHERE db = ?", myDB)
			if err == nil {
				for rows.Next() {
					var w sql.NullString
					rows.Scan(&w)
					what = append(what, w.String)
				}
				rows.Close()
			}
			rows, err = env.pgRaw.QueryContext(ctx, "SELECT concat_ws(' | ', pid, state, wait_event_type, wait_event, query) FROM pg_stat_activity WHERE application_name = $1", node)
			if err == nil {
				for rows.Next() {
					var w sql.NullString
					rows.Scan(&w)
					what = append(what, w.String)
				}
				rows.Close()
			}
			return fmt.Errorf("the child's sessions did not end (strict %v): %d in PostgreSQL, %d in MariaDB: %q", strict, p, m, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func crWithAppName(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", err
		}
		q := u.Query()
		q.Set("application_name", name)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return dsn + " application_name=" + name, nil
}
