package dtx_test

// Pass-through tests against the real servers: the same body runs through the
// raw driver ("postgres", "mysql") and through dtx ("dtx+postgres",
// "dtx+mysql") and must see the same results. Where the raw driver's behaviour
// is not a fixed expectation (what happens to a connection after a cancel or
// a server-side kill), the test runs both drivers and compares.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// ptArg returns the i-th (1-based) bind placeholder of s's dialect.
func ptArg(s server, i int) string {
	if s.kind == "postgres" {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}

// ptArgs returns the bind placeholders 1..n, comma separated.
func ptArgs(s server, n int) string {
	ps := make([]string, n)
	for i := range ps {
		ps[i] = ptArg(s, i+1)
	}
	return strings.Join(ps, ", ")
}

// ptSessionQuery returns the query that names the server session.
func ptSessionQuery(s server) string {
	if s.kind == "postgres" {
		return "SELECT pg_backend_pid()"
	}
	return "SELECT CONNECTION_ID()"
}

type ptQueryer interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// ptSession returns the server's id of the session q runs on.
func ptSession(ctx context.Context, s server, q ptQueryer) (int64, error) {
	var id int64
	err := q.QueryRowContext(ctx, ptSessionQuery(s)).Scan(&id)
	return id, err
}

// ptSleep is a statement that takes seconds on the server.
func ptSleep(s server, seconds int) string {
	if s.kind == "postgres" {
		return fmt.Sprintf("SELECT pg_sleep(%d)", seconds)
	}
	return fmt.Sprintf("SELECT SLEEP(%d)", seconds)
}

// ptErrCode is the server's code of err: a SQLSTATE from lib/pq, an error
// number from mysql, or "" when err is not the driver's own error type.
func ptErrCode(err error) string {
	var pe *pq.Error
	if errors.As(err, &pe) {
		return string(pe.Code)
	}
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return fmt.Sprint(me.Number)
	}
	return ""
}

// ptErrKind describes err for comparing the raw driver with dtx.
func ptErrKind(err error) string {
	switch {
	case err == nil:
		return "nil"
	case errors.Is(err, context.DeadlineExceeded):
		return "context.DeadlineExceeded"
	case errors.Is(err, context.Canceled):
		return "context.Canceled"
	case errors.Is(err, driver.ErrBadConn):
		return "driver.ErrBadConn"
	case ptErrCode(err) != "":
		return "server error " + ptErrCode(err)
	}
	return fmt.Sprintf("%T: %v", err, err)
}

// ptWant fails t unless err is the server error code for s's kind.
func ptWant(t *testing.T, s server, err error, pgCode, myNumber string) {
	t.Helper()
	want := pgCode
	if s.kind == "mysql" {
		want = myNumber
	}
	if err == nil {
		t.Fatalf("got no error, want server error %s", want)
	}
	if got := ptErrCode(err); got != want {
		t.Fatalf("got %v (%T, code %q), want the driver's own error with code %s", err, err, got, want)
	}
	// Not even wrapped: database/sql hands the driver's error over as it is.
	switch err.(type) {
	case *pq.Error, *mysql.MySQLError:
	default:
		t.Fatalf("got a %T wrapping the driver's error, want the driver's error itself", err)
	}
}

// ptEventually polls cond until it holds or d passes.
func ptEventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ptSessionGone reports whether the server no longer has session id.
func ptSessionGone(t *testing.T, s server, admin *sql.DB, id int64) bool {
	q := "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
	if s.kind == "mysql" {
		q = "SELECT COUNT(*) FROM information_schema.processlist WHERE ID = ?"
	}
	return count(t, admin, q, id) == 0
}

