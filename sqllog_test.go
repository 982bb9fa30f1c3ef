package dtx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
)

// logTable returns a fresh decision-log table name, dropped when t ends.
func logTable(t *testing.T, s server) string {
	t.Helper()
	name := "dtx_log_" + token()
	t.Cleanup(func() { drop(t, s, name) })
	return name
}

// tableExists says whether name is a table of db's current database and
// schema. PostgreSQL folds unquoted names to lower case.
func tableExists(t *testing.T, s server, db *sql.DB, name string) bool {
	t.Helper()
	if s.kind == "postgres" {
		return count(t, db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = $1", strings.ToLower(name)) > 0
	}
	return count(t, db, "SELECT count(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?", name) > 0
}

// ph is the first placeholder in s's syntax.
func ph(s server) string {
	if s.kind == "postgres" {
		return "$1"
	}
	return "?"
}

func sqlDecision(i int, node string) dtx.Decision {
	return dtx.Decision{
		Global: fmt.Sprintf("g%d-%s", i, token()),
		Node:   node,
		Branches: []dtx.BranchRef{
			{Resource: "orders", Name: fmt.Sprintf("%s.b%d.0", node, i)},
			{Resource: "stock", Name: fmt.Sprintf("%s.b%d.1", node, i)},
		},
		At: time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC).Add(time.Duration(i) * time.Second),
	}
}

// checkSQLPending fails t unless Pending(node) returns exactly want, in
// order of global id; the log keeps times to the millisecond.
func checkSQLPending(t *testing.T, l *dtx.SQLLog, node string, want ...dtx.Decision) {
	t.Helper()
	got, err := l.Pending(context.Background(), node)
	if err != nil {
		t.Fatalf("Pending(%s): %v", node, err)
	}
	if len(got) != len(want) {
		t.Fatalf("Pending(%s): %d decisions %+v, want %d %+v", node, len(got), got, len(want), want)
	}
	for i, w := range want {
		g := got[i]
		if g.Global != w.Global || g.Node != w.Node || fmt.Sprint(g.Branches) != fmt.Sprint(w.Branches) ||
			!g.At.Equal(w.At.Truncate(time.Millisecond)) {
			t.Fatalf("Pending(%s)[%d]\n got %+v\nwant %+v", node, i, g, w)
		}
	}
}

// sortByGlobal orders ds as Pending does.
func sortByGlobal(ds ...dtx.Decision) []dtx.Decision {
	out := append([]dtx.Decision(nil), ds...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j].Global < out[i].Global {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestSQLLogRoundTrip runs through the raw driver and through dtx on each
// server: OpenSQLLog works on either kind of *sql.DB.
func TestSQLLogRoundTrip(t *testing.T) {
	eachDriver(t, func(t *testing.T, s server, db *sql.DB) {
		ctx := context.Background()
		name := logTable(t, s)
		l, err := dtx.OpenSQLLog(ctx, db, name)
		if err != nil {
			t.Fatalf("OpenSQLLog: %v", err)
		}
		if !tableExists(t, s, db, name) {
			t.Fatalf("OpenSQLLog did not create %s", name)
		}

		a0, a1, a2 := sqlDecision(0, "node-a"), sqlDecision(1, "node-a"), sqlDecision(2, "node-a")
		b0 := sqlDecision(3, "node-b")
		for _, d := range []dtx.Decision{a0, a1, a2, b0} {
			if err := l.Decide(ctx, d); err != nil {
				t.Fatalf("Decide %s: %v", d.Global, err)
			}
		}
		checkSQLPending(t, l, "node-a", sortByGlobal(a0, a1, a2)...)
		checkSQLPending(t, l, "node-b", b0)
		checkSQLPending(t, l, "node-c")

		if err := l.Forget(ctx, a1.Global); err != nil {
			t.Fatalf("Forget: %v", err)
		}
		if err := l.Forget(ctx, "never-decided"); err != nil {
			t.Fatalf("Forget of an unknown global: %v", err)
		}
		checkSQLPending(t, l, "node-a", sortByGlobal(a0, a2)...)
		if n := count(t, db, "SELECT count(*) FROM "+name+" WHERE global_id = "+ph(s), a1.Global); n != 0 {
			t.Fatalf("a forgotten global without a heuristic outcome left %d rows", n)
		}

		// A second OpenSQLLog on the existing table works and sees the rows.
		l2, err := dtx.OpenSQLLog(ctx, db, name)
		if err != nil {
			t.Fatalf("second OpenSQLLog on %s: %v", name, err)
		}
		checkSQLPending(t, l2, "node-a", sortByGlobal(a0, a2)...)
		checkSQLPending(t, l2, "node-b", b0)
	})
}

func TestSQLLogHeuristic(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx := context.Background()
		db := open(t, s, s.wrapped)
		name := logTable(t, s)
		l, err := dtx.OpenSQLLog(ctx, db, name)
		if err != nil {
			t.Fatal(err)
		}
		h, other := sqlDecision(0, "node-a"), sqlDecision(1, "node-a")
		for _, d := range []dtx.Decision{h, other} {
			if err := l.Decide(ctx, d); err != nil {
				t.Fatal(err)
			}
		}
		const detail = "stock: branch node-a.b0.1 gone; orders: committed"
		if err := l.Heuristic(ctx, h.Global, detail); err != nil {
			t.Fatalf("Heuristic: %v", err)
		}
		// Until forgotten, the global is still pending.
		checkSQLPending(t, l, "node-a", sortByGlobal(h, other)...)

		if err := l.Forget(ctx, h.Global); err != nil {
			t.Fatalf("Forget: %v", err)
		}
		checkSQLPending(t, l, "node-a", other)
		var state, got string
		err = db.QueryRow("SELECT state, heuristic FROM "+name+" WHERE global_id = "+ph(s), h.Global).Scan(&state, &got)
		if err != nil {
			t.Fatalf("the heuristic global's row: %v", err)
		}
		if state != "F" || got != detail {
			t.Fatalf("row state %q heuristic %q, want F and %q", state, got, detail)
		}
		// Forgetting again changes nothing.
		if err := l.Forget(ctx, h.Global); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, "SELECT count(*) FROM "+name+" WHERE global_id = "+ph(s), h.Global); n != 1 {
			t.Fatalf("%d rows for the heuristic global after a second Forget, want 1", n)
		}
		checkSQLPending(t, l, "node-a", other)
	})
}

