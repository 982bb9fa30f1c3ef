package faults

import (
	"context"
	"database/sql"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/internal/bank"
)

// Result is one segment's outcome.
type Result struct {
	Store      string
	Duration   time.Duration
	Faults     map[Kind]int
	Missed     int      // reply drops armed that nothing hit
	FaultErrs  []string // faults that failed to apply or heal
	Outcomes   map[string]int
	Acked      int // globals reported committed (OK) or pending
	Committed  int // globals whose markers are in both databases
	Violations []string
	Prepared   int    // branches left prepared after recovery
	Pending    int    // decisions left pending after recovery
	Hidden     int    // MariaDB transactions detached but not in XA RECOVER
	Killed     int    // coordinators that did not drain and were killed at the end
	Passes     int    // recovery passes until nothing was left
	Stderr     string // the coordinators' stderr, first 4 KiB
}

// Segment runs one segment: a fresh world (tables and store), a cluster
// of coordinators on the env's slots, the nemesis for d, then heal, drain,
// recover and check.
func (e *Env) Segment(ctx context.Context, id, store string, d time.Duration, rng *mrand.Rand) (*Result, error) {
	r := &Result{Store: store, Outcomes: map[string]int{}}
	start := time.Now()
	tables := bank.Tables{PgAcct: "acct_" + id, PgMark: "mark_" + id, MyAcct: "acct_" + id, MyMark: "mark_" + id}
	if err := bank.Setup(ctx, e.PgRaw, e.MyRaw, tables); err != nil {
		return nil, err
	}
	table := "dec_" + id
	c := NewCluster(e.Binary, e.Slots, ChildConfig{Store: store, Table: table, Tables: tables, Workers: e.Workers})
	for _, s := range e.Slots {
		if err := c.Start(s, ""); err != nil {
			c.Drain(0)
			return nil, err
		}
	}
	n := NewNemesis(c, e.Srv, e.Kinds, rng, table, e.Logf)
	nctx, cancel := context.WithTimeout(ctx, d)
	n.Run(nctx)
	cancel()
	r.Faults, r.Missed, r.FaultErrs = n.Counts(), n.Missed(), n.Errors()
	if err := c.HealAll(); err != nil {
		r.FaultErrs = append(r.FaultErrs, err.Error())
	}
	r.Killed = c.Drain(60 * time.Second)
	for _, s := range e.Slots {
		for _, p := range s.Proxy {
			p.Cut() // the dead coordinators' sessions end now
		}
	}
	if err := e.waitGone(ctx); err != nil {
		return nil, err
	}
	if err := e.recover(ctx, r, store, table); err != nil {
		return nil, err
	}
	if err := e.check(ctx, r, c.Outcomes(), store, table, tables); err != nil {
		return nil, err
	}
	r.Stderr = c.Stderr.String()
	e.rollbackLeft(ctx)
	r.Duration = time.Since(start)
	return r, nil
}

