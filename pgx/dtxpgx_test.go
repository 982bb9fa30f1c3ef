package dtxpgx_test

// Real-server tests of dtx over pgx: what dtxpgx adds (CommandTag) and what
// it must not cost. Every test of named transactions in dtx's own
// named_test.go also runs through pgx from this module (see the Makefile's
// test target: it links testdata/register_test.go.in into dtx's tests).

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	dtxpgx "github.com/dtx-go/dtx/pgx"
	"github.com/jackc/pgx/v5"
)

func dsn() string {
	if v := os.Getenv("DTX_PG_DSN"); v != "" {
		return v
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

// need skips t when PostgreSQL cannot be reached, or fails it when
// DTX_REQUIRE_DB=1.
func need(t *testing.T) {
	t.Helper()
	db, err := sql.Open("pgx", dsn())
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = db.PingContext(ctx)
		cancel()
		db.Close()
	}
	if err != nil {
		msg := "PostgreSQL not reachable at " + dsn() + " (set DTX_PG_DSN or run scripts/devdb.sh): " + err.Error()
		if os.Getenv("DTX_REQUIRE_DB") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

func token() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// fixture makes a table and a name prefix; leftovers prepared under the
// prefix are rolled back and the table dropped when t ends.
func fixture(t *testing.T, db *sql.DB) (tbl, prefix string) {
	t.Helper()
	tbl, prefix = "t_"+token(), "n"+token()+"_"
	if _, err := db.Exec("CREATE TABLE " + tbl + " (id int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ps, _ := dtx.ListPrepared(ctx, db)
		for _, p := range ps {
			if strings.HasPrefix(p.Name, prefix) {
				dtx.RollbackDistributed(ctx, p.Name)
			}
		}
		db.ExecContext(ctx, "SET lock_timeout = '5s'; DROP TABLE IF EXISTS "+tbl)
	})
	return tbl, prefix
}

func TestDriversRegistered(t *testing.T) {
	for _, name := range []string{"dtx+pgx", "pgx"} {
		found := false
		for _, d := range sql.Drivers() {
			found = found || d == name
		}
		if !found {
			t.Errorf("driver %s is not registered", name)
		}
	}
}

// TestAbortedIsNotPrepared: a transaction in which a statement failed is not
// prepared (PostgreSQL answers PREPARE TRANSACTION with the tag ROLLBACK and
// no error); through pgx dtx reads that tag from pgconn.
func TestAbortedIsNotPrepared(t *testing.T) {
	need(t)
	for _, open := range []struct {
		name string
		db   func() *sql.DB
	}{
		{"sql.Open", func() *sql.DB { db, _ := sql.Open("dtx+pgx", dsn()); return db }},
		{"OpenDB", func() *sql.DB {
			cfg, err := pgx.ParseConfig(dsn())
			if err != nil {
				t.Fatal(err)
			}
			return dtxpgx.OpenDB(*cfg)
		}},
	} {
		t.Run(open.name, func(t *testing.T) {
			db := open.db()
			defer db.Close()
			tbl, prefix := fixture(t, db)
			ctx := context.Background()
			name := prefix + "aborted"
			err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
				if _, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (1)"); err != nil {
					return err
				}
				tx.ExecContext(ctx, "SELECT no_such_column FROM "+tbl) // fails; ignored
				return nil
			})
			if !errors.Is(err, dtx.ErrNotPrepared) {
				t.Fatalf("BeginDistributed: %v, want ErrNotPrepared", err)
			}
			ps, err := dtx.ListPrepared(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range ps {
				if p.Name == name {
					t.Fatalf("%s is prepared", name)
				}
			}
			var n int
			if err := db.QueryRowContext(ctx, "SELECT count(*) FROM "+tbl).Scan(&n); err != nil || n != 0 {
				t.Fatalf("%d rows (%v), want 0", n, err)
			}
			// The connection serves the next named transaction.
			if err := dtx.BeginDistributed(ctx, db, prefix+"ok", func(tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (2)")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if err := dtx.CommitDistributed(ctx, prefix+"ok"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestNoStatementCacheGrowth: distinct names leave no server-side prepared
// statement behind on the session (pgx's statement cache prepares each
// distinct query it runs in the extended protocol), so the cache does not
// grow with the names.
func TestNoStatementCacheGrowth(t *testing.T) {
	need(t)
	db, err := sql.Open("dtx+pgx", dsn())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(1) // one session: the one counted
	tbl, prefix := fixture(t, db)
	ctx := context.Background()
	cached := func() int {
		t.Helper()
		var n int
		if err := db.QueryRowContext(ctx, "SELECT count(*) FROM pg_prepared_statements").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	cycle := func(i int) {
		t.Helper()
		name := prefix + token()
		if err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES ($1)", i)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := dtx.CommitDistributed(ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	cycle(0) // the INSERT's own statement, cached once
	before := cached()
	for i := 1; i <= 50; i++ {
		cycle(i)
	}
	if after := cached(); after != before {
		t.Fatalf("server-side prepared statements on the session: %d before 50 distinct names, %d after", before, after)
	}
}

// tracer records the statements pgx runs through pgx.Conn (Exec, Query).
type tracer struct {
	mu  sync.Mutex
	sql []string
}

func (tr *tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	tr.mu.Lock()
	tr.sql = append(tr.sql, d.SQL)
	tr.mu.Unlock()
	return ctx
}

func (tr *tracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestNoExtraRoundTrip: a named cycle through pgx sends BEGIN, the caller's
// statement, PREPARE TRANSACTION and COMMIT PREPARED, and nothing else (no
// SELECT 1 to detect an aborted transaction). PREPARE TRANSACTION goes
// through pgconn, below the tracer, so the tracer sees the other three.
func TestNoExtraRoundTrip(t *testing.T) {
	need(t)
	cfg, err := pgx.ParseConfig(dsn())
	if err != nil {
		t.Fatal(err)
	}
	tr := &tracer{}
	cfg.Tracer = tr
	db := dtxpgx.OpenDB(*cfg)
	defer db.Close()
	tbl, prefix := fixture(t, db)
	ctx := context.Background()
	tr.mu.Lock()
	tr.sql = nil
	tr.mu.Unlock()
	name := prefix + "one"
	if err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (1)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	got := strings.Join(tr.sql, "; ")
	tr.mu.Unlock()
	want := "BEGIN; INSERT INTO " + tbl + " VALUES (1); COMMIT PREPARED '" + name + "'"
	if got != want {
		t.Fatalf("statements through pgx:\n got %s\nwant %s", got, want)
	}
}