// ptPrepared reports whether name is a prepared transaction on the server.
func ptPrepared(t *testing.T, s server, admin *sql.DB, name string) bool {
	t.Helper()
	if s.kind == "postgres" {
		return count(t, admin, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = $1", name) > 0
	}
	rows, err := admin.Query("XA RECOVER")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var format, glen, blen int
		var data []byte
		if err := rows.Scan(&format, &glen, &blen, &data); err != nil {
			t.Fatal(err)
		}
		if string(data) == name {
			return true
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return false
}

// TestPassthroughQueryExec: Exec with arguments (RowsAffected, LastInsertId),
// NULLs both ways, several result rows, sql.ErrNoRows, and a plain
// transaction's commit and rollback.
func TestPassthroughQueryExec(t *testing.T) {
	eachDriver(t, func(t *testing.T, s server, db *sql.DB) {
		cols := "id SERIAL PRIMARY KEY, name TEXT NOT NULL, n INTEGER"
		if s.kind == "mysql" {
			cols = "id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64) NOT NULL, n INT NULL"
		}
		tb := table(t, s, db, cols)
		ins := "INSERT INTO " + tb + " (name, n) VALUES (" + ptArgs(s, 2) + ")"

		res, err := db.Exec(ins, "a", 1)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 1 {
			t.Fatalf("RowsAffected = %d, %v; want 1", n, err)
		}
		id, err := res.LastInsertId()
		if s.kind == "mysql" {
			if err != nil || id != 1 {
				t.Fatalf("LastInsertId = %d, %v; want 1", id, err)
			}
		} else if err == nil {
			t.Fatalf("LastInsertId on lib/pq = %d, want its 'not supported' error", id)
		}
		if _, err := db.Exec(ins, "b", nil); err != nil {
			t.Fatal(err)
		}
		var absent *int64
		if _, err := db.Exec(ins, "c", absent); err != nil { // a nil pointer is NULL too
			t.Fatal(err)
		}
		res, err = db.Exec("INSERT INTO "+tb+" (name, n) VALUES ("+ptArgs(s, 2)+"), ("+
			strings.Join([]string{ptArg(s, 3), ptArg(s, 4)}, ", ")+")", "d", 4, "e", int64(5))
		if err != nil {
			t.Fatal(err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 2 {
			t.Fatalf("RowsAffected of a two-row insert = %d, %v; want 2", n, err)
		}
		if s.kind == "mysql" {
			if id, err := res.LastInsertId(); err != nil || id != 4 {
				t.Fatalf("LastInsertId of a two-row insert = %d, %v; want the first row's, 4", id, err)
			}
		}

		rows, err := db.Query("SELECT id, name, n FROM " + tb + " ORDER BY id")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for rows.Next() {
			var id int64
			var name string
			var n sql.NullInt64
			if err := rows.Scan(&id, &name, &n); err != nil {
				t.Fatal(err)
			}
			v := "NULL"
			if n.Valid {
				v = fmt.Sprint(n.Int64)
			}
			got = append(got, fmt.Sprintf("%d:%s:%s", id, name, v))
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		if want := []string{"1:a:1", "2:b:NULL", "3:c:NULL", "4:d:4", "5:e:5"}; !reflect.DeepEqual(got, want) {
			t.Fatalf("rows = %v, want %v", got, want)
		}

		var p *int64
		if err := db.QueryRow("SELECT n FROM "+tb+" WHERE name = "+ptArg(s, 1), "b").Scan(&p); err != nil || p != nil {
			t.Fatalf("NULL into *int64: %v, %v; want nil, nil", p, err)
		}
		var nn int64
		if err := db.QueryRow("SELECT n FROM "+tb+" WHERE name = "+ptArg(s, 1), "b").Scan(&nn); err == nil {
			t.Fatal("scanning NULL into an int64 succeeded")
		}
		if err := db.QueryRow("SELECT n FROM "+tb+" WHERE name = "+ptArg(s, 1), "nobody").Scan(&nn); !errors.Is(err, sql.ErrNoRows) {
			t.Fatalf("no row: %v, want sql.ErrNoRows", err)
		}
		if c := count(t, db, "SELECT count(*) FROM "+tb+" WHERE n IS NULL"); c != 2 {
			t.Fatalf("%d NULLs, want 2", c)
		}
		var null sql.NullString
		castQ := "SELECT CAST(" + ptArg(s, 1) + " AS TEXT)"
		if s.kind == "mysql" {
			castQ = "SELECT CAST(? AS CHAR)"
		}
		if err := db.QueryRow(castQ, nil).Scan(&null); err != nil || null.Valid {
			t.Fatalf("NULL argument came back as %v, %v", null, err)
		}

		res, err = db.Exec("UPDATE "+tb+" SET n = n + "+ptArg(s, 1)+" WHERE n IS NOT NULL", 10)
		if err != nil {
			t.Fatal(err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 3 {
			t.Fatalf("UPDATE RowsAffected = %d, %v; want 3", n, err)
		}
		res, err = db.Exec("DELETE FROM "+tb+" WHERE name = "+ptArg(s, 1), "nobody")
		if err != nil {
			t.Fatal(err)
		}
		if n, err := res.RowsAffected(); err != nil || n != 0 {
			t.Fatalf("DELETE of nothing RowsAffected = %d, %v; want 0", n, err)
		}
		if c := count(t, db, "SELECT sum(n) FROM "+tb); c != 11+14+15 {
			t.Fatalf("sum = %d after UPDATE, want 40", c)
		}

		// A plain transaction: rolled back, then committed.
		for _, commit := range []bool{false, true} {
			tx, err := db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ins, fmt.Sprint("tx", commit), 7); err != nil {
				t.Fatal(err)
			}
			if c := count(t, db, "SELECT count(*) FROM "+tb+" WHERE n = 7"); c != 0 {
				t.Fatalf("uncommitted row visible to another connection")
			}
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			if commit {
				want = 1
			}
			if c := count(t, db, "SELECT count(*) FROM "+tb+" WHERE n = 7"); c != want {
				t.Fatalf("commit=%v: %d rows, want %d", commit, c, want)
			}
		}
	})
}

// TestPassthroughPrepared: one db.Prepare, many Exec and Query, also from
// several goroutines (database/sql re-prepares on other connections) and
// inside a transaction through tx.Stmt.
func TestPassthroughPrepared(t *testing.T) {
	eachDriver(t, func(t *testing.T, s server, db *sql.DB) {
		db.SetMaxOpenConns(4)
		tb := table(t, s, db, "k INTEGER PRIMARY KEY, v VARCHAR(32) NOT NULL")
		ins, err := db.Prepare("INSERT INTO " + tb + " (k, v) VALUES (" + ptArgs(s, 2) + ")")
		if err != nil {
			t.Fatal(err)
		}
		defer ins.Close()
		sel, err := db.Prepare("SELECT v FROM " + tb + " WHERE k = " + ptArg(s, 1))
		if err != nil {
			t.Fatal(err)
		}
		defer sel.Close()
		for i := 0; i < 40; i++ {
			res, err := ins.Exec(i, fmt.Sprint("v", i))
			if err != nil {
				t.Fatal(err)
			}
			if n, err := res.RowsAffected(); err != nil || n != 1 {
				t.Fatalf("RowsAffected = %d, %v", n, err)
			}
		}
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := g; i < 40; i += 8 {
					var v string
					if err := sel.QueryRow(i).Scan(&v); err != nil {
						errs <- err
						return
					}
					if v != fmt.Sprint("v", i) {
						errs <- fmt.Errorf("k=%d: v=%q", i, v)
						return
					}
				}
				_, err := ins.Exec(100+g, fmt.Sprint("g", g))
				if err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}

		rng, err := db.Prepare("SELECT k FROM " + tb + " WHERE k >= " + ptArg(s, 1) + " ORDER BY k")
		if err != nil {
			t.Fatal(err)
		}
		defer rng.Close()
		for _, from := range []int{0, 30, 100, 200} {
			rows, err := rng.Query(from)
			if err != nil {
				t.Fatal(err)
			}
			var ks []int
			for rows.Next() {
				var k int
				if err := rows.Scan(&k); err != nil {
					t.Fatal(err)
				}
				ks = append(ks, k)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			rows.Close()
			want := map[int]int{0: 48, 30: 18, 100: 8, 200: 0}[from]
			if len(ks) != want || (want > 0 && ks[0] < from) {
				t.Fatalf("from %d: got %v, want %d keys", from, ks, want)
			}
		}

		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		txIns := tx.Stmt(ins)
		for i := 500; i < 505; i++ {
			if _, err := txIns.Exec(i, "tx"); err != nil {
				t.Fatal(err)
			}
		}
		var v string
		if err := tx.Stmt(sel).QueryRow(502).Scan(&v); err != nil || v != "tx" {
			t.Fatalf("inside tx: %q, %v", v, err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if c := count(t, db, "SELECT count(*) FROM "+tb); c != 48 {
			t.Fatalf("%d rows after rollback, want 48", c)
		}
	})
}

// TestPassthroughColumnTypes: rows.ColumnTypes through dtx is the parent
// driver's, field for field, for a direct and a prepared query.
func TestPassthroughColumnTypes(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		cols := "i INT4 NOT NULL, t TEXT, vc VARCHAR(10), d NUMERIC(5,2), ts TIMESTAMPTZ, b BOOL, nn INT8, bt BYTEA"
		vals := []any{1, "x", "y", "1.25", time.Unix(1700000000, 0).UTC(), true, nil, []byte{0, 255}}
		want := []string{"INT4", "TEXT", "VARCHAR", "NUMERIC", "TIMESTAMPTZ", "BOOL", "INT8", "BYTEA"}
		if s.kind == "mysql" {
			cols = "i INT NOT NULL, t TEXT, vc VARCHAR(10), d DECIMAL(5,2), ts DATETIME, b TINYINT(1), nn BIGINT, bt BLOB"
			want = []string{"INT", "TEXT", "VARCHAR", "DECIMAL", "DATETIME", "TINYINT", "BIGINT", "BLOB"}
		}
		describe := func(t *testing.T, db *sql.DB, tb string, prepared bool) []string {
			t.Helper()
			var rows *sql.Rows
			var err error
			q := "SELECT * FROM " + tb
			if prepared {
				st, err := db.Prepare(q + " WHERE i = " + ptArg(s, 1))
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				rows, err = st.Query(1)
				if err != nil {
					t.Fatal(err)
				}
			} else if rows, err = db.Query(q); err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			cts, err := rows.ColumnTypes()
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for i, ct := range cts {
				if ct.DatabaseTypeName() != want[i] {
					t.Errorf("column %s: DatabaseTypeName %q, want %q", ct.Name(), ct.DatabaseTypeName(), want[i])
				}
				l, lok := ct.Length()
				p, sc, dok := ct.DecimalSize()
				n, nok := ct.Nullable()
				out = append(out, fmt.Sprintf("%s %s %v len=%d/%v dec=%d,%d/%v null=%v/%v",
					ct.Name(), ct.DatabaseTypeName(), ct.ScanType(), l, lok, p, sc, dok, n, nok))
			}
			if !rows.Next() {
				t.Fatalf("no row: %v", rows.Err())
			}
			var d string
			dest := make([]any, len(cts))
			for i := range dest {
				dest[i] = new(any)
			}
			dest[3] = &d
			if err := rows.Scan(dest...); err != nil {
				t.Fatal(err)
			}
			if d != "1.25" {
				t.Errorf("decimal scanned as %q, want 1.25", d)
			}
			return out
		}
		var raw [2][]string
		for _, drv := range []string{s.raw, s.wrapped} {
			t.Run(drv, func(t *testing.T) {
				db := open(t, s, drv)
				tb := table(t, s, db, cols)
				if _, err := db.Exec("INSERT INTO "+tb+" VALUES ("+ptArgs(s, len(vals))+")", vals...); err != nil {
					t.Fatal(err)
				}
				for i, prepared := range []bool{false, true} {
					got := describe(t, db, tb, prepared)
					if drv == s.raw {
						raw[i] = got
					} else if raw[i] != nil && !reflect.DeepEqual(got, raw[i]) {
						t.Errorf("prepared=%v: column types through dtx\n%s\nraw driver\n%s",
							prepared, strings.Join(got, "\n"), strings.Join(raw[i], "\n"))
					}
				}
			})
		}
	})
}

// TestPassthroughServerErrors: errors from the server reach the caller as
// the driver's own types (*pq.Error, *mysql.MySQLError), from Exec, Query,
// Prepare, a statement, a transaction and a row iteration.
func TestPassthroughServerErrors(t *testing.T) {
	eachDriver(t, func(t *testing.T, s server, db *sql.DB) {
		tb := table(t, s, db, "k INTEGER PRIMARY KEY")
		_, err := db.Exec("SELEC 1")
		ptWant(t, s, err, "42601", "1064")
		_, err = db.Query("SELECT no_such_column FROM " + tb)
		ptWant(t, s, err, "42703", "1054")
		var k int
		err = db.QueryRow("SELECT k FROM no_such_table_" + token()).Scan(&k)
		ptWant(t, s, err, "42P01", "1146")
		_, err = db.Prepare("SELECT k FROM no_such_table_" + token())
		ptWant(t, s, err, "42P01", "1146")

		ins, err := db.Prepare("INSERT INTO " + tb + " (k) VALUES (" + ptArg(s, 1) + ")")
		if err != nil {
			t.Fatal(err)
		}
		defer ins.Close()
		if _, err := ins.Exec(1); err != nil {
			t.Fatal(err)
		}
		_, err = ins.Exec(1)
		ptWant(t, s, err, "23505", "1062")
		var pe *pq.Error
		var me *mysql.MySQLError
		if s.kind == "postgres" && (!errors.As(err, &pe) || pe.Constraint == "") {
			t.Errorf("duplicate key: *pq.Error without its details: %#v", pe)
		}
		if s.kind == "mysql" && (!errors.As(err, &me) || string(me.SQLState[:]) != "23000") {
			t.Errorf("duplicate key: *mysql.MySQLError without its SQLSTATE: %#v", me)
		}

		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec("INSERT INTO "+tb+" (k) VALUES ("+ptArg(s, 1)+")", 1)
		ptWant(t, s, err, "23505", "1062")
		if s.kind == "postgres" {
			_, err = tx.Exec("SELECT 1")
			ptWant(t, s, err, "25P02", "")
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}

		if s.kind == "postgres" {
			// An error after some rows, from rows.Err.
			rows, err := db.Query("SELECT 1 / (3 - i) FROM generate_series(1, 5) i")
			if err == nil {
				for rows.Next() {
				}
				err = rows.Err()
				rows.Close()
			}
			ptWant(t, s, err, "22012", "")
		}
		if c := count(t, db, "SELECT count(*) FROM "+tb); c != 1 {
			t.Fatalf("%d rows, want 1", c)
		}
	})
}

// TestPassthroughIsolation: every isolation level the driver supports, with
// and without read-only, is what the server applies; an unsupported level
// gives the driver's own error; a one-shot level does not leak into the next
// transaction on the same connection.
func TestPassthroughIsolation(t *testing.T) {
	levels := []sql.IsolationLevel{sql.LevelReadUncommitted, sql.LevelReadCommitted,
		sql.LevelRepeatableRead, sql.LevelSerializable, sql.LevelDefault}
	eachDriver(t, func(t *testing.T, s server, db *sql.DB) {
		db.SetMaxOpenConns(1) // every transaction on one session
		ctx := context.Background()
		other := open(t, s, s.raw)
		tb := table(t, s, db, "k INTEGER PRIMARY KEY, v INTEGER NOT NULL")
		tw := table(t, s, db, "k INTEGER")
		if _, err := db.Exec("INSERT INTO " + tb + " (k, v) VALUES (1, 0)"); err != nil {
			t.Fatal(err)
		}
		var def string
		if s.kind == "postgres" {
			def = strings.ToUpper(queryString(t, db, "SELECT current_setting('default_transaction_isolation')"))
		} else {
			def = strings.ReplaceAll(queryString(t, db, "SELECT @@tx_isolation"), "-", " ")
		}
		for _, lvl := range levels {
			for _, ro := range []bool{false, true} {
				want := def
				if lvl != sql.LevelDefault {
					want = strings.ToUpper(lvl.String())
				}
				func() {
					tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: lvl, ReadOnly: ro})
					if err != nil {
						t.Fatalf("%v ro=%v: %v", lvl, ro, err)
					}
					defer tx.Rollback()
					var iso, roGot string
					if s.kind == "postgres" {
						if err := tx.QueryRow("SELECT upper(current_setting('transaction_isolation')), current_setting('transaction_read_only')").Scan(&iso, &roGot); err != nil {
							t.Fatal(err)
						}
						roGot = map[string]string{"on": "true", "off": "false"}[roGot]
					} else {
						// MariaDB shows a one-shot level nowhere reliable
						// (@@tx_isolation is the session's; innodb_trx is a
						// cache), so the level is told by what the transaction
						// sees of another session's work.
						iso = ptMyLevel(t, tx, other, tb)
						roGot = fmt.Sprint(ro) // checked by the write below
					}
					if iso != want || roGot != fmt.Sprint(ro) {
						t.Errorf("BeginTx(%v, read-only %v): server has %s, read-only %s", lvl, ro, iso, roGot)
					}
					_, err = tx.Exec("INSERT INTO " + tw + " (k) VALUES (1)")
					if ro {
						ptWant(t, s, err, "25006", "1792")
					} else if err != nil {
						t.Fatal(err)
					}
					if err := tx.Rollback(); err != nil {
						t.Fatal(err)
					}
				}()
			}
		}
		for _, lvl := range []sql.IsolationLevel{sql.LevelSnapshot, sql.LevelLinearizable, sql.LevelWriteCommitted} {
			_, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: lvl})
			want := fmt.Sprintf("pq: isolation level not supported: %d", lvl)
			if s.kind == "mysql" {
				want = fmt.Sprintf("mysql: unsupported isolation level: %d", lvl)
			}
			if err == nil || err.Error() != want {
				t.Errorf("BeginTx(%v) = %v, want the driver's error %q", lvl, err, want)
			}
		}
		if c := count(t, db, "SELECT count(*) FROM "+tw); c != 0 {
			t.Fatalf("%d rows after only rolled back transactions", c)
		}
	})
}

// ptMyLevel tells the isolation level of MariaDB transaction tx by
// behaviour, with other (a second pool) changing row k=1 of tb:
// SERIALIZABLE share-locks what it reads; READ UNCOMMITTED sees an
// uncommitted change; READ COMMITTED sees a committed one; REPEATABLE READ
// sees neither.
func ptMyLevel(t *testing.T, tx *sql.Tx, other *sql.DB, tb string) string {
	t.Helper()
	read := func() int {
		var v int
		if err := tx.QueryRow("SELECT v FROM " + tb + " WHERE k = 1").Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	v0 := read()
	var v int
	err := other.QueryRow("SELECT v FROM " + tb + " WHERE k = 1 FOR UPDATE NOWAIT").Scan(&v)
	if ptErrCode(err) == "1205" {
		return "SERIALIZABLE"
	} else if err != nil {
		t.Fatal(err)
	}
	otx, err := other.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer otx.Rollback()
	if _, err := otx.Exec("UPDATE " + tb + " SET v = v + 1 WHERE k = 1"); err != nil {
		t.Fatal(err)
	}
	if read() != v0 {
		return "READ UNCOMMITTED"
	}
	if err := otx.Commit(); err != nil {
		t.Fatal(err)
	}
	if read() != v0 {
		return "READ COMMITTED"
	}
	return "REPEATABLE READ"
}

func queryString(t *testing.T, db *sql.DB, q string) string {
	t.Helper()
	var v string
	if err := db.QueryRow(q).Scan(&v); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return v
}

// ptOutcome is what happened to a pool after a cancel or a kill.
type ptOutcome struct {
	Err  string // the kind of the error the interrupted call returned
	Kept bool   // the next query ran on the same server session
	Open int    // Stats().OpenConnections after the next query
}

// ptCompare runs f through the raw driver and through dtx, each on a pool of
// one connection, and fails unless both produce the same outcome.
func ptCompare(t *testing.T, s server, f func(t *testing.T, db *sql.DB) ptOutcome) {
	var got [2]ptOutcome
	for i, drv := range []string{s.raw, s.wrapped} {
		t.Run(drv, func(t *testing.T) {
			db := open(t, s, drv)
			db.SetMaxOpenConns(1)
			got[i] = f(t, db)
			t.Logf("%s: %+v", drv, got[i])
		})
	}
	if !t.Failed() && got[0] != got[1] {
		t.Errorf("dtx behaves unlike the raw driver:\n raw: %+v\n dtx: %+v", got[0], got[1])
	}
}

// TestPassthroughCancel: a context that ends mid-query, and mid-transaction
// (while a statement of it runs, and while it is idle), makes the call return
// at once with the raw driver's error; afterwards the pool keeps or drops the
// connection exactly as the raw driver does (lib/pq v1.12 and mysql both drop
// it), the transaction's work is gone, and the next query succeeds.
func TestPassthroughCancel(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		t.Run("query", func(t *testing.T) {
			ptCompare(t, s, func(t *testing.T, db *sql.DB) ptOutcome {
				before, err := ptSession(context.Background(), s, db)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
				defer cancel()
				start := time.Now()
				rows, qerr := db.QueryContext(ctx, ptSleep(s, 1))
				if qerr == nil {
					for rows.Next() {
					}
					qerr = rows.Err()
					rows.Close()
				}
				if qerr == nil {
					t.Fatal("a query cut off by its context returned no error")
				}
				if d := time.Since(start); d > 700*time.Millisecond {
					t.Fatalf("cancel took %v", d)
				}
				after, err := ptSession(context.Background(), s, db)
				if err != nil {
					t.Fatalf("next query after cancel: %v", err)
				}
				return ptOutcome{Err: ptErrKind(qerr), Kept: before == after, Open: db.Stats().OpenConnections}
			})
		})
		t.Run("tx", func(t *testing.T) {
			ptCompare(t, s, func(t *testing.T, db *sql.DB) ptOutcome {
				tb := table(t, s, db, "k INTEGER")
				before, err := ptSession(context.Background(), s, db)
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
				defer cancel()
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec("INSERT INTO " + tb + " (k) VALUES (1)"); err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				// MariaDB goes on sleeping after the driver hung up, holding
				// the table until the end: 1 s keeps the table's drop short.
				_, qerr := tx.ExecContext(ctx, ptSleep(s, 1))
				if qerr == nil {
					t.Fatal("a statement cut off by its context returned no error")
				}
				if d := time.Since(start); d > 700*time.Millisecond {
					t.Fatalf("cancel took %v", d)
				}
				if err := tx.Commit(); err == nil {
					t.Fatal("Commit after the transaction's context ended succeeded")
				}
				after, err := ptSession(context.Background(), s, db)
				if err != nil {
					t.Fatalf("next query after cancel: %v", err)
				}
				if c := count(t, db, "SELECT count(*) FROM "+tb); c != 0 {
					t.Fatalf("the cancelled transaction's row is there")
				}
				return ptOutcome{Err: ptErrKind(qerr), Kept: before == after, Open: db.Stats().OpenConnections}
			})
		})
		t.Run("idle-tx", func(t *testing.T) {
			// Whether lib/pq keeps the connection here is a race between its
			// watcher and database/sql's rollback (see two-phase-facts.md), so
			// only the outcome for the data and the pool is compared.
			ptCompare(t, s, func(t *testing.T, db *sql.DB) ptOutcome {
				tb := table(t, s, db, "k INTEGER")
				ctx, cancel := context.WithCancel(context.Background())
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec("INSERT INTO " + tb + " (k) VALUES (1)"); err != nil {
					t.Fatal(err)
				}
				cancel()
				if err := tx.Commit(); err == nil {
					t.Fatal("Commit after cancel succeeded")
				}
				if _, err := ptSession(context.Background(), s, db); err != nil {
					t.Fatalf("next query after cancel: %v", err)
				}
				if c := count(t, db, "SELECT count(*) FROM "+tb); c != 0 {
					t.Fatalf("the cancelled transaction's row is there")
				}
				return ptOutcome{Open: db.Stats().OpenConnections}
			})
		})
	})
}

// TestPassthroughKilledBackend: a session the server kills (from another
// connection) is noticed; the pool recovers as with the raw driver, and the
// next query runs on a new session.
func TestPassthroughKilledBackend(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		admin := open(t, s, s.raw)
		ptCompare(t, s, func(t *testing.T, db *sql.DB) ptOutcome {
			ctx := context.Background()
			id, err := ptSession(ctx, s, db)
			if err != nil {
				t.Fatal(err)
			}
			if s.kind == "postgres" {
				var ok bool
				if err := admin.QueryRow("SELECT pg_terminate_backend($1)", id).Scan(&ok); err != nil || !ok {
					t.Fatalf("pg_terminate_backend(%d) = %v, %v", id, ok, err)
				}
			} else if _, err := admin.Exec(fmt.Sprintf("KILL %d", id)); err != nil {
				t.Fatal(err)
			}
			if !ptEventually(5*time.Second, func() bool { return ptSessionGone(t, s, admin, id) }) {
				t.Fatalf("session %d still there after it was killed", id)
			}
			// The first query after the kill may fail or not, with either
			// driver, depending on whether the socket's reset or the
			// server's goodbye arrives first; it must fail as the driver
			// does on a dead connection, and the pool must recover.
			var out ptOutcome
			next, err := ptSession(ctx, s, db)
			if err != nil {
				t.Logf("first query after the kill: %v", err)
				var ne net.Error
				if !errors.As(err, &ne) && !errors.Is(err, driver.ErrBadConn) && !errors.Is(err, io.EOF) &&
					!errors.Is(err, mysql.ErrInvalidConn) && ptErrCode(err) != "57P01" {
					t.Errorf("first query after the kill: %v (%T), not a connection error", err, err)
				}
				if next, err = ptSession(ctx, s, db); err != nil {
					t.Fatalf("the pool did not recover: second query after the kill: %v", err)
				}
			}
			if next == id {
				t.Fatalf("query ran on killed session %d", id)
			}
			out.Open = db.Stats().OpenConnections
			return out
		})
	})
}

