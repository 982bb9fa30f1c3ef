package dtx_test

// Real-server tests of the MariaDB sessions dtx keeps (sessions.go,
// mysqlsession.go): how many it opens under load at database/sql's default
// pool settings, that spares expire with the pool's connections, and that no
// session state travels from one pool user to another across a named
// transaction. The servers are shared with other test runs, so sessions are
// counted at a loopback proxy each test puts in front of MariaDB.

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/internal/netproxy"
	"github.com/go-sql-driver/mysql"
)

// sessDB opens drv on the MariaDB of s through a proxy (netproxy, which
// counts the sessions made and open), with params added to the DSN, and
// returns both. The proxy stops and the pool closes when t ends at the
// latest; a test that must close the pool before its tables are dropped
// closes it itself.
func sessDB(t testing.TB, s server, drv, params string) (*netproxy.Proxy, *sql.DB) {
	t.Helper()
	need(t, s)
	cfg, err := mysql.ParseDSN(s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	p := newProxy(t, cfg.Addr)
	cfg.Net, cfg.Addr = "tcp", p.Addr()
	db, err := sql.Open(drv, withParams(cfg.FormatDSN(), params))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return p, db
}

// withParams is dsn, a go-sql-driver/mysql DSN, with params (k=v&...)
// added.
func withParams(dsn, params string) string {
	if params == "" {
		return dsn
	}
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + params
}

// globalSessions reads the server-wide counters, only to be logged: other
// test runs move them too.
func globalSessions(t testing.TB, raw *sql.DB) (connections, threads int) {
	t.Helper()
	var k string
	if err := raw.QueryRow("SHOW GLOBAL STATUS LIKE 'Connections'").Scan(&k, &connections); err != nil {
		t.Fatal(err)
	}
	if err := raw.QueryRow("SHOW GLOBAL STATUS LIKE 'Threads_connected'").Scan(&k, &threads); err != nil {
		t.Fatal(err)
	}
	return connections, threads
}

// sessLoad runs cycle from workers goroutines for d and returns how many
// cycles ran.
func sessLoad(t *testing.T, workers int, d time.Duration, cycle func(n int64) error) int64 {
	t.Helper()
	var n atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	stop := time.Now().Add(d)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				if err := cycle(n.Add(1)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return n.Load()
}

// TestMySQLSessionsUnderLoad runs 8 workers of named cycles (BeginDistributed
// with one INSERT, CommitDistributed) for 3 s on a pool at database/sql's
// defaults (MaxIdleConns 2, no MaxOpenConns), next to the same statements by
// hand on the raw driver, and counts the server sessions each opens.
//
// The bound: on a pool without MaxOpenConns, BeginDistributed keeps its conn
// until phase two, and the prepared branch stays on that conn's own session
// (see beginOn): no session leaves its conn, so there are no spares, and
// dtx's sessions are its pool's open conns, as with the raw driver. Each
// worker has at most one conn in use or kept, the pool keeps at most 2
// idle: at most 8+2 = 10 open at once. New sessions: the pool closes conns
// returned over MaxIdleConns and dials when a worker then finds none idle,
// on either side, as timing has it. dtx's cycle spends a little longer
// outside its conn than the hand-written one, so it dials more: measured
// raw 8 to 9, dtx 17 to 38 in 8,200 to 10,800 cycles (the same at 77fb2de).
// The test allows the raw count plus 20 plus 0.5 % of the cycles; the defect
// this guards against dialed for 36 % of them.
func TestMySQLSessionsUnderLoad(t *testing.T) {
	s := ntServer(t, "mysql")
	raw := open(t, s, s.raw)
	const workers = 8
	const dur = 3 * time.Second
	ctx := ntCtx(t)

	run := func(t *testing.T, drv string) (cycles, accepted, maxOpen int64) {
		p, db := sessDB(t, s, drv, "")
		defer db.Close()
		tbl := table(t, s, raw, "id BIGINT PRIMARY KEY")
		prefix := names(t, s)
		c0, t0 := globalSessions(t, raw)
		var cycle func(n int64) error
		if drv == s.raw {
			cycle = func(n int64) error {
				x := "'" + prefix + strconv.FormatInt(n, 10) + "'"
				c, err := db.Conn(ctx)
				if err != nil {
					return err
				}
				defer c.Close()
				for _, q := range []string{"XA START " + x, fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, n), "XA END " + x, "XA PREPARE " + x, "XA COMMIT " + x} {
					if _, err := c.ExecContext(ctx, q); err != nil {
						return err
					}
				}
				return nil
			}
		} else {
			cycle = func(n int64) error {
				name := prefix + strconv.FormatInt(n, 10)
				if err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
					_, err := tx.ExecContext(ctx, fmt.Sprintf("INSERT INTO %s VALUES (%d)", tbl, n))
					return err
				}); err != nil {
					return err
				}
				return dtx.CommitDistributed(ctx, name)
			}
		}
		cycles = sessLoad(t, workers, dur, cycle)
		c1, t1 := globalSessions(t, raw)
		t.Logf("%s: %d cycles, %d sessions opened, at most %d open (server-wide, shared: Connections +%d, Threads_connected %d -> %d)",
			drv, cycles, p.Accepted(), p.MaxOpen(), c1-c0, t0, t1)
		if got := int64(count(t, raw, "SELECT COUNT(*) FROM "+tbl)); got != cycles {
			t.Fatalf("%d rows for %d cycles", got, cycles)
		}
		return cycles, p.Accepted(), p.MaxOpen()
	}
	var rawAccepted int64
	t.Run("raw", func(t *testing.T) { _, rawAccepted, _ = run(t, s.raw) })
	t.Run("dtx", func(t *testing.T) {
		cycles, accepted, maxOpen := run(t, s.wrapped)
		if maxOpen > workers+2 {
			t.Errorf("%d sessions open at once, bound %d", maxOpen, workers+2)
		}
		if bound := rawAccepted + 20 + cycles/200; accepted > bound {
			t.Errorf("%d sessions opened for %d cycles; the raw driver opened %d, bound %d", accepted, cycles, rawAccepted, bound)
		}
	})
}

