package dtx_test

// Benchmarks of the raw drivers and dtx side by side, in one run. Every
// comparison is a pair of sub-benchmarks that differ only in their last name
// part, impl=raw or impl=dtx, so that
//
//	benchstat -col '/impl@(raw dtx raw1pc)' bench.out
//
// and scripts/benchratio put them next to each other. See docs/performance.md
// for what is measured, the goals and how to run them (make bench).
//
// Each side gets its own pool and its own table, opened, warmed and created
// before the timer starts. DTX_BENCH_DTX_FIRST=1 runs the dtx side of each
// pair first (scripts/bench.sh alternates it between rounds), so neither side
// always inherits the other's server state.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
)

const (
	// benchConns bounds each benchmark pool, open and idle: above the 8
	// concurrent cycles so that no pool wait or reconnect is measured
	// (a PostgreSQL connection costs ~24 ms here).
	benchConns = 16
	benchCols  = "id bigint, v varchar(32)"
	// benchWarmFor is how long each sub-benchmark runs its op untimed first.
	benchWarmFor = 100 * time.Millisecond
)

// benchSide is one side of a comparison.
type benchSide struct {
	name string // the value of /impl= in the benchmark name
	db   *sql.DB
	tbl  string
	ins  string // INSERT of (id, v) into tbl
}

// benchImpls opens a pool per side on s, raw first (dtx first when
// DTX_BENCH_DTX_FIRST=1), each with its own table; pools and tables live as
// long as b. Each pool keeps benchConns open and idle.
func benchImpls(b *testing.B, s server) []benchSide {
	return benchImplsPool(b, s, true)
}

// benchImplsPool is benchImpls; with sized false the pools keep
// database/sql's defaults (MaxIdleConns 2, no MaxOpenConns), as most
// callers run them.
func benchImplsPool(b *testing.B, s server, sized bool) []benchSide {
	b.Helper()
	need(b, s)
	var out []benchSide
	for _, side := range []struct{ name, drv string }{{"raw", s.raw}, {"dtx", s.wrapped}} {
		db := open(b, s, side.drv)
		if sized {
			db.SetMaxOpenConns(benchConns)
			db.SetMaxIdleConns(benchConns)
		}
		benchWarmPool(b, db, 8)
		tbl := table(b, s, db, benchCols)
		out = append(out, benchSide{name: side.name, db: db, tbl: tbl, ins: benchInsertSQL(s, tbl)})
	}
	if os.Getenv("DTX_BENCH_DTX_FIRST") == "1" {
		out[0], out[1] = out[1], out[0]
	}
	return out
}

func benchInsertSQL(s server, tbl string) string {
	if s.kind == "postgres" {
		return "INSERT INTO " + tbl + " (id, v) VALUES ($1, $2)"
	}
	return "INSERT INTO " + tbl + " (id, v) VALUES (?, ?)"
}

// benchWarmPool opens n connections in db's pool, so that none is opened
// while timed.
func benchWarmPool(b testing.TB, db *sql.DB, n int) {
	b.Helper()
	ctx := context.Background()
	cs := make([]*sql.Conn, 0, n)
	for range n {
		c, err := db.Conn(ctx)
		if err == nil {
			err = c.PingContext(ctx)
		}
		if err != nil {
			b.Fatalf("warming the pool: %v", err)
		}
		cs = append(cs, c)
	}
	for _, c := range cs {
		c.Close()
	}
}

// benchWarmUp calls op untimed, with negative numbers: at least 3 times, then
// until benchWarmFor has passed (at most 1000 times). Short runs showed the first
// side of a pair paying for a cold start.
func benchWarmUp(b *testing.B, op func(int64) error) {
	b.Helper()
	start := time.Now()
	for i := int64(1); i <= 1000 && (i <= 3 || time.Since(start) < benchWarmFor); i++ {
		if err := op(-i); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}
}