// TestPassthroughArgConversion: the parent's NamedValueChecker decides
// argument conversion through dtx: mysql and lib/pq take uint64 values above
// 2^63 (database/sql's default converter refuses them) and lib/pq turns a
// slice into an array.
func TestPassthroughArgConversion(t *testing.T) {
	eachDriver(t, func(t *testing.T, s server, db *sql.DB) {
		if s.kind == "postgres" {
			var n int
			if err := db.QueryRow("SELECT cardinality($1::int8[])", []int64{1, 2, 3}).Scan(&n); err != nil || n != 3 {
				t.Fatalf("slice argument: %d, %v; want lib/pq's array conversion", n, err)
			}
			// lib/pq sends a uint64 above 2^63 as text; database/sql alone
			// would refuse it.
			var txt string
			if err := db.QueryRow("SELECT $1::numeric::text", uint64(math.MaxUint64)).Scan(&txt); err != nil || txt != "18446744073709551615" {
				t.Fatalf("uint64 max on lib/pq: %q, %v", txt, err)
			}
			return
		}
		tb := table(t, s, db, "v BIGINT UNSIGNED NOT NULL")
		vals := []uint64{math.MaxUint64, 1 << 63, math.MaxUint64 - 1}
		ins, err := db.Prepare("INSERT INTO " + tb + " (v) VALUES (?)")
		if err != nil {
			t.Fatal(err)
		}
		defer ins.Close()
		for i, v := range vals {
			if i == 0 {
				_, err = db.Exec("INSERT INTO "+tb+" (v) VALUES (?)", v)
			} else {
				_, err = ins.Exec(v)
			}
			if err != nil {
				t.Fatalf("insert %d: %v", v, err)
			}
		}
		for _, v := range vals {
			var got uint64
			if err := db.QueryRow("SELECT v FROM "+tb+" WHERE v = ?", v).Scan(&got); err != nil || got != v {
				t.Fatalf("WHERE v = %d: got %d, %v", v, got, err)
			}
		}
		var max uint64
		if err := db.QueryRow("SELECT MAX(v) FROM " + tb).Scan(&max); err != nil || max != math.MaxUint64 {
			t.Fatalf("MAX(v) = %d, %v", max, err)
		}
	})
}

