package dtx_test

// Real-server tests of named (two-phase) transactions: every public verb, on
// PostgreSQL and on MariaDB, against the behaviour measured in
// shared/notes/two-phase-facts.md. Each test makes its own table (table) and
// name prefix (names), so leftovers are rolled back and dropped when it ends.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
)

// ---- helpers (prefixed nt so they cannot collide with other test files) ----

// ntServer returns the server of kind, or skips/fails like need.
func ntServer(t *testing.T, kind string) server {
	t.Helper()
	for _, s := range servers() {
		if s.kind == kind {
			need(t, s)
			return s
		}
	}
	t.Fatalf("no server of kind %s", kind)
	return server{}
}

func ntCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func ntInsert(tbl string, id int) string {
	return fmt.Sprintf("INSERT INTO %s (id) VALUES (%d)", tbl, id)
}

// ntRow reports whether row id is visible in tbl to a new statement on db.
func ntRow(t *testing.T, db *sql.DB, tbl string, id int) bool {
	t.Helper()
	return count(t, db, fmt.Sprintf("SELECT COUNT(*) FROM %s WHERE id = %d", tbl, id)) == 1
}

func ntInsertFn(ctx context.Context, tbl string, ids ...int) func(*sql.Tx) error {
	return func(tx *sql.Tx) error {
		for _, id := range ids {
			if _, err := tx.ExecContext(ctx, ntInsert(tbl, id)); err != nil {
				return err
			}
		}
		return nil
	}
}

// ntRollbackOnExit rolls tx back when the test ends (a no-op once it is
// finished), so a failed assertion cannot leave it holding its locks and its
// connection while the cleanup waits on them.
func ntRollbackOnExit(t *testing.T, tx *sql.Tx) {
	if tx != nil {
		t.Cleanup(func() { tx.Rollback() })
	}
}

// ntConn takes a connection of db for the rest of the test.
func ntConn(t *testing.T, ctx context.Context, db *sql.DB) *sql.Conn {
	t.Helper()
	c, err := db.Conn(ctx)
	ntOK(t, "Conn", err)
	t.Cleanup(func() { c.Close() })
	return c
}

// ntListed returns the entry ListPrepared gives for name.
func ntListed(t *testing.T, db *sql.DB, name string) (dtx.Prepared, bool) {
	t.Helper()
	ps, err := dtx.ListPrepared(context.Background(), db)
	if err != nil {
		t.Fatalf("ListPrepared: %v", err)
	}
	for _, p := range ps {
		if p.Name == name {
			return p, true
		}
	}
	return dtx.Prepared{}, false
}

// ntWithPrefix lists the prepared names that start with prefix.
func ntWithPrefix(t *testing.T, db *sql.DB, prefix string) []string {
	t.Helper()
	ps, err := dtx.ListPrepared(context.Background(), db)
	if err != nil {
		t.Fatalf("ListPrepared: %v", err)
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

func ntMustList(t *testing.T, db *sql.DB, name string, want bool) {
	t.Helper()
	if _, ok := ntListed(t, db, name); ok != want {
		t.Fatalf("ListPrepared lists %q: %v, want %v", name, ok, want)
	}
}

func ntMustRow(t *testing.T, db *sql.DB, tbl string, id int, want bool) {
	t.Helper()
	if got := ntRow(t, db, tbl, id); got != want {
		t.Fatalf("row %d of %s visible: %v, want %v", id, tbl, got, want)
	}
}

func ntIs(t *testing.T, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got %v, want an error wrapping %v", what, err, target)
	}
}

func ntOK(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// ntEventually polls cond until it holds or timeout passes.
func ntEventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ntMyDB opens a dtx MariaDB database through dtx.NewConnector with opts.
func ntMyDB(t *testing.T, s server, opts ...dtx.Option) *sql.DB {
	t.Helper()
	need(t, s)
	cfg, err := mysql.ParseDSN(s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	mc, err := mysql.NewConnector(cfg)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(dtx.NewConnector(mc, dtx.MySQL, opts...))
	t.Cleanup(func() { db.Close() })
	return db
}

// ntRawPrepare prepares a transaction that inserts id, by hand on the raw
// driver, as psql, Bun or another process would: PostgreSQL gid = name;
// MariaDB gtrid = name, formatID 1, empty bqual. On MariaDB the preparing
// session is then closed (its branch detaches); the returned value is its
// connection id (0 on PostgreSQL).
func ntRawPrepare(t *testing.T, s server, name, tbl string, id int) int64 {
	t.Helper()
	ctx := ntCtx(t)
	rawdb, err := sql.Open(s.raw, s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer rawdb.Close()
	c, err := rawdb.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var stmts []string
	var connID int64
	if s.kind == "postgres" {
		stmts = []string{"BEGIN", ntInsert(tbl, id), "PREPARE TRANSACTION '" + name + "'"}
	} else {
		if err := c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&connID); err != nil {
			t.Fatal(err)
		}
		stmts = []string{"XA START '" + name + "'", ntInsert(tbl, id), "XA END '" + name + "'", "XA PREPARE '" + name + "'"}
	}
	for _, q := range stmts {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatalf("raw %s: %v", q, err)
		}
	}
	return connID
}

// ntWaitGone waits until MariaDB session id has left the server (its
// processlist entry is gone). information_schema.innodb_trx is no use here:
// MariaDB refreshes that cache only after 100 ms without readers, so a
// poller keeps it frozen.
func ntWaitGone(t *testing.T, raw *sql.DB, id int64) {
	t.Helper()
	ntEventually(t, 10*time.Second, fmt.Sprintf("session %d still on the server", id), func() bool {
		return count(t, raw, "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?", id) == 0
	})
}

// ntNoSQL marks the session of c and returns a check of whether any
// statement ran on it since: on PostgreSQL, pg_stat_activity still shows the
// marker as the backend's last query and the backend idle (not in a
// transaction); on MariaDB, the session's Questions counter moved only by
// the check's own statement. check(what, false) fails t if something ran;
// check(what, true) fails it if nothing did (a control that the probe sees
// statements at all).
func ntNoSQL(t *testing.T, s server, raw *sql.DB, c *sql.Conn) (check func(what string, wantRan bool)) {
	t.Helper()
	ctx := ntCtx(t)
	report := func(what string, wantRan, ran bool, detail string) {
		t.Helper()
		if ran != wantRan {
			t.Fatalf("%s: statements ran on the session: %v, want %v (%s)", what, ran, wantRan, detail)
		}
	}
	if s.kind == "postgres" {
		marker := "SELECT pg_backend_pid() /* dtx named_test marker " + token() + " */"
		var pid int
		if err := c.QueryRowContext(ctx, marker).Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return func(what string, wantRan bool) {
			t.Helper()
			var q, state string
			if err := raw.QueryRowContext(ctx, "SELECT query, state FROM pg_stat_activity WHERE pid = $1", pid).Scan(&q, &state); err != nil {
				t.Fatal(err)
			}
			report(what, wantRan, q != marker || state != "idle", fmt.Sprintf("last query %q, state %q", q, state))
		}
	}
	questions := func() int {
		var name string
		var n int
		if err := c.QueryRowContext(ctx, "SHOW SESSION STATUS LIKE 'Questions'").Scan(&name, &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	last := questions()
	return func(what string, wantRan bool) {
		t.Helper()
		n := questions()
		report(what, wantRan, n != last+1, fmt.Sprintf("%d statements besides the probe", n-last-1))
		last = n
	}
}

// ---- 1. BeginDistributed, then CommitDistributed / RollbackDistributed ----

func TestNamedPrepareCommitRollback(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		name := prefix + "commit"
		ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, 1)))
		p, ok := ntListed(t, db, name)
		if !ok {
			t.Fatalf("ListPrepared does not list %q", name)
		}
		if s.kind == "postgres" {
			var user, dbname string
			var now time.Time
			if err := raw.QueryRow("SELECT current_user, current_database(), now()").Scan(&user, &dbname, &now); err != nil {
				t.Fatal(err)
			}
			if p.Owner != user || p.Database != dbname {
				t.Errorf("Prepared owner/database = %q/%q, want %q/%q", p.Owner, p.Database, user, dbname)
			}
			if p.PreparedAt.IsZero() || p.PreparedAt.After(now) || now.Sub(p.PreparedAt) > time.Minute {
				t.Errorf("Prepared.PreparedAt = %v, server now %v", p.PreparedAt, now)
			}
		} else if p.Owner != "" || p.Database != "" || !p.PreparedAt.IsZero() {
			// XA RECOVER reports none of these: they stay zero.
			t.Errorf("MariaDB Prepared has fields the server does not report: %+v", p)
		}
		ntMustRow(t, raw, tbl, 1, false) // prepared, not visible to another connection
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 1, true)
		ntMustList(t, db, name, false)

		name = prefix + "rollback"
		ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, 2)))
		ntMustList(t, db, name, true)
		ntMustRow(t, raw, tbl, 2, false)
		ntOK(t, "RollbackDistributed", dtx.RollbackDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 2, false)
		ntMustList(t, db, name, false)
		if got := ntWithPrefix(t, db, prefix); len(got) != 0 {
			t.Fatalf("still prepared: %v", got)
		}
	})
}

