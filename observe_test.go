package dtx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// Tests of what dtx tells an operator: log lines through a recording slog
// handler, hook calls through a recording Hooks, and Stats, for named
// transactions and Coordinator globals on the real servers.

// ---- recorders ----

type logLine struct {
	level slog.Level
	msg   string
	attrs map[string]any
}

// logRec is a slog handler that keeps every record.
type logRec struct {
	mu    sync.Mutex
	lines []logLine
}

func (h *logRec) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRec) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRec) WithGroup(string) slog.Handler            { return h }
func (h *logRec) Handle(_ context.Context, r slog.Record) error {
	l := logLine{level: r.Level, msg: r.Message, attrs: map[string]any{}}
	r.Attrs(func(a slog.Attr) bool {
		l.attrs[a.Key] = a.Value.Resolve().Any()
		return true
	})
	h.mu.Lock()
	h.lines = append(h.lines, l)
	h.mu.Unlock()
	return nil
}

// find returns the lines at level with msg whose attribute key is val.
func (h *logRec) find(level slog.Level, msg, key string, val any) []logLine {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []logLine
	for _, l := range h.lines {
		if l.level == level && l.msg == msg && fmt.Sprint(l.attrs[key]) == fmt.Sprint(val) {
			out = append(out, l)
		}
	}
	return out
}

// phases returns the phase attribute of the Debug lines msg whose key is val.
func (h *logRec) phases(msg, key, val string) []string {
	var out []string
	for _, l := range h.find(slog.LevelDebug, msg, key, val) {
		out = append(out, fmt.Sprint(l.attrs["phase"]))
	}
	return out
}

// one fails t unless exactly one line matches, and returns it.
func (h *logRec) one(t *testing.T, level slog.Level, msg, key string, val any) logLine {
	t.Helper()
	ls := h.find(level, msg, key, val)
	if len(ls) != 1 {
		h.mu.Lock()
		defer h.mu.Unlock()
		t.Fatalf("%d lines %s %q with %s=%v, want 1; all lines: %+v", len(ls), level, msg, key, val, h.lines)
	}
	return ls[0]
}

// Keys of the contexts hookRec's Start returns: the kind of the operation
// it started, and that of the operation whose context it was given.
type (
	parentKey   struct{}
	parentOfKey struct{}
)

type opEnd struct {
	op     dtx.Op
	r      dtx.Result
	parent dtx.OpKind // the kind of the operation whose Start made ctx's parent, 0 if none
}

// hookRec records every hook call.
type hookRec struct {
	mu   sync.Mutex
	ends []opEnd
	recs []dtx.RecoveryAction
	outs []dtx.Outcome
	sess []dtx.SessionEvent
}

func (r *hookRec) hooks() *dtx.Hooks {
	return &dtx.Hooks{
		Start: func(ctx context.Context, op dtx.Op) context.Context {
			parent, _ := ctx.Value(parentKey{}).(dtx.OpKind)
			ctx = context.WithValue(ctx, parentKey{}, op.Kind)
			return context.WithValue(ctx, parentOfKey{}, parent)
		},
		End: func(ctx context.Context, op dtx.Op, res dtx.Result) {
			parent, _ := ctx.Value(parentOfKey{}).(dtx.OpKind)
			r.mu.Lock()
			r.ends = append(r.ends, opEnd{op, res, parent})
			r.mu.Unlock()
		},
		Recovery: func(_ context.Context, a dtx.RecoveryAction) {
			r.mu.Lock()
			r.recs = append(r.recs, a)
			r.mu.Unlock()
		},
		Outcome: func(_ context.Context, o dtx.Outcome) {
			r.mu.Lock()
			r.outs = append(r.outs, o)
			r.mu.Unlock()
		},
		Session: func(_ context.Context, s dtx.SessionEvent) {
			r.mu.Lock()
			r.sess = append(r.sess, s)
			r.mu.Unlock()
		},
	}
}

