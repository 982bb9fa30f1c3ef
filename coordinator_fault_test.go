package dtx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/internal/netproxy"
	"github.com/go-sql-driver/mysql"
)

// Faults that broke the first design of the Coordinator, one test each,
// against the real servers: two replicas, a partial configuration, a
// decision that stalls while another node recovers, a store that
// acknowledges early, lost replies, read-only branches, cancelled contexts.

// coViaProxy opens s through dtx by way of a proxy to s's server.
func coViaProxy(t *testing.T, s server, p *netproxy.Proxy) *sql.DB {
	t.Helper()
	need(t, s)
	var dsn string
	switch s.kind {
	case "postgres":
		u, err := url.Parse(s.dsn)
		if err != nil {
			t.Fatal(err)
		}
		u.Host = p.Addr()
		dsn = u.String()
	default:
		cfg, err := mysql.ParseDSN(s.dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Net, cfg.Addr = "tcp", p.Addr()
		dsn = cfg.FormatDSN()
	}
	db, err := sql.Open(s.wrapped, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// coServerAddr is the host:port of s's server.
func coServerAddr(t *testing.T, s server) string {
	t.Helper()
	if s.kind == "postgres" {
		u, err := url.Parse(s.dsn)
		if err != nil {
			t.Fatal(err)
		}
		return u.Host
	}
	cfg, err := mysql.ParseDSN(s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Addr
}

// coSharedLog is an SQLLog in a database that takes no part in the globals,
// shared by every coordinator a test makes.
func coSharedLog(t *testing.T) *dtx.SQLLog {
	t.Helper()
	return coLogKinds()[2].open(t, nil).(*dtx.SQLLog)
}

// coCrashAt makes the coordinator's goroutine panic at point, as a process
// dying there would stop: nothing after it runs. It returns a function
// that runs do and swallows the panic.
func coCrashAt(t *testing.T, point string) func(do func()) {
	restore := dtx.SetHook(func(p string) {
		if p == point {
			panic("crash at " + point)
		}
	})
	t.Cleanup(restore)
	return func(do func()) {
		defer func() {
			if r := recover(); r == nil {
				t.Fatalf("the global did not pass %s", point)
			}
		}()
		do()
	}
}

// Finding 1: replicas of one deployment with their own FileLogs shared one
// default node (the host name), and one rolled back the other's decided
// branch. Now each FileLog has its own random node, and recovery never
// touches a node's globals outside its store.
func TestCoordinatorReplicasWithOwnLogs(t *testing.T) {
	b := newCoBank(t)
	logA, logB := coFileLog(t), coFileLog(t)
	res := map[string]*sql.DB{"pg": b.pg, "my": b.my}
	a, err := dtx.NewCoordinator(dtx.CoordinatorOptions{Log: logA, Resources: res, RecoverInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	coCleanupPrefix(t, "g."+a.Node()+".")
	bc, err := dtx.NewCoordinator(dtx.CoordinatorOptions{Log: logB, Resources: res, RecoverInterval: -1, RecoverGrace: time.Nanosecond, AbandonAge: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bc.Close() })
	if a.Node() == bc.Node() || a.Node() == "" {
		t.Fatalf("replicas got nodes %q and %q", a.Node(), bc.Node())
	}
	var gid string
	coCrashAt(t, "decided")(func() {
		a.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
			gid = g.ID()
			return b.transfer(1, 1, 30)(ctx, g)
		})
	})
	a.Close() // replica A is gone, its branches prepared and decided
	rep, err := bc.Recover(coCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Committed)+len(rep.RolledBack)+len(rep.Aborted)+len(rep.Forgotten) > 0 {
		t.Fatalf("replica B touched A's global: %+v", rep)
	}
	if got := len(coPrepared(t, b.pg, "g."+a.Node()+".")) + len(coPrepared(t, b.my, "g."+a.Node()+".")); got != 2 {
		t.Fatalf("%d of A's branches prepared, want 2", got)
	}
	// A restarts on its own log: its node comes back with it, and its
	// recovery commits the decided global.
	a2, err := dtx.NewCoordinator(dtx.CoordinatorOptions{Log: logA, Resources: res, RecoverInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a2.Close() })
	if a2.Node() != a.Node() {
		t.Fatalf("node after restart %q, want %q", a2.Node(), a.Node())
	}
	coRecover(t, a2)
	if m := b.check(t); !m[gid] {
		t.Errorf("marker of %s missing", gid)
	}
	noneLeft(t, b, logA, a.Node())
}

// A shared store needs a node id given: there is no default that two
// replicas could not share. And one process cannot run two coordinators
// of one node: each would take the other's globals for its own.
func TestCoordinatorNodeRequired(t *testing.T) {
	b := newCoBank(t)
	res := map[string]*sql.DB{"pg": b.pg, "my": b.my}
	for _, opts := range []dtx.CoordinatorOptions{
		{Resources: res, RecoverInterval: -1},
		{Resources: res, RecoverInterval: -1, Log: coSharedLog(t)},
	} {
		if _, err := dtx.NewCoordinator(opts); err == nil || !strings.Contains(err.Error(), "Node is required") {
			t.Errorf("NewCoordinator without a node: %v, want Node is required", err)
		}
	}
	node := "t" + token()
	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{Resources: res, Node: node, RecoverInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	_, err = dtx.NewCoordinator(dtx.CoordinatorOptions{Resources: res, Node: node, RecoverInterval: -1})
	if !errors.Is(err, dtx.ErrNameInUse) {
		t.Errorf("second coordinator of node %s: %v, want ErrNameInUse", node, err)
	}
	c.Close()
	c2, err := dtx.NewCoordinator(dtx.CoordinatorOptions{Resources: res, Node: node, RecoverInterval: -1})
	if err != nil {
		t.Fatalf("node %s after Close: %v", node, err)
	}
	c2.Close()
}

// Takeover: a node that is gone for good (a recreated pod with a new name)
// leaves globals behind; any node sharing the store finishes them after
// the abandon age: decided ones committed, undecided ones aborted first and
// then rolled back.
func TestCoordinatorTakeover(t *testing.T) {
	for _, kind := range []string{"in-pg", "sql-postgres"} {
		t.Run(kind, func(t *testing.T) {
			b := newCoBank(t)
			var log dtx.Log
			for _, k := range coLogKinds() {
				if k.name == kind {
					log = k.open(t, b)
				}
			}
			dead, deadNode := newCoord(t, b, log, nil)
			var decided, undecided string
			coCrashAt(t, "decided")(func() {
				dead.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
					decided = g.ID()
					return b.transfer(1, 1, 10)(ctx, g)
				})
			})
			coCrashAt(t, "before-decide")(func() {
				dead.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
					undecided = g.ID()
					return b.transfer(2, 2, 20)(ctx, g)
				})
			})
			dead.Close()
			young, _ := newCoord(t, b, log, nil) // default abandon age: too young to take over
			if rep, err := young.Recover(coCtx(t)); err != nil || len(rep.Committed)+len(rep.RolledBack)+len(rep.Aborted) > 0 {
				t.Fatalf("recovery before the abandon age: %+v, %v", rep, err)
			}
			heir, _ := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) { o.AbandonAge = time.Millisecond })
			rep := coRecover(t, heir)
			if !slices.Contains(rep.Forgotten, decided) {
				t.Errorf("decided global %s not finished: %+v", decided, rep)
			}
			m := b.check(t)
			if !m[decided] || m[undecided] {
				t.Errorf("markers %v: want %s and not %s", m, decided, undecided)
			}
			// The abort fences the undecided global's key: its decision
			// can never land now.
			err := log.Decide(coCtx(t), dtx.Decision{Global: undecided, Node: deadNode, At: time.Now()})
			if !errors.Is(err, dtx.ErrAborted) {
				t.Errorf("Decide after takeover's abort: %v, want ErrAborted", err)
			}
			noneLeft(t, b, log, deadNode)
		})
	}
}

