package dtx_test

// Benchmarks of the Coordinator: a global over 2 or 4 branches against the
// slowest single-database named 2PC cycle and against the naive sequential
// prepare/commit loop. See docs/performance.md, "The coordinator".
//
//	BenchmarkGlobal/{pgpg,pgmy}/branches={2,4}/conc={1,16}/impl=...
//
//	coord         c.Do with one INSERT per branch, FileLog (fsync on)
//	coord-sqllog  the same with an SQLLog table in the PostgreSQL database (branches=2)
//	coord-in      the same with Log nil: the decision committed inside the
//	              first PostgreSQL branch (the default store)
//	seq           the branches begun by name, prepared one after another, then
//	              committed one after another, no log (SQLAlchemy, gosql2pc)
//	single-pg     dtx.BeginDistributed(one INSERT) + dtx.CommitDistributed on
//	single-my     PostgreSQL / MariaDB: the baseline; the slower one counts
//
// pgpg puts the branches on two databases of one PostgreSQL cluster (test and
// dtx_bench2, created if absent; when it cannot be, two tables of the test
// database), alternately; pgmy alternates PostgreSQL and MariaDB (4 branches:
// 2 + 2). Every branch has a table of its own.
//
// conc=N keeps N globals in flight from N goroutines; ns/op is wall time per
// global (1e9/(ns/op) the throughput), p50-ms and p99-ms the latency of one
// global, fsyncs/op the FileLog fsyncs per decision. The impls run in the
// order above, reversed when DTX_BENCH_DTX_FIRST=1 (scripts/bench.sh
// alternates it between rounds). DTX_BENCH_LOGDIR puts the FileLog elsewhere
// than under $TMPDIR (which must be a real disk, not tmpfs, for the fsyncs
// to cost what they do in production).

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/lib/pq"
)

// globalMaxPerDB is the most branches of one global on one database (4
// branches over 2 databases) and globalMaxConc the most globals in flight.
const (
	globalMaxPerDB = 2
	globalMaxConc  = 16
)

// globalRes is one resource of a variant: a dtx pool on one database.
type globalRes struct {
	name string // resource name, and suffix of the single-* impl
	s    server
	db   *sql.DB
}

// globalBranch is one branch of a global: its resource and its table.
type globalBranch struct {
	res *globalRes
	ins string
}

func BenchmarkGlobal(b *testing.B) {
	for _, variant := range []string{"pgpg", "pgmy"} {
		b.Run(variant, func(b *testing.B) {
			res := globalResources(b, variant)
			for _, nb := range []int{2, 4} {
				b.Run("branches="+strconv.Itoa(nb), func(b *testing.B) {
					for _, conc := range []int{1, globalMaxConc} {
						b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) {
							impls := []string{"coord", "coord-in"}
							if nb == 2 {
								impls = append(impls, "coord-sqllog")
							}
							impls = append(impls, "seq")
							seen := map[string]bool{}
							for _, r := range res {
								if !seen[r.s.kind] {
									seen[r.s.kind] = true
									impls = append(impls, "single-"+benchKind(r.s))
								}
							}
							if os.Getenv("DTX_BENCH_DTX_FIRST") == "1" {
								slices.Reverse(impls) // scripts/bench.sh alternates the order between rounds
							}
							for _, im := range impls {
								b.Run("impl="+im, func(b *testing.B) {
									benchGlobalImpl(b, res, nb, conc, im)
								})
							}
						})
					}
				})
			}
		})
	}
}