// TestMySQLSessionsHandedOver: with SetMaxOpenConns, BeginDistributed gives
// its conn back to the pool at the prepare, and the pool hands it to
// another user while phase two may still be running on its session: that
// user must get another session (settle), never the one phase two is
// using. 8 workers of named cycles and 4 of plain queries, which take the
// conns the cycles give back (the pool hands out the last one returned),
// for 2 s on a pool of 16 (the benchmarks' idle16), under the race detector
// in make test; every cycle's row must be there.
func TestMySQLSessionsHandedOver(t *testing.T) {
	s := ntServer(t, "mysql")
	raw := open(t, s, s.raw)
	ctx := ntCtx(t)
	p, db := sessDB(t, s, s.wrapped, "")
	defer db.Close()
	db.SetMaxOpenConns(16)
	db.SetMaxIdleConns(16)
	tbl := table(t, s, raw, "id BIGINT PRIMARY KEY")
	prefix := names(t, s)
	var queries atomic.Int64
	cycles := sessLoad(t, 12, 2*time.Second, func(n int64) error {
		if n%3 == 0 {
			queries.Add(1)
			var id int64
			return db.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id)
		}
		name := prefix + strconv.FormatInt(n, 10)
		if err := dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, int(n))); err != nil {
			return err
		}
		return dtx.CommitDistributed(ctx, name)
	})
	cycles -= queries.Load()
	t.Logf("%d cycles and %d queries, %d sessions opened, at most %d open", cycles, queries.Load(), p.Accepted(), p.MaxOpen())
	if got := int64(count(t, raw, "SELECT COUNT(*) FROM "+tbl)); got != cycles {
		t.Fatalf("%d rows for %d cycles", got, cycles)
	}
}

// TestMySQLSparesExpire: spares are closed as the pool closes the conns they
// stand in for, here after SetConnMaxIdleTime, and none are kept once the
// pool is idle; with SetMaxIdleConns(n) at most n+1 sessions stay.
func TestMySQLSparesExpire(t *testing.T) {
	s := ntServer(t, "mysql")
	raw := open(t, s, s.raw)
	ctx := ntCtx(t)
	for _, tc := range []struct {
		name string
		set  func(db *sql.DB)
		left int64 // sessions open at most after the load
	}{
		{"MaxIdleTime", func(db *sql.DB) { db.SetConnMaxIdleTime(200 * time.Millisecond) }, 0},
		{"MaxIdleConns", func(db *sql.DB) { db.SetMaxIdleConns(1) }, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, db := sessDB(t, s, s.wrapped, "")
			defer db.Close()
			tc.set(db)
			tbl := table(t, s, raw, "id BIGINT PRIMARY KEY")
			prefix := names(t, s)
			cycles := sessLoad(t, 4, time.Second, func(n int64) error {
				name := prefix + strconv.FormatInt(n, 10)
				if err := detachedPrepare(ctx, db, name, tbl, n); err != nil {
					return err
				}
				return dtx.CommitDistributed(ctx, name)
			})
			t.Logf("%d cycles, %d sessions opened, at most %d open", cycles, p.Accepted(), p.MaxOpen())
			if p.Accepted() >= cycles/2 {
				t.Errorf("%d sessions opened for %d cycles: spares are not reused", p.Accepted(), cycles)
			}
			ntEventually(t, 5*time.Second, fmt.Sprintf("sessions still open: %d, want at most %d", p.Open(), tc.left), func() bool {
				return p.Open() <= tc.left
			})
		})
	}
}