// ---- 2. db.BeginTx(dtx.WithName(ctx, name), opts) ----

func TestNamedBeginTx(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		// Commit is phase one: it prepares.
		name := prefix + "a"
		tx, err := db.BeginTx(dtx.WithName(ctx, name), nil)
		ntRollbackOnExit(t, tx)
		ntOK(t, "BeginTx", err)
		_, err = tx.ExecContext(ctx, ntInsert(tbl, 1))
		ntOK(t, "insert", err)
		ntOK(t, "tx.Commit", tx.Commit())
		ntMustList(t, db, name, true)
		ntMustRow(t, raw, tbl, 1, false)
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 1, true)

		// Rollback rolls back and frees the name at once.
		name = prefix + "b"
		tx, err = db.BeginTx(dtx.WithName(ctx, name), nil)
		ntRollbackOnExit(t, tx)
		ntOK(t, "BeginTx", err)
		_, err = tx.ExecContext(ctx, ntInsert(tbl, 2))
		ntOK(t, "insert", err)
		ntOK(t, "tx.Rollback", tx.Rollback())
		ntMustList(t, db, name, false)
		ntMustRow(t, raw, tbl, 2, false)
		tx, err = db.BeginTx(dtx.WithName(ctx, name), nil) // the same name again
		ntRollbackOnExit(t, tx)
		ntOK(t, "BeginTx reusing the name", err)
		_, err = tx.ExecContext(ctx, ntInsert(tbl, 3))
		ntOK(t, "insert", err)
		ntOK(t, "tx.Commit", tx.Commit())
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 3, true)
		ntMustRow(t, raw, tbl, 2, false)

		// Isolation and read-only are applied inside the named transaction,
		// as the server sees it.
		type level struct {
			opts     sql.TxOptions
			isoPG    string
			isoMy    string
			readOnly bool
		}
		for i, l := range []level{
			{sql.TxOptions{Isolation: sql.LevelSerializable}, "serializable", "SERIALIZABLE", false},
			{sql.TxOptions{Isolation: sql.LevelReadCommitted, ReadOnly: true}, "read committed", "READ COMMITTED", true},
			{sql.TxOptions{Isolation: sql.LevelRepeatableRead}, "repeatable read", "REPEATABLE READ", false},
		} {
			name := prefix + "iso" + strconv.Itoa(i)
			id := 10 + i
			tx, err := db.BeginTx(dtx.WithName(ctx, name), &l.opts)
			ntRollbackOnExit(t, tx)
			ntOK(t, "BeginTx with options", err)
			var iso string
			var ro bool
			if s.kind == "postgres" {
				var roText string
				if err := tx.QueryRowContext(ctx, "SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only')").Scan(&iso, &roText); err != nil {
					t.Fatal(err)
				}
				ro = roText == "on"
				if iso != l.isoPG {
					t.Errorf("%v: server isolation %q, want %q", l.opts, iso, l.isoPG)
				}
			} else {
				// MariaDB shows no variable for the running transaction's
				// level (and information_schema.innodb_trx is a cache that
				// concurrent readers keep stale), so check what the levels do.
				iso, ro = ntMySQLLevel(t, ctx, tx, raw, tbl, 100+i)
				if iso != l.isoMy {
					t.Errorf("%v: server behaves as %q, want %q", l.opts, iso, l.isoMy)
				}
			}
			if ro != l.readOnly {
				t.Errorf("%v: server read-only %v, want %v", l.opts, ro, l.readOnly)
			}
			_, err = tx.ExecContext(ctx, ntInsert(tbl, id))
			if l.readOnly {
				if err == nil {
					t.Fatalf("%v: insert in a read-only named transaction succeeded", l.opts)
				}
				ntOK(t, "tx.Rollback", tx.Rollback())
				ntMustList(t, db, name, false)
				continue
			}
			ntOK(t, "insert", err)
			ntOK(t, "tx.Commit", tx.Commit())
			ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
			ntMustRow(t, raw, tbl, id, true)
		}
	})
}

// ntMySQLLevel tells the isolation level and read-only mode of the MariaDB
// transaction tx by what the server does: under SERIALIZABLE a plain SELECT
// locks what it read, so another session cannot insert into the table (no
// lock wait: error 1205 at once); under REPEATABLE READ the second read does
// not see that other session's committed row, under READ COMMITTED it does;
// a READ ONLY transaction refuses an insert with 1792. The other session's
// row is probe.
func ntMySQLLevel(t *testing.T, ctx context.Context, tx *sql.Tx, raw *sql.DB, tbl string, probe int) (iso string, readOnly bool) {
	t.Helper()
	countIn := func() int {
		var n int
		if err := tx.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+tbl).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	first := countIn()
	c, err := raw.Conn(ctx)
	ntOK(t, "Conn", err)
	defer c.Close()
	_, err = c.ExecContext(ctx, "SET SESSION innodb_lock_wait_timeout = 0")
	ntOK(t, "set lock wait timeout", err)
	_, insErr := c.ExecContext(ctx, ntInsert(tbl, probe))
	_, err = c.ExecContext(ctx, "SET SESSION innodb_lock_wait_timeout = DEFAULT")
	ntOK(t, "reset lock wait timeout", err)
	var me *mysql.MySQLError
	switch {
	case errors.As(insErr, &me) && me.Number == 1205:
		iso = "SERIALIZABLE"
	case insErr != nil:
		t.Fatalf("insert from another session: %v", insErr)
	case countIn() == first:
		iso = "REPEATABLE READ"
	default:
		iso = "READ COMMITTED"
	}
	// A statement that fails for read-only leaves the transaction usable.
	_, err = tx.ExecContext(ctx, ntInsert(tbl, probe+1000))
	if errors.As(err, &me) && me.Number == 1792 {
		return iso, true
	}
	if err != nil {
		t.Fatalf("probe insert in the named transaction: %v", err)
	}
	_, err = tx.ExecContext(ctx, fmt.Sprintf("DELETE FROM %s WHERE id = %d", tbl, probe+1000))
	ntOK(t, "delete the probe row", err)
	return iso, false
}