// Finding 2: a process restarted with only some resources configured
// committed what it saw and forgot the decision; the next restart rolled
// the other branch back. Now the decision stays until every branch it
// names was looked at.
func TestCoordinatorRecoverPartialConfig(t *testing.T) {
	b := newCoBank(t)
	log := coFileLog(t)
	node := "t" + token()
	c, _ := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) { o.Node = node })
	var gid string
	coCrashAt(t, "decided")(func() {
		c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
			gid = g.ID()
			return b.transfer(1, 1, 40)(ctx, g)
		})
	})
	c.Close()
	pgOnly, _ := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) {
		o.Node = node
		o.Resources = map[string]*sql.DB{"pg": b.pg}
	})
	rep, err := pgOnly.Recover(coCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{gid + " my"}; !slices.Equal(rep.Unresolved, want) || len(rep.Forgotten) > 0 {
		t.Fatalf("report %+v, want unresolved %v and nothing forgotten", rep, want)
	}
	if ds, _ := log.Pending(coCtx(t), node); len(ds) != 1 {
		t.Fatalf("decision forgotten with a branch unseen: %+v", ds)
	}
	pgOnly.Close()
	both, _ := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) { o.Node = node })
	coRecover(t, both)
	if m := b.check(t); !m[gid] {
		t.Errorf("marker of %s missing", gid)
	}
	noneLeft(t, b, log, node)
}