// globalResources opens the variant's two pools, sized for globalMaxConc
// globals with globalMaxPerDB branches on each, and warmed; they live as long
// as b.
func globalResources(b *testing.B, variant string) []*globalRes {
	b.Helper()
	pg, my := servers()[0], servers()[1]
	var ss []server
	switch variant {
	case "pgpg":
		need(b, pg)
		ss = []server{pg, benchSecondPG(b, pg)}
	case "pgmy":
		need(b, pg)
		need(b, my)
		ss = []server{pg, my}
	}
	ctx := context.Background()
	var out []*globalRes
	for i, s := range ss {
		db := open(b, s, s.wrapped)
		n := globalMaxConc*globalMaxPerDB + 4
		db.SetMaxOpenConns(n)
		db.SetMaxIdleConns(n)
		benchWarmPool(b, db, globalMaxConc*globalMaxPerDB)
		// One named cycle through BeginDistributed tells the connector which
		// pool phase two runs on (seq begins with WithName alone, which
		// does not).
		name := "w" + token() + "_0"
		err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "SELECT 1")
			return err
		})
		if err == nil {
			err = dtx.CommitDistributed(ctx, name)
		}
		if err != nil {
			b.Fatalf("warming %s: %v", s.kind, err)
		}
		out = append(out, &globalRes{name: benchKind(s) + strconv.Itoa(i+1), s: s, db: db})
	}
	return out
}

// benchKind is s's kind in two letters: pg, my.
func benchKind(s server) string {
	if s.kind == "postgres" {
		return "pg"
	}
	return "my"
}

// benchSecondPG returns pg with its DSN on the database dtx_bench2 of the
// same cluster, created if absent; pg itself when the DSN is not a URL or
// the database cannot be created (the branches then share the test database,
// in tables of their own).
func benchSecondPG(b *testing.B, pg server) server {
	u, err := url.Parse(pg.dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		b.Logf("pgpg: DSN is not a URL; both branches on one database")
		return pg
	}
	admin := *u
	admin.Path = "/postgres"
	db, err := sql.Open(pg.raw, admin.String())
	if err != nil {
		return pg
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var n int
	err = db.QueryRowContext(ctx, "SELECT count(*) FROM pg_database WHERE datname = 'dtx_bench2'").Scan(&n)
	if err == nil && n == 0 {
		_, err = db.ExecContext(ctx, "CREATE DATABASE dtx_bench2")
		var pe *pq.Error
		if errors.As(err, &pe) && pe.Code == "42P04" { // created meanwhile
			err = nil
		}
	}
	if err != nil {
		b.Logf("pgpg: cannot create database dtx_bench2 (%v); both branches on one database", err)
		return pg
	}
	second := *u
	second.Path = "/dtx_bench2"
	s := pg
	s.dsn = second.String()
	need(b, s)
	return s
}

// benchGlobalImpl runs one impl: its tables, coordinator and log are made
// here, untimed, for every b.N.
func benchGlobalImpl(b *testing.B, res []*globalRes, nb, conc int, impl string) {
	ctx := context.Background()
	var op func(n int64) error
	var syncs func() int64

	branches := func(n int) []globalBranch {
		out := make([]globalBranch, n)
		for i := range out {
			r := res[i%len(res)]
			out[i] = globalBranch{res: r, ins: benchInsertSQL(r.s, table(b, r.s, r.db, benchCols))}
		}
		return out
	}
	// leftovers rolls back, when b ends, whatever a failed run left
	// prepared under prefix in any of the databases (tables are dropped
	// after, pools closed last).
	leftovers := func(prefix string) {
		b.Cleanup(func() {
			for _, r := range res {
				rollbackLeftovers(b, r.s, prefix)
			}
		})
	}

	switch {
	case strings.HasPrefix(impl, "coord"):
		bs := branches(nb)
		var log dtx.Log
		var table string
		switch impl {
		case "coord-in":
			table = "dtx_bench_log_" + token()
			b.Cleanup(func() { drop(b, res[0].s, table) })
		case "coord":
			fl := benchFileLog(b)
			log, syncs = fl, fl.Syncs
		default:
			pg := res[0]
			tbl := "dtx_bench_log_" + token()
			sl, err := dtx.OpenSQLLog(ctx, pg.db, tbl)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { drop(b, pg.s, tbl) })
			log = sl
		}
		resources := map[string]*sql.DB{}
		for _, r := range res {
			resources[r.name] = r.db
		}
		node := "b" + token()
		c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{Log: log, Resources: resources, Node: node, RecoverInterval: -1, DecisionTable: table})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		leftovers("g." + node + ".")
		op = func(n int64) error {
			return c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
				for _, br := range bs {
					tx, err := g.Begin(ctx, br.res.name, nil)
					if err != nil {
						return err
					}
					if _, err := tx.ExecContext(ctx, br.ins, n, "v"); err != nil {
						return err
					}
				}
				return nil
			})
		}

	case impl == "seq":
		bs := branches(nb)
		prefix := "n" + token() + "_"
		leftovers(prefix)
		op = func(n int64) error {
			names := make([]string, len(bs))
			txs := make([]*sql.Tx, 0, len(bs))
			rollback := func() {
				for _, tx := range txs {
					tx.Rollback()
				}
			}
			for i, br := range bs {
				names[i] = prefix + strconv.FormatInt(n, 10) + "_" + strconv.Itoa(i)
				tx, err := br.res.db.BeginTx(dtx.WithName(ctx, names[i]), nil)
				if err != nil {
					rollback()
					return err
				}
				txs = append(txs, tx)
				if _, err := tx.ExecContext(ctx, br.ins, n, "v"); err != nil {
					rollback()
					return err
				}
			}
			for i, tx := range txs {
				if err := tx.Commit(); err != nil { // prepare
					for _, tx := range txs[i+1:] {
						tx.Rollback()
					}
					return err // leftovers rolls back the prepared ones
				}
			}
			for _, name := range names {
				if err := dtx.CommitDistributed(ctx, name); err != nil {
					return err
				}
			}
			return nil
		}

	default: // single-pg, single-my
		i := slices.IndexFunc(res, func(r *globalRes) bool { return "single-"+benchKind(r.s) == impl })
		r := res[i]
		ins := benchInsertSQL(r.s, table(b, r.s, r.db, benchCols))
		prefix := "n" + token() + "_"
		leftovers(prefix)
		op = func(n int64) error {
			name := prefix + strconv.FormatInt(n, 10)
			err := dtx.BeginDistributed(ctx, r.db, name, func(tx *sql.Tx) error {
				_, err := tx.ExecContext(ctx, ins, n, "v")
				return err
			})
			if err != nil {
				return err
			}
			return dtx.CommitDistributed(ctx, name)
		}
	}

	var before int64
	benchRunGlobals(b, conc, op, func() {
		if syncs != nil {
			before = syncs()
		}
	}, func() {
		if syncs != nil {
			b.ReportMetric(float64(syncs()-before)/float64(b.N), "fsyncs/op")
		}
	})
}