// TestPassthroughCloseClosesConnections: after db.Close the server has no
// session left of that pool: not the pool's, and through dtx neither the
// sessions it holds for prepared MariaDB branches, nor its spares, nor the
// pool of its own that phase two uses when it does not know the caller's.
func TestPassthroughCloseClosesConnections(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		admin := open(t, s, s.raw)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		for _, drv := range []string{s.raw, s.wrapped} {
			t.Run(drv, func(t *testing.T) {
				// The pool's sessions are told apart from everyone else's by an
				// application_name (PostgreSQL) or a user of their own (MariaDB).
				tag := "dtxpt_" + token()
				var dsn, sessions string
				if s.kind == "postgres" {
					sep := "?"
					if strings.Contains(s.dsn, "?") {
						sep = "&"
					}
					if !strings.Contains(s.dsn, "://") {
						sep = " "
					}
					dsn = s.dsn + sep + "application_name=" + tag
					sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
				} else {
					host := queryString(t, admin, "SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', -1)")
					cfg, err := mysql.ParseDSN(s.dsn)
					if err != nil {
						t.Fatal(err)
					}
					account := fmt.Sprintf("'%s'@'%s'", tag, host)
					if _, err := admin.Exec("CREATE USER " + account); ptErrCode(err) == "1227" {
						t.Skipf("cannot create a user to tell this pool's sessions apart: %v", err)
					} else if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { admin.Exec("DROP USER " + account) })
					if _, err := admin.Exec("GRANT ALL ON `" + cfg.DBName + "`.* TO " + account); err != nil {
						t.Fatal(err)
					}
					cfg.User, cfg.Passwd = tag, ""
					dsn = cfg.FormatDSN()
					sessions = "SELECT COUNT(*) FROM information_schema.processlist WHERE USER = ?"
				}
				tb := table(t, s, admin, "k INTEGER")
				prefix := names(t, s) // after table: leftovers are rolled back before the drop
				db, err := sql.Open(drv, dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				db.SetMaxIdleConns(4)

				var conns []*sql.Conn
				for i := 0; i < 3; i++ {
					c, err := db.Conn(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if err := c.PingContext(ctx); err != nil {
						t.Fatal(err)
					}
					conns = append(conns, c)
				}
				if n := count(t, admin, sessions, tag); n != 3 {
					t.Fatalf("%d sessions with 3 connections open, want 3", n)
				}
				for _, c := range conns {
					c.Close()
				}
				if drv == s.wrapped {
					// Phase two through a pool dtx opens itself, a held session
					// turned spare (MariaDB), and a branch left prepared.
					for i, name := range []string{prefix + "a", prefix + "b"} {
						tx, err := db.BeginTx(dtx.WithName(ctx, name), nil)
						if err != nil {
							t.Fatal(err)
						}
						if _, err := tx.Exec("INSERT INTO "+tb+" (k) VALUES ("+ptArg(s, 1)+")", i); err != nil {
							t.Fatal(err)
						}
						if err := tx.Commit(); err != nil {
							t.Fatal(err)
						}
						if i == 0 {
							if err := dtx.CommitDistributed(ctx, name); err != nil {
								t.Fatal(err)
							}
						}
					}
				}
				n := count(t, admin, sessions, tag)
				if n < 1 {
					t.Fatalf("no session of the pool before Close")
				}
				t.Logf("%d sessions before Close", n)
				if err := db.Close(); err != nil {
					t.Fatalf("Close: %v", err)
				}
				if !ptEventually(5*time.Second, func() bool { n = count(t, admin, sessions, tag); return n == 0 }) {
					t.Fatalf("%d sessions left after db.Close", n)
				}
				if drv == s.wrapped {
					// The branch left prepared is still there, and can be
					// finished by name through another dtx pool.
					db2 := open(t, s, s.wrapped)
					if err := dtx.RollbackPrepared(ctx, db2, prefix+"b"); err != nil {
						// What counts is the server's state, checked below.
						t.Logf("rolling back the branch left prepared at Close: %v", err)
					}
					if !ptEventually(5*time.Second, func() bool { return !ptPrepared(t, s, admin, prefix+"b") }) {
						t.Errorf("%s is still prepared after its rollback", prefix+"b")
					}
					if c := count(t, admin, "SELECT count(*) FROM "+tb); c != 1 {
						t.Errorf("%d rows, want the one committed", c)
					}
				}
			})
		}
	})
}