func TestSQLLogInvalidName(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx := context.Background()
		db := open(t, s, s.raw)
		tok := token()
		// A table the injection attempt would drop.
		victim := table(t, s, db, "id INT")
		long := "dtx_log_" + tok + strings.Repeat("x", 64-len("dtx_log_"+tok))
		cases := []struct {
			name    string
			created []string // tables a missing check would create
		}{
			{"x" + tok + "; DROP TABLE " + victim, []string{"x" + tok}},
			{long, []string{long, long[:63]}}, // PostgreSQL would cut it to 63
			{"1abc" + tok, []string{"1abc" + tok}},
			{"a-" + tok, nil},
			{"public.t" + tok, []string{"t" + tok}},
			{"t" + tok + "`", nil},
			{`"t` + tok + `"`, []string{"t" + tok}},
			{"t " + tok, nil},
		}
		for _, c := range cases {
			l, err := dtx.OpenSQLLog(ctx, db, c.name)
			if !errors.Is(err, dtx.ErrInvalidName) {
				t.Errorf("OpenSQLLog(%q) = %v, %v; want ErrInvalidName", c.name, l, err)
			}
			for _, n := range c.created {
				if tableExists(t, s, db, n) {
					drop(t, s, n)
					t.Errorf("OpenSQLLog(%q) created table %s", c.name, n)
				}
			}
		}
		if !tableExists(t, s, db, victim) {
			t.Errorf("table %s is gone", victim)
		}

		// 63 bytes is the longest name allowed, and works on both servers.
		name := long[:63]
		t.Cleanup(func() { drop(t, s, name) })
		l, err := dtx.OpenSQLLog(ctx, db, name)
		if err != nil {
			t.Fatalf("OpenSQLLog with a 63-byte name: %v", err)
		}
		d := sqlDecision(0, "node-a")
		if err := l.Decide(ctx, d); err != nil {
			t.Fatal(err)
		}
		checkSQLPending(t, l, "node-a", d)
	})
}

// An empty table name is the default, dtx_decisions: checked in a schema
// (PostgreSQL) or database (MariaDB) of the test's own, so as not to touch
// a dtx_decisions table the test database may hold.
func TestSQLLogDefaultTable(t *testing.T) {
	eachServer(t, func(t *testing.T, s server) {
		ctx := context.Background()
		admin := open(t, s, s.raw)
		iso := "dtx_iso_" + token()
		var dsn string
		if s.kind == "postgres" {
			mustExec(t, admin, "CREATE SCHEMA "+iso)
			t.Cleanup(func() { admin.Exec("DROP SCHEMA " + iso + " CASCADE") })
			if strings.Contains(s.dsn, "://") {
				sep := "?"
				if strings.Contains(s.dsn, "?") {
					sep = "&"
				}
				dsn = s.dsn + sep + "search_path=" + iso
			} else {
				dsn = s.dsn + " search_path=" + iso
			}
		} else {
			mustExec(t, admin, "CREATE DATABASE "+iso)
			t.Cleanup(func() { admin.Exec("DROP DATABASE " + iso) })
			cfg, err := mysql.ParseDSN(s.dsn)
			if err != nil {
				t.Fatal(err)
			}
			cfg.DBName = iso
			dsn = cfg.FormatDSN()
		}
		db, err := sql.Open(s.wrapped, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })

		l, err := dtx.OpenSQLLog(ctx, db, "")
		if err != nil {
			t.Fatalf(`OpenSQLLog(""): %v`, err)
		}
		if !tableExists(t, s, db, "dtx_decisions") {
			t.Fatal(`OpenSQLLog("") did not create dtx_decisions`)
		}
		d := sqlDecision(0, "node-a")
		if err := l.Decide(ctx, d); err != nil {
			t.Fatal(err)
		}
		if n := count(t, db, "SELECT count(*) FROM dtx_decisions"); n != 1 {
			t.Fatalf("dtx_decisions has %d rows, want 1", n)
		}
		checkSQLPending(t, l, "node-a", d)
	})
}

func mustExec(t *testing.T, db *sql.DB, query string) {
	t.Helper()
	if _, err := db.Exec(query); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}
