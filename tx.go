package dtx

import (
	"context"
	"database/sql/driver"
	"errors"
	"time"
)

// tx is a named transaction on one conn. database/sql's *sql.Tx drives it:
// Commit is phase one (prepare), Rollback aborts.
type tx struct {
	c   *conn
	e   *entry
	ctx context.Context
}

var _ driver.Tx = (*tx)(nil)

// prepareTimeout bounds PREPARE TRANSACTION / XA PREPARE (and a one-phase
// commit) begun under a context that can end. A prepare cut off by it has
// an unknown outcome on MySQL (the session is discarded, which detaches a
// prepared branch) and is refused on PostgreSQL (a cancelled statement
// aborts the transaction).
var prepareTimeout = 30 * time.Second // a var for tests

// beginNamed starts the transaction named name. The name is checked and
// reserved in this process before any SQL runs.
func (c *conn) beginNamed(ctx context.Context, n *named, opts driver.TxOptions) (driver.Tx, error) {
	name := n.name
	if err := ValidateName(name); err != nil {
		return nil, err
	}
	e, err := reg.reserve(name, c.c)
	if err != nil {
		return nil, err
	}
	c.c.learn(n.db)
	o := &c.c.drv.obs
	sp := o.startNamed(ctx, OpBegin, name, c.c.dialect())
	err = c.attach(ctx)
	if err == nil {
		err = c.c.dialect().begin(ctx, c, name, opts)
	}
	sp.end(err)
	if err != nil {
		reg.drop(e)
		return nil, err
	}
	return &tx{c: c, e: e, ctx: ctx}, nil
}

// Commit implements driver.Tx as phase one: it prepares the transaction and
// returns nil only when the server really prepared it. The name is then
// registered as prepared, to be finished by CommitDistributed or
// RollbackDistributed.
func (t *tx) Commit() error {
	// database/sql has checked ctx; PREPARE must not be cut off halfway by
	// a cancel, but it gets a deadline of its own: a caller who gave a
	// deadline must not be held forever by a server that never answers. A
	// context that can never end (context.Background, as most callers
	// pass) is used as it is, so the prepare waits as the caller's own
	// statements on it do: a cancellable context costs every driver a
	// cancel watcher per statement (go-sql-driver/mysql hands it to a
	// goroutine and back, lib/pq starts one), measured at 80 µs of CPU per
	// MariaDB named cycle, a fifth of the cycle's client cost.
	ctx := t.ctx
	if ctx.Done() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.WithoutCancel(t.ctx), prepareTimeout)
		defer cancel()
	}
	if reg.isOnePhase(t.e) {
		err := t.c.c.dialect().commitOnePhase(ctx, t.c, t.e.name)
		reg.drop(t.e)
		return err
	}
	o := &t.c.c.drv.obs
	sp := o.startNamed(t.ctx, OpPrepare, t.e.name, t.c.c.dialect())
	held, err := t.c.c.dialect().prepare(ctx, t.c, t.e.name)
	switch {
	case err == nil:
		reg.prepared(t.e, held, t.c)
	case errors.Is(err, ErrOutcomeUnknown):
		reg.uncertain(t.e, t.c.lost)
		t.c.lost = 0
	default:
		reg.drop(t.e)
	}
	o.endNamed(&sp, t.c.c, OpPrepare, t.e.name, err)
	return err
}

// Rollback implements driver.Tx: it rolls back the unprepared transaction and
// frees its name. It runs even when the transaction's context has ended
// (database/sql rolls back on cancel).
func (t *tx) Rollback() error {
	ctx, cancel := cleanupCtx(t.ctx)
	defer cancel()
	o := &t.c.c.drv.obs
	sp := o.startNamed(t.ctx, OpRollback, t.e.name, t.c.c.dialect())
	err := t.c.c.dialect().abort(ctx, t.c, t.e.name)
	reg.drop(t.e)
	sp.end(err)
	return err
}