// benchRunGlobals runs b.N calls of op from conc goroutines, after an untimed
// warm-up like benchRunCycles'; start runs just before the timer starts and
// stop just after it stops. It reports allocs, tx/s, the process's CPU time
// per call (cpu-us/op: the client's cost, which the servers' noise does not
// reach) and the p50 and p99 of the latency of one call.
func benchRunGlobals(b *testing.B, conc int, op func(n int64) error, start, stop func()) {
	var seq atomic.Int64 // numbers every call, warm-up included
	run := func(total int64, lat []time.Duration) error {
		var left atomic.Int64
		left.Store(total)
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			first error
		)
		for range conc {
			wg.Go(func() {
				for {
					i := left.Add(-1)
					if i < 0 {
						return
					}
					t0 := time.Now()
					if err := op(seq.Add(1)); err != nil {
						left.Store(-1 << 62) // the others stop too
						mu.Lock()
						if first == nil {
							first = err
						}
						mu.Unlock()
						return
					}
					if lat != nil {
						lat[i] = time.Since(t0)
					}
				}
			})
		}
		wg.Wait()
		return first
	}
	t0 := time.Now()
	for rounds := 0; rounds < 2 || time.Since(t0) < benchWarmFor; rounds++ {
		if err := run(int64(conc), nil); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}
	lat := make([]time.Duration, b.N)
	start()
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := processCPU()
	err := run(int64(b.N), lat)
	cpu := processCPU() - cpu0
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	stop()
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-us/op")
	if sec := b.Elapsed().Seconds(); sec > 0 {
		b.ReportMetric(float64(b.N)/sec, "tx/s")
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))]) / 1e6
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
}

