package dtx_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
)

// restrictedUser creates a login with no privilege beyond connecting to s's
// test database (PostgreSQL: a role with LOGIN, which can CONNECT through
// PUBLIC but, on PostgreSQL 15, create nothing in schema public; MariaDB:
// USAGE only), dropped when t ends, and returns its name and a DSN of s that
// logs in as it. grants are run as the admin before returning, with USER_ in
// them replaced by the name.
func restrictedUser(t *testing.T, s server, admin *sql.DB, grants ...string) (user, dsn string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	user = "dtx_ru_" + token()
	const password = "dtx-ru-pw"
	if s.kind == "postgres" {
		if _, err := admin.ExecContext(ctx, "CREATE ROLE "+user+" LOGIN"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dropUser(t, s, "DROP OWNED BY "+user, "DROP ROLE IF EXISTS "+user) })
		u, err := url.Parse(s.dsn)
		if err != nil {
			t.Fatal(err)
		}
		u.User = url.UserPassword(user, password)
		dsn = u.String()
	} else {
		account := "'" + user + "'@'127.0.0.1'"
		if _, err := admin.ExecContext(ctx, "CREATE USER "+account+" IDENTIFIED BY '"+password+"'"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dropUser(t, s, "DROP USER IF EXISTS "+account) })
		cfg, err := mysql.ParseDSN(s.dsn)
		if err != nil {
			t.Fatal(err)
		}
		cfg.User, cfg.Passwd = user, password
		dsn = cfg.FormatDSN()
		user = account
	}
	for _, g := range grants {
		if _, err := admin.ExecContext(ctx, strings.ReplaceAll(g, "USER_", user)); err != nil {
			t.Fatalf("%s: %v", g, err)
		}
	}
	return user, dsn
}

// dropUser runs stmts on a pool of its own (the test may have closed its).
// eachServerOnce is eachServer without pgx, the same server as postgres:
// for tests of the servers' own rules.
func eachServerOnce(t *testing.T, f func(t *testing.T, s server)) {
	eachServer(t, func(t *testing.T, s server) {
		if s.label == "pgx" {
			t.Skip("the same server as postgres")
		}
		f(t, s)
	})
}

func dropUser(t *testing.T, s server, stmts ...string) {
	admin, err := sql.Open(s.raw, s.dsn)
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer admin.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, q := range stmts {
		if _, err := admin.ExecContext(ctx, q); err != nil {
			t.Logf("cleanup: %s: %v", q, err)
		}
	}
}

// A user who may read and write the decision table but not create tables
// opens it: OpenSQLLog looks for the table before it tries to create it
// (CREATE TABLE IF NOT EXISTS needs the privilege even when the table
// exists). Without the table, the same user is told to create it, with the
// statement.
func TestSQLLogWithoutCreatePrivilege(t *testing.T) {
	eachServerOnce(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin := open(t, s, s.raw)
		table := logTable(t, s)
		if _, err := dtx.OpenSQLLog(ctx, admin, table); err != nil {
			t.Fatal(err)
		}
		_, dsn := restrictedUser(t, s, admin, "GRANT SELECT, INSERT, UPDATE, DELETE ON "+table+" TO USER_")
		udb, err := sql.Open(s.raw, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer udb.Close()
		if _, err := udb.ExecContext(ctx, "CREATE TABLE "+table+"_probe (x INT)"); err == nil {
			t.Fatal("the restricted user can create tables: the test proves nothing")
		}
		l, err := dtx.OpenSQLLog(ctx, udb, table)
		if err != nil {
			t.Fatalf("OpenSQLLog by a user without CREATE, the table existing: %v", err)
		}
		d := sqlDecision(1, "nodepriv")
		if err := l.Decide(ctx, d); err != nil {
			t.Fatal(err)
		}
		checkSQLPending(t, l, "nodepriv", d)
		if err := l.Forget(ctx, d.Global); err != nil {
			t.Fatal(err)
		}
		checkSQLPending(t, l, "nodepriv")

		missing := table + "_none"
		_, err = dtx.OpenSQLLog(ctx, udb, missing)
		if err == nil || !strings.Contains(err.Error(), "create it yourself with CREATE TABLE "+missing) {
			t.Fatalf("OpenSQLLog of a missing table without CREATE: %v, want the DDL to run", err)
		}
		if tableExists(t, s, admin, missing) {
			t.Fatal("the missing table was created")
		}
	})
}

