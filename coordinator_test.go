package dtx_test

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
	"github.com/google/uuid"
)

// Real-server tests of the Coordinator: a "bank" with an account table in
// PostgreSQL and one in MariaDB, and a marker table in each that every
// global writes its id into. Invariants: the balances' sum never changes,
// and a global's marker is in both databases or in neither.

const (
	coAccounts = 4
	coInitial  = 1000
)

func coPG() server { return servers()[0] }
func coMy() server { return servers()[1] }

type coBank struct {
	pg, my       *sql.DB // through dtx
	pgRaw, myRaw *sql.DB // plain drivers
	pgAcct, myAcct,
	pgMark, myMark string
}

func newCoBank(t *testing.T) *coBank {
	t.Helper()
	pgs, mys := coPG(), coMy()
	b := &coBank{
		pgRaw: open(t, pgs, pgs.raw), myRaw: open(t, mys, mys.raw),
		pg: open(t, pgs, pgs.wrapped), my: open(t, mys, mys.wrapped),
	}
	b.pgAcct = table(t, pgs, b.pgRaw, "id INT PRIMARY KEY, bal BIGINT NOT NULL")
	b.myAcct = table(t, mys, b.myRaw, "id INT PRIMARY KEY, bal BIGINT NOT NULL")
	b.pgMark = table(t, pgs, b.pgRaw, "gid VARCHAR(64) PRIMARY KEY")
	b.myMark = table(t, mys, b.myRaw, "gid VARCHAR(64) PRIMARY KEY")
	for i := 1; i <= coAccounts; i++ {
		coExec(t, b.pgRaw, "INSERT INTO "+b.pgAcct+" VALUES ($1, $2)", i, coInitial)
		coExec(t, b.myRaw, "INSERT INTO "+b.myAcct+" VALUES (?, ?)", i, coInitial)
	}
	return b
}

func coExec(t testing.TB, db *sql.DB, q string, args ...any) {
	t.Helper()
	if _, err := db.Exec(q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// pgStep and myStep are each half of a transfer: delta to the account, and
// the global's marker.
func (b *coBank) pgStep(ctx context.Context, tx *sql.Tx, gid string, id int, delta int64) error {
	if _, err := tx.ExecContext(ctx, "UPDATE "+b.pgAcct+" SET bal = bal + $1 WHERE id = $2", delta, id); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, "INSERT INTO "+b.pgMark+" VALUES ($1)", gid)
	return err
}

func (b *coBank) myStep(ctx context.Context, tx *sql.Tx, gid string, id int, delta int64) error {
	if _, err := tx.ExecContext(ctx, "UPDATE "+b.myAcct+" SET bal = bal + ? WHERE id = ?", delta, id); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, "INSERT INTO "+b.myMark+" VALUES (?)", gid)
	return err
}

// transfer moves amount from PostgreSQL account pgID to MariaDB account
// myID (a negative amount moves it back), under resource names pg and my.
func (b *coBank) transfer(pgID, myID int, amount int64) func(context.Context, *dtx.Global) error {
	return func(ctx context.Context, g *dtx.Global) error {
		ptx, err := g.Begin(ctx, "pg", nil)
		if err != nil {
			return err
		}
		mtx, err := g.Begin(ctx, "my", nil)
		if err != nil {
			return err
		}
		if err := b.pgStep(ctx, ptx, g.ID(), pgID, -amount); err != nil {
			return err
		}
		return b.myStep(ctx, mtx, g.ID(), myID, amount)
	}
}

func (b *coBank) bal(t testing.TB, db *sql.DB, tbl string, id int) int64 {
	t.Helper()
	var v int64
	q := "SELECT bal FROM " + tbl + " WHERE id = "
	if err := db.QueryRow(q + fmt.Sprint(id)).Scan(&v); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return v
}

func (b *coBank) sum(t testing.TB) int64 {
	t.Helper()
	var p, m int64
	if err := b.pgRaw.QueryRow("SELECT COALESCE(SUM(bal), 0) FROM " + b.pgAcct).Scan(&p); err != nil {
		t.Fatal(err)
	}
	if err := b.myRaw.QueryRow("SELECT COALESCE(SUM(bal), 0) FROM " + b.myAcct).Scan(&m); err != nil {
		t.Fatal(err)
	}
	return p + m
}

func coMarkers(t testing.TB, db *sql.DB, tbl string) map[string]bool {
	t.Helper()
	rows, err := db.Query("SELECT gid FROM " + tbl)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var g string
		if err := rows.Scan(&g); err != nil {
			t.Fatal(err)
		}
		out[g] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// check verifies both invariants and returns the markers present in both.
func (b *coBank) check(t testing.TB) map[string]bool {
	t.Helper()
	if s := b.sum(t); s != 2*coAccounts*coInitial {
		t.Errorf("sum of balances is %d, want %d", s, 2*coAccounts*coInitial)
	}
	pm, mm := coMarkers(t, b.pgRaw, b.pgMark), coMarkers(t, b.myRaw, b.myMark)
	for g := range pm {
		if !mm[g] {
			t.Errorf("global %s: marker in PostgreSQL only", g)
		}
	}
	for g := range mm {
		if !pm[g] {
			t.Errorf("global %s: marker in MariaDB only", g)
		}
	}
	return pm
}

// unchanged checks that no transfer happened at all.
func (b *coBank) unchanged(t testing.TB) {
	t.Helper()
	if m := b.check(t); len(m) != 0 {
		t.Errorf("%d markers, want none", len(m))
	}
	for i := 1; i <= coAccounts; i++ {
		if v := b.bal(t, b.pgRaw, b.pgAcct, i); v != coInitial {
			t.Errorf("PostgreSQL account %d: %d, want %d", i, v, coInitial)
		}
		if v := b.bal(t, b.myRaw, b.myAcct, i); v != coInitial {
			t.Errorf("MariaDB account %d: %d, want %d", i, v, coInitial)
		}
	}
}

// ---- logs ----

type coLogKind struct {
	name string
	open func(t *testing.T, b *coBank) dtx.Log
}

// coLogKinds are the stores a Coordinator can keep outcomes in: a file, a
// table of a database that takes no part in the globals (opened through
// the plain driver), and a table of one of the resources, where the
// decision commits inside that resource's branch (the default when
// CoordinatorOptions.Log is nil).
func coLogKinds() []coLogKind {
	sqlLog := func(s server) func(t *testing.T, b *coBank) dtx.Log {
		return func(t *testing.T, b *coBank) dtx.Log {
			raw := open(t, s, s.raw)
			name := "dtx_log_" + token()
			l, err := dtx.OpenSQLLog(context.Background(), raw, name)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { drop(t, s, name) })
			return l
		}
	}
	inResource := func(s server, db func(*coBank) *sql.DB) func(t *testing.T, b *coBank) dtx.Log {
		return func(t *testing.T, b *coBank) dtx.Log {
			name := "dtx_log_" + token()
			l, err := dtx.OpenSQLLog(context.Background(), db(b), name)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { drop(t, s, name) })
			return l
		}
	}
	return []coLogKind{
		{"file", func(t *testing.T, b *coBank) dtx.Log { return coFileLog(t) }},
		{"in-pg", inResource(coPG(), func(b *coBank) *sql.DB { return b.pg })},
		{"sql-postgres", sqlLog(coPG())},
		{"sql-mysql", sqlLog(coMy())},
		{"in-my", inResource(coMy(), func(b *coBank) *sql.DB { return b.my })},
	}
}

