package dtx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// BeginDistributed runs fn in a transaction named name on db, which must be
// opened through a dtx driver, and prepares it: its changes are durable on
// the server but neither visible nor final until CommitDistributed or
// RollbackDistributed. When fn returns an error the transaction is rolled
// back and that error returned (wrapped: errors.Is finds it); when fn
// panics it is rolled back and the panic goes on. A nil fn, or a ctx that
// has already ended, is an error before any SQL runs; an error that does
// not come from dtx itself (the context's, database/sql's) is wrapped with
// "dtx:" and the name.
func BeginDistributed(ctx context.Context, db *sql.DB, name string, fn func(tx *sql.Tx) error) (err error) {
	if err := ValidateName(name); err != nil {
		return err
	}
	if _, err := driverOf(db); err != nil {
		return err
	}
	if fn == nil {
		return fmt.Errorf("dtx: BeginDistributed %q: fn is nil", name)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %q was not begun: %w", ErrNotPrepared, name, err)
	}
	// A name this process holds is refused before a connection is taken:
	// the transaction holding it may own the pool's last connection, and
	// BeginTx would wait for that until ctx ended instead of answering
	// ErrNameInUse. reserve checks again, atomically, once BeginTx runs.
	if err := reg.free(name); err != nil {
		return err
	}
	cn, tx, err := beginOn(ctx, db, name)
	if err != nil {
		if fromDTX(err) {
			return err
		}
		return fmt.Errorf("%w: %q was not begun: %w", ErrNotPrepared, name, err)
	}
	done := false
	defer func() {
		if !done {
			tx.Rollback()
		}
		if cn != nil {
			cn.Close()
		}
	}()
	if err := fn(tx); err != nil {
		done = true
		if rbErr := tx.Rollback(); rbErr != nil && !errors.Is(rbErr, sql.ErrTxDone) {
			return fmt.Errorf("dtx: %q: %w (rolling back failed too: %v)", name, err, rbErr)
		}
		return fmt.Errorf("dtx: %q rolled back: %w", name, err)
	}
	done = true
	if err = tx.Commit(); err != nil && !fromDTX(err) {
		// database/sql's own answer (the context ended, so it rolled
		// back): PREPARE was never sent.
		return fmt.Errorf("%w: %q was rolled back: %w", ErrNotPrepared, name, err)
	}
	if err == nil && cn != nil {
		reg.pin(name, cn, db.Stats().MaxOpenConnections)
		cn = nil
	}
	return err
}

// beginOn begins the named transaction on db. On MariaDB/MySQL it runs on a
// *sql.Conn, which BeginDistributed keeps until phase two when the pool has
// room for it (registry.pin), as hand-written XA keeps its connection: the
// prepared branch stays bound to that connection's own session, phase two
// runs there, no other session is needed, and nobody else is handed the
// connection while its phase two runs (see docs/two-phase.md).
func beginOn(ctx context.Context, db *sql.DB, name string) (*sql.Conn, *sql.Tx, error) {
	ctx = withNameDB(ctx, name, db)
	if d, _ := driverOf(db); d.dialect != MySQL {
		tx, err := db.BeginTx(ctx, nil)
		return nil, tx, err
	}
	cn, err := db.Conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	tx, err := cn.BeginTx(ctx, nil)
	if err != nil {
		cn.Close()
		return nil, nil, err
	}
	return cn, tx, nil
}

// fromDTX reports whether err is one dtx made (and so already says "dtx:").
func fromDTX(err error) bool { return strings.HasPrefix(err.Error(), "dtx:") }

// CommitDistributed commits the prepared transaction name, wherever this
// process prepared it; after a restart, or for a name another process
// prepared, in whichever database opened through dtx in this process has it
// prepared (ErrUnknownName if none), or only among the databases a context
// from WithDatabases names. Committing a name this process already committed
// returns nil, so a retry is safe. A ctx that has already ended is an error
// before anything is sent.
func CommitDistributed(ctx context.Context, name string) error {
	return reg.finish(ctx, name, true)
}

// RollbackDistributed rolls back the prepared transaction name; see
// CommitDistributed.
func RollbackDistributed(ctx context.Context, name string) error {
	return reg.finish(ctx, name, false)
}

// ListPrepared lists the prepared transactions waiting in db's database: on
// PostgreSQL those of this database, with when and by whom they were
// prepared; on MariaDB/MySQL those XA RECOVER reports with formatID 1 and an
// empty bqual (the ones a name can address), server-wide.
func ListPrepared(ctx context.Context, db *sql.DB) ([]Prepared, error) {
	d, err := driverOf(db)
	if err != nil {
		return nil, err
	}
	return d.dialect.list(ctx, db)
}

// CommitPrepared commits the prepared transaction name in db's database, for
// recovery: a transaction another process prepared, or one this process
// prepared before it restarted. A name this process holds is finished the
// way CommitDistributed would.
func CommitPrepared(ctx context.Context, db *sql.DB, name string) error {
	return finishPrepared(ctx, db, name, true)
}

// RollbackPrepared rolls back the prepared transaction name in db's database;
// see CommitPrepared.
func RollbackPrepared(ctx context.Context, db *sql.DB, name string) error {
	return finishPrepared(ctx, db, name, false)
}

func finishPrepared(ctx context.Context, db *sql.DB, name string, commit bool) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	d, err := driverOf(db)
	if err != nil {
		return err
	}
	if e := reg.lookup(name); e != nil {
		// A finished name is looked for again in db only.
		return reg.finish(WithDatabases(ctx, db), name, commit)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dtx: %q not finished, nothing was sent: %w", name, err)
	}
	p := place{d: d.dialect, db: db, grace: defaultOptions(d.opts).detachGrace}
	return reg.finishAt(ctx, p, name, commit)
}

func driverOf(db *sql.DB) (*Driver, error) {
	if db == nil {
		return nil, fmt.Errorf("%w: nil *sql.DB", ErrNotDTX)
	}
	d, ok := db.Driver().(*Driver)
	if !ok {
		return nil, fmt.Errorf("%w: its driver is %T", ErrNotDTX, db.Driver())
	}
	return d, nil
}