// opsOf returns the operations that ended for name (a named transaction)
// or global, in order, as "kind" or "kind:error".
func (r *hookRec) opsOf(global, name string) []opEnd {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []opEnd
	for _, e := range r.ends {
		if global != "" && e.op.Global == global || global == "" && e.op.Global == "" && e.op.Name == name {
			out = append(out, e)
		}
	}
	return out
}

func kinds(es []opEnd) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.op.Kind.String())
	}
	return out
}

func (r *hookRec) sessionsOf(name string) []dtx.SessionEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []dtx.SessionEvent
	for _, s := range r.sess {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

// observedDB opens s through NewConnector with opts (ntMyDB on MariaDB).
func observedDB(t *testing.T, s server, opts ...dtx.Option) *sql.DB {
	t.Helper()
	if s.kind != "postgres" {
		return ntMyDB(t, s, opts...)
	}
	need(t, s)
	pc, err := pq.NewConnector(s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(dtx.NewConnector(pc, dtx.Postgres, opts...))
	t.Cleanup(func() { db.Close() })
	return db
}

func statsOf(t *testing.T, db *sql.DB) dtx.Stats {
	t.Helper()
	st, err := dtx.StatsOf(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// ---- named transactions ----

// TestObserveNamed: a committed, a rolled-back (by name) and a failed
// named transaction, seen through the connector's logger, hooks and Stats.
func TestObserveNamed(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		if s.label == "pgx" {
			t.Skip("pgx is observed the same way; its connector is dtxpgx's")
		}
		logs, hr := &logRec{}, &hookRec{}
		db := observedDB(t, s, dtx.WithLogger(slog.New(logs)), dtx.WithHooks(hr.hooks()))
		tbl := table(t, s, open(t, s, s.raw), "id INT")
		prefix := names(t, s)
		ctx := context.Background()
		ins := "INSERT INTO " + tbl + " (id) VALUES (1)"
		system := map[string]string{"postgres": "postgresql", "mysql": "mysql"}[s.kind]
		before := dtx.ProcessStats()

		committed, rolled, failed := prefix+"c", prefix+"r", prefix+"f"
		exec := func(tx *sql.Tx) error { _, err := tx.ExecContext(ctx, ins); return err }
		if err := dtx.BeginDistributed(ctx, db, committed, exec); err != nil {
			t.Fatal(err)
		}
		if st := statsOf(t, db); st.Prepared != 1 || st.InDoubt() != 1 || s.kind == "mysql" && st.HeldSessions != 1 {
			t.Errorf("stats after prepare: %+v", st)
		}
		if err := dtx.CommitDistributed(ctx, committed); err != nil {
			t.Fatal(err)
		}
		if err := dtx.BeginDistributed(ctx, db, rolled, exec); err != nil {
			t.Fatal(err)
		}
		if err := dtx.RollbackDistributed(ctx, rolled); err != nil {
			t.Fatal(err)
		}
		boom := errors.New("boom")
		if err := dtx.BeginDistributed(ctx, db, failed, func(*sql.Tx) error { return boom }); !errors.Is(err, boom) {
			t.Fatalf("fn's error: %v", err)
		}

		for name, want := range map[string][]string{
			committed: {"begin", "prepare", "commit"},
			rolled:    {"begin", "prepare", "rollback"},
			failed:    {"begin", "rollback"},
		} {
			es := hr.opsOf("", name)
			if got := kinds(es); !slices.Equal(got, want) {
				t.Errorf("%s: hooks saw %v, want %v", name, got, want)
			}
			for _, e := range es {
				if e.op.Mode != dtx.ModeNamed || e.op.System != system || e.r.Err != nil || e.r.Duration <= 0 || e.parent != 0 {
					t.Errorf("%s: %s: %+v", name, e.op.Kind, e)
				}
			}
			if got := logs.phases("dtx: named phase", "name", name); !slices.Equal(got, want) {
				t.Errorf("%s: Debug lines %v, want %v", name, got, want)
			}
		}
		l := logs.find(slog.LevelDebug, "dtx: named phase", "name", committed)[2]
		if l.attrs["mode"] != "named" || l.attrs["system"] != system || l.attrs["duration"].(time.Duration) <= 0 {
			t.Errorf("commit line: %+v", l.attrs)
		}

		st := statsOf(t, db)
		if st.Prepared != 0 || st.Unknown != 0 || st.HeldSessions != 0 || st.Commits != 1 || st.Rollbacks != 1 {
			t.Errorf("stats at the end: %+v", st)
		}
		if p := dtx.ProcessStats(); p.Commits-before.Commits != 1 || p.Rollbacks-before.Rollbacks != 1 {
			t.Errorf("process stats moved from %+v to %+v", before, p)
		}
		if s.kind == "mysql" {
			for _, name := range []string{committed, rolled} {
				ss := hr.sessionsOf(name)
				if len(ss) != 2 || ss[0].Kind != dtx.SessionHeld || ss[1].Kind != dtx.SessionFinished || ss[1].HeldFor <= 0 {
					t.Errorf("%s: sessions %+v, want held then finished", name, ss)
				}
			}
		} else if len(hr.sess) > 0 {
			t.Errorf("PostgreSQL holds no session: %+v", hr.sess)
		}
		if w := logs.find(slog.LevelWarn, "dtx: released a held session; its branch stays prepared", "name", committed); len(w) > 0 {
			t.Errorf("a session finished normally was logged released: %+v", w)
		}
	})
}

// TestObserveReleasedSession: a MariaDB session held past the hold
// timeout is released with a Warn line; the branch stays prepared and is
// committed from another session.
func TestObserveReleasedSession(t *testing.T) {
	s := servers()[1]
	logs, hr := &logRec{}, &hookRec{}
	db := observedDB(t, s, dtx.WithLogger(slog.New(logs)), dtx.WithHooks(hr.hooks()),
		dtx.WithHoldTimeout(100*time.Millisecond), dtx.WithDetachGrace(50*time.Millisecond))
	tbl := table(t, s, open(t, s, s.raw), "id INT")
	name := names(t, s) + "held"
	ctx := context.Background()
	if err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (1)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if st := statsOf(t, db); st.HeldSessions != 1 {
		t.Errorf("held sessions after prepare: %+v", st)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(logs.find(slog.LevelWarn, "dtx: released a held session; its branch stays prepared", "name", name)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no release logged")
		}
		time.Sleep(20 * time.Millisecond)
	}
	l := logs.one(t, slog.LevelWarn, "dtx: released a held session; its branch stays prepared", "name", name)
	if l.attrs["reason"] != dtx.ReleaseTimeout || l.attrs["held_for"].(time.Duration) < 100*time.Millisecond {
		t.Errorf("release line: %+v", l.attrs)
	}
	if st := statsOf(t, db); st.HeldSessions != 0 || st.ReleasedSessions != 1 || st.Prepared != 1 {
		t.Errorf("stats after the release: %+v", st)
	}
	ss := hr.sessionsOf(name)
	if len(ss) != 2 || ss[0].Kind != dtx.SessionHeld || ss[1].Kind != dtx.SessionReleased || ss[1].Reason != dtx.ReleaseTimeout {
		t.Errorf("sessions %+v, want held then released (timeout)", ss)
	}
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatal(err)
	}
	if got := kinds(hr.opsOf("", name)); !slices.Equal(got, []string{"begin", "prepare", "commit"}) {
		t.Errorf("hooks saw %v", got)
	}
	if n := count(t, open(t, s, s.raw), "SELECT COUNT(*) FROM "+tbl); n != 1 {
		t.Errorf("%d rows, want 1", n)
	}
}

// TestObserveDefaults: SetLogger and SetHooks reach the built-in drivers,
// and putting nil back makes them silent.
func TestObserveDefaults(t *testing.T) {
	s := servers()[0]
	logs, hr := &logRec{}, &hookRec{}
	dtx.SetLogger(slog.New(logs))
	dtx.SetHooks(hr.hooks())
	t.Cleanup(func() { dtx.SetLogger(nil); dtx.SetHooks(nil) })
	db := open(t, s, s.wrapped)
	prefix := names(t, s)
	ctx := context.Background()
	noop := func(*sql.Tx) error { return nil }
	if err := dtx.BeginDistributed(ctx, db, prefix+"1", noop); err != nil {
		t.Fatal(err)
	}
	if err := dtx.CommitDistributed(ctx, prefix+"1"); err != nil {
		t.Fatal(err)
	}
	dtx.SetLogger(nil)
	dtx.SetHooks(nil)
	if err := dtx.BeginDistributed(ctx, db, prefix+"2", noop); err != nil {
		t.Fatal(err)
	}
	if err := dtx.CommitDistributed(ctx, prefix+"2"); err != nil {
		t.Fatal(err)
	}
	if got := kinds(hr.opsOf("", prefix+"1")); !slices.Equal(got, []string{"begin", "prepare", "commit"}) {
		t.Errorf("hooks saw %v", got)
	}
	if got := logs.phases("dtx: named phase", "name", prefix+"1"); len(got) != 3 {
		t.Errorf("Debug lines %v", got)
	}
	if got := len(hr.opsOf("", prefix+"2")) + len(logs.find(slog.LevelDebug, "dtx: named phase", "name", prefix+"2")); got != 0 {
		t.Errorf("%d events after the defaults were removed", got)
	}
}

// ---- the Coordinator ----

// TestObserveCoordinator: a committed (two-phase), a one-phase, a
// rolled-back and a recovered global, a global recovery aborts, and a
// heuristic outcome, through the coordinator's logger, hooks and Stats.
// The connectors' own hooks see none of the branches as named
// transactions.
func TestObserveCoordinator(t *testing.T) {
	b := newCoBank(t)
	logs, hr := &logRec{}, &hookRec{}
	// Through the defaults, so that the connectors (the built-in drivers)
	// report to the same recorders.
	dtx.SetLogger(slog.New(logs))
	dtx.SetHooks(hr.hooks())
	t.Cleanup(func() { dtx.SetLogger(nil); dtx.SetHooks(nil) })
	log := coFileLog(t)
	c, node := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) { o.RecoverGrace = 10 * time.Minute })
	ctx := coCtx(t)

	// Committed, two-phase.
	var gc, g1, gr string
	if err := c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
		gc = g.ID()
		return b.transfer(1, 1, 5)(ctx, g)
	}); err != nil {
		t.Fatal(err)
	}
	es := hr.opsOf(gc, "")
	if got, want := kinds(es), []string{"begin", "begin", "prepare", "decide", "commit", "global"}; !slices.Equal(got, want) {
		t.Errorf("committed global: hooks saw %v, want %v", got, want)
	}
	for _, e := range es {
		wantParent := dtx.OpGlobal
		if e.op.Kind == dtx.OpGlobal {
			wantParent = 0
		}
		if e.r.Err != nil || e.parent != wantParent {
			t.Errorf("committed global: %s: %+v", e.op.Kind, e)
		}
		switch e.op.Kind {
		case dtx.OpBegin:
			if e.op.Name == "" || e.op.System == "" || e.op.Resource == "" {
				t.Errorf("begin: %+v", e.op)
			}
		default:
			if e.op.Mode != dtx.ModeTwoPhase || e.op.Branches != 2 {
				t.Errorf("%s: %+v", e.op.Kind, e.op)
			}
		}
	}
	if got, want := logs.phases("dtx: global phase", "global", gc), []string{"begin", "begin", "prepare", "decide", "commit", "global"}; !slices.Equal(got, want) {
		t.Errorf("committed global: Debug lines %v, want %v", got, want)
	}
	l := logs.find(slog.LevelDebug, "dtx: global phase", "global", gc)[5]
	if l.attrs["mode"] != "two-phase" || fmt.Sprint(l.attrs["branches"]) != "2" || l.attrs["duration"].(time.Duration) <= 0 {
		t.Errorf("global line: %+v", l.attrs)
	}

	// One-phase: one branch writes.
	if err := c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
		g1 = g.ID()
		tx, err := g.Begin(ctx, "pg", nil)
		if err != nil {
			return err
		}
		return b.pgStep(ctx, tx, g.ID(), 2, 0)
	}); err != nil {
		t.Fatal(err)
	}
	if got := kinds(hr.opsOf(g1, "")); !slices.Equal(got, []string{"begin", "commit", "global"}) {
		t.Errorf("one-phase global: hooks saw %v", got)
	}
	if e := hr.opsOf(g1, "")[1]; e.op.Mode != dtx.ModeOnePhase || e.op.Branches != 1 {
		t.Errorf("one-phase commit: %+v", e.op)
	}

	// Rolled back: fn fails after beginning both branches.
	boom := errors.New("boom")
	err := c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
		gr = g.ID()
		if err := b.transfer(1, 1, 5)(ctx, g); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, dtx.ErrRolledBack) || !errors.Is(err, boom) {
		t.Fatalf("rolled back: %v", err)
	}
	es = hr.opsOf(gr, "")
	if got := kinds(es); !slices.Equal(got, []string{"begin", "begin", "rollback", "global"}) {
		t.Errorf("rolled-back global: hooks saw %v", got)
	}
	if end := es[len(es)-1]; !errors.Is(end.r.Err, dtx.ErrRolledBack) || end.op.Mode != 0 || dtx.Retryable(end.r.Err) {
		t.Errorf("rolled-back global's end: %+v (retryable %v)", end, dtx.Retryable(end.r.Err))
	}
	gl := logs.find(slog.LevelDebug, "dtx: global phase", "global", gr)
	if len(gl) != 4 || gl[3].attrs["phase"] != "global" || gl[3].attrs["err"] == nil {
		t.Errorf("rolled-back global: Debug lines %+v", gl)
	}

	// Recovered: a decided global left prepared, and an undecided old one.
	decided, undecided := coGlobalAt(time.Now()), coGlobalAt(time.Now().Add(-time.Hour))
	refs := b.prepareTransfer(t, node, decided, 3, 3, 7)
	old := b.prepareTransfer(t, node, undecided, 4, 4, 8)
	if err := log.Decide(ctx, dtx.Decision{Global: decided, Node: node, Branches: refs, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	rep := coRecover(t, c)
	if len(rep.Committed) != 2 || len(rep.RolledBack) != 2 {
		t.Fatalf("recovery: %+v", rep)
	}
	for _, r := range refs {
		l := logs.one(t, slog.LevelInfo, "dtx: recovery committed a branch", "branch", r.Name)
		if l.attrs["global"] != decided || l.attrs["node"] != node || l.attrs["resource"] != r.Resource {
			t.Errorf("recovery commit line: %+v", l.attrs)
		}
	}
	for _, r := range old {
		logs.one(t, slog.LevelInfo, "dtx: recovery rolled back a branch", "branch", r.Name)
	}
	logs.one(t, slog.LevelInfo, "dtx: recovery aborted an undecided global", "global", undecided)
	hr.mu.Lock()
	var acts []string
	for _, a := range hr.recs {
		if a.Err != nil {
			t.Errorf("failed recovery action: %+v", a)
		}
		acts = append(acts, a.Kind.String()+" "+a.Global+" "+a.Name)
	}
	hr.mu.Unlock()
	slices.Sort(acts)
	want := []string{
		"abort " + undecided + " ",
		"commit " + decided + " " + refs[0].Name, "commit " + decided + " " + refs[1].Name,
		"rollback " + undecided + " " + old[0].Name, "rollback " + undecided + " " + old[1].Name,
	}
	slices.Sort(want)
	if !slices.Equal(acts, want) {
		t.Errorf("recovery actions %v, want %v", acts, want)
	}

	// Heuristic: the MariaDB branch (not the decider) is rolled back by
	// hand between the decision and phase two.
	var gh string
	restore := dtx.SetHook(func(p string) {
		if p == "decided" {
			if err := dtx.RollbackDistributed(context.Background(), coBranch(node, gh, 1)); err != nil {
				t.Errorf("rolling back by hand: %v", err)
			}
		}
	})
	err = c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
		gh = g.ID()
		return b.transfer(2, 2, 1)(ctx, g)
	})
	restore()
	if !errors.Is(err, dtx.ErrHeuristic) {
		t.Fatalf("heuristic: %v", err)
	}
	hl := logs.one(t, slog.LevelWarn, "dtx: heuristic outcome", "global", gh)
	if fmt.Sprint(hl.attrs["gone"]) != fmt.Sprint([]string{coBranch(node, gh, 1)}) || hl.attrs["retryable"] != false {
		t.Errorf("heuristic line: %+v", hl.attrs)
	}
	hr.mu.Lock()
	outs := slices.Clone(hr.outs)
	hr.mu.Unlock()
	if len(outs) != 1 || outs[0].Kind != dtx.OutcomeHeuristic || outs[0].Global != gh || !errors.Is(outs[0].Err, dtx.ErrHeuristic) {
		t.Errorf("outcomes %+v", outs)
	}

	// The branches were the coordinator's to report: the connectors saw
	// no named transaction of this node (begun by Do or by hand).
	hr.mu.Lock()
	for _, e := range hr.ends {
		if e.op.Global == "" && strings.HasPrefix(e.op.Name, "g."+node+".") {
			t.Errorf("a branch reported as a named transaction: %+v", e)
		}
	}
	hr.mu.Unlock()

	st := c.Stats()
	if st.CommitsTwoPhase != 1 || st.CommitsOnePhase != 1 || st.RolledBack != 1 || st.Heuristic != 1 || st.Pending != 0 ||
		st.RecoveredCommits != 2 || st.RecoveredRollbacks != 2 || st.RecoveryAborts != 1 || st.RecoveryErrors != 0 || st.Active != 0 || st.Waiting != 0 {
		t.Errorf("coordinator stats %+v", st)
	}
}