// ---- 3. A failed statement before commit ----

func TestNamedFailedStatement(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		name := prefix + "fail"
		tx, err := db.BeginTx(dtx.WithName(ctx, name), nil)
		ntRollbackOnExit(t, tx)
		ntOK(t, "BeginTx", err)
		_, err = tx.ExecContext(ctx, ntInsert(tbl, 1))
		ntOK(t, "insert", err)
		if _, err := tx.ExecContext(ctx, ntInsert(tbl, 1)); err == nil {
			t.Fatal("duplicate insert succeeded")
		}
		_, err = tx.ExecContext(ctx, ntInsert(tbl, 2))
		if s.kind == "postgres" {
			// The transaction is aborted: later statements fail, and
			// PREPARE TRANSACTION answers tag ROLLBACK without an error.
			if err == nil {
				t.Fatal("statement after a failure in a PostgreSQL transaction succeeded")
			}
			ntIs(t, "tx.Commit of an aborted transaction", tx.Commit(), dtx.ErrNotPrepared)
			ntMustList(t, db, name, false)
			ntMustRow(t, raw, tbl, 1, false)
			ntMustRow(t, raw, tbl, 2, false)

			// The same through BeginDistributed, with an fn that swallows
			// the failure.
			name2 := prefix + "fail2"
			err = dtx.BeginDistributed(ctx, db, name2, func(tx *sql.Tx) error {
				tx.ExecContext(ctx, ntInsert(tbl, 3))
				tx.ExecContext(ctx, "SELECT 1/0")
				return nil
			})
			ntIs(t, "BeginDistributed with a failed statement", err, dtx.ErrNotPrepared)
			ntMustList(t, db, name2, false)
			ntMustRow(t, raw, tbl, 3, false)

			// Both names are free again.
			for i, n := range []string{name, name2} {
				ntOK(t, "reuse "+n, dtx.BeginDistributed(ctx, db, n, ntInsertFn(ctx, tbl, 10+i)))
				ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, n))
				ntMustRow(t, raw, tbl, 10+i, true)
			}
			return
		}
		// MariaDB: a failed statement does not abort the transaction; the
		// statements that succeeded are prepared and then committed.
		ntOK(t, "insert after a failed statement (MariaDB)", err)
		ntOK(t, "tx.Commit", tx.Commit())
		ntMustList(t, db, name, true)
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 1, true)
		ntMustRow(t, raw, tbl, 2, true)
		t.Logf("MariaDB: after a failed statement the named transaction stayed usable; its successful statements were prepared and committed")
	})
}

// ---- 4. Duplicate names ----

func TestNamedDuplicateName(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		// Active in this process: refused before any SQL on the second
		// connection.
		name := prefix + "dup"
		c1 := ntConn(t, ctx, db)
		c2 := ntConn(t, ctx, db)
		tx1, err := c1.BeginTx(dtx.WithName(ctx, name), nil)
		ntRollbackOnExit(t, tx1)
		ntOK(t, "BeginTx", err)
		_, err = tx1.ExecContext(ctx, ntInsert(tbl, 1))
		ntOK(t, "insert", err)

		noSQL := ntNoSQL(t, s, raw, c2)
		_, err = c2.BeginTx(dtx.WithName(ctx, name), nil)
		ntIs(t, "BeginTx with an active name", err, dtx.ErrNameInUse)
		noSQL("BeginTx with an active name", false)
		called := false
		err = dtx.BeginDistributed(ctx, db, name, func(*sql.Tx) error { called = true; return nil })
		ntIs(t, "BeginDistributed with an active name", err, dtx.ErrNameInUse)
		if called {
			t.Fatal("fn ran for a name in use")
		}
		// Also when the transaction holding the name owns the pool's only
		// connection: the answer must not wait for a connection.
		one := open(t, s, s.wrapped)
		one.SetMaxOpenConns(1)
		txOne, err := one.BeginTx(dtx.WithName(ctx, name+"one"), nil)
		ntRollbackOnExit(t, txOne)
		ntOK(t, "BeginTx on a pool of one", err)
		tctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = dtx.BeginDistributed(tctx, one, name+"one", func(*sql.Tx) error { return nil })
		cancel()
		ntIs(t, "BeginDistributed with the name held on the pool's only connection", err, dtx.ErrNameInUse)
		ntOK(t, "rollback", txOne.Rollback())
		// Still refused once prepared, until finished.
		ntOK(t, "tx1.Commit", tx1.Commit())
		_, err = c2.BeginTx(dtx.WithName(ctx, name), nil)
		ntIs(t, "BeginTx with a prepared name", err, dtx.ErrNameInUse)
		noSQL("BeginTx with a prepared name", false)
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 1, true)
		c1.Close()
		c2.Close()

		// Prepared in the database by another connection (by hand, raw).
		name = prefix + "other"
		ntRawPrepare(t, s, name, tbl, 10)
		called = false
		err = dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
			called = true
			return ntInsertFn(ctx, tbl, 11)(tx)
		})
		ntIs(t, "BeginDistributed with a name prepared elsewhere", err, dtx.ErrNameInUse)
		if s.kind == "mysql" && called {
			t.Error("MariaDB: fn ran although XA START must have refused the xid")
		}
		// PostgreSQL learns of the clash only at PREPARE (fn ran): its work
		// was rolled back.
		ntMustRow(t, raw, tbl, 11, false)
		ntMustRow(t, raw, tbl, 10, false)
		ntMustList(t, db, name, true) // the raw one is intact
		ntOK(t, "CommitPrepared of the raw one", dtx.CommitPrepared(ctx, db, name))
		ntMustRow(t, raw, tbl, 10, true)
		ntMustRow(t, raw, tbl, 11, false)
		ntMustList(t, db, name, false)
		// The dtx connection is still fine for a named transaction.
		ntOK(t, "BeginDistributed after the clash", dtx.BeginDistributed(ctx, db, prefix+"after", ntInsertFn(ctx, tbl, 12)))
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, prefix+"after"))
		ntMustRow(t, raw, tbl, 12, true)
	})
}

// ---- 5. Invalid and hostile names ----