// BenchmarkPassthrough measures what dtx adds to statements it only passes
// through: goal dtx/raw throughput >= 0.99 and at most one more alloc/op.
func BenchmarkPassthrough(b *testing.B) {
	ops := []struct {
		name string
		// setup runs untimed and returns the op and an untimed cleanup.
		setup func(b *testing.B, im benchSide) (op func(i int64) error, done func())
	}{
		{"QueryRow", func(b *testing.B, im benchSide) (func(int64) error, func()) {
			ctx := context.Background()
			return func(int64) error {
				var n int
				return im.db.QueryRowContext(ctx, "SELECT 1").Scan(&n)
			}, nil
		}},
		{"Insert", func(b *testing.B, im benchSide) (func(int64) error, func()) {
			ctx := context.Background()
			return func(i int64) error {
				_, err := im.db.ExecContext(ctx, im.ins, i, "v")
				return err
			}, nil
		}},
		{"PreparedExec", func(b *testing.B, im benchSide) (func(int64) error, func()) {
			ctx := context.Background()
			st, err := im.db.PrepareContext(ctx, im.ins)
			if err != nil {
				b.Fatal(err)
			}
			return func(i int64) error {
				_, err := st.ExecContext(ctx, i, "v")
				return err
			}, func() { st.Close() }
		}},
		{"TxInsert", func(b *testing.B, im benchSide) (func(int64) error, func()) {
			ctx := context.Background()
			return func(i int64) error {
				tx, err := im.db.BeginTx(ctx, nil)
				if err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, im.ins, i, "v"); err != nil {
					tx.Rollback()
					return err
				}
				return tx.Commit()
			}, nil
		}},
	}
	for _, s := range servers() {
		b.Run(s.label, func(b *testing.B) {
			impls := benchImpls(b, s)
			for _, o := range ops {
				b.Run(o.name, func(b *testing.B) {
					for _, im := range impls {
						b.Run("impl="+im.name, func(b *testing.B) {
							op, done := o.setup(b, im)
							if done != nil {
								defer done()
							}
							benchWarmUp(b, op)
							b.ReportAllocs()
							var i int64
							for b.Loop() {
								i++
								if err := op(i); err != nil {
									b.Fatal(err)
								}
							}
						})
					}
				})
			}
		})
	}
}

// BenchmarkNamedCycle measures a whole named (two-phase) transaction of one
// INSERT: dtx.BeginDistributed + dtx.CommitDistributed against the same
// statements written by hand on the raw driver; goal dtx/raw throughput >=
// 0.97. impl=raw1pc, a plain BeginTx + INSERT + Commit on the raw driver,
// shows what two-phase commit itself costs.
//
// conc=N runs N cycles in flight at once, from N goroutines. ns/op is wall
// time divided by cycles, so 1e9/(ns/op) is the throughput (also reported as
// tx/s).
func BenchmarkNamedCycle(b *testing.B) {
	for _, s := range servers() {
		b.Run(s.label, func(b *testing.B) {
			// pool=default: database/sql's defaults (MaxIdleConns 2), as
			// most callers run it; pool=idle16: MaxOpenConns and
			// MaxIdleConns 16, above the concurrency.
			for _, pool := range []string{"default", "idle16"} {
				b.Run("pool="+pool, func(b *testing.B) {
					benchNamedCycles(b, s, pool == "idle16")
				})
			}
		})
	}
}

func benchNamedCycles(b *testing.B, s server, sized bool) {
	impls := benchImplsPool(b, s, sized)
	if sized {
		// The 1PC baseline on the raw pool, into a table of its own.
		raw := impls[0]
		if raw.name != "raw" {
			raw = impls[1]
		}
		onePC := benchSide{name: "raw1pc", db: raw.db, tbl: table(b, s, raw.db, benchCols)}
		onePC.ins = benchInsertSQL(s, onePC.tbl)
		// The same 1PC transaction with BEGIN and COMMIT sent by hand
		// on a *sql.Conn, like the raw 2PC baseline: raw1pc/raw1pc-conn
		// is what *sql.Tx itself costs (a goroutine per transaction),
		// which dtx pays and the hand-written 2PC baseline does not.
		onePCConn := onePC
		onePCConn.name = "raw1pc-conn"
		impls = append(impls, onePC, onePCConn)
	}
	for _, conc := range []int{1, 8} {
		b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) {
			for _, im := range impls {
				b.Run("impl="+im.name, func(b *testing.B) {
					benchRunCycles(b, conc, benchCycle(b, s, im))
				})
			}
		})
	}
}