// TestObservePending: a decided global whose MariaDB branch cannot be
// committed within phase two's deadline (its session was released by
// Forget, and the detach grace is longer than the coordinator's Timeout)
// ends pending, with a Warn line and a released session; recovery then
// commits it.
func TestObservePending(t *testing.T) {
	b := newCoBank(t)
	mys := coMy()
	dtx.Register("dtx+mysql-obs-grace", &mysql.MySQLDriver{}, dtx.MySQL, dtx.WithDetachGrace(4*time.Second))
	// The only dtx database of the server in this process: a search by
	// name would finish the branch from another with the default grace.
	b.my.Close()
	b.my = open(t, mys, "dtx+mysql-obs-grace")
	logs, hr := &logRec{}, &hookRec{}
	dtx.SetLogger(slog.New(logs))
	dtx.SetHooks(hr.hooks())
	t.Cleanup(func() { dtx.SetLogger(nil); dtx.SetHooks(nil) })
	c, node := newCoord(t, b, nil, func(o *dtx.CoordinatorOptions) { o.Timeout = 2 * time.Second })
	ctx := coCtx(t)
	var g string
	restore := dtx.SetHook(func(p string) {
		if p == "decided" {
			dtx.Forget(coBranch(node, g, 1))
		}
	})
	err := c.Do(ctx, func(ctx context.Context, gl *dtx.Global) error {
		g = gl.ID()
		return b.transfer(1, 1, 3)(ctx, gl)
	})
	restore()
	if !errors.Is(err, dtx.ErrPending) {
		t.Fatalf("pending: %v", err)
	}
	branch := coBranch(node, g, 1)
	l := logs.one(t, slog.LevelWarn, "dtx: global decided, branches pending for recovery", "global", g)
	if fmt.Sprint(l.attrs["pending"]) != fmt.Sprint([]string{branch}) || l.attrs["retryable"] != true {
		t.Errorf("pending line: %+v", l.attrs)
	}
	rl := logs.one(t, slog.LevelWarn, "dtx: released a held session; its branch stays prepared", "name", branch)
	if rl.attrs["reason"] != dtx.ReleaseForget {
		t.Errorf("release line: %+v", rl.attrs)
	}
	hr.mu.Lock()
	outs := slices.Clone(hr.outs)
	hr.mu.Unlock()
	if len(outs) != 1 || outs[0].Kind != dtx.OutcomePending || !slices.Equal(outs[0].Branches, []string{branch}) || !dtx.Retryable(outs[0].Err) {
		t.Errorf("outcomes %+v", outs)
	}
	if st := c.Stats(); st.Pending != 1 || st.CommitsTwoPhase != 0 {
		t.Errorf("stats after Do: %+v", st)
	}
	rep := coRecover(t, c)
	if !slices.Equal(rep.Committed, []string{branch}) {
		t.Fatalf("recovery: %+v", rep)
	}
	logs.one(t, slog.LevelInfo, "dtx: recovery committed a branch", "branch", branch)
	if m := b.check(t); !m[g] {
		t.Errorf("marker of %s missing", g)
	}
	if st := c.Stats(); st.RecoveredCommits != 1 || st.Waiting != 0 {
		t.Errorf("stats after recovery: %+v", st)
	}
}