// BenchmarkCoordinator is the coordinator as users run it, against the same
// work by hand: a global of one INSERT in PostgreSQL and one in MariaDB.
//
//	BenchmarkCoordinator/pool={default,tuned}/conc={1,8}/impl=...
//
//	raw2pc       raw drivers, no dtx, no log: BEGIN/XA START, the INSERTs,
//	             PREPARE TRANSACTION and XA END + XA PREPARE in parallel on
//	             two held *sql.Conn, then COMMIT PREPARED and XA COMMIT in
//	             parallel on the same sessions
//	raw2pc-seq   the same, but BEGIN/XA START and the INSERTs one after the
//	             other in the order fn below runs them; prepares and commits
//	             in parallel as before
//	participant  c.Do, Log nil: the decision row committed in PostgreSQL's
//	             branch (one PREPARE and the log write fewer than raw2pc)
//	participant-async  the same with AsyncCommit: Do returns at the decision
//	filelog      c.Do with a FileLog (fsync per decision, group commit)
//	sqllog       c.Do with an SQLLog table in the PostgreSQL database,
//	             through the plain driver (not a resource)
//
// pool=default leaves database/sql's defaults (MaxIdleConns 2) on every
// pool; pool=tuned sets MaxIdleConns to 2×conc+4. The impls run in the
// order above, reversed when DTX_BENCH_DTX_FIRST=1.
func BenchmarkCoordinator(b *testing.B) {
	pgs, mys := servers()[0], servers()[1]
	need(b, pgs)
	need(b, mys)
	for _, pool := range []string{"default", "tuned"} {
		b.Run("pool="+pool, func(b *testing.B) {
			for _, conc := range []int{1, 8} {
				b.Run("conc="+strconv.Itoa(conc), func(b *testing.B) {
					impls := []string{"raw2pc", "raw2pc-seq", "participant", "participant-async", "filelog", "sqllog"}
					if os.Getenv("DTX_BENCH_DTX_FIRST") == "1" {
						slices.Reverse(impls)
					}
					for _, im := range impls {
						b.Run("impl="+im, func(b *testing.B) {
							benchCoordinatorImpl(b, pgs, mys, pool == "tuned", conc, im)
						})
					}
				})
			}
		})
	}
}

// benchCoordinatorImpl opens fresh pools for one impl (so no impl inherits
// another's warm connections), its tables and store, untimed.
func benchCoordinatorImpl(b *testing.B, pgs, mys server, tuned bool, conc int, impl string) {
	ctx := context.Background()
	drv := func(s server) string {
		if strings.HasPrefix(impl, "raw") {
			return s.raw
		}
		return s.wrapped
	}
	pg, my := open(b, pgs, drv(pgs)), open(b, mys, drv(mys))
	if tuned {
		for _, db := range []*sql.DB{pg, my} {
			db.SetMaxIdleConns(2*conc + 4)
		}
	}
	pgRaw, myRaw := open(b, pgs, pgs.raw), open(b, mys, mys.raw) // the sqllog store's pool is pgRaw
	if tuned {
		pgRaw.SetMaxIdleConns(2*conc + 4)
	}
	pgIns := benchInsertSQL(pgs, table(b, pgs, pgRaw, benchCols))
	myIns := benchInsertSQL(mys, table(b, mys, myRaw, benchCols))
	var op func(n int64) error
	var syncs func() int64
	if strings.HasPrefix(impl, "raw") {
		prefix := "r" + token() + "_"
		b.Cleanup(func() {
			rollbackLeftovers(b, pgs, prefix)
			rollbackLeftovers(b, mys, prefix)
		})
		seq := impl == "raw2pc-seq"
		op = func(n int64) error {
			return benchRaw2PC(ctx, pg, my, pgIns, myIns, prefix+strconv.FormatInt(n, 10), n, seq)
		}
	} else {
		opts := dtx.CoordinatorOptions{Resources: map[string]*sql.DB{"pg": pg, "my": my}, Node: "b" + token(), RecoverInterval: -1}
		switch impl {
		case "participant", "participant-async":
			opts.AsyncCommit = impl == "participant-async"
			opts.DecisionTable = "dtx_bench_log_" + token()
			b.Cleanup(func() { drop(b, pgs, opts.DecisionTable) })
		case "filelog":
			fl := benchFileLog(b)
			opts.Log, syncs = fl, fl.Syncs
		case "sqllog":
			tbl := "dtx_bench_log_" + token()
			sl, err := dtx.OpenSQLLog(ctx, pgRaw, tbl)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { drop(b, pgs, tbl) })
			opts.Log = sl
		}
		c, err := dtx.NewCoordinator(opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		coCleanupPrefix(b, "g."+opts.Node+".")
		op = func(n int64) error {
			return c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
				ptx, err := g.Begin(ctx, "pg", nil)
				if err != nil {
					return err
				}
				mtx, err := g.Begin(ctx, "my", nil)
				if err != nil {
					return err
				}
				if _, err := ptx.ExecContext(ctx, pgIns, n, "v"); err != nil {
					return err
				}
				_, err = mtx.ExecContext(ctx, myIns, n, "v")
				return err
			})
		}
	}
	var before int64
	benchRunGlobals(b, conc, op, func() {
		if syncs != nil {
			before = syncs()
		}
	}, func() {
		if syncs != nil {
			b.ReportMetric(float64(syncs()-before)/float64(b.N), "fsyncs/op")
		}
	})
}