// waitGone waits until no session of a coordinator (user coord) is left on
// either server: nothing a dead coordinator sent may still run when
// recovery looks. PostgreSQL notices a dead client within a second
// (client_connection_check_interval), even in a lock wait; MariaDB's
// lock waits end within innodb_lock_wait_timeout (5 s).
func (e *Env) waitGone(ctx context.Context) error {
	deadline := time.Now().Add(90 * time.Second)
	for {
		var p, m int
		errP := e.PgRaw.QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'coord'").Scan(&p)
		errM := e.MyRaw.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.processlist WHERE user = 'coord'").Scan(&m)
		if errP == nil && errM == nil && p == 0 && m == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("faults: coordinators' sessions did not end: %d in PostgreSQL (%v), %d in MariaDB (%v)", p, errP, m, errM)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// recover finishes what the coordinators left, as a fresh node of the
// store would after the abandon age, until nothing is left prepared or
// pending (at most 60 passes).
func (e *Env) recover(ctx context.Context, r *Result, store, table string) error {
	opts := dtx.CoordinatorOptions{
		Resources:       map[string]*sql.DB{"pg": e.PgDTX, "my": e.MyDTX},
		Node:            "r" + Token(),
		RecoverGrace:    time.Nanosecond,
		AbandonAge:      time.Nanosecond,
		RecoverInterval: -1,
	}
	closeStore, err := bank.Store(ctx, &opts, store, table, e.Srv.PGDSN(), e.Srv.MyDSN("root"))
	if err != nil {
		return err
	}
	defer closeStore() // after c.Close, deferred below
	c, err := dtx.NewCoordinator(opts)
	if err != nil {
		return err
	}
	defer c.Close()
	for r.Passes < 60 {
		_, err := c.Recover(ctx)
		r.Passes++
		left, lerr := e.prepared(ctx)
		pending, perr := e.pending(ctx, store, table)
		if err == nil && lerr == nil && perr == nil && left == 0 && pending == 0 {
			return nil
		}
		if r.Passes%10 == 0 {
			e.Logf("recovery pass %d: %v; %d prepared, %d pending", r.Passes, err, left, pending)
		}
		time.Sleep(500 * time.Millisecond)
	}
	return nil // what is left is counted by check
}

// prepared counts the coordinators' branches prepared on both servers (the
// servers are the run's own: every branch is theirs).
func (e *Env) prepared(ctx context.Context) (int, error) {
	return bank.Prepared(ctx, "g.", e.PgDTX, e.MyDTX)
}

func (e *Env) pending(ctx context.Context, store, table string) (int, error) {
	log, closeLog, err := bank.OpenLog(ctx, store, table, e.Srv.PGDSN(), e.Srv.MyDSN("root"))
	if err != nil {
		return 0, err
	}
	defer closeLog()
	ds, err := log.Pending(ctx, "")
	return len(ds), err
}

func (e *Env) check(ctx context.Context, r *Result, outcomes map[string]string, store, table string, tables bank.Tables) error {
	for _, class := range outcomes {
		r.Outcomes[class]++
		if class == bank.OK || class == bank.Pending {
			r.Acked++
		}
	}
	res, err := bank.Check(ctx, e.PgRaw, e.MyRaw, tables, outcomes)
	if err != nil {
		return err
	}
	r.Violations, r.Committed = res.Violations, res.Markers
	if r.Prepared, err = e.prepared(ctx); err != nil {
		return err
	}
	if r.Prepared > 0 {
		r.Violations = append(r.Violations, fmt.Sprintf("%d branches left prepared", r.Prepared))
	}
	if r.Pending, err = e.pending(ctx, store, table); err != nil {
		return err
	}
	if r.Pending > 0 {
		r.Violations = append(r.Violations, fmt.Sprintf("%d decisions left pending", r.Pending))
	}
	// InnoDB's view is a cache refreshed at most every 100 ms: a hidden
	// orphan must show in reads a second apart.
	for try := 0; try < 3; try++ {
		if r.Hidden, err = bank.Hidden(ctx, e.MyRaw); err != nil || r.Hidden == 0 {
			break
		}
		time.Sleep(time.Second)
	}
	if err != nil {
		return err
	}
	if r.Hidden > 0 {
		r.Violations = append(r.Violations, fmt.Sprintf("%d MariaDB transactions detached but not in XA RECOVER (server-side orphans)", r.Hidden))
	}
	return nil
}

// rollbackLeft rolls back what is still prepared (counted already), so
// that the next segment starts clean.
func (e *Env) rollbackLeft(ctx context.Context) {
	for _, db := range []*sql.DB{e.PgDTX, e.MyDTX} {
		ps, _ := dtx.ListPrepared(ctx, db)
		for _, p := range ps {
			dtx.RollbackPrepared(ctx, db, p.Name)
		}
	}
}

// Control damages a world on purpose and returns what the checks say of
// it: a marker committed in PostgreSQL only, a global reported committed
// that is in neither database, a branch left prepared. The checks must
// report all three, or they cannot be trusted to see what they look for.
func (e *Env) Control(ctx context.Context) ([]string, error) {
	tables := bank.Tables{PgAcct: "acct_ctl", PgMark: "mark_ctl", MyAcct: "acct_ctl", MyMark: "mark_ctl"}
	if err := bank.Setup(ctx, e.PgRaw, e.MyRaw, tables); err != nil {
		return nil, err
	}
	defer e.rollbackLeft(ctx)
	if _, err := e.PgRaw.ExecContext(ctx, "INSERT INTO mark_ctl VALUES ('half')"); err != nil {
		return nil, err
	}
	name := "g.fctl." + strings.Repeat("0", 32) + ".0"
	if err := dtx.BeginDistributed(ctx, e.PgDTX, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE acct_ctl SET bal = bal + 1 WHERE id = 1")
		return err
	}); err != nil {
		return nil, err
	}
	r := &Result{Outcomes: map[string]int{}}
	err := e.check(ctx, r, map[string]string{"acked": bank.OK}, "sqlpg", "dec_ctl", tables)
	return r.Violations, err
}