// eachLog runs f once per log kind; kinds beyond the first two are for the
// tests that say all.
func eachLog(t *testing.T, all bool, f func(t *testing.T, newLog func(*testing.T, *coBank) dtx.Log)) {
	for i, k := range coLogKinds() {
		if i >= 2 && !all {
			continue
		}
		t.Run(k.name, func(t *testing.T) { f(t, k.open) })
	}
}

// coFileLog opens a FileLog in a fresh directory, closed when t ends.
func coFileLog(t testing.TB) *dtx.FileLog {
	t.Helper()
	l, err := dtx.OpenFileLog(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// coDecider is the resource whose branch commits the decision when log is
// kept in one of b's resources, or "".
func coDecider(b *coBank, log dtx.Log) string {
	if l, ok := log.(*dtx.SQLLog); ok {
		switch l.DB() {
		case b.pg:
			return "pg"
		case b.my:
			return "my"
		}
	}
	return ""
}

// ---- coordinators ----

// newCoord makes a Coordinator over b's databases (resources "pg" and
// "my") with a fresh node, background recovery off, and a cleanup that
// rolls back whatever the node left prepared.
func newCoord(t *testing.T, b *coBank, log dtx.Log, mod func(*dtx.CoordinatorOptions)) (*dtx.Coordinator, string) {
	t.Helper()
	opts := dtx.CoordinatorOptions{
		Log:             log,
		Resources:       map[string]*sql.DB{"pg": b.pg, "my": b.my},
		Node:            "t" + token(),
		RecoverInterval: -1,
	}
	if mod != nil {
		mod(&opts)
	}
	c, err := dtx.NewCoordinator(opts)
	if err != nil {
		t.Fatal(err)
	}
	coCleanupPrefix(t, "g."+opts.Node+".")
	t.Cleanup(func() { c.Close() })
	return c, opts.Node
}

// coCleanupPrefix rolls back, when t ends, what is still prepared under
// prefix on both servers.
func coCleanupPrefix(t testing.TB, prefix string) {
	t.Cleanup(func() {
		for _, s := range servers() {
			rollbackLeftovers(t, s, prefix)
		}
	})
}

func coCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// coPrepared lists what is prepared under prefix in db, failing t when the
// listing takes more than 20 s.
func coPrepared(t testing.TB, db *sql.DB, prefix string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ps, err := dtx.ListPrepared(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range ps {
		if strings.HasPrefix(p.Name, prefix) {
			out = append(out, p.Name)
		}
	}
	sort.Strings(out)
	return out
}

// noneLeft checks that node left nothing prepared and no pending decision.
func noneLeft(t testing.TB, b *coBank, log dtx.Log, node string) {
	t.Helper()
	for _, db := range []*sql.DB{b.pg, b.my} {
		if got := coPrepared(t, db, "g."+node+"."); len(got) > 0 {
			t.Errorf("still prepared: %v", got)
		}
	}
	coNoPending(t, log, node)
}

// coNoPending waits until log holds no decision of node: Do forgets in the
// background.
func coNoPending(t testing.TB, log dtx.Log, node string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ds, err := log.Pending(context.Background(), node)
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("decisions still pending: %+v", ds)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// coGlobalAt makes a global id (UUIDv7 in hex) that started at at.
func coGlobalAt(at time.Time) string {
	u := uuid.Must(uuid.NewV7())
	ms := uint64(at.UnixMilli())
	for i := 0; i < 6; i++ {
		u[i] = byte(ms >> (8 * (5 - i)))
	}
	return hex.EncodeToString(u[:])
}

func coBranch(node, global string, n int) string {
	return fmt.Sprintf("g.%s.%s.%d", node, global, n)
}

// coPrepare prepares a branch named name on db running q.
func coPrepare(t testing.TB, db *sql.DB, name, q string, args ...any) {
	t.Helper()
	err := dtx.BeginDistributed(context.Background(), db, name, func(tx *sql.Tx) error {
		_, err := tx.Exec(q, args...)
		return err
	})
	if err != nil {
		t.Fatalf("prepare %s: %v", name, err)
	}
}

// coPrepareTransfer prepares both halves of a transfer of amount from PG
// account pgID to MariaDB account myID, as branches 0 (pg) and 1 (my) of
// global on node, and returns their refs.
func (b *coBank) prepareTransfer(t testing.TB, node, global string, pgID, myID int, amount int64) []dtx.BranchRef {
	t.Helper()
	n0, n1 := coBranch(node, global, 0), coBranch(node, global, 1)
	ctx := context.Background()
	err := dtx.BeginDistributed(ctx, b.pg, n0, func(tx *sql.Tx) error { return b.pgStep(ctx, tx, global, pgID, -amount) })
	if err != nil {
		t.Fatal(err)
	}
	err = dtx.BeginDistributed(ctx, b.my, n1, func(tx *sql.Tx) error { return b.myStep(ctx, tx, global, myID, amount) })
	if err != nil {
		t.Fatal(err)
	}
	return []dtx.BranchRef{{Resource: "pg", Name: n0}, {Resource: "my", Name: n1}}
}

// coHooks records the hook points the coordinator passes, until t ends.
func coHooks(t *testing.T) func() []string {
	var mu sync.Mutex
	var pts []string
	restore := dtx.SetHook(func(p string) {
		mu.Lock()
		pts = append(pts, p)
		mu.Unlock()
	})
	t.Cleanup(restore)
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(pts)
	}
}

// coRecover runs Recover until a pass has no error, at most 5 passes, and
// returns what all passes did. An error that says a MariaDB outcome is
// unknown is retried: the cross-session finish reports that when the
// server's count of detached transactions XA RECOVER does not list grows
// meanwhile, which other sessions' XA traffic on the server also causes.
func coRecover(t *testing.T, c *dtx.Coordinator) dtx.RecoveryReport {
	t.Helper()
	var all dtx.RecoveryReport
	for pass := 1; ; pass++ {
		rep, err := c.Recover(context.Background())
		all.Committed = append(all.Committed, rep.Committed...)
		all.RolledBack = append(all.RolledBack, rep.RolledBack...)
		all.Forgotten = append(all.Forgotten, rep.Forgotten...)
		all.Waiting = rep.Waiting
		if err == nil {
			break
		}
		if !errors.Is(err, dtx.ErrOutcomeUnknown) || pass == 5 {
			t.Fatalf("Recover pass %d: %v", pass, err)
		}
		t.Logf("Recover pass %d: %v", pass, err)
	}
	sort.Strings(all.Committed)
	sort.Strings(all.RolledBack)
	sort.Strings(all.Forgotten)
	return all
}

// ---- Do ----

func TestCoordinatorTransfer(t *testing.T) {
	eachLog(t, true, func(t *testing.T, newLog func(*testing.T, *coBank) dtx.Log) {
		b := newCoBank(t)
		log := newLog(t, b)
		c, node := newCoord(t, b, log, nil)
		var syncs int64
		fl, isFile := log.(*dtx.FileLog)
		if isFile {
			syncs = fl.Syncs()
		}
		points := coHooks(t)
		var gid string
		err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
			gid = g.ID()
			return b.transfer(1, 2, 25)(ctx, g)
		})
		if err != nil {
			t.Fatal(err)
		}
		if v := b.bal(t, b.pgRaw, b.pgAcct, 1); v != coInitial-25 {
			t.Errorf("PostgreSQL account 1: %d, want %d", v, coInitial-25)
		}
		if v := b.bal(t, b.myRaw, b.myAcct, 2); v != coInitial+25 {
			t.Errorf("MariaDB account 2: %d, want %d", v, coInitial+25)
		}
		if m := b.check(t); !m[gid] || len(m) != 1 {
			t.Errorf("markers %v, want just %s", m, gid)
		}
		noneLeft(t, b, log, node)
		if isFile && fl.Syncs() == syncs {
			t.Error("the file log did not fsync a decision")
		}
		got := points()
		sort.Strings(got)
		want := []string{"before-decide", "before-done", "before-prepare", "committed:0", "committed:1", "decided", "prepared:0", "prepared:1"}
		switch coDecider(b, log) {
		case "pg": // branch 0 commits the decision: never prepared, not in phase two
			want = []string{"before-decide", "before-done", "before-prepare", "committed:1", "decided", "prepared:1"}
		case "my":
			want = []string{"before-decide", "before-done", "before-prepare", "committed:0", "decided", "prepared:0"}
		}
		if !slices.Equal(got, want) {
			t.Errorf("hook points %v, want %v", got, want)
		}
	})
}

func TestCoordinatorFnError(t *testing.T) {
	eachLog(t, false, func(t *testing.T, newLog func(*testing.T, *coBank) dtx.Log) {
		b := newCoBank(t)
		log := newLog(t, b)
		c, node := newCoord(t, b, log, nil)
		boom := errors.New("boom")
		err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
			if err := b.transfer(1, 1, 40)(ctx, g); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Do: %v, want %v", err, boom)
		}
		b.unchanged(t)
		noneLeft(t, b, log, node)

		// A panic rolls back too, and goes on.
		func() {
			defer func() {
				if r := recover(); r != "kaboom" {
					t.Errorf("recovered %v, want the panic", r)
				}
			}()
			c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
				if err := b.transfer(1, 1, 40)(ctx, g); err != nil {
					return err
				}
				panic("kaboom")
			})
		}()
		b.unchanged(t)
		noneLeft(t, b, log, node)

		// The coordinator works on afterwards.
		if err := c.Do(coCtx(t), b.transfer(1, 1, 1)); err != nil {
			t.Fatal(err)
		}
		b.check(t)
	})
}