// The stores keep ids exactly or refuse them: a global, node, resource or
// branch name that is not UTF-8 is refused before anything is written
// (JSON and text columns would keep it as another), with ErrInvalidName and
// ErrNotDecided; on MariaDB, whose table's id columns are ascii, so is a
// non-ASCII global or node. A UTF-8 global comes back exact on PostgreSQL.
func TestSQLLogRefusesIdsItCannotKeep(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db := open(t, s, s.wrapped)
		l, err := dtx.OpenSQLLog(ctx, db, logTable(t, s))
		if err != nil {
			t.Fatal(err)
		}
		bad := []func(d *dtx.Decision){
			func(d *dtx.Decision) { d.Global += "\xff" },
			func(d *dtx.Decision) { d.Node = "n\xc3" },
			func(d *dtx.Decision) { d.Branches[0].Resource = "r\xe2\x82" },
			func(d *dtx.Decision) { d.Branches[1].Name += "\x80" },
		}
		if s.kind == "mysql" {
			bad = append(bad, func(d *dtx.Decision) { d.Global += "ü" })
		}
		for i, f := range bad {
			d := sqlDecision(i, "nodeutf")
			f(&d)
			err := l.Decide(ctx, d)
			if !errors.Is(err, dtx.ErrInvalidName) || !errors.Is(err, dtx.ErrNotDecided) {
				t.Errorf("Decide(%q, %q, %+v) = %v, want ErrInvalidName and ErrNotDecided", d.Global, d.Node, d.Branches, err)
			}
			if _, err := l.Abort(ctx, d.Global); i == 0 && !errors.Is(err, dtx.ErrInvalidName) {
				t.Errorf("Abort(%q) = %v, want ErrInvalidName", d.Global, err)
			}
		}
		checkSQLPending(t, l, "nodeutf")
		if s.kind == "postgres" {
			d := sqlDecision(9, "nodeutf")
			d.Global += "-ünï©ødé"
			d.Branches[0].Resource = "ordres-é"
			if err := l.Decide(ctx, d); err != nil {
				t.Fatal(err)
			}
			checkSQLPending(t, l, "nodeutf", d)
		}
	})
}

// Who can finish a prepared branch, measured (docs/reliability.md,
// Security): on PostgreSQL only the role that prepared it or a superuser
// (another role gets 42501); on MariaDB any login, even one with nothing
// but USAGE, can list another's detached branch in XA RECOVER and XA COMMIT
// it. If a server release changes either, this fails and the note must
// change with it.
func TestWhoCanFinishAPreparedBranch(t *testing.T) {
	eachServerOnce(t, func(t *testing.T, s server) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		admin := open(t, s, s.raw)
		tbl := table(t, s, admin, "k VARCHAR(64)")
		_, ownerDSN := restrictedUser(t, s, admin, "GRANT SELECT, INSERT ON "+tbl+" TO USER_")
		_, otherDSN := restrictedUser(t, s, admin)
		if s.kind == "mysql" { // USAGE only: it may not even use the test's database
			cfg, err := mysql.ParseDSN(otherDSN)
			if err != nil {
				t.Fatal(err)
			}
			cfg.DBName = ""
			otherDSN = cfg.FormatDSN()
		}
		name := names(t, s) + "owned"
		owner, err := sql.Open(s.raw, ownerDSN)
		if err != nil {
			t.Fatal(err)
		}
		defer owner.Close()
		other, err := sql.Open(s.raw, otherDSN)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		if s.kind == "postgres" {
			c, err := owner.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{"BEGIN", "INSERT INTO " + tbl + " VALUES ('x')", "PREPARE TRANSACTION '" + name + "'"} {
				if _, err := c.ExecContext(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			c.Close()
			_, err = other.ExecContext(ctx, "COMMIT PREPARED '"+name+"'")
			if sqlStateOf(err) != "42501" {
				t.Fatalf("COMMIT PREPARED by another role: %v, want 42501", err)
			}
			if _, err := owner.ExecContext(ctx, "COMMIT PREPARED '"+name+"'"); err != nil {
				t.Fatalf("COMMIT PREPARED by its owner: %v", err)
			}
		} else {
			c, err := owner.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var session int64
			if err := c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&session); err != nil {
				t.Fatal(err)
			}
			x := dtx.Xid(name)
			for _, q := range []string{"XA START " + x, "INSERT INTO " + tbl + " VALUES ('x')", "XA END " + x, "XA PREPARE " + x} {
				if _, err := c.ExecContext(ctx, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			c.Raw(func(any) error { return driver.ErrBadConn }) // close the session: the branch detaches
			c.Close()
			owner.Close()
			waitSessionGone(t, admin, session)
			time.Sleep(time.Second) // past the server's detach race (docs/two-phase.md)
			listed := false
			rows, err := other.QueryContext(ctx, "XA RECOVER")
			if err != nil {
				t.Fatalf("XA RECOVER by a login with USAGE only: %v", err)
			}
			for rows.Next() {
				var format, gl, bl int
				var data string
				if err := rows.Scan(&format, &gl, &bl, &data); err != nil {
					t.Fatal(err)
				}
				listed = listed || data == name
			}
			rows.Close()
			if !listed {
				t.Error("XA RECOVER by a login with USAGE only does not list another login's branch")
			}
			if _, err := other.ExecContext(ctx, "XA COMMIT "+x); err != nil {
				t.Fatalf("XA COMMIT of another login's branch by a login with USAGE only: %v (the security note says it succeeds)", err)
			}
		}
		if n := count(t, admin, "SELECT count(*) FROM "+tbl); n != 1 {
			t.Fatalf("%d rows after the commit, want 1", n)
		}
	})
}

func sqlStateOf(err error) string {
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		return e.SQLState()
	}
	return ""
}

// waitSessionGone waits up to 10 s until MariaDB session id has left the
// processlist.
func waitSessionGone(t *testing.T, admin *sql.DB, id int64) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if count(t, admin, "SELECT count(*) FROM information_schema.processlist WHERE id = ?", id) == 0 {
			return
		}
	}
	t.Fatalf("session %d still open", id)
}