func TestNamedInvalidNames(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		bad := []string{
			"",
			strings.Repeat("a", dtx.MaxNameLen+1),
			prefix + "nul\x00byte",
			prefix + "it's",
			prefix + `dq"x`,
			prefix + `back\slash`,
			prefix + "with space",
			prefix + "tab\tx",
			prefix + "nl\nx",
			"'); DROP TABLE " + tbl + "; --",
			"x'; COMMIT PREPARED 'y",
			"X'00'",
			prefix + "naïve",
			prefix + "名前",
			prefix + "\xff\xfe",
		}
		// The boundary: 64 bytes of allowed characters are fine.
		ntOK(t, "ValidateName of 64 bytes", dtx.ValidateName(strings.Repeat("a", dtx.MaxNameLen)))
		ntOK(t, "ValidateName of every allowed punctuation", dtx.ValidateName("a_-.:+/=@Z9"))

		// A dtx database whose server does not exist: a verb that reached
		// for a connection would fail with a connection error instead.
		deadDSN := "postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=1"
		if s.kind == "mysql" {
			deadDSN = "root@tcp(127.0.0.1:1)/test?timeout=1s"
		}
		dead, err := sql.Open(s.wrapped, deadDSN)
		ntOK(t, "open dead", err)
		defer dead.Close()

		c := ntConn(t, ctx, db)
		noSQL := ntNoSQL(t, s, raw, c)

		for _, name := range bad {
			q := strconv.Quote(name)
			ntIs(t, "ValidateName("+q+")", dtx.ValidateName(name), dtx.ErrInvalidName)
			for _, target := range []*sql.DB{db, dead} {
				called := false
				err := dtx.BeginDistributed(ctx, target, name, func(*sql.Tx) error { called = true; return nil })
				ntIs(t, "BeginDistributed("+q+")", err, dtx.ErrInvalidName)
				if called {
					t.Fatalf("BeginDistributed(%s) called fn", q)
				}
				ntIs(t, "CommitPrepared("+q+")", dtx.CommitPrepared(ctx, target, name), dtx.ErrInvalidName)
				ntIs(t, "RollbackPrepared("+q+")", dtx.RollbackPrepared(ctx, target, name), dtx.ErrInvalidName)
			}
			// With the dead database registered, a search would fail with
			// its connection error: these answer before searching.
			ntIs(t, "CommitDistributed("+q+")", dtx.CommitDistributed(ctx, name), dtx.ErrInvalidName)
			ntIs(t, "RollbackDistributed("+q+")", dtx.RollbackDistributed(ctx, name), dtx.ErrInvalidName)
			_, err := c.BeginTx(dtx.WithName(ctx, name), nil)
			ntIs(t, "BeginTx(WithName("+q+"))", err, dtx.ErrInvalidName)
			_, err = db.BeginTx(dtx.WithName(ctx, name), nil)
			ntIs(t, "db.BeginTx(WithName("+q+"))", err, dtx.ErrInvalidName)
			noSQL("BeginTx(WithName("+q+"))", false)
		}
		// Nothing ran: the table is there and nothing was prepared.
		if n := count(t, raw, "SELECT COUNT(*) FROM "+tbl); n != 0 {
			t.Fatalf("%s has %d rows", tbl, n)
		}
		ps, err := dtx.ListPrepared(ctx, db)
		ntOK(t, "ListPrepared", err)
		for _, p := range ps {
			for _, name := range bad {
				if p.Name == name || strings.HasPrefix(p.Name, prefix) || strings.Contains(p.Name, "DROP") {
					t.Fatalf("prepared: %q", p.Name)
				}
			}
		}
		// Control: the probe does see a statement.
		_, err = c.ExecContext(ctx, "SELECT 1")
		ntOK(t, "SELECT 1", err)
		noSQL("control statement", true)
		if st := db.Stats(); st.InUse != 1 { // c
			t.Fatalf("connections in use: %d, want 1", st.InUse)
		}
	})
}

// ---- 6. fn returns an error; fn panics ----

func TestNamedFnErrorAndPanic(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		fnErr := errors.New("fn failed on purpose")
		name := prefix + "err"
		err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
			if err := ntInsertFn(ctx, tbl, 1)(tx); err != nil {
				return err
			}
			return fnErr
		})
		if !errors.Is(err, fnErr) {
			t.Fatalf("BeginDistributed: %v, want it to wrap fn's error", err)
		}
		ntMustList(t, db, name, false)
		ntMustRow(t, raw, tbl, 1, false)
		ntOK(t, "name free after fn error", dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, 2)))
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 2, true)

		type boom struct{ n int }
		name = prefix + "panic"
		var recovered any
		func() {
			defer func() { recovered = recover() }()
			dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
				if err := ntInsertFn(ctx, tbl, 3)(tx); err != nil {
					return err
				}
				panic(boom{42})
			})
		}()
		if recovered != (boom{42}) {
			t.Fatalf("recovered %v, want the fn's panic value", recovered)
		}
		if st := db.Stats(); st.InUse != 0 {
			t.Fatalf("after a panic in fn: %d connections in use", st.InUse)
		}
		ntMustList(t, db, name, false)
		ntMustRow(t, raw, tbl, 3, false)
		ntOK(t, "name free after panic", dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, 4)))
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 4, true)
		if st := db.Stats(); st.InUse != 0 {
			t.Fatalf("%d connections in use", st.InUse)
		}
	})
}

// ---- 7. Retry-safe finishing ----

func TestNamedRetrySafeFinish(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		name := prefix + "c"
		ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, 1)))
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntOK(t, "CommitDistributed again", dtx.CommitDistributed(ctx, name))
		ntOK(t, "CommitPrepared after CommitDistributed", dtx.CommitPrepared(ctx, db, name))
		ntIs(t, "RollbackDistributed after commit", dtx.RollbackDistributed(ctx, name), dtx.ErrAlreadyFinished)
		ntIs(t, "RollbackPrepared after commit", dtx.RollbackPrepared(ctx, db, name), dtx.ErrAlreadyFinished)
		ntMustRow(t, raw, tbl, 1, true)

		name = prefix + "r"
		ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, 2)))
		ntOK(t, "RollbackDistributed", dtx.RollbackDistributed(ctx, name))
		ntOK(t, "RollbackDistributed again", dtx.RollbackDistributed(ctx, name))
		ntIs(t, "CommitDistributed after rollback", dtx.CommitDistributed(ctx, name), dtx.ErrAlreadyFinished)
		ntMustRow(t, raw, tbl, 2, false)

		unknown := prefix + "unknown"
		ntIs(t, "CommitDistributed unknown", dtx.CommitDistributed(ctx, unknown), dtx.ErrUnknownName)
		ntIs(t, "RollbackDistributed unknown", dtx.RollbackDistributed(ctx, unknown), dtx.ErrUnknownName)
		ntIs(t, "CommitPrepared unknown", dtx.CommitPrepared(ctx, db, unknown), dtx.ErrUnknownName)
		ntIs(t, "RollbackPrepared unknown", dtx.RollbackPrepared(ctx, db, unknown), dtx.ErrUnknownName)

		// Still running: not prepared yet, and the transaction is unharmed.
		name = prefix + "active"
		tx, err := db.BeginTx(dtx.WithName(ctx, name), nil)
		ntRollbackOnExit(t, tx)
		ntOK(t, "BeginTx", err)
		_, err = tx.ExecContext(ctx, ntInsert(tbl, 3))
		ntOK(t, "insert", err)
		ntIs(t, "CommitDistributed of an active name", dtx.CommitDistributed(ctx, name), dtx.ErrNotPrepared)
		ntIs(t, "RollbackDistributed of an active name", dtx.RollbackDistributed(ctx, name), dtx.ErrNotPrepared)
		ntIs(t, "CommitPrepared of an active name", dtx.CommitPrepared(ctx, db, name), dtx.ErrNotPrepared)
		_, err = tx.ExecContext(ctx, ntInsert(tbl, 4))
		ntOK(t, "insert after the refused finish", err)
		ntOK(t, "tx.Commit", tx.Commit())
		ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 3, true)
		ntMustRow(t, raw, tbl, 4, true)
	})
}