func TestCoordinatorPrepareFails(t *testing.T) {
	cases := []struct {
		name string
		// poison runs in the PG branch and makes its PREPARE fail.
		poison func(ctx context.Context, tx *sql.Tx) error
	}{
		{"failed statement", func(ctx context.Context, tx *sql.Tx) error {
			// PostgreSQL answers PREPARE TRANSACTION in an aborted
			// transaction with the tag ROLLBACK and no error.
			if _, err := tx.ExecContext(ctx, "SELECT 1/0"); err == nil {
				return errors.New("SELECT 1/0 did not fail")
			}
			return nil
		}},
		{"temp table", func(ctx context.Context, tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "CREATE TEMP TABLE tmp_"+token()+" (a INT)")
			return err
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newCoBank(t)
			log, _ := dtx.OpenFileLog(t.TempDir())
			t.Cleanup(func() { log.Close() })
			c, node := newCoord(t, b, log, nil)
			points := coHooks(t)
			err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
				// MariaDB first, so that its branch is prepared (and held)
				// while PostgreSQL's fails.
				mtx, err := g.Begin(ctx, "my", nil)
				if err != nil {
					return err
				}
				if err := b.myStep(ctx, mtx, g.ID(), 1, 30); err != nil {
					return err
				}
				ptx, err := g.Begin(ctx, "pg", nil)
				if err != nil {
					return err
				}
				if err := b.pgStep(ctx, ptx, g.ID(), 1, -30); err != nil {
					return err
				}
				return tc.poison(ctx, ptx)
			})
			if !errors.Is(err, dtx.ErrNotPrepared) {
				t.Fatalf("Do: %v, want ErrNotPrepared", err)
			}
			if slices.Contains(points(), "decided") {
				t.Error("a decision was made")
			}
			b.unchanged(t)
			noneLeft(t, b, log, node)
			// The MariaDB row is free again.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := b.myRaw.ExecContext(ctx, "UPDATE "+b.myAcct+" SET bal = bal WHERE id = 1"); err != nil {
				t.Errorf("MariaDB row still locked: %v", err)
			}
		})
	}
}