// Finding 2, the store's side: MariaDB's default collation compares
// without case, and node "nodea" read node "NodeA"'s decisions.
func TestSQLLogNodeExact(t *testing.T) {
	b := newCoBank(t)
	log := coLogKinds()[3].open(t, b) // sql-mysql
	upper := "N" + token()
	lower := strings.ToLower(upper)
	g := coGlobalAt(time.Now())
	if err := log.Decide(coCtx(t), dtx.Decision{Global: g, Node: upper, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if ds, err := log.Pending(coCtx(t), lower); err != nil || len(ds) != 0 {
		t.Errorf("Pending(%s) = %+v, %v; want nothing", lower, ds, err)
	}
	if ds, err := log.Pending(coCtx(t), upper); err != nil || len(ds) != 1 {
		t.Errorf("Pending(%s) = %+v, %v; want its decision", upper, ds, err)
	}
}

// Finding 3: a decision that stalled (a lock, SIGSTOP, a VM pause) let
// another incarnation roll a branch back, and then landed and committed
// the other. Now recovery aborts under the global's key before it rolls
// anything back, and the late decision meets that key. With the decision
// kept in a participant, the stalled decision holds the key uncommitted
// and recovery cannot abort at all until it ends.
func TestCoordinatorStalledDecision(t *testing.T) {
	for _, kind := range []string{"sql-postgres", "in-pg"} {
		t.Run(kind, func(t *testing.T) {
			b := newCoBank(t)
			var log dtx.Log
			for _, k := range coLogKinds() {
				if k.name == kind {
					log = k.open(t, b)
				}
			}
			slow, _ := newCoord(t, b, log, nil)
			other, _ := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) { o.AbandonAge = time.Nanosecond })
			stalled, resume := make(chan struct{}), make(chan struct{})
			var once sync.Once
			t.Cleanup(dtx.SetHook(func(p string) {
				if p == "before-decide" {
					once.Do(func() { close(stalled); <-resume })
				}
			}))
			var gid string
			done := make(chan error, 1)
			go func() {
				done <- slow.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
					gid = g.ID()
					return b.transfer(3, 3, 50)(ctx, g)
				})
			}()
			<-stalled
			rep, rerr := other.Recover(coCtx(t))
			close(resume)
			err := <-done
			if kind == "in-pg" {
				// The uncommitted decision row holds the key: the other
				// node waits, the global commits.
				if len(rep.Aborted)+len(rep.RolledBack) > 0 {
					t.Fatalf("recovery aborted a global whose decision was being committed: %+v", rep)
				}
				if err != nil {
					t.Fatalf("Do: %v", err)
				}
				if m := b.check(t); !m[gid] {
					t.Errorf("marker of %s missing", gid)
				}
				return
			}
			if rerr != nil || !slices.Equal(rep.Aborted, []string{gid}) || len(rep.RolledBack) != 2 {
				t.Fatalf("recovery of the stalled global: %+v, %v; want it aborted and both branches rolled back", rep, rerr)
			}
			if !errors.Is(err, dtx.ErrRolledBack) || !errors.Is(err, dtx.ErrAborted) {
				t.Fatalf("Do after its global was aborted: %v, want ErrRolledBack and ErrAborted", err)
			}
			b.unchanged(t)
		})
	}
}