// TestRetryable: transient causes are retryable through any wrapping;
// heuristic outcomes and a caller's cancel are not.
func TestRetryable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{dtx.ErrOutcomeUnknown, true},
		{fmt.Errorf("%w: %w", dtx.ErrRolledBack, context.DeadlineExceeded), true},
		{fmt.Errorf("%w: %w", dtx.ErrRolledBack, &pq.Error{Code: "40001"}), true},
		{fmt.Errorf("%w: %w", dtx.ErrRolledBack, &mysql.MySQLError{Number: 1213}), true},
		{fmt.Errorf("%w: %w", dtx.ErrRolledBack, &pq.Error{Code: "23505"}), false},
		{fmt.Errorf("%w: %w", dtx.ErrRolledBack, context.Canceled), false},
		{&dtx.PendingError{Global: "g", Err: errors.New("x")}, true},
		{&dtx.HeuristicError{Global: "g", Err: dtx.ErrOutcomeUnknown}, false},
		{dtx.ErrAlreadyFinished, false},
		{dtx.ErrNameHeld, true},
	} {
		if got := dtx.Retryable(c.err); got != c.want {
			t.Errorf("Retryable(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// TestStatsOf: a database dtx has not learned yet is found through one of
// its connections; a database not opened through dtx is refused.
func TestStatsOf(t *testing.T) {
	s := servers()[0]
	db := open(t, s, s.wrapped)
	name := names(t, s) + "s"
	ctx := context.Background()
	tx, err := db.BeginTx(dtx.WithName(ctx, name), nil) // WithName: the pool is not learned
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if st := statsOf(t, db); st.Prepared != 1 {
		t.Errorf("stats while prepared: %+v", st)
	}
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatal(err)
	}
	if st := statsOf(t, db); st.Prepared != 0 || st.Commits != 1 {
		t.Errorf("stats after commit: %+v", st)
	}
	if _, err := dtx.StatsOf(ctx, open(t, s, s.raw)); !errors.Is(err, dtx.ErrNotDTX) {
		t.Errorf("StatsOf a raw database: %v", err)
	}
}
