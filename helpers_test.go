package dtx_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	_ "github.com/go-sql-driver/mysql"
	_ "github.com/lib/pq"
)

// server is one of the local database servers the tests run against.
type server struct {
	kind    string // "postgres" or "mysql"
	label   string // the subtest name: kind, or "pgx" for PostgreSQL through pgx
	raw     string // the parent driver's name
	wrapped string // dtx's driver name
	dsn     string
}

func pgDSN() string {
	if v := os.Getenv("DTX_PG_DSN"); v != "" {
		return v
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

func myDSN() string {
	if v := os.Getenv("DTX_MYSQL_DSN"); v != "" {
		return v
	}
	return "root@tcp(127.0.0.1:3306)/test"
}

// servers lists lib/pq on PostgreSQL, then MariaDB, then, when the test
// binary has the drivers (the pgx module's run of these tests links them in,
// see pgx/Makefile), pgx on PostgreSQL.
func servers() []server {
	ss := []server{
		{kind: "postgres", label: "postgres", raw: "postgres", wrapped: "dtx+postgres", dsn: pgDSN()},
		{kind: "mysql", label: "mysql", raw: "mysql", wrapped: "dtx+mysql", dsn: myDSN()},
	}
	if slices.Contains(sql.Drivers(), "dtx+pgx") && slices.Contains(sql.Drivers(), "pgx") {
		ss = append(ss, server{kind: "postgres", label: "pgx", raw: "pgx", wrapped: "dtx+pgx", dsn: pgDSN()})
	}
	return ss
}

var reachable sync.Map // dsn -> error

// need skips t when s cannot be reached, or fails it when DTX_REQUIRE_DB=1.
func need(t testing.TB, s server) {
	t.Helper()
	v, ok := reachable.Load(s.dsn)
	if !ok {
		db, err := sql.Open(s.raw, s.dsn)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err = db.PingContext(ctx)
			cancel()
			db.Close()
		}
		if err == nil {
			err = errNil{}
		}
		v, _ = reachable.LoadOrStore(s.dsn, err)
	}
	if err := v.(error); err != (errNil{}) {
		msg := fmt.Sprintf("%s server not reachable at %s (set DTX_%s_DSN or run scripts/devdb.sh): %v",
			s.kind, s.dsn, map[string]string{"postgres": "PG", "mysql": "MYSQL"}[s.kind], err)
		if os.Getenv("DTX_REQUIRE_DB") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

type errNil struct{}

func (errNil) Error() string { return "" }

// open opens drv on s's DSN, closed when t ends.
func open(t testing.TB, s server, drv string) *sql.DB {
	t.Helper()
	need(t, s)
	db, err := sql.Open(drv, s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// eachServer runs f once per server, as subtests named after the kind (pgx
// for PostgreSQL through pgx).
func eachServer(t *testing.T, f func(t *testing.T, s server)) {
	for _, s := range servers() {
		t.Run(s.label, func(t *testing.T) { f(t, s) })
	}
}

// eachDriver runs f through the raw driver and through dtx, on each server:
// the same body must behave the same.
func eachDriver(t *testing.T, f func(t *testing.T, s server, db *sql.DB)) {
	eachServer(t, func(t *testing.T, s server) {
		for _, drv := range []string{s.raw, s.wrapped} {
			t.Run(drv, func(t *testing.T) { f(t, s, open(t, s, drv)) })
		}
	})
}

// token is a short random word that keeps names of concurrent tests and
// processes apart.
func token() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// table creates a table with columns cols under a fresh name, and drops it
// when t ends, first rolling back whatever t left prepared under prefix.
func table(t testing.TB, s server, db *sql.DB, cols string) string {
	t.Helper()
	name := "t_" + token()
	if _, err := db.Exec("CREATE TABLE " + name + " (" + cols + ")"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { drop(t, s, name) })
	return name
}

// names returns a name prefix for t's global transactions; when t ends,
// any transaction still prepared under it is rolled back.
func names(t testing.TB, s server) string {
	t.Helper()
	prefix := "n" + token() + "_"
	t.Cleanup(func() { rollbackLeftovers(t, s, prefix) })
	return prefix
}

func rollbackLeftovers(t testing.TB, s server, prefix string) {
	db, err := sql.Open(s.wrapped, s.dsn)
	if err != nil {
		return
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ps, err := dtx.ListPrepared(ctx, db)
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	for _, p := range ps {
		if strings.HasPrefix(p.Name, prefix) {
			err := dtx.RollbackDistributed(ctx, p.Name)
			t.Logf("cleanup: rolled back leftover %s: %v", p.Name, err)
		}
	}
}

// drop drops a table on a fresh connection, with a lock timeout so that a
// prepared transaction left holding it cannot hang the run.
func drop(t testing.TB, s server, name string) {
	db, err := sql.Open(s.raw, s.dsn)
	if err != nil {
		return
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := db.Conn(ctx)
	if err != nil {
		return
	}
	defer c.Close()
	if s.kind == "postgres" {
		c.ExecContext(ctx, "SET lock_timeout = '5s'")
	} else {
		c.ExecContext(ctx, "SET SESSION lock_wait_timeout = 5, innodb_lock_wait_timeout = 5")
	}
	if _, err := c.ExecContext(ctx, "DROP TABLE IF EXISTS "+name); err != nil {
		t.Logf("cleanup: drop %s: %v", name, err)
	}
}

func count(t testing.TB, db *sql.DB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}