func TestCoordinatorOnePhase(t *testing.T) {
	b := newCoBank(t)
	log := coFileLog(t)
	c, node := newCoord(t, b, log, nil)
	points := coHooks(t)
	syncs := log.Syncs()
	for _, r := range []struct{ res, tbl, ph string }{{"pg", b.pgAcct, "$"}, {"my", b.myAcct, "?"}} {
		err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
			tx, err := g.Begin(ctx, r.res, nil)
			if err != nil {
				return err
			}
			ph := func(n int) string {
				if r.ph == "$" {
					return fmt.Sprintf("$%d", n)
				}
				return "?"
			}
			for _, step := range []struct {
				id    int
				delta int64
			}{{1, -5}, {2, 5}} {
				if _, err := tx.ExecContext(ctx, "UPDATE "+r.tbl+" SET bal = bal + "+ph(1)+" WHERE id = "+ph(2), step.delta, step.id); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%s: %v", r.res, err)
		}
		db := map[string]*sql.DB{"pg": b.pgRaw, "my": b.myRaw}[r.res]
		if v := b.bal(t, db, r.tbl, 1); v != coInitial-5 {
			t.Errorf("%s account 1: %d, want %d", r.res, v, coInitial-5)
		}
	}
	if got := log.Syncs(); got != syncs {
		t.Errorf("one-phase globals made %d fsyncs of the log", got-syncs)
	}
	for _, p := range points() {
		if p != "before-commit-one-phase" {
			t.Errorf("hook point %q in a one-phase global", p)
		}
	}
	if len(points()) != 2 {
		t.Errorf("hook points %v, want before-commit-one-phase twice", points())
	}
	noneLeft(t, b, log, node)

	// A one-phase branch whose statement failed is rolled back, not
	// committed.
	err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
		tx, err := g.Begin(ctx, "pg", nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, "UPDATE "+b.pgAcct+" SET bal = bal + 100 WHERE id = 3"); err != nil {
			return err
		}
		tx.ExecContext(ctx, "SELECT 1/0")
		return nil
	})
	if !errors.Is(err, dtx.ErrRolledBack) {
		t.Errorf("Do with a failed statement: %v, want ErrRolledBack", err)
	}
	if v := b.bal(t, b.pgRaw, b.pgAcct, 3); v != coInitial {
		t.Errorf("PostgreSQL account 3: %d, want %d", v, coInitial)
	}
	if got := log.Syncs(); got != syncs {
		t.Errorf("one-phase globals made %d fsyncs of the log", got-syncs)
	}

	// No branch at all: nothing to do.
	if err := c.Do(coCtx(t), func(context.Context, *dtx.Global) error { return nil }); err != nil {
		t.Errorf("empty global: %v", err)
	}
}

func TestCoordinatorTimeout(t *testing.T) {
	b := newCoBank(t)
	log := coFileLog(t)
	c, node := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) { o.Timeout = 300 * time.Millisecond })

	t.Run("fn sleeps past it", func(t *testing.T) {
		start := time.Now()
		err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
			if err := b.transfer(1, 1, 50)(ctx, g); err != nil {
				return err
			}
			time.Sleep(700 * time.Millisecond)
			return nil
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Do: %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Do took %v", d)
		}
		b.unchanged(t)
		noneLeft(t, b, log, node)
	})
	t.Run("statement runs past it", func(t *testing.T) {
		start := time.Now()
		err := c.Do(coCtx(t), func(ctx context.Context, g *dtx.Global) error {
			if err := b.transfer(1, 1, 50)(ctx, g); err != nil {
				return err
			}
			tx, err := g.Begin(ctx, "pg", nil)
			if err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, "SELECT pg_sleep(3)")
			return err
		})
		if err == nil {
			t.Fatal("Do succeeded")
		}
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Errorf("Do took %v: the statement was not cut off", d)
		}
		b.unchanged(t)
		noneLeft(t, b, log, node)
	})
	t.Run("fn ignores ctx but returns in time", func(t *testing.T) {
		if err := c.Do(coCtx(t), b.transfer(1, 1, 5)); err != nil {
			t.Fatal(err)
		}
		b.check(t)
		noneLeft(t, b, log, node)
	})
}