// Finding 4: the SQL store's decision was a bare INSERT; with autocommit
// off it was never committed, and PostgreSQL with synchronous_commit off
// acknowledged it before its WAL was flushed.
func TestSQLLogDurableWrites(t *testing.T) {
	t.Run("mysql autocommit off", func(t *testing.T) {
		s := coMy()
		need(t, s)
		cfg, err := mysql.ParseDSN(s.dsn)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Params == nil {
			cfg.Params = map[string]string{}
		}
		cfg.Params["autocommit"] = "0"
		db, err := sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		name := "dtx_log_" + token()
		l, err := dtx.OpenSQLLog(coCtx(t), db, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { drop(t, s, name) })
		g, a := coGlobalAt(time.Now()), coGlobalAt(time.Now())
		if err := l.Decide(coCtx(t), dtx.Decision{Global: g, Node: "n1", At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Abort(coCtx(t), a); err != nil {
			t.Fatal(err)
		}
		db.Close() // an uncommitted row would go with its session
		raw := open(t, s, s.raw)
		if n := count(t, raw, "SELECT COUNT(*) FROM "+name+" WHERE global_id IN (?, ?)", g, a); n != 2 {
			t.Errorf("%d of 2 rows committed", n)
		}
	})
	t.Run("postgres synchronous_commit off", func(t *testing.T) {
		s := coPG()
		raw := open(t, s, s.raw)
		name := "dtx_log_" + token()
		audit := table(t, s, raw, "setting TEXT")
		u, _ := url.Parse(s.dsn)
		q := u.Query()
		q.Set("options", "-c synchronous_commit=off")
		u.RawQuery = q.Encode()
		db, err := sql.Open("postgres", u.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		var sc string
		if err := db.QueryRow("SHOW synchronous_commit").Scan(&sc); err != nil || sc != "off" {
			t.Fatalf("session synchronous_commit %q, %v; want off", sc, err)
		}
		l, err := dtx.OpenSQLLog(coCtx(t), db, name)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { drop(t, s, name) })
		// A trigger records the setting each write of the log runs with.
		coExec(t, raw, fmt.Sprintf(`CREATE FUNCTION %s_f() RETURNS trigger LANGUAGE plpgsql AS $$
			BEGIN INSERT INTO %s VALUES (current_setting('synchronous_commit')); RETURN NEW; END $$`, name, audit))
		t.Cleanup(func() { raw.Exec("DROP FUNCTION IF EXISTS " + name + "_f() CASCADE") })
		coExec(t, raw, fmt.Sprintf("CREATE TRIGGER %s_t BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION %s_f()", name, name, name))
		if err := l.Decide(coCtx(t), dtx.Decision{Global: coGlobalAt(time.Now()), Node: "n1", At: time.Now()}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.Abort(coCtx(t), coGlobalAt(time.Now())); err != nil {
			t.Fatal(err)
		}
		if n := count(t, raw, "SELECT COUNT(*) FROM "+audit+" WHERE setting = 'on'"); n != 2 {
			t.Errorf("%d of 2 writes ran with synchronous_commit on", n)
		}
	})
}

// The SQL store's fence on each server: Decide and Abort race for one key.
func TestSQLLogFence(t *testing.T) {
	for _, i := range []int{2, 3} { // sql-postgres, sql-mysql
		k := coLogKinds()[i]
		t.Run(k.name, func(t *testing.T) {
			log := k.open(t, nil)
			ctx := coCtx(t)
			a, d := coGlobalAt(time.Now()), coGlobalAt(time.Now())
			if dec, err := log.Abort(ctx, a); dec != nil || err != nil {
				t.Fatalf("Abort: %v, %v", dec, err)
			}
			if err := log.Decide(ctx, dtx.Decision{Global: a, Node: "n", At: time.Now()}); !errors.Is(err, dtx.ErrAborted) {
				t.Errorf("Decide after Abort: %v, want ErrAborted", err)
			}
			if dec, err := log.Abort(ctx, a); dec != nil || err != nil {
				t.Errorf("Abort again: %v, %v", dec, err)
			}
			want := dtx.Decision{Global: d, Node: "n", At: time.Now(), Branches: []dtx.BranchRef{{Resource: "r", Name: "x"}}}
			if err := log.Decide(ctx, want); err != nil {
				t.Fatal(err)
			}
			if err := log.Decide(ctx, want); err != nil {
				t.Errorf("Decide again: %v", err)
			}
			if dec, err := log.Abort(ctx, d); err != nil || dec == nil || dec.Global != d || !slices.Equal(dec.Branches, want.Branches) {
				t.Errorf("Abort after Decide: %+v, %v; want the decision", dec, err)
			}
			// Older than half the retention: refused, as its abort may be
			// dropped already.
			old := coGlobalAt(time.Now().Add(-13 * time.Hour))
			if err := log.Decide(ctx, dtx.Decision{Global: old, Node: "n", At: time.Now()}); !errors.Is(err, dtx.ErrAborted) {
				t.Errorf("Decide of a 13 h old global: %v, want ErrAborted", err)
			}
			// Races: each global gets exactly one outcome.
			const n = 40
			gs := make([]string, n)
			won := make([]string, n)
			var wg sync.WaitGroup
			for i := range gs {
				gs[i] = coGlobalAt(time.Now())
				wg.Add(2)
				go func() {
					defer wg.Done()
					if err := log.Decide(ctx, dtx.Decision{Global: gs[i], Node: "n", At: time.Now()}); err == nil {
						won[i] += "D"
					} else if !errors.Is(err, dtx.ErrAborted) {
						t.Errorf("Decide %d: %v", i, err)
					}
				}()
				go func() {
					defer wg.Done()
					// A loser that waited for the winner's commit and timed
					// out tries again: the fence never gives both.
					for try := 0; ; try++ {
						dec, err := log.Abort(ctx, gs[i])
						if err != nil && try < 5 {
							continue
						}
						if err != nil {
							t.Errorf("Abort %d: %v", i, err)
						} else if dec == nil {
							won[i] += "A"
						}
						return
					}
				}()
			}
			wg.Wait()
			for i, w := range won {
				if w != "D" && w != "A" {
					t.Errorf("global %d: outcomes %q, want exactly one", i, w)
				}
			}
		})
	}
}

// Finding 6: a lost reply to COMMIT PREPARED (database/sql re-sent it after
// lib/pq's ErrBadConn and got "does not exist") was reported as a heuristic
// outcome while both rows were committed.
func TestCoordinatorLostCommitPreparedReply(t *testing.T) {
	b := newCoBank(t)
	p := newProxy(t, coServerAddr(t, coPG()))
	pg := coViaProxy(t, coPG(), p)
	log := coLogKinds()[4].open(t, b) // in-my: MariaDB decides, PostgreSQL is prepared
	c, node := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) {
		o.Resources = map[string]*sql.DB{"pg": pg, "my": b.my}
	})
	p.DropReplyTo("COMMIT PREPARED")
	var gid string
	err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
		gid = g.ID()
		return b.transfer(1, 1, 15)(ctx, g)
	})
	if err != nil {
		t.Fatalf("Do: %v, want nil (the lost reply's COMMIT PREPARED did commit)", err)
	}
	if p.Drops() != 1 {
		t.Fatalf("the proxy lost %d replies, want 1", p.Drops())
	}
	if m := b.check(t); !m[gid] {
		t.Errorf("marker of %s missing", gid)
	}
	noneLeft(t, b, log, node)
}

