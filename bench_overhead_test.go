package dtx_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"io"
	"os"
	"strconv"
	"testing"

	"github.com/dtx-go/dtx"
)

// The CPU cost of dtx itself, without a server: the same database/sql calls
// over an in-memory driver that answers at once, raw and wrapped. Against a
// real server the difference is far below the run-to-run noise; here it is
// all there is to see. BenchmarkOverhead/<op>/impl={raw,dtx}.

type ovDriver struct{}

func (ovDriver) Open(string) (driver.Conn, error) { return ovConn{}, nil }

type ovConn struct{}

func (ovConn) Prepare(string) (driver.Stmt, error) { return ovStmt{}, nil }
func (ovConn) PrepareContext(context.Context, string) (driver.Stmt, error) {
	return ovStmt{}, nil
}
func (ovConn) Close() error               { return nil }
func (ovConn) Begin() (driver.Tx, error)  { return ovTx{}, nil }
func (ovConn) Ping(context.Context) error { return nil }
func (ovConn) IsValid() bool              { return true }
func (ovConn) CheckNamedValue(*driver.NamedValue) error {
	return nil
}
func (ovConn) ResetSession(context.Context) error { return nil }
func (ovConn) BeginTx(context.Context, driver.TxOptions) (driver.Tx, error) {
	return ovTx{}, nil
}
func (ovConn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	return driver.RowsAffected(1), nil
}
func (ovConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return &ovRows{}, nil
}

type ovStmt struct{}

func (ovStmt) Close() error                               { return nil }
func (ovStmt) NumInput() int                              { return -1 }
func (ovStmt) Exec([]driver.Value) (driver.Result, error) { return driver.RowsAffected(1), nil }
func (ovStmt) Query([]driver.Value) (driver.Rows, error)  { return &ovRows{}, nil }
func (ovStmt) ExecContext(context.Context, []driver.NamedValue) (driver.Result, error) {
	return driver.RowsAffected(1), nil
}

type ovTx struct{}

func (ovTx) Commit() error   { return nil }
func (ovTx) Rollback() error { return nil }

type ovRows struct{ done bool }

func (*ovRows) Columns() []string { return []string{"x"} }
func (*ovRows) Close() error      { return nil }
func (r *ovRows) Next(dest []driver.Value) error {
	if r.done {
		return io.EOF
	}
	r.done = true
	dest[0] = int64(1)
	return nil
}

func init() {
	sql.Register("dtxbench-fake", ovDriver{})
	dtx.Register("dtx+dtxbench-fake", ovDriver{}, dtx.Postgres)
}

// ovSeq numbers the names of NamedCycleDistinct.
var ovSeq int

func BenchmarkOverhead(b *testing.B) {
	ctx := context.Background()
	ops := []struct {
		name string
		run  func(b *testing.B, db *sql.DB, st *sql.Stmt)
	}{
		{"QueryRow", func(b *testing.B, db *sql.DB, _ *sql.Stmt) {
			var x int
			if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&x); err != nil {
				b.Fatal(err)
			}
		}},
		{"Exec", func(b *testing.B, db *sql.DB, _ *sql.Stmt) {
			if _, err := db.ExecContext(ctx, "INSERT INTO t VALUES ($1, $2)", 1, "a"); err != nil {
				b.Fatal(err)
			}
		}},
		{"PreparedExec", func(b *testing.B, _ *sql.DB, st *sql.Stmt) {
			if _, err := st.ExecContext(ctx, 1, "a"); err != nil {
				b.Fatal(err)
			}
		}},
		// A named transaction's whole cycle: dtx.BeginDistributed and
		// dtx.CommitDistributed against the same statements sent by hand
		// (BEGIN, INSERT, PREPARE TRANSACTION, COMMIT PREPARED). dtx also
		// sends SELECT 1 before the prepare: the fake reports no command
		// tag (see WithCommandTag).
		{"NamedCycle", ovNamedCycle(func() string { return "ov" })},
		// The same cycle under a new name each time, as applications
		// name their transactions: the registry then holds its full
		// memory of finished names (keepFinished), as it does in use.
		{"NamedCycleDistinct", ovNamedCycle(func() string {
			ovSeq++
			return "ov_distinct_" + strconv.Itoa(ovSeq)
		})},
		{"TxExec", func(b *testing.B, db *sql.DB, _ *sql.Stmt) {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES ($1, $2)", 1, "a"); err != nil {
				b.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
		}},
	}
	for _, op := range ops {
		impls := []string{"raw", "dtx"}
		if os.Getenv("DTX_BENCH_DTX_FIRST") == "1" {
			impls[0], impls[1] = impls[1], impls[0]
		}
		for _, impl := range impls {
			b.Run(op.name+"/impl="+impl, func(b *testing.B) {
				name := "dtxbench-fake"
				if impl == "dtx" {
					name = "dtx+dtxbench-fake"
				}
				db, err := sql.Open(name, "")
				if err != nil {
					b.Fatal(err)
				}
				defer db.Close()
				st, err := db.PrepareContext(ctx, "INSERT INTO t VALUES ($1, $2)")
				if err != nil {
					b.Fatal(err)
				}
				defer st.Close()
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					op.run(b, db, st)
				}
			})
		}
	}
}

// ovNamedCycle is BenchmarkOverhead's named cycle under the names name
// gives: dtx's verbs, or the same statements by hand on the raw fake.
func ovNamedCycle(name func() string) func(b *testing.B, db *sql.DB, _ *sql.Stmt) {
	ctx := context.Background()
	return func(b *testing.B, db *sql.DB, _ *sql.Stmt) {
		if db.Driver() == (ovDriver{}) {
			c, err := db.Conn(ctx)
			if err != nil {
				b.Fatal(err)
			}
			for _, q := range []string{"BEGIN", "INSERT INTO t VALUES (1)", "PREPARE TRANSACTION 'ov'"} {
				if _, err := c.ExecContext(ctx, q); err != nil {
					b.Fatal(err)
				}
			}
			c.Close()
			if _, err := db.ExecContext(ctx, "COMMIT PREPARED 'ov'"); err != nil {
				b.Fatal(err)
			}
			return
		}
		n := name()
		err := dtx.BeginDistributed(ctx, db, n, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (1)")
			return err
		})
		if err == nil {
			err = dtx.CommitDistributed(ctx, n)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}