// TestPassthroughRaw: sql.Conn.Raw through dtx gives a value whose Unwrap is
// the parent driver's connection, the one the sql.Conn runs on.
func TestPassthroughRaw(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		var rawType string
		for _, drv := range []string{s.raw, s.wrapped} {
			t.Run(drv, func(t *testing.T) {
				db := open(t, s, drv)
				ctx := context.Background()
				c, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				id, err := ptSession(ctx, s, c)
				if err != nil {
					t.Fatal(err)
				}
				err = c.Raw(func(dc any) error {
					parent, _ := dc.(driver.Conn)
					if drv == s.wrapped {
						u, ok := dc.(interface{ Unwrap() driver.Conn })
						if !ok {
							return fmt.Errorf("%T has no Unwrap() driver.Conn", dc)
						}
						parent = u.Unwrap()
					}
					typ := fmt.Sprintf("%T", parent)
					if !strings.Contains(typ, map[string]string{"postgres": "pq.", "mysql": "mysql."}[s.kind]) {
						return fmt.Errorf("parent connection is a %s", typ)
					}
					if drv == s.raw {
						rawType = typ
					} else if rawType != "" && typ != rawType {
						return fmt.Errorf("Unwrap gives a %s, the raw driver's connection is a %s", typ, rawType)
					}
					q, ok := parent.(driver.QueryerContext)
					if !ok {
						return fmt.Errorf("%s is no QueryerContext", typ)
					}
					rows, err := q.QueryContext(ctx, ptSessionQuery(s), nil)
					if err != nil {
						return err
					}
					defer rows.Close()
					v := make([]driver.Value, 1)
					if err := rows.Next(v); err != nil {
						return err
					}
					if got := fmt.Sprint(v[0]); got != fmt.Sprint(id) {
						return fmt.Errorf("the unwrapped connection is session %s, the sql.Conn's is %d", got, id)
					}
					if err := rows.Next(v); err != io.EOF {
						return fmt.Errorf("second row: %v", err)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := ptSession(ctx, s, c); err != nil {
					t.Fatalf("the sql.Conn after Raw: %v", err)
				}
			})
		}
	})
}

var ptRegister sync.Once

// TestPassthroughConnector: dtx.NewConnector over the drivers' own connectors
// (pq.NewConnector, mysql.NewConnector) with sql.OpenDB, and dtx.Register
// of a custom name over the drivers with sql.Open, both run queries, plain
// and named transactions, and report dtx's *Driver.
func TestPassthroughConnector(t *testing.T) {
	ptRegister.Do(func() {
		dtx.Register("dtx-passthrough-postgres", &pq.Driver{}, dtx.Postgres)
		dtx.Register("dtx-passthrough-mysql", &mysql.MySQLDriver{}, dtx.MySQL)
	})
	eachServer(t, func(t *testing.T, s server) {
		need(t, s)
		check := func(t *testing.T, db *sql.DB) {
			t.Helper()
			if d, ok := db.Driver().(*dtx.Driver); !ok || d == nil {
				t.Fatalf("db.Driver() is a %T, want *dtx.Driver", db.Driver())
			}
			ctx := context.Background()
			if n := count(t, db, "SELECT 40 + "+ptArg(s, 1), 2); n != 42 {
				t.Fatalf("SELECT 40 + 2 = %d", n)
			}
			tb := table(t, s, db, "k INTEGER")
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec("INSERT INTO " + tb + " (k) VALUES (1)"); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			name := names(t, s) + "x"
			err = dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
				_, err := tx.Exec("INSERT INTO " + tb + " (k) VALUES (2)")
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := dtx.CommitDistributed(ctx, name); err != nil {
				t.Fatal(err)
			}
			if n := count(t, db, "SELECT count(*) FROM "+tb); n != 2 {
				t.Fatalf("%d rows, want 2", n)
			}
		}
		t.Run("NewConnector", func(t *testing.T) {
			var parent driver.Connector
			var d dtx.Dialect
			var err error
			if s.kind == "postgres" {
				parent, err = pq.NewConnector(s.dsn)
				d = dtx.Postgres
			} else {
				var cfg *mysql.Config
				if cfg, err = mysql.ParseDSN(s.dsn); err == nil {
					parent, err = mysql.NewConnector(cfg)
				}
				d = dtx.MySQL
			}
			if err != nil {
				t.Fatal(err)
			}
			db := sql.OpenDB(dtx.NewConnector(parent, d))
			defer db.Close()
			check(t, db)
		})
		t.Run("Register", func(t *testing.T) {
			db, err := sql.Open("dtx-passthrough-"+s.kind, s.dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			check(t, db)
		})
	})
}

// TestPassthroughUnnamedTx: a transaction begun without a global name is the
// driver's plain one: on PostgreSQL it commits and leaves nothing in
// pg_prepared_xacts; on MariaDB it is START TRANSACTION, not XA (XA START in
// it is refused with XAER_OUTSIDE, as go-sql-driver's own transaction is).
func TestPassthroughUnnamedTx(t *testing.T) {
	eachDriver(t, func(t *testing.T, s server, db *sql.DB) {
		tb := table(t, s, db, "k INTEGER")
		tx, err := db.Begin()
		if err != nil {
			t.Fatal(err)
		}
		var xid string
		if s.kind == "postgres" {
			if err := tx.QueryRow("SELECT pg_current_xact_id()::xid::text").Scan(&xid); err != nil {
				t.Fatal(err)
			}
		} else {
			_, err := tx.Exec("XA START 'dtxpt_" + token() + "'")
			ptWant(t, s, err, "", "1400")
		}
		if _, err := tx.Exec("INSERT INTO " + tb + " (k) VALUES (1)"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, "SELECT count(*) FROM "+tb); n != 1 {
			t.Fatalf("%d rows after Commit, want 1", n)
		}
		if s.kind == "postgres" {
			if n := count(t, db, "SELECT count(*) FROM pg_prepared_xacts WHERE transaction::text = $1", xid); n != 0 {
				t.Fatalf("the unnamed transaction %s is in pg_prepared_xacts", xid)
			}
		}
	})
}