// Finding 6 on MariaDB: a lost reply to XA COMMIT on the held session, then
// a retry from another session that finds the branch gone.
func TestCoordinatorLostXACommitReply(t *testing.T) {
	b := newCoBank(t)
	p := newProxy(t, coServerAddr(t, coMy()))
	my := coViaProxy(t, coMy(), p)
	c, node := newCoord(t, b, nil, func(o *dtx.CoordinatorOptions) {
		o.Resources = map[string]*sql.DB{"pg": b.pg, "my": my} // PostgreSQL decides
	})
	p.DropReplyTo("XA COMMIT")
	var gid string
	err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
		gid = g.ID()
		return b.transfer(2, 2, 15)(ctx, g)
	})
	if err != nil {
		t.Fatalf("Do: %v, want nil", err)
	}
	if p.Drops() != 1 {
		t.Fatalf("the proxy lost %d replies, want 1", p.Drops())
	}
	if m := b.check(t); !m[gid] {
		t.Errorf("marker of %s missing", gid)
	}
	for _, db := range []*sql.DB{b.pg, b.my} {
		if got := coPrepared(t, db, "g."+node+"."); len(got) > 0 {
			t.Errorf("still prepared: %v", got)
		}
	}
}

// Finding 6: a MariaDB branch that only read, whose session was released
// before phase two, answers XA_RBROLLBACK from another session: that is a
// commit of nothing, not a heuristic outcome. A branch begun read-only
// votes read-only and is never prepared.
func TestCoordinatorReadOnlyBranches(t *testing.T) {
	b := newCoBank(t)
	// Hold limit 0: every prepared MariaDB session is released at once, so
	// phase two runs from another session.
	need(t, coMy())
	cfg, err := mysql.ParseDSN(myDSN())
	if err != nil {
		t.Fatal(err)
	}
	mc, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	myRel := sql.OpenDB(dtx.NewConnector(mc, dtx.MySQL, dtx.WithHoldLimit(0), dtx.WithDetachGrace(20*time.Millisecond)))
	t.Cleanup(func() { myRel.Close() })
	c, node := newCoord(t, b, nil, func(o *dtx.CoordinatorOptions) {
		o.Resources = map[string]*sql.DB{"pg": b.pg, "my": myRel}
	})
	read := func(opts *sql.TxOptions) error {
		return c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
			ptx, err := g.Begin(ctx, "pg", nil)
			if err != nil {
				return err
			}
			mtx, err := g.Begin(ctx, "my", opts)
			if err != nil {
				return err
			}
			if err := b.pgStep(ctx, ptx, g.ID(), 1, 0); err != nil {
				return err
			}
			var v int64
			if err := mtx.QueryRowContext(ctx, "SELECT bal FROM "+b.myAcct+" WHERE id = 1").Scan(&v); err != nil {
				return err
			}
			// A second PostgreSQL branch keeps it a two-phase global.
			ptx2, err := g.Begin(ctx, "pg", nil)
			if err != nil {
				return err
			}
			_, err = ptx2.ExecContext(ctx, "UPDATE "+b.pgAcct+" SET bal = bal WHERE id = 2")
			return err
		})
	}
	if err := read(nil); err != nil {
		t.Fatalf("global with a released read-only MariaDB branch: %v", err)
	}
	points := coHooks(t)
	if err := read(&sql.TxOptions{ReadOnly: true}); err != nil {
		t.Fatalf("global with a MariaDB branch begun read-only: %v", err)
	}
	if slices.Contains(points(), "prepared:1") {
		t.Errorf("the read-only branch was prepared: %v", points())
	}
	for _, db := range []*sql.DB{b.pg, b.my} {
		if got := coPrepared(t, db, "g."+node+"."); len(got) > 0 {
			t.Errorf("still prepared: %v", got)
		}
	}
}