// A name this process finished is remembered for retry-safety, but memory
// must not answer for it once another process has prepared it again: that
// new transaction is found in the database and finished.
func TestNamedReusedName(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		name := names(t, s) + "reuse"
		ctx := ntCtx(t)

		ntRawPrepare(t, s, name, tbl, 10)
		ntOK(t, "CommitDistributed (first)", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 10, true)
		ntOK(t, "CommitDistributed (retry)", dtx.CommitDistributed(ctx, name))

		ntRawPrepare(t, s, name, tbl, 11)
		ntOK(t, "CommitDistributed (prepared again)", dtx.CommitDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 11, true)
		ntMustList(t, db, name, false)

		ntRawPrepare(t, s, name, tbl, 12)
		ntOK(t, "RollbackDistributed (prepared a third time)", dtx.RollbackDistributed(ctx, name))
		ntMustRow(t, raw, tbl, 12, false)
		ntMustList(t, db, name, false)
		ntIs(t, "CommitDistributed after that rollback", dtx.CommitDistributed(ctx, name), dtx.ErrAlreadyFinished)
	})
}

// ---- 8. Interoperability with transactions prepared by hand ----

func TestNamedInterop(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		// Prepared by hand: listed, and finished by dtx.
		n1, n2, n3 := prefix+"raw1", prefix+"raw2", prefix+"raw3"
		ntRawPrepare(t, s, n1, tbl, 1)
		ntRawPrepare(t, s, n2, tbl, 2)
		ntRawPrepare(t, s, n3, tbl, 3)
		if got, want := ntWithPrefix(t, db, prefix), []string{n1, n2, n3}; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("ListPrepared: %v, want %v", got, want)
		}
		ntOK(t, "CommitPrepared of a raw prepared tx", dtx.CommitPrepared(ctx, db, n1))
		ntOK(t, "CommitDistributed of a raw prepared tx (registry search)", dtx.CommitDistributed(ctx, n2))
		ntOK(t, "RollbackPrepared of a raw prepared tx", dtx.RollbackPrepared(ctx, db, n3))
		ntMustRow(t, raw, tbl, 1, true)
		ntMustRow(t, raw, tbl, 2, true)
		ntMustRow(t, raw, tbl, 3, false)
		if got := ntWithPrefix(t, db, prefix); len(got) != 0 {
			t.Fatalf("still prepared: %v", got)
		}

		// Prepared by dtx, finished by hand.
		if s.kind == "postgres" {
			name := prefix + "dtx"
			ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, 10)))
			_, err := raw.ExecContext(ctx, "COMMIT PREPARED '"+name+"'")
			ntOK(t, "raw COMMIT PREPARED", err)
			ntMustRow(t, raw, tbl, 10, true)
			// dtx does not pretend: the name is no longer prepared.
			ntIs(t, "CommitDistributed after a raw commit", dtx.CommitDistributed(ctx, name), dtx.ErrUnknownName)
			return
		}
		// MariaDB: the branch is bound to dtx's held session, so another
		// session gets 1397 XAER_NOTA; once dtx lets the session go (here:
		// the db closes), a raw XA COMMIT works.
		db2 := open(t, s, s.wrapped)
		name := prefix + "dtx"
		var connID int64
		ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db2, name, func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&connID); err != nil {
				return err
			}
			return ntInsertFn(ctx, tbl, 10)(tx)
		}))
		_, err := raw.ExecContext(ctx, "XA COMMIT '"+name+"'")
		var me *mysql.MySQLError
		if !errors.As(err, &me) || me.Number != 1397 {
			t.Fatalf("raw XA COMMIT of a held branch: %v, want error 1397", err)
		}
		ntMustRow(t, raw, tbl, 10, false)
		ntMustList(t, db, name, true)
		ntOK(t, "closing the dtx db", db2.Close())
		ntWaitGone(t, raw, connID)
		time.Sleep(time.Second) // the notes' safe distance from the disconnect
		_, err = raw.ExecContext(ctx, "XA COMMIT '"+name+"'")
		ntOK(t, "raw XA COMMIT after dtx released the session", err)
		ntMustRow(t, raw, tbl, 10, true)
		ntMustList(t, db, name, false)
	})
}

// ---- 9. Two processes ----

// TestNamedHelperProcess is the child of TestNamedTwoProcesses: it prepares
// a name with BeginDistributed and exits without finishing it.
func TestNamedHelperProcess(t *testing.T) {
	kind := os.Getenv("DTX_NAMED_HELPER")
	if kind == "" {
		t.Skip("helper process for TestNamedTwoProcesses")
	}
	s := ntServer(t, kind)
	db, err := sql.Open(s.wrapped, s.dsn)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(2)
	}
	id, _ := strconv.Atoi(os.Getenv("DTX_NAMED_ID"))
	ctx := context.Background()
	err = dtx.BeginDistributed(ctx, db, os.Getenv("DTX_NAMED_NAME"), ntInsertFn(ctx, os.Getenv("DTX_NAMED_TABLE"), id))
	if err != nil {
		fmt.Println("BeginDistributed:", err)
		os.Exit(3)
	}
	fmt.Println("prepared")
	os.Exit(0) // no commit, no Close: the process just ends
}

func ntChild(t *testing.T, s server, name, tbl string, id int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestNamedHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "DTX_NAMED_HELPER="+s.kind, "DTX_NAMED_NAME="+name,
		"DTX_NAMED_TABLE="+tbl, "DTX_NAMED_ID="+strconv.Itoa(id))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "prepared") {
		t.Fatalf("child process: %v\n%s", err, out)
	}
}

func TestNamedTwoProcesses(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		raw := open(t, s, s.raw)
		tbl := table(t, s, db, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		n1, n2 := prefix+"child1", prefix+"child2"
		var wg sync.WaitGroup
		for i, n := range []string{n1, n2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ntChild(t, s, n, tbl, i+1)
			}()
		}
		wg.Wait()
		exited := time.Now()
		if t.Failed() {
			return
		}
		p, ok := ntListed(t, db, n1)
		if !ok {
			t.Fatalf("%s prepared by the child is not listed", n1)
		}
		if s.kind == "postgres" && (p.Owner == "" || p.Database == "" || p.PreparedAt.IsZero()) {
			t.Errorf("incomplete listing: %+v", p)
		}
		ntMustList(t, db, n2, true)
		ntMustRow(t, raw, tbl, 1, false)
		ntMustRow(t, raw, tbl, 2, false)

		start := time.Now()
		ntOK(t, "CommitPrepared of the child's name", dtx.CommitPrepared(ctx, db, n1))
		if d := time.Since(exited); s.kind == "mysql" && d < time.Second {
			// MariaDB can orphan a branch committed right after its session
			// closed; dtx must keep the detach grace (default 1 s) from it.
			t.Errorf("MariaDB: committed %v after the preparing process exited, within the default detach grace", d)
		}
		ntMustRow(t, raw, tbl, 1, true)
		ntOK(t, "CommitDistributed of the child's name (registry search)", dtx.CommitDistributed(ctx, n2))
		ntMustRow(t, raw, tbl, 2, true)
		if got := ntWithPrefix(t, db, prefix); len(got) != 0 {
			t.Fatalf("still prepared: %v", got)
		}
		t.Logf("%s: both commits of names prepared by exited processes took %v", s.kind, time.Since(start))
	})
}

// ---- 10. Context cancelled during a named transaction ----