// TestCoordinatorTwoPostgres: two branches in PostgreSQL, in two databases
// of one cluster (prepared transaction names share the cluster's space)
// and in one database through two handles and through one handle under
// two resource names.
func TestCoordinatorTwoPostgres(t *testing.T) {
	pgs := coPG()
	need(t, pgs)
	raw := open(t, pgs, pgs.raw)
	second := ""
	var n int
	if err := raw.QueryRow("SELECT count(*) FROM pg_database WHERE datname = 'dtx_test2'").Scan(&n); err == nil {
		if n == 0 {
			if _, err := raw.Exec("CREATE DATABASE dtx_test2"); err != nil && !strings.Contains(err.Error(), "already exists") {
				t.Logf("cannot create a second database (%v): only the same-database cases run", err)
			} else {
				n = 1
			}
		}
		if n == 1 {
			second = strings.Replace(pgs.dsn, "/test?", "/dtx_test2?", 1)
			if second == pgs.dsn {
				second = ""
			}
		}
	}
	type setup struct {
		name string
		a, b func(t *testing.T) (db, rawDB *sql.DB)
	}
	same := func(t *testing.T) (*sql.DB, *sql.DB) { return open(t, pgs, pgs.wrapped), raw }
	cases := []setup{{"one database, two handles", same, same}}
	if second != "" {
		s2 := server{kind: "postgres", raw: "postgres", wrapped: "dtx+postgres", dsn: second}
		cases = append(cases, setup{"two databases", same, func(t *testing.T) (*sql.DB, *sql.DB) {
			return open(t, s2, s2.wrapped), open(t, s2, s2.raw)
		}})
	}
	var one *sql.DB
	cases = append(cases, setup{"one handle, two resources",
		func(t *testing.T) (*sql.DB, *sql.DB) { one = open(t, pgs, pgs.wrapped); return one, raw },
		func(t *testing.T) (*sql.DB, *sql.DB) { return one, raw }})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			adb, araw := tc.a(t)
			bdb, braw := tc.b(t)
			s2 := pgs
			if tc.name == "two databases" {
				s2.dsn = second
			}
			at := table(t, pgs, araw, "id INT PRIMARY KEY, bal BIGINT NOT NULL")
			bt := table(t, s2, braw, "id INT PRIMARY KEY, bal BIGINT NOT NULL")
			coExec(t, araw, "INSERT INTO "+at+" VALUES (1, 100)")
			coExec(t, braw, "INSERT INTO "+bt+" VALUES (1, 100)")
			log, err := dtx.OpenFileLog(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { log.Close() })
			node := "t" + token()
			c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{Log: log, Node: node, RecoverInterval: -1,
				Resources: map[string]*sql.DB{"a": adb, "b": bdb}})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			prefix := "g." + node + "."
			t.Cleanup(func() {
				for _, db := range []*sql.DB{adb, bdb} {
					for _, p := range coPrepared(t, db, prefix) {
						dtx.RollbackPrepared(context.Background(), db, p)
					}
				}
			})
			move := func(amount int64) func(context.Context, *dtx.Global) error {
				return func(ctx context.Context, g *dtx.Global) error {
					ta, err := g.Begin(ctx, "a", nil)
					if err != nil {
						return err
					}
					tb, err := g.Begin(ctx, "b", nil)
					if err != nil {
						return err
					}
					if _, err := ta.ExecContext(ctx, "UPDATE "+at+" SET bal = bal - $1", amount); err != nil {
						return err
					}
					_, err = tb.ExecContext(ctx, "UPDATE "+bt+" SET bal = bal + $1", amount)
					return err
				}
			}
			points := coHooks(t)
			if err := c.Do(coCtx(t), move(10)); err != nil {
				t.Fatal(err)
			}
			coNoPending(t, log, node)
			if !slices.Contains(points(), "decided") {
				t.Errorf("not a two-phase global: %v", points())
			}
			bal := func(db *sql.DB, tbl string) (v int64) {
				if err := db.QueryRow("SELECT bal FROM " + tbl).Scan(&v); err != nil {
					t.Fatal(err)
				}
				return v
			}
			if a, b := bal(araw, at), bal(braw, bt); a != 90 || b != 110 {
				t.Errorf("balances %d, %d, want 90, 110", a, b)
			}

			// A crash after the decision: recovery commits each branch in
			// its own database.
			restore := dtx.SetHook(func(p string) {
				if p == "decided" {
					panic("crash")
				}
			})
			func() {
				defer func() { recover() }()
				c.Do(coCtx(t), move(5))
			}()
			restore()
			if a, b := bal(araw, at), bal(braw, bt); a != 90 || b != 110 {
				t.Errorf("balances %d, %d before recovery, want 90, 110", a, b)
			}
			rep, err := c.Recover(coCtx(t))
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Committed) != 2 || len(rep.Forgotten) != 1 {
				t.Errorf("recovery: %+v, want 2 committed, 1 forgotten", rep)
			}
			if a, b := bal(araw, at), bal(braw, bt); a != 85 || b != 115 {
				t.Errorf("balances %d, %d after recovery, want 85, 115", a, b)
			}
			for _, db := range []*sql.DB{adb, bdb} {
				if got := coPrepared(t, db, prefix); len(got) > 0 {
					t.Errorf("still prepared: %v", got)
				}
			}
			if ds, _ := log.Pending(context.Background(), node); len(ds) > 0 {
				t.Errorf("pending: %+v", ds)
			}
		})
	}
}

// ---- Recover ----