// Finding 7: a ctx cancelled before the decision left the branches
// prepared with ErrOutcomeUnknown; cancelled after it, phase two was
// skipped. Now the first rolls back at once, the second commits.
func TestCoordinatorCancel(t *testing.T) {
	eachLog(t, false, func(t *testing.T, newLog func(*testing.T, *coBank) dtx.Log) {
		b := newCoBank(t)
		log := newLog(t, b)
		c, node := newCoord(t, b, log, nil)
		for _, point := range []string{"prepared:1", "decided"} {
			ctx, cancel := context.WithCancel(coCtx(t))
			restore := dtx.SetHook(func(p string) {
				if p == point {
					cancel()
				}
			})
			var gid string
			err := c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
				gid = g.ID()
				return b.transfer(1, 1, 5)(ctx, g)
			})
			restore()
			for _, db := range []*sql.DB{b.pg, b.my} {
				if got := coPrepared(t, db, "g."+node+"."); len(got) > 0 {
					t.Errorf("cancelled at %s: still prepared when Do returned: %v", point, got)
				}
			}
			m := b.check(t)
			if point == "decided" {
				if err != nil || !m[gid] {
					t.Errorf("cancelled after the decision: %v, marker %v; want committed", err, m[gid])
				}
				continue
			}
			if !errors.Is(err, dtx.ErrRolledBack) || !errors.Is(err, context.Canceled) || m[gid] {
				t.Errorf("cancelled before the decision: %v, marker %v; want rolled back", err, m[gid])
			}
		}
		noneLeft(t, b, log, node)
	})
}

// brokenLog is a store that knows it cannot take decisions.
type brokenLog struct{ dtx.Log }

func (brokenLog) Err() error { return errors.New("disk full") }

// Finding 7: a broken store let every new global prepare and strand its
// locks. Now Do refuses before fn runs.
func TestCoordinatorBrokenStoreFailsFast(t *testing.T) {
	b := newCoBank(t)
	fl := coFileLog(t)
	c, _ := newCoord(t, b, brokenLog{fl}, nil)
	ran := false
	err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
		ran = true
		return nil
	})
	if err == nil || ran || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Do on a broken store: %v (fn ran: %v), want a refusal before fn", err, ran)
	}
}