func TestNamedContextCancel(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.wrapped)
		db.SetMaxOpenConns(1)
		raw := open(t, s, s.raw)
		tbl := table(t, s, raw, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)

		sessionID := func() int64 {
			t.Helper()
			var id int64
			q := "SELECT pg_backend_pid()"
			if s.kind == "mysql" {
				q = "SELECT CONNECTION_ID()"
			}
			ntOK(t, "session id", db.QueryRowContext(ctx, q).Scan(&id))
			return id
		}
		// afterCancel checks that the cancelled transaction left nothing
		// and that its name and the pool serve the next one.
		afterCancel := func(name string, id int) {
			t.Helper()
			ntMustList(t, db, name, false)
			ntMustRow(t, raw, tbl, id, false)
			reuse := func() error { return dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, id+1)) }
			err := reuse()
			if s.kind == "mysql" && errors.Is(err, dtx.ErrNameInUse) {
				// The server ends a closed session's branch only when the
				// statement it was running (SLEEP) returns.
				t.Logf("MariaDB: right after the cancel the server still holds the xid: %v", err)
				ntEventually(t, 10*time.Second, "the cancelled branch never left the server", func() bool {
					err = reuse()
					return !errors.Is(err, dtx.ErrNameInUse)
				})
			}
			ntOK(t, "reusing the name after the cancel", err)
			ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, name))
			ntMustRow(t, raw, tbl, id+1, true)
			ntMustRow(t, raw, tbl, id, false)
			if st := db.Stats(); st.InUse != 0 {
				t.Fatalf("%d connections in use", st.InUse)
			}
		}

		t.Run("Idle", func(t *testing.T) {
			// Cancelled between statements: database/sql rolls back, dtx
			// sends the ROLLBACK itself, and the connection is kept.
			before := sessionID()
			name := prefix + "idle"
			cctx, cancel := context.WithCancel(ctx)
			tx, err := db.BeginTx(dtx.WithName(cctx, name), nil)
			ntRollbackOnExit(t, tx)
			ntOK(t, "BeginTx", err)
			_, err = tx.ExecContext(cctx, ntInsert(tbl, 1))
			ntOK(t, "insert", err)
			cancel()
			if err := tx.Commit(); err == nil {
				t.Fatal("Commit after cancel succeeded")
			}
			// The pool's only connection comes back once the rollback ran.
			// pgx's stdlib.Conn has no driver.Validator, and without one
			// database/sql discards a connection whose transaction's context
			// was cancelled, on the raw driver too: not dtx's to keep.
			keeps := s.raw != "pgx"
			if after := sessionID(); after != before && keeps {
				t.Errorf("the connection was replaced after a cancel between statements (session %d, then %d)", before, after)
			}
			afterCancel(name, 1)
			if after := sessionID(); after != before && keeps {
				t.Errorf("the connection was replaced (session %d, then %d)", before, after)
			}
		})

		t.Run("Running", func(t *testing.T) {
			// Cancelled while a statement runs: the driver cancels it.
			// lib/pq then marks its connection bad on purpose (watchCancel:
			// "so it does not get reused") and go-sql-driver/mysql closes
			// it, so database/sql replaces the connection; dtx cannot keep
			// it. What must hold: rolled back, name free, pool working.
			before := sessionID()
			name := prefix + "running"
			cctx, cancel := context.WithCancel(ctx)
			defer cancel()
			tx, err := db.BeginTx(dtx.WithName(cctx, name), nil)
			ntRollbackOnExit(t, tx)
			ntOK(t, "BeginTx", err)
			_, err = tx.ExecContext(cctx, ntInsert(tbl, 10))
			ntOK(t, "insert", err)
			sleep := "SELECT pg_sleep(3)"
			if s.kind == "mysql" {
				sleep = "SELECT SLEEP(3)"
			}
			time.AfterFunc(200*time.Millisecond, cancel)
			start := time.Now()
			_, err = tx.ExecContext(cctx, sleep)
			if err == nil {
				t.Fatal("the sleep was not cancelled")
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("cancel took %v", d)
			}
			if err := tx.Commit(); err == nil {
				t.Fatal("Commit after cancel succeeded")
			}
			after := sessionID()
			t.Logf("%s: session %d before the cancel, %d after", s.kind, before, after)
			if s.kind == "postgres" {
				// The old backend is gone, so its transaction is too.
				ntEventually(t, 5*time.Second, "the cancelled backend is still there", func() bool {
					return before == after || count(t, raw, "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1", before) == 0
				})
			}
			afterCancel(name, 10)
		})
	})
}

// ---- 11. PostgreSQL: transactions that cannot be prepared ----

func TestNamedPostgresCannotPrepare(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		if s.kind != "postgres" {
			t.Skip("PostgreSQL only")
		}
		ntPostgresCannotPrepare(t, s)
	})
}

func ntPostgresCannotPrepare(t *testing.T, s server) {
	db := open(t, s, s.wrapped)
	db.SetMaxOpenConns(1)
	raw := open(t, s, s.raw)
	tbl := table(t, s, raw, "id INT PRIMARY KEY")
	prefix := names(t, s)
	ctx := ntCtx(t)

	var pid int
	ntOK(t, "pid", db.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid))
	// A temp table made outside the transaction, on the same session.
	tmp := "tmp_" + token()
	_, err := db.ExecContext(ctx, "CREATE TEMP TABLE "+tmp+" (id int)")
	ntOK(t, "create temp table", err)

	cases := []struct {
		name, why string
		stmts     []string
	}{
		{"createtemp", "temporary", []string{"CREATE TEMP TABLE tmp_in_tx_" + token() + " (id int)"}},
		{"selecttemp", "temporary", []string{"SELECT COUNT(*) FROM " + tmp}},
		{"listen", "LISTEN", []string{"LISTEN dtx_named_test"}},
	}
	for i, c := range cases {
		name := prefix + c.name
		id := i + 1
		err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, ntInsert(tbl, id)); err != nil {
				return err
			}
			for _, q := range c.stmts {
				if _, err := tx.ExecContext(ctx, q); err != nil {
					return err
				}
			}
			return nil
		})
		ntIs(t, c.name, err, dtx.ErrNotPrepared)
		if !strings.Contains(err.Error(), c.why) {
			t.Errorf("%s: the error does not explain why (%q): %v", c.name, c.why, err)
		}
		var pe interface{ SQLState() string }
		if !errors.As(err, &pe) || pe.SQLState() != "0A000" {
			t.Errorf("%s: errors.As the driver's error with SQLSTATE 0A000: %v (%v)", c.name, pe, err)
		}
		ntMustList(t, db, name, false)
		ntMustRow(t, raw, tbl, id, false)
		var after int
		ntOK(t, "pid after", db.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&after))
		if after != pid {
			t.Errorf("%s: connection replaced (backend %d, then %d)", c.name, pid, after)
		}
	}
	// The connection is usable: the session's temp table is still there and
	// a named transaction on it prepares and commits.
	_, err = db.ExecContext(ctx, "INSERT INTO "+tmp+" VALUES (1)")
	ntOK(t, "use the session's temp table", err)
	ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, prefix+"ok", ntInsertFn(ctx, tbl, 10)))
	ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, prefix+"ok"))
	ntMustRow(t, raw, tbl, 10, true)
}

// ---- 12. MariaDB held sessions ----