func TestCoordinatorRecoverDecided(t *testing.T) {
	eachLog(t, true, func(t *testing.T, newLog func(*testing.T, *coBank) dtx.Log) {
		b := newCoBank(t)
		log := newLog(t, b)
		c, node := newCoord(t, b, log, nil)
		ctx := coCtx(t)

		// g1: both branches left prepared; g2: only the MariaDB one (the
		// PostgreSQL one was committed before the crash). Both are young:
		// a decision commits whatever the grace.
		g1, g2 := coGlobalAt(time.Now()), coGlobalAt(time.Now().Add(-time.Hour))
		r1 := b.prepareTransfer(t, node, g1, 1, 1, 11)
		r2 := b.prepareTransfer(t, node, g2, 2, 2, 22)
		for _, g := range []struct {
			id string
			rs []dtx.BranchRef
		}{{g1, r1}, {g2, r2}} {
			if err := log.Decide(ctx, dtx.Decision{Global: g.id, Node: node, Branches: g.rs, At: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}
		if err := dtx.CommitPrepared(ctx, b.pg, r2[0].Name); err != nil {
			t.Fatal(err)
		}
		rep, err := c.Recover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{r1[0].Name, r1[1].Name, r2[1].Name}
		sort.Strings(want)
		got := slices.Clone(rep.Committed)
		sort.Strings(got)
		if !slices.Equal(got, want) {
			t.Errorf("committed %v, want %v", got, want)
		}
		forgotten := slices.Clone(rep.Forgotten)
		sort.Strings(forgotten)
		if wantF := []string{min(g1, g2), max(g1, g2)}; !slices.Equal(forgotten, wantF) {
			t.Errorf("forgotten %v, want %v", forgotten, wantF)
		}
		if len(rep.RolledBack)+len(rep.Waiting) > 0 {
			t.Errorf("report %+v", rep)
		}
		m := b.check(t)
		if !m[g1] || !m[g2] {
			t.Errorf("markers %v, want %s and %s", m, g1, g2)
		}
		if v := b.bal(t, b.myRaw, b.myAcct, 2); v != coInitial+22 {
			t.Errorf("MariaDB account 2: %d", v)
		}
		noneLeft(t, b, log, node)
		if rep, err := c.Recover(ctx); err != nil || len(rep.Committed)+len(rep.Forgotten)+len(rep.RolledBack)+len(rep.Waiting) > 0 {
			t.Errorf("second pass: %+v, %v", rep, err)
		}
	})
}

// TestCoordinatorRecoverDetached: the MariaDB branch's session is gone (its
// pool closed, as after a crash) and recovery commits it from another one.
func TestCoordinatorRecoverDetached(t *testing.T) {
	b := newCoBank(t)
	log := coFileLog(t)
	c, node := newCoord(t, b, log, nil)
	ctx := coCtx(t)
	g := coGlobalAt(time.Now())
	mys := coMy()
	other, err := sql.Open(mys.wrapped, mys.dsn)
	if err != nil {
		t.Fatal(err)
	}
	n0, n1 := coBranch(node, g, 0), coBranch(node, g, 1)
	if err := dtx.BeginDistributed(ctx, b.pg, n0, func(tx *sql.Tx) error { return b.pgStep(ctx, tx, g, 3, -9) }); err != nil {
		t.Fatal(err)
	}
	if err := dtx.BeginDistributed(ctx, other, n1, func(tx *sql.Tx) error { return b.myStep(ctx, tx, g, 3, 9) }); err != nil {
		t.Fatal(err)
	}
	other.Close() // the held session closes: the branch is detached
	if err := log.Decide(ctx, dtx.Decision{Global: g, Node: node, At: time.Now(),
		Branches: []dtx.BranchRef{{Resource: "pg", Name: n0}, {Resource: "my", Name: n1}}}); err != nil {
		t.Fatal(err)
	}
	rep := coRecover(t, c)
	if len(rep.Committed) != 2 || len(rep.Forgotten) != 1 {
		t.Errorf("report %+v", rep)
	}
	if m := b.check(t); !m[g] {
		t.Errorf("marker of %s missing", g)
	}
	noneLeft(t, b, log, node)
}

func TestCoordinatorRecoverUndecided(t *testing.T) {
	eachLog(t, false, func(t *testing.T, newLog func(*testing.T, *coBank) dtx.Log) {
		b := newCoBank(t)
		log := newLog(t, b)
		c, node := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) { o.RecoverGrace = 10 * time.Minute })
		ctx := coCtx(t)
		old, young := coGlobalAt(time.Now().Add(-time.Hour)), coGlobalAt(time.Now())
		ro := b.prepareTransfer(t, node, old, 1, 1, 10)
		ry := b.prepareTransfer(t, node, young, 2, 2, 20)
		rep, err := c.Recover(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(rep.RolledBack)
		sort.Strings(rep.Waiting)
		if want := []string{ro[0].Name, ro[1].Name}; !slices.Equal(rep.RolledBack, want) {
			t.Errorf("rolled back %v, want %v", rep.RolledBack, want)
		}
		if want := []string{ry[0].Name, ry[1].Name}; !slices.Equal(rep.Waiting, want) {
			t.Errorf("waiting %v, want %v", rep.Waiting, want)
		}
		if len(rep.Committed)+len(rep.Forgotten) > 0 {
			t.Errorf("report %+v", rep)
		}
		if got := append(coPrepared(t, b.pg, "g."+node+"."), coPrepared(t, b.my, "g."+node+".")...); len(got) != 2 ||
			!slices.Contains(got, ry[0].Name) || !slices.Contains(got, ry[1].Name) {
			t.Errorf("prepared %v, want the young global's two branches", got)
		}
		// The young global's branches still hold their rows; the old
		// one's are free and unchanged.
		if v := b.bal(t, b.pgRaw, b.pgAcct, 1); v != coInitial {
			t.Errorf("PostgreSQL account 1: %d", v)
		}
		if v := b.bal(t, b.myRaw, b.myAcct, 1); v != coInitial {
			t.Errorf("MariaDB account 1: %d", v)
		}
		for _, r := range ry {
			db := map[string]*sql.DB{"pg": b.pg, "my": b.my}[r.Resource]
			if err := dtx.RollbackPrepared(ctx, db, r.Name); err != nil {
				t.Error(err)
			}
		}
		b.unchanged(t)
		noneLeft(t, b, log, node)
	})
}

func TestCoordinatorRecoverIgnoresOthers(t *testing.T) {
	b := newCoBank(t)
	log := coFileLog(t)
	node := "t" + token()
	otherNode := node + "-2" // our node name is a prefix of its
	c, _ := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) {
		o.Node = node
		o.RecoverGrace = time.Millisecond
	})
	plain := "x" + token()
	coCleanupPrefix(t, "g."+otherNode+".")
	coCleanupPrefix(t, plain)
	old := coGlobalAt(time.Now().Add(-time.Hour))
	names := map[string][]string{
		"pg": {coBranch(otherNode, old, 0), plain + "_pg", "g." + node + ".nothex.0", "g." + node + "." + old},
		"my": {coBranch(otherNode, old, 1), plain + "_my", "g." + node + "." + old + ".x"},
	}
	i := 0
	for res, ns := range names {
		for _, n := range ns {
			i++
			if res == "pg" {
				coPrepare(t, b.pg, n, "UPDATE "+b.pgAcct+" SET bal = bal WHERE id = $1", 1+i%coAccounts)
			} else {
				coPrepare(t, b.my, n, "UPDATE "+b.myAcct+" SET bal = bal WHERE id = ?", 1+i%coAccounts)
			}
		}
	}
	t.Cleanup(func() {
		for _, n := range append(names["pg"], names["my"]...) {
			dtx.RollbackDistributed(context.Background(), n)
		}
	})
	// A decision of another node in the same log is not ours either.
	if err := log.Decide(context.Background(), dtx.Decision{Global: old, Node: otherNode, At: time.Now(),
		Branches: []dtx.BranchRef{{Resource: "pg", Name: names["pg"][0]}, {Resource: "my", Name: names["my"][0]}}}); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Recover(coCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Committed)+len(rep.RolledBack)+len(rep.Waiting)+len(rep.Forgotten) > 0 {
		t.Errorf("recovery touched others' transactions: %+v", rep)
	}
	for res, ns := range names {
		db := map[string]*sql.DB{"pg": b.pg, "my": b.my}[res]
		for _, n := range ns {
			if got := coPrepared(t, db, n); len(got) != 1 {
				t.Errorf("%s is no longer prepared", n)
			}
		}
	}
	if ds, _ := log.Pending(context.Background(), otherNode); len(ds) != 1 {
		t.Errorf("the other node's decision: %+v", ds)
	}
}