// benchRaw2PC is the hand-written global: both branches begun, written and
// prepared in parallel on held sessions (with seq, begun and written one
// after the other first), then committed in parallel on them.
func benchRaw2PC(ctx context.Context, pg, my *sql.DB, pgIns, myIns, name string, n int64, seq bool) error {
	pc, err := pg.Conn(ctx)
	if err != nil {
		return err
	}
	defer pc.Close()
	mc, err := my.Conn(ctx)
	if err != nil {
		return err
	}
	defer mc.Close()
	both := func(f, g func() error) error {
		ch := make(chan error, 1)
		go func() { ch <- g() }()
		return errors.Join(f(), <-ch)
	}
	steps := func(c *sql.Conn, qs ...string) func() error {
		return func() error {
			for _, q := range qs {
				var err error
				if q == pgIns || q == myIns {
					_, err = c.ExecContext(ctx, q, n, "v")
				} else {
					_, err = c.ExecContext(ctx, q)
				}
				if err != nil {
					return err
				}
			}
			return nil
		}
	}
	x := "X'" + hex.EncodeToString([]byte(name)) + "'"
	pgPrep, myPrep := steps(pc, "BEGIN", pgIns, "PREPARE TRANSACTION '"+name+"'"), steps(mc, "XA START "+x, myIns, "XA END "+x, "XA PREPARE "+x)
	if seq {
		for _, f := range []func() error{steps(pc, "BEGIN"), steps(mc, "XA START "+x), steps(pc, pgIns), steps(mc, myIns)} {
			if err := f(); err != nil {
				return err
			}
		}
		pgPrep, myPrep = steps(pc, "PREPARE TRANSACTION '"+name+"'"), steps(mc, "XA END "+x, "XA PREPARE "+x)
	}
	if err := both(pgPrep, myPrep); err != nil {
		return err
	}
	return both(steps(pc, "COMMIT PREPARED '"+name+"'"), steps(mc, "XA COMMIT "+x))
}

// benchFileLog opens a FileLog in a fresh directory, under DTX_BENCH_LOGDIR
// when set (a $TMPDIR on tmpfs would make its fsyncs free), closed and
// removed when b ends.
func benchFileLog(b *testing.B) *dtx.FileLog {
	dir := b.TempDir()
	if d := os.Getenv("DTX_BENCH_LOGDIR"); d != "" {
		var err error
		if dir, err = os.MkdirTemp(d, "dtxbench"); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
	}
	fl, err := dtx.OpenFileLog(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fl.Close() })
	return fl
}