func TestNamedMySQLHeldSessions(t *testing.T) {
	s := ntServer(t, "mysql")
	raw := open(t, s, s.raw)

	connIDFn := func(ctx context.Context, tbl string, id int, connID *int64) func(*sql.Tx) error {
		return func(tx *sql.Tx) error {
			if err := tx.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(connID); err != nil {
				return err
			}
			return ntInsertFn(ctx, tbl, id)(tx)
		}
	}
	onServer := func(id int64) bool {
		return count(t, raw, "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?", id) == 1
	}

	t.Run("HoldLimit", func(t *testing.T) {
		db := ntMyDB(t, s, dtx.WithHoldLimit(1))
		tbl := table(t, s, raw, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)
		ids := make([]int64, 3)
		for i := range ids {
			ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, prefix+strconv.Itoa(i), connIDFn(ctx, tbl, i, &ids[i])))
		}
		// The two oldest were released: their sessions are closed, their
		// branches still prepared.
		for _, id := range ids[:2] {
			ntWaitGone(t, raw, id)
		}
		if !onServer(ids[2]) {
			t.Fatalf("the newest prepared session %d was closed too", ids[2])
		}
		want := []string{prefix + "0", prefix + "1", prefix + "2"}
		if got := ntWithPrefix(t, db, prefix); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("XA RECOVER: %v, want %v", got, want)
		}
		for i := range ids {
			ntMustRow(t, raw, tbl, i, false)
		}
		for i := range ids {
			ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, prefix+strconv.Itoa(i)))
		}
		for i := range ids {
			ntMustRow(t, raw, tbl, i, true)
		}
		if got := ntWithPrefix(t, db, prefix); len(got) != 0 {
			t.Fatalf("still prepared: %v", got)
		}
	})

	t.Run("HoldTimeout", func(t *testing.T) {
		db := ntMyDB(t, s, dtx.WithHoldTimeout(200*time.Millisecond))
		tbl := table(t, s, raw, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)
		var id int64
		start := time.Now()
		ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, prefix+"x", connIDFn(ctx, tbl, 1, &id)))
		if !onServer(id) {
			t.Fatalf("the prepared session %d was closed at once", id)
		}
		ntWaitGone(t, raw, id)
		if d := time.Since(start); d < 200*time.Millisecond {
			t.Fatalf("released after %v, before the hold timeout", d)
		}
		ntMustList(t, db, prefix+"x", true)
		ntMustRow(t, raw, tbl, 1, false)
		ntOK(t, "CommitDistributed after the hold timeout", dtx.CommitDistributed(ctx, prefix+"x"))
		ntMustRow(t, raw, tbl, 1, true)
	})

	// Each held session gets the whole hold timeout, counted from its own
	// prepare, though one timer serves them all: a session held later than
	// the oldest outlives it, and a branch finished early leaves the others'
	// timeouts alone.
	t.Run("HoldTimeoutEach", func(t *testing.T) {
		const hold = 600 * time.Millisecond
		db := ntMyDB(t, s, dtx.WithHoldTimeout(hold))
		tbl := table(t, s, raw, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)
		var idA, idB, idC int64
		startA := time.Now()
		ntOK(t, "BeginDistributed a", dtx.BeginDistributed(ctx, db, prefix+"a", connIDFn(ctx, tbl, 1, &idA)))
		ntOK(t, "BeginDistributed c", dtx.BeginDistributed(ctx, db, prefix+"c", connIDFn(ctx, tbl, 3, &idC)))
		ntOK(t, "CommitDistributed c", dtx.CommitDistributed(ctx, prefix+"c"))
		time.Sleep(hold / 2)
		startB := time.Now()
		ntOK(t, "BeginDistributed b", dtx.BeginDistributed(ctx, db, prefix+"b", connIDFn(ctx, tbl, 2, &idB)))
		ntWaitGone(t, raw, idA)
		if d := time.Since(startA); d < hold {
			t.Fatalf("a released after %v, before the hold timeout", d)
		}
		if time.Since(startB) < hold-50*time.Millisecond && !onServer(idB) {
			t.Fatalf("b's session %d was released with a's, %v after its prepare", idB, time.Since(startB))
		}
		ntWaitGone(t, raw, idB)
		if d := time.Since(startB); d < hold {
			t.Fatalf("b released after %v, before its hold timeout", d)
		}
		if st, err := dtx.StatsOf(ctx, db); err != nil || st.HeldSessions != 0 || st.ReleasedSessions != 2 {
			t.Fatalf("StatsOf: %+v, %v; want 0 held and 2 released", st, err)
		}
		for i, n := range []string{"a", "b"} {
			ntMustRow(t, raw, tbl, i+1, false)
			ntOK(t, "CommitDistributed "+n, dtx.CommitDistributed(ctx, prefix+n))
			ntMustRow(t, raw, tbl, i+1, true)
		}
	})

	t.Run("SmallPool", func(t *testing.T) {
		db := open(t, s, s.wrapped)
		db.SetMaxOpenConns(2)
		tbl := table(t, s, raw, "id INT PRIMARY KEY")
		prefix := names(t, s)
		ctx := ntCtx(t)
		const workers, perWorker = 8, 5
		errs := make(chan error, workers*perWorker)
		done := make(chan struct{})
		go func() {
			defer close(done)
			var wg sync.WaitGroup
			for w := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for j := range perWorker {
						id := w*perWorker + j
						name := prefix + strconv.Itoa(id)
						if err := dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, id)); err != nil {
							errs <- err
							continue
						}
						if err := dtx.CommitDistributed(ctx, name); err != nil {
							errs <- err
						}
					}
				}()
			}
			wg.Wait()
		}()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("deadlock: 8 workers on a pool of 2 did not finish in 30 s")
		}
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n := count(t, raw, "SELECT COUNT(*) FROM "+tbl); n != workers*perWorker {
			t.Fatalf("%d rows, want %d", n, workers*perWorker)
		}
	})

	// BeginDistributed keeps its connection out of the pool until phase two
	// while at most half the pool's MaxOpenConns are kept, so that nobody is
	// handed a connection whose phase two is running (they waited for it,
	// under the conn's lock, on every cycle at 8 concurrent) and the pool
	// never stalls: the rest go back at the prepare. InUse counts the kept
	// ones; a query of the caller's own, with its names still prepared,
	// runs at once; after phase two (commit, then rollback) none is kept,
	// and the next names are kept again up to the bound.
	t.Run("PinBound", func(t *testing.T) {
		tbl := table(t, s, raw, "id INT PRIMARY KEY")
		ctx := ntCtx(t)
		id := 0
		for _, c := range []struct{ maxOpen, names, kept int }{{0, 3, 3}, {1, 2, 0}, {2, 3, 1}, {3, 3, 1}, {4, 3, 2}, {16, 3, 3}} {
			db := open(t, s, s.wrapped)
			db.SetMaxOpenConns(c.maxOpen)
			prefix := names(t, s)
			for _, commit := range []bool{true, false} {
				var ns []string
				for range c.names {
					id++
					n := prefix + strconv.Itoa(id)
					ntOK(t, "BeginDistributed", dtx.BeginDistributed(ctx, db, n, ntInsertFn(ctx, tbl, id)))
					ns = append(ns, n)
				}
				if got := db.Stats().InUse; got != c.kept {
					t.Fatalf("MaxOpenConns %d, %d names prepared: %d connections kept, want %d", c.maxOpen, c.names, got, c.kept)
				}
				qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				ntOK(t, "a query with the names prepared", db.QueryRowContext(qctx, "SELECT 1").Err())
				cancel()
				for i, n := range ns {
					if commit {
						ntOK(t, "CommitDistributed", dtx.CommitDistributed(ctx, n))
					} else {
						ntOK(t, "RollbackDistributed", dtx.RollbackDistributed(ctx, n))
					}
					ntMustRow(t, raw, tbl, id-len(ns)+1+i, commit)
				}
				if got := db.Stats().InUse; got != 0 {
					t.Fatalf("MaxOpenConns %d, after phase two: %d connections kept", c.maxOpen, got)
				}
			}
		}
	})
}