// TestCoordinatorRecoverConcurrent: Recover, with no grace at all, runs in
// a loop while 8 goroutines run globals: it must never touch one in flight.
func TestCoordinatorRecoverConcurrent(t *testing.T) {
	eachLog(t, false, func(t *testing.T, newLog func(*testing.T, *coBank) dtx.Log) {
		b := newCoBank(t)
		log := newLog(t, b)
		c, node := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) {
			o.RecoverGrace = time.Nanosecond
			o.Timeout = 10 * time.Second
		})
		ctx := coCtx(t)
		const workers, each = 8, 12
		var (
			mu     sync.Mutex
			ok     = map[string]bool{}
			failed = map[string]error{}
		)
		var wg sync.WaitGroup
		done := make(chan struct{})
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					var gid string
					amount := int64(w*each+i) - 40
					fn := b.transfer(1+(w+i)%coAccounts, 1+(w*3+i)%coAccounts, amount)
					err := c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
						gid = g.ID()
						return fn(ctx, g)
					})
					mu.Lock()
					if err != nil {
						failed[gid] = err
					} else {
						ok[gid] = true
					}
					mu.Unlock()
				}
			}()
		}
		var passes, recErrs atomic.Int64
		var touched []string
		committed := 0
		var rwg sync.WaitGroup
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				rep, err := c.Recover(ctx)
				passes.Add(1)
				if err != nil {
					recErrs.Add(1)
					t.Errorf("Recover: %v", err)
				}
				mu.Lock()
				committed += len(rep.Committed)
				touched = append(touched, rep.RolledBack...)
				mu.Unlock()
			}
		}()
		wg.Wait()
		close(done)
		rwg.Wait()
		t.Logf("%d globals committed, %d failed, %d recovery passes", len(ok), len(failed), passes.Load())
		for g, err := range failed {
			t.Errorf("global %s: %v", g, err)
		}
		if len(touched) > 0 {
			t.Errorf("recovery rolled back branches of globals in flight: %v", touched)
		}
		if committed > 0 {
			// Branches Do committed between the listing and the in-flight
			// check: CommitPrepared of a name this process committed
			// answers nil.
			t.Logf("%d branches reported committed by recovery were committed by their Do", committed)
		}
		m := b.check(t)
		for g := range ok {
			if !m[g] {
				t.Errorf("committed global %s has no markers", g)
			}
		}
		if len(m) != len(ok) {
			t.Errorf("%d markers, %d globals committed", len(m), len(ok))
		}
		noneLeft(t, b, log, node)
	})
}

// coMyDetaching opens MariaDB through dtx with sessions released 1 ms
// after prepare and phase two from another session waiting grace: a
// phase two that takes longer than the coordinator's timeout.
func coMyDetaching(t *testing.T, grace time.Duration) *sql.DB {
	need(t, coMy())
	cfg, err := mysql.ParseDSN(myDSN())
	if err != nil {
		t.Fatal(err)
	}
	mc, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(dtx.NewConnector(mc, dtx.MySQL, dtx.WithHoldTimeout(time.Millisecond), dtx.WithDetachGrace(grace)))
	t.Cleanup(func() { db.Close() })
	return db
}

// TestCoordinatorRecoverKeepsDecisionOfGlobalInFlight: a Recover pass that
// sees a decided global's branch while the global is still in flight, and
// finishes after that global's Do returned with a branch still pending,
// must not forget the decision: the branch would then be rolled back while
// the other is committed.
func TestCoordinatorRecoverKeepsDecisionOfGlobalInFlight(t *testing.T) {
	b := newCoBank(t)
	log := coFileLog(t)
	myDet := coMyDetaching(t, 3*time.Second)
	pgOne := open(t, coPG(), coPG().wrapped)
	pgOne.SetMaxOpenConns(1)
	node := "t" + token()
	c, _ := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) {
		o.Node = node
		// "a-my" is listed before "b-pg".
		o.Resources = map[string]*sql.DB{"a-my": myDet, "b-pg": pgOne}
		o.Timeout = time.Second
		o.RecoverGrace = time.Millisecond
	})
	ctx := coCtx(t)
	pgCommitted := make(chan struct{})
	var once sync.Once
	t.Cleanup(dtx.SetHook(func(p string) {
		switch p {
		case "decided":
			// The MariaDB session is released 1 ms after its prepare.
			time.Sleep(20 * time.Millisecond)
		case "committed:1": // the PostgreSQL branch, begun second
			once.Do(func() { close(pgCommitted) })
		}
	}))
	var gid string
	doErr := make(chan error, 1)
	go func() {
		doErr <- c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
			gid = g.ID()
			mtx, err := g.Begin(ctx, "a-my", nil)
			if err != nil {
				return err
			}
			ptx, err := g.Begin(ctx, "b-pg", nil)
			if err != nil {
				return err
			}
			if err := b.pgStep(ctx, ptx, g.ID(), 1, -70); err != nil {
				return err
			}
			return b.myStep(ctx, mtx, g.ID(), 1, 70)
		})
	}()
	select {
	case <-pgCommitted:
	case err := <-doErr:
		t.Fatalf("Do returned before its PostgreSQL branch committed: %v", err)
	}
	// Hold PostgreSQL's only connection: the Recover pass lists MariaDB
	// (the global is in flight there) and then waits for PostgreSQL.
	conn, err := pgOne.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recErr := make(chan error, 1)
	var rep dtx.RecoveryReport
	go func() {
		var err error
		rep, err = c.Recover(ctx)
		recErr <- err
	}()
	err = <-doErr
	if !errors.Is(err, dtx.ErrPending) {
		t.Fatalf("Do: %v, want ErrPending", err)
	}
	time.Sleep(50 * time.Millisecond)
	conn.Close()
	if err := <-recErr; err != nil {
		t.Fatalf("Recover: %v", err)
	}
	// The pass plans after its last listing, when Do has returned: it may
	// commit the MariaDB branch itself, but never forget the decision
	// while that branch is still prepared.
	ds, err := log.Pending(ctx, node)
	if err != nil {
		t.Fatal(err)
	}
	if left := coPrepared(t, myDet, "g."+node+"."); len(ds) == 0 && len(left) > 0 {
		t.Fatalf("the decision of %s, whose MariaDB branch %v is still prepared, was forgotten (report %+v)", gid, left, rep)
	}
	// After the grace, recovery commits the MariaDB branch.
	deadline := time.Now().Add(20 * time.Second)
	for {
		rep, err := c.Recover(ctx)
		if ds, _ := log.Pending(ctx, node); err == nil && len(ds) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("recovery did not finish: %+v, %v", rep, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if m := b.check(t); !m[gid] {
		t.Errorf("marker of %s missing", gid)
	}
	noneLeft(t, b, log, node)
}

// coGateLog serves one Pending call from a snapshot taken when the call
// came, but answers only when released: a slow log read.
type coGateLog struct {
	dtx.Log
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (l *coGateLog) Pending(ctx context.Context, node string) ([]dtx.Decision, error) {
	ds, err := l.Log.Pending(ctx, node)
	if l.armed.CompareAndSwap(true, false) {
		close(l.reached)
		<-l.release
	}
	return ds, err
}

// TestCoordinatorRecoverStaleDecisions: a Recover pass whose read of the
// log predates a global's decision, and which lists that global's branch
// after its Do returned with the branch pending, must not roll it back.
func TestCoordinatorRecoverStaleDecisions(t *testing.T) {
	b := newCoBank(t)
	fl := coFileLog(t)
	log := &coGateLog{Log: fl, reached: make(chan struct{}), release: make(chan struct{})}
	myDet := coMyDetaching(t, 3*time.Second)
	node := "t" + token()
	c, _ := newCoord(t, b, log, func(o *dtx.CoordinatorOptions) {
		o.Node = node
		o.Resources = map[string]*sql.DB{"my": myDet, "pg": b.pg}
		o.Timeout = time.Second
		o.RecoverGrace = time.Millisecond
	})
	ctx := coCtx(t)
	t.Cleanup(dtx.SetHook(func(p string) {
		if p == "decided" {
			// The MariaDB session is released 1 ms after its prepare.
			time.Sleep(20 * time.Millisecond)
		}
	}))
	log.armed.Store(true)
	recErr := make(chan error, 1)
	var rep dtx.RecoveryReport
	go func() {
		var err error
		rep, err = c.Recover(ctx)
		recErr <- err
	}()
	<-log.reached
	var gid string
	err := c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
		gid = g.ID()
		return b.transfer(2, 2, 33)(ctx, g)
	})
	if !errors.Is(err, dtx.ErrPending) {
		t.Fatalf("Do: %v, want ErrPending", err)
	}
	close(log.release)
	if err := <-recErr; err != nil {
		if !errors.Is(err, dtx.ErrOutcomeUnknown) {
			t.Errorf("Recover: %v", err)
		}
		t.Log(err)
	}
	if len(rep.RolledBack) > 0 {
		t.Errorf("recovery rolled back %v of decided global %s", rep.RolledBack, gid)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		ds, _ := fl.Pending(ctx, node)
		if len(ds) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("decision not forgotten: %+v", ds)
		}
		if _, err := c.Recover(ctx); err != nil {
			t.Log(err)
		}
	}
	if m := b.check(t); !m[gid] {
		t.Errorf("marker of %s missing", gid)
	}
	noneLeft(t, b, fl, node)
}