// benchCycle returns one transaction of im's kind on s; n numbers it, and names
// it when it is named.
func benchCycle(b *testing.B, s server, im benchSide) func(n int64) error {
	ctx := context.Background()
	prefix := names(b, s) // rolls back whatever a failed run left prepared
	switch {
	case im.name == "raw1pc":
		return func(n int64) error {
			tx, err := im.db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, im.ins, n, "v"); err != nil {
				tx.Rollback()
				return err
			}
			return tx.Commit()
		}
	case im.name == "raw1pc-conn":
		begin := "BEGIN"
		if s.kind == "mysql" {
			begin = "START TRANSACTION"
		}
		return func(n int64) error {
			return benchOnConn(ctx, im.db, func(c *sql.Conn) error {
				if _, err := c.ExecContext(ctx, begin); err != nil {
					return err
				}
				if _, err := c.ExecContext(ctx, im.ins, n, "v"); err != nil {
					c.ExecContext(ctx, "ROLLBACK")
					return err
				}
				_, err := c.ExecContext(ctx, "COMMIT")
				return err
			})
		}
	case im.name == "dtx":
		return func(n int64) error {
			name := prefix + strconv.FormatInt(n, 10)
			err := dtx.BeginDistributed(ctx, im.db, name, func(tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, im.ins, n, "v")
				return err
			})
			if err != nil {
				return err
			}
			return dtx.CommitDistributed(ctx, name)
		}
	case s.kind == "postgres":
		// BEGIN, INSERT and PREPARE TRANSACTION on one session, which then
		// goes back to the pool; COMMIT PREPARED on whichever connection
		// the pool gives, as dtx does.
		return func(n int64) error {
			gid := "'" + prefix + strconv.FormatInt(n, 10) + "'"
			err := benchOnConn(ctx, im.db, func(c *sql.Conn) error {
				if _, err := c.ExecContext(ctx, "BEGIN"); err != nil {
					return err
				}
				if _, err := c.ExecContext(ctx, im.ins, n, "v"); err != nil {
					return err
				}
				_, err := c.ExecContext(ctx, "PREPARE TRANSACTION "+gid)
				return err
			})
			if err != nil {
				return err
			}
			_, err = im.db.ExecContext(ctx, "COMMIT PREPARED "+gid)
			return err
		}
	default:
		// The whole XA benchCycle on one session: a prepared branch stays bound
		// to the session that prepared it, and committing it there is both
		// the fast and the safe way (see the MySQL dialect, mysql.go).
		return func(n int64) error {
			xid := "'" + prefix + strconv.FormatInt(n, 10) + "'"
			return benchOnConn(ctx, im.db, func(c *sql.Conn) error {
				if _, err := c.ExecContext(ctx, "XA START "+xid); err != nil {
					return err
				}
				if _, err := c.ExecContext(ctx, im.ins, n, "v"); err != nil {
					return err
				}
				if _, err := c.ExecContext(ctx, "XA END "+xid); err != nil {
					return err
				}
				if _, err := c.ExecContext(ctx, "XA PREPARE "+xid); err != nil {
					return err
				}
				_, err := c.ExecContext(ctx, "XA COMMIT "+xid)
				return err
			})
		}
	}
}

// benchOnConn runs f on one connection of db. When f fails the connection is
// closed rather than returned to the pool, in whatever state f left it (a
// transaction or XA branch half done); the benchmark fails then anyway, and
// names' cleanup rolls back what was prepared.
func benchOnConn(ctx context.Context, db *sql.DB, f func(c *sql.Conn) error) error {
	c, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	if err = f(c); err != nil {
		c.Raw(func(any) error { return driver.ErrBadConn })
	}
	c.Close()
	return err
}

// benchRunCycles runs b.N calls of op from conc goroutines, after an untimed
// warm-up of at least 2*conc calls (and benchWarmFor) with as many
// goroutines; it reports allocs, tx/s and latency percentiles (see
// benchRunGlobals, which it is without the start and stop hooks).
func benchRunCycles(b *testing.B, conc int, op func(n int64) error) {
	benchRunGlobals(b, conc, op, func() {}, func() {})
}