// ---- 13. MariaDB stress: count outcomes ----

func TestNamedMySQLStress(t *testing.T) {
	s := ntServer(t, "mysql")
	held, cross := 200, 100
	if os.Getenv("DTX_STRESS") == "1" {
		held, cross = 2000, 1000
	}
	t.Run("HeldSession", func(t *testing.T) {
		ntStress(t, s, open(t, s, s.wrapped), held)
	})
	t.Run("CrossSession", func(t *testing.T) {
		ntStress(t, s, ntMyDB(t, s, dtx.WithHoldLimit(0), dtx.WithDetachGrace(50*time.Millisecond)), cross)
	})
}

// ntXA is the server's view of prepared transactions.
type ntXA struct {
	trxThread0 int // information_schema.innodb_trx rows with thread id 0 (a cache, see below)
	detached   int // prepared InnoDB transactions no session holds, live
	unlisted   int // prepared InnoDB transactions XA RECOVER does not list, live: orphans
	listed     int // XA RECOVER entries
}

// ntXAState reads the counts. information_schema.innodb_trx is what the
// brief names, but MariaDB refreshes that cache only after 100 ms without
// readers (a concurrent poller freezes it), so the counts asserted on come
// from SHOW ENGINE INNODB STATUS, which is built when asked: a prepared
// transaction reads "ACTIVE (PREPARED)", and "recovered trx" when no session
// holds it. XA RECOVER is read before and after it, until both reads agree.
func ntXAState(t *testing.T, raw *sql.DB) ntXA {
	t.Helper()
	time.Sleep(150 * time.Millisecond) // let the innodb_trx cache go stale, so this read refreshes it
	st := ntXA{trxThread0: count(t, raw, "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = 0")}
	xaCount := func() int {
		rows, err := raw.Query("XA RECOVER")
		ntOK(t, "XA RECOVER", err)
		defer rows.Close()
		n := 0
		for rows.Next() {
			n++
		}
		ntOK(t, "XA RECOVER", rows.Err())
		return n
	}
	for try := 0; ; try++ {
		l1 := xaCount()
		var typ, name, status string
		ntOK(t, "SHOW ENGINE INNODB STATUS", raw.QueryRow("SHOW ENGINE INNODB STATUS").Scan(&typ, &name, &status))
		l2 := xaCount()
		if strings.Contains(status, "... truncated...") {
			t.Fatal("SHOW ENGINE INNODB STATUS truncated its list of transactions")
		}
		if l1 != l2 && try < 20 {
			continue // a branch was prepared or finished meanwhile
		}
		prepared, detached := 0, 0
		for _, line := range strings.Split(status, "\n") {
			if strings.HasPrefix(line, "---TRANSACTION ") && strings.Contains(line, ", ACTIVE (PREPARED)") {
				prepared++
				if strings.Contains(line, "recovered trx") {
					detached++
				}
			}
		}
		st.detached, st.unlisted, st.listed = detached, prepared-l1, l1
		return st
	}
}

func ntStress(t *testing.T, s server, db *sql.DB, n int) {
	raw := open(t, s, s.raw)
	tbl := table(t, s, raw, "id INT PRIMARY KEY")
	prefix := names(t, s)
	ctx := ntCtx(t)
	before := ntXAState(t, raw)

	var prepareErrs, commitOK, commitUnknown, commitErrs atomic.Int64
	committed := make([]bool, n)
	jobs := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErrs []string
	note := func(err error) {
		mu.Lock()
		if len(firstErrs) < 5 {
			firstErrs = append(firstErrs, err.Error())
		}
		mu.Unlock()
	}
	start := time.Now()
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				name := prefix + strconv.Itoa(i)
				if err := dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, i)); err != nil {
					prepareErrs.Add(1)
					note(err)
					continue
				}
				switch err := dtx.CommitDistributed(ctx, name); {
				case err == nil:
					commitOK.Add(1)
					committed[i] = true
				case errors.Is(err, dtx.ErrOutcomeUnknown):
					commitUnknown.Add(1)
					note(err)
				default:
					commitErrs.Add(1)
					note(err)
				}
			}
		}()
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)

	present := map[int]bool{}
	rows, err := raw.QueryContext(ctx, "SELECT id FROM "+tbl)
	ntOK(t, "select", err)
	for rows.Next() {
		var id int
		ntOK(t, "scan", rows.Scan(&id))
		present[id] = true
	}
	ntOK(t, "rows", rows.Err())
	rows.Close()
	falseCommits, extra := 0, 0
	for i := range n {
		if committed[i] && !present[i] {
			falseCommits++
		}
		if !committed[i] && present[i] {
			extra++
		}
	}
	orphans := ntWithPrefix(t, db, prefix)
	after := ntXAState(t, raw)
	// The server is shared: a branch another process leaves prepared (and
	// detached) is listed under its own name, so new detached transactions
	// count against this run only beyond the growth of XA RECOVER (this
	// run's own names are all gone: checked by prefix).
	newDetached := func() int { return after.detached - before.detached - max(0, after.listed-before.listed) }
	for deadline := time.Now().Add(3 * time.Second); (newDetached() > 0 || after.unlisted > before.unlisted) && time.Now().Before(deadline); {
		after = ntXAState(t, raw) // another run's branch may be passing
	}
	t.Logf("%d cycles in %v (%.0f/s): prepare errors %d, commits ok %d, unknown %d, other errors %d; rows %d, false commits %d, rows without a reported commit %d; prefix names left in XA RECOVER %d",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), prepareErrs.Load(), commitOK.Load(), commitUnknown.Load(), commitErrs.Load(),
		len(present), falseCommits, extra, len(orphans))
	t.Logf("server before/after: detached prepared (INNODB STATUS) %d/%d, prepared but not in XA RECOVER %d/%d, in XA RECOVER %d/%d, innodb_trx thread 0 (cached) %d/%d",
		before.detached, after.detached, before.unlisted, after.unlisted, before.listed, after.listed, before.trxThread0, after.trxThread0)
	for _, e := range firstErrs {
		t.Logf("error: %s", e)
	}
	if prepareErrs.Load() != 0 || commitErrs.Load() != 0 || commitUnknown.Load() != 0 {
		t.Errorf("errors: prepare %d, commit %d, unknown outcome %d", prepareErrs.Load(), commitErrs.Load(), commitUnknown.Load())
	}
	if falseCommits != 0 {
		t.Errorf("%d commits reported done whose row is missing", falseCommits)
	}
	if len(orphans) != 0 {
		t.Errorf("%d names left prepared: %v", len(orphans), orphans)
	}
	if n := newDetached(); n > 0 {
		t.Errorf("%d new detached prepared transactions", n)
	}
	if after.unlisted > before.unlisted {
		t.Errorf("%d new orphans: prepared in InnoDB, not in XA RECOVER", after.unlisted-before.unlisted)
	}
}