// TestMySQLSessionStateNotShared: a SET SESSION value, a user variable, a
// temporary table and a GET_LOCK lock that one pool user set before a named
// transaction reach no other pool user, not even the one that gets the very
// session back after phase two; the user's own *sql.Conn continues on a
// clean session after the prepare, and the lock is released when the branch
// is finished.
func TestMySQLSessionStateNotShared(t *testing.T) {
	s := ntServer(t, "mysql")
	raw := open(t, s, s.raw)
	ctx := ntCtx(t)
	_, db := sessDB(t, s, s.wrapped, "")
	defer db.Close()
	tbl := table(t, s, raw, "id INT PRIMARY KEY")
	name := names(t, s) + "state"
	lock := "dtx_lock_" + token()
	tmp := "dtx_tmp_" + token()

	type state struct {
		id       int64
		timeout  int
		userVar  sql.NullString
		tmpTable bool
		lockFree sql.NullInt64
	}
	read := func(c *sql.Conn) state {
		t.Helper()
		var st state
		if err := c.QueryRowContext(ctx, "SELECT CONNECTION_ID(), @@SESSION.lock_wait_timeout, @dtx_user, IS_FREE_LOCK(?)", lock).
			Scan(&st.id, &st.timeout, &st.userVar, &st.lockFree); err != nil {
			t.Fatal(err)
		}
		_, err := c.ExecContext(ctx, "SELECT 1 FROM "+tmp)
		st.tmpTable = err == nil
		return st
	}
	clean := func(who string, st state) {
		t.Helper()
		if st.timeout == 3 || st.userVar.Valid || st.tmpTable {
			t.Errorf("%s sees session %d with another user's state: %+v", who, st.id, st)
		}
	}

	a, err := db.Conn(ctx)
	ntOK(t, "Conn", err)
	defer a.Close()
	for _, q := range []string{
		"SET SESSION lock_wait_timeout = 3",
		"SET @dtx_user = 'a'",
		"CREATE TEMPORARY TABLE " + tmp + " (x INT)",
	} {
		_, err := a.ExecContext(ctx, q)
		ntOK(t, q, err)
	}
	var got int
	ntOK(t, "GET_LOCK", a.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", lock).Scan(&got))
	before := read(a)
	if got != 1 || before.timeout != 3 || !before.userVar.Valid || !before.tmpTable {
		t.Fatalf("state not set up: GET_LOCK %d, %+v", got, before)
	}

	tx, err := a.BeginTx(dtx.WithName(ctx, name), nil)
	ntOK(t, "BeginTx", err)
	_, err = tx.ExecContext(ctx, ntInsert(tbl, 1))
	ntOK(t, "INSERT", err)
	ntOK(t, "prepare", tx.Commit())

	// The same *sql.Conn goes on, on another, clean session.
	after := read(a)
	if after.id == before.id {
		t.Fatalf("still on session %d, which holds the prepared branch", before.id)
	}
	clean("the preparing *sql.Conn after the prepare", after)
	// Until phase two the lock stays with the held session.
	ntOK(t, "IS_FREE_LOCK", raw.QueryRowContext(ctx, "SELECT IS_FREE_LOCK(?)", lock).Scan(&got))
	if got != 0 {
		t.Fatalf("IS_FREE_LOCK %d before phase two, want 0 (held by session %d)", got, before.id)
	}
	ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
	ntMustRow(t, raw, tbl, 1, true)

	// Other pool users: new conns, until one gets the held session back.
	var others []*sql.Conn
	defer func() {
		for _, c := range others {
			c.Close()
		}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := db.Conn(ctx)
		ntOK(t, "Conn", err)
		others = append(others, c)
		st := read(c)
		clean("another pool user", st)
		if st.id == before.id {
			if !st.lockFree.Valid || st.lockFree.Int64 != 1 {
				t.Errorf("the lock is still taken on the reused session: IS_FREE_LOCK %v", st.lockFree)
			}
			break
		}
		if time.Now().After(deadline) || len(others) > 20 {
			t.Fatalf("session %d never came back to the pool (%d conns tried)", before.id, len(others))
		}
		// Keep c: the next Conn must come from Connect, which takes spares.
		time.Sleep(20 * time.Millisecond)
	}
	ntOK(t, "GET_LOCK from another client", raw.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", lock).Scan(&got))
	if got != 1 {
		t.Errorf("another client's GET_LOCK answered %d after phase two, want 1", got)
	}
	raw.ExecContext(ctx, "SELECT RELEASE_LOCK(?)", lock)
}

// TestMySQLResetKeepsDSNSettings: what the driver sets by statement at
// connect (charset=, system variables in the DSN) is set again after the
// reset of a session back from a held branch.
func TestMySQLResetKeepsDSNSettings(t *testing.T) {
	s := ntServer(t, "mysql")
	raw := open(t, s, s.raw)
	ctx := ntCtx(t)
	_, db := sessDB(t, s, s.wrapped, "charset=latin1&lock_wait_timeout=7")
	defer db.Close()
	db.SetMaxIdleConns(0) // every Conn below is a new one, from Connect
	// One conn kept open: with none, the pool keeps nothing and neither do
	// the spares.
	keep, err := db.Conn(ctx)
	ntOK(t, "Conn", err)
	defer keep.Close()
	held := heldAlone(t, s, db, raw) // each a spare, reset, after phase two
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := db.Conn(ctx)
		ntOK(t, "Conn", err)
		var id int64
		var timeout int
		var cs string
		ntOK(t, "read", c.QueryRowContext(ctx, "SELECT CONNECTION_ID(), @@SESSION.lock_wait_timeout, @@character_set_client").Scan(&id, &timeout, &cs))
		c.Close()
		if timeout != 7 || cs != "latin1" {
			t.Fatalf("session %d: lock_wait_timeout %d, character_set_client %s; the DSN says 7 and latin1", id, timeout, cs)
		}
		if held[id] {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("none of the sessions %v came back", held)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// heldAlone commits two named transactions on db, a pool that keeps no idle
// conn (MaxIdleConns 0) while its caller keeps one open, and returns the
// server ids of their sessions. Through db.BeginTx, not BeginDistributed:
// the conn goes back to the pool at the prepare, which closes it, so the
// branch keeps the session alone until phase two, when dtx recycles it.
func heldAlone(t *testing.T, s server, db, raw *sql.DB) map[int64]bool {
	t.Helper()
	ctx := ntCtx(t)
	tbl := table(t, s, raw, "id INT PRIMARY KEY")
	prefix := names(t, s)
	held := map[int64]bool{}
	for i := range 2 {
		name := prefix + strconv.Itoa(i)
		tx, err := db.BeginTx(dtx.WithName(ctx, name), nil)
		ntOK(t, "BeginTx", err)
		var id int64
		ntOK(t, "CONNECTION_ID", tx.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id))
		held[id] = true
		_, err = tx.ExecContext(ctx, ntInsert(tbl, i))
		ntOK(t, "INSERT", err)
		ntOK(t, "prepare", tx.Commit())
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, i, true)
	}
	return held
}

// unresettable are DSN parameters whose sessions dtx cannot reset: it
// would write plain packets into a compressed or encrypted stream.
var unresettable = []string{"compress=true", "tls=skip-verify"}

// TestMySQLSessionThreads: dtx knows the server thread of every session it
// dials, plain, compressed and TLS (the greeting comes before either
// starts), which the fence of a lost prepare needs; the TLS session is
// encrypted.
func TestMySQLSessionThreads(t *testing.T) {
	s := ntServer(t, "mysql")
	ctx := ntCtx(t)
	for _, params := range append([]string{""}, unresettable...) {
		t.Run("params="+params, func(t *testing.T) {
			needParams(t, s, params)
			_, db := sessDB(t, s, s.wrapped, params)
			defer db.Close()
			cn, err := db.Conn(ctx)
			ntOK(t, "Conn", err)
			defer cn.Close()
			var id int64
			var cipher string
			ntOK(t, "CONNECTION_ID", cn.QueryRowContext(ctx, "SELECT CONNECTION_ID(), (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher')").Scan(&id, &cipher))
			if strings.HasPrefix(params, "tls=") && cipher == "" {
				t.Fatal("the TLS session is not encrypted")
			}
			got, err := dtx.SessionThread(cn)
			ntOK(t, "SessionThread", err)
			if int64(got) != id {
				t.Fatalf("dtx knows thread %d for session %d", got, id)
			}
		})
	}
}

// needParams skips t, or fails it under DTX_REQUIRE_DB=1, when params ask
// for TLS and s's server has it off (scripts/devdb.sh turns it on).
func needParams(t *testing.T, s server, params string) {
	t.Helper()
	if !strings.HasPrefix(params, "tls=") {
		return
	}
	var have string
	ntOK(t, "have_ssl", open(t, s, s.raw).QueryRowContext(ntCtx(t), "SELECT @@have_ssl").Scan(&have))
	if have != "YES" {
		msg := "MariaDB has TLS off (have_ssl " + have + "); run scripts/devdb.sh as root to turn it on"
		if os.Getenv("DTX_REQUIRE_DB") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

// connectorDB opens s's MariaDB through dtx.NewConnector over a
// go-sql-driver/mysql connector, which dtx does not dial itself; at addr
// (a proxy's) unless it is "". Closed when t ends.
func connectorDB(t *testing.T, s server, addr string) *sql.DB {
	t.Helper()
	need(t, s)
	cfg, err := mysql.ParseDSN(s.dsn)
	ntOK(t, "ParseDSN", err)
	if addr != "" {
		cfg.Net, cfg.Addr = "tcp", addr
	}
	mc, err := mysql.NewConnector(cfg)
	ntOK(t, "mysql.NewConnector", err)
	db := sql.OpenDB(dtx.NewConnector(mc, dtx.MySQL))
	t.Cleanup(func() { db.Close() })
	return db
}

// TestMySQLSessionThreadAsked: on a session dtx did not dial (a connector
// given to NewConnector), dtx asks the server for the thread, once in the
// session's life, at its first named transaction.
func TestMySQLSessionThreadAsked(t *testing.T) {
	s := ntServer(t, "mysql")
	raw := open(t, s, s.raw)
	ctx := ntCtx(t)
	db := connectorDB(t, s, "")
	cn, err := db.Conn(ctx)
	ntOK(t, "Conn", err)
	defer cn.Close()
	if got, err := dtx.SessionThread(cn); err != nil || got != 0 {
		t.Fatalf("before any named transaction dtx knows thread %d (%v)", got, err)
	}
	tbl := table(t, s, raw, "id INT PRIMARY KEY")
	prefix := names(t, s)
	for i := range 3 {
		name := prefix + strconv.Itoa(i)
		tx, err := cn.BeginTx(dtx.WithName(ctx, name), nil)
		ntOK(t, "BeginTx", err)
		_, err = tx.ExecContext(ctx, ntInsert(tbl, i))
		ntOK(t, "INSERT", err)
		ntOK(t, "prepare", tx.Commit())
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
	}
	var id int64
	var selects int
	ntOK(t, "CONNECTION_ID", cn.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id))
	ntOK(t, "Com_select", cn.QueryRowContext(ctx, "SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Com_select'").Scan(&selects))
	got, err := dtx.SessionThread(cn)
	ntOK(t, "SessionThread", err)
	if int64(got) != id {
		t.Fatalf("dtx knows thread %d for session %d", got, id)
	}
	// dtx's one question, the test's CONNECTION_ID() and this query.
	if selects != 3 {
		t.Fatalf("the session ran %d SELECTs in 3 named transactions and 2 of the test's; want 3 (dtx asks once)", selects)
	}
}

// TestMySQLSessionThreadAskFails: when the question for the thread fails
// (the connection was cut), the begin fails before XA START and the name is
// free again.
func TestMySQLSessionThreadAskFails(t *testing.T) {
	s := ntServer(t, "mysql")
	raw := open(t, s, s.raw)
	ctx := ntCtx(t)
	p := newProxy(t, coServerAddr(t, s))
	db := connectorDB(t, s, p.Addr())
	cn, err := db.Conn(ctx)
	ntOK(t, "Conn", err)
	defer cn.Close()
	tbl := table(t, s, raw, "id INT PRIMARY KEY")
	name := names(t, s) + "0"
	p.Cut()
	if _, err := cn.BeginTx(dtx.WithName(ctx, name), nil); err == nil {
		t.Fatal("BeginTx on a cut connection succeeded")
	}
	ntOK(t, "BeginDistributed with the name again", dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, 1)))
	ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
	ntMustRow(t, raw, tbl, 1, true)
}

// TestMySQLUnresettableSessionsNotReused: a compressed or TLS session
// cannot be reset by dtx. After its held branch is finished it is closed,
// never handed to another conn, and the sessions that serve the pool still
// answer.
func TestMySQLUnresettableSessionsNotReused(t *testing.T) {
	for _, params := range unresettable {
		t.Run("params="+params, func(t *testing.T) { testUnresettable(t, params) })
	}
}

func testUnresettable(t *testing.T, params string) {
	s := ntServer(t, "mysql")
	needParams(t, s, params)
	raw := open(t, s, s.raw)
	ctx := ntCtx(t)
	_, db := sessDB(t, s, s.wrapped, params)
	defer db.Close()
	db.SetMaxIdleConns(0)
	keep, err := db.Conn(ctx)
	ntOK(t, "Conn", err)
	defer keep.Close()
	held := heldAlone(t, s, db, raw)
	// Closed at phase two, not kept as a spare that a later Connect would
	// take.
	for id := range held {
		ntEventually(t, 5*time.Second, "a held session is still open after phase two", func() bool {
			return count(t, raw, "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?", id) == 0
		})
	}
	for i := range 20 {
		c, err := db.Conn(ctx)
		ntOK(t, "Conn", err)
		var id, n int64
		ntOK(t, "read", c.QueryRowContext(ctx, "SELECT CONNECTION_ID(), ?", i).Scan(&id, &n))
		c.Close()
		if held[id] || n != int64(i) {
			t.Fatalf("session %d answered %d for %d; held were %v", id, n, i, held)
		}
	}
}

// TestMySQLSessionsClosedWithDB: DB.Close closes every session dtx keeps,
// spares, sessions being reset and held ones (whose branches stay
// prepared), and leaves no reset running.
func TestMySQLSessionsClosedWithDB(t *testing.T) {
	s := ntServer(t, "mysql")
	raw := open(t, s, s.raw)
	ctx := ntCtx(t)
	p, db := sessDB(t, s, s.wrapped, "")
	tbl := table(t, s, raw, "id BIGINT PRIMARY KEY")
	prefix := names(t, s)
	goroutines := runtime.NumGoroutine()
	sessLoad(t, 4, 500*time.Millisecond, func(n int64) error {
		name := prefix + strconv.FormatInt(n, 10)
		if err := detachedPrepare(ctx, db, name, tbl, n); err != nil {
			return err
		}
		return dtx.CommitDistributed(ctx, name)
	})
	// Two branches left prepared, one on the conn BeginDistributed keeps,
	// one held alone: both sessions must close with the DB.
	ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, prefix+"left", ntInsertFn(ctx, tbl, -1)))
	ntOK(t, "prepare", detachedPrepare(ctx, db, prefix+"left2", tbl, -2))
	if p.Open() == 0 {
		t.Fatal("no session open before Close")
	}
	ntOK(t, "Close", db.Close())
	ntEventually(t, 5*time.Second, "sessions still open after DB.Close", func() bool { return p.Open() == 0 })
	ntEventually(t, 5*time.Second, "goroutines left after DB.Close", func() bool {
		return runtime.NumGoroutine() <= goroutines+2 // the proxy's accept loop may lag
	})
	for _, n := range []string{"left", "left2"} {
		ntMustList(t, open(t, s, s.wrapped), prefix+n, true)
		ntOK(t, "RollbackDistributed", dtx.RollbackDistributed(ctx, prefix+n))
	}
}

// detachedPrepare prepares a named INSERT of id n into tbl whose session
// leaves its conn: through db.BeginTx, so the conn goes back to the pool at
// the prepare, and a query right after takes it again (the pool hands out
// the conn returned last) before phase two. The branch then keeps the
// session alone, the conn takes a spare or dials, and after phase two the
// session is reset and becomes a spare.
func detachedPrepare(ctx context.Context, db *sql.DB, name, tbl string, n int64) error {
	tx, err := db.BeginTx(dtx.WithName(ctx, name), nil)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, ntInsert(tbl, int(n))); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	var one int
	return db.QueryRowContext(ctx, "SELECT 1").Scan(&one)
}