// ---- background recovery ----

func TestCoordinatorBackgroundRecovery(t *testing.T) {
	b := newCoBank(t)
	log := coFileLog(t)
	node := "t" + token()
	coCleanupPrefix(t, "g."+node+".")
	old := coGlobalAt(time.Now().Add(-time.Hour))
	refs := b.prepareTransfer(t, node, old, 1, 1, 10)
	// Warm both pools so that connections opened later do not count.
	coPrepared(t, b.pg, "x")
	coPrepared(t, b.my, "x")
	runtime.GC()
	before := runtime.NumGoroutine()
	myOpen := b.my.Stats().OpenConnections

	reports := make(chan dtx.RecoveryReport, 100)
	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
		Log: log, Node: node,
		Resources:       map[string]*sql.DB{"pg": b.pg, "my": b.my},
		RecoverGrace:    time.Millisecond,
		RecoverInterval: 30 * time.Millisecond,
		OnRecover: func(r dtx.RecoveryReport, err error) {
			if err != nil {
				t.Errorf("background recovery: %v", err)
			}
			select {
			case reports <- r:
			default:
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var rolled []string
	for n := 0; n < 3; n++ {
		select {
		case r := <-reports:
			rolled = append(rolled, r.RolledBack...)
		case <-time.After(10 * time.Second):
			t.Fatal("no background recovery report")
		}
	}
	sort.Strings(rolled)
	if want := []string{refs[0].Name, refs[1].Name}; !slices.Equal(rolled, want) {
		t.Errorf("background recovery rolled back %v, want %v", rolled, want)
	}
	start := time.Now()
	c.Close()
	c.Close() // twice is fine
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v", d)
	}
	for len(reports) > 0 {
		<-reports
	}
	time.Sleep(100 * time.Millisecond)
	if len(reports) > 0 {
		t.Error("background recovery ran after Close")
	}
	// go-sql-driver runs a goroutine per open connection.
	allowed := before + max(0, b.my.Stats().OpenConnections-myOpen)
	var now int
	for i := 0; i < 50; i++ {
		if now = runtime.NumGoroutine(); now <= allowed {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	if strings.Contains(stacks, "recoverLoop") {
		t.Errorf("the recovery goroutine is still running:\n%s", stacks)
	} else if now > allowed {
		t.Errorf("%d goroutines after Close, %d before (allowing %d)", now, before, allowed)
	}
	b.unchanged(t)
	noneLeft(t, b, log, node)
}

// TestCoordinatorCloseInterruptsRecovery: Close does not wait for a
// background pass that is waiting out MariaDB's detach grace.
func TestCoordinatorCloseInterruptsRecovery(t *testing.T) {
	b := newCoBank(t)
	log := coFileLog(t)
	myDet := coMyDetaching(t, 4*time.Second)
	node := "t" + token()
	coCleanupPrefix(t, "g."+node+".")
	name := coBranch(node, coGlobalAt(time.Now().Add(-time.Hour)), 0)
	coPrepare(t, myDet, name, "UPDATE "+b.myAcct+" SET bal = bal + 1 WHERE id = 4")
	time.Sleep(20 * time.Millisecond) // released after 1 ms: detached
	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
		Log: log, Node: node,
		Resources:       map[string]*sql.DB{"my": myDet},
		RecoverGrace:    time.Millisecond,
		RecoverInterval: time.Hour,
		OnRecover:       func(dtx.RecoveryReport, error) {},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Give the first pass time to reach the branch and start waiting.
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	c.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v while recovery waited for the detach grace", d)
	}
}

// A resource name that is not UTF-8 is refused at once: every decision
// naming it would be refused by the store (it would keep it as another).
func TestCoordinatorNonUTF8Resource(t *testing.T) {
	s := servers()[0]
	db := open(t, s, s.wrapped)
	_, err := dtx.NewCoordinator(dtx.CoordinatorOptions{Resources: map[string]*sql.DB{"pg\xff": db}, Log: coFileLog(t)})
	if !errors.Is(err, dtx.ErrInvalidName) {
		t.Fatalf("NewCoordinator with resource %q = %v, want ErrInvalidName", "pg\xff", err)
	}
}
