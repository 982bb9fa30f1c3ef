package dtx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// connector wraps the parent's driver.Connector. Besides opening wrapped
// connections it keeps what phase two needs: the sessions that hold prepared
// MariaDB/MySQL branches, spare sessions to hand back to connections whose
// session was taken, and a pool to run COMMIT/ROLLBACK PREPARED on.
type connector struct {
	parent driver.Connector
	drv    *Driver
	opts   options

	ss    sessions // spare parent sessions (MariaDB/MySQL)
	stats counters // StatsOf

	mu       sync.Mutex
	heldAt   map[*entry]time.Time // entries holding a session, since when
	sweep    *time.Timer          // runs sweepHeld: releases sessions held too long
	sweepDue bool                 // sweep is armed
	closed   bool

	pinned atomic.Int64 // conns BeginDistributed keeps until phase two (registry.pin)

	db      atomic.Pointer[sql.DB] // the caller's pool, once dtx has seen it
	ownOnce sync.Once
	own     *sql.DB // a pool of our own when the caller's is unknown
}

var (
	_ driver.Connector = (*connector)(nil)
	_ io.Closer        = (*connector)(nil)
)

// NewConnector wraps parent for sql.OpenDB: a pgx stdlib connector, a
// connector with a custom dialer, a test double's (go-sqlmock has no
// connector of its own; the dtxtest package makes one).
//
//	db := sql.OpenDB(dtx.NewConnector(pgConnector, dtx.Postgres))
func NewConnector(parent driver.Connector, d Dialect, opts ...Option) driver.Connector {
	drv := newDriver(parent.Driver(), d, opts)
	c := newConnector(parent, drv, opts)
	reg.addConnector(c)
	return c
}

func newConnector(parent driver.Connector, drv *Driver, opts []Option) *connector {
	return &connector{parent: parent, drv: drv, opts: defaultOptions(opts)}
}

// Connect implements driver.Connector: a spare session when there is a
// live one, else a new parent connection, wrapped.
func (c *connector) Connect(ctx context.Context) (driver.Conn, error) {
	pc, err := c.session(ctx, true)
	if err != nil {
		return nil, err
	}
	c.ss.opened()
	return wrapConn(pc, c), nil
}

// Driver implements driver.Connector and returns the dtx wrapper driver.
func (c *connector) Driver() driver.Driver { return c.drv }

// Close implements io.Closer, which database/sql calls from DB.Close. It
// closes spare sessions and the parent connector when that is an io.Closer.
// Held prepared sessions are closed too: their branches stay prepared on the
// server, to be finished by name later.
func (c *connector) Close() error {
	reg.removeConnector(c)
	c.mu.Lock()
	c.closed = true
	if c.sweep != nil {
		c.sweep.Stop()
	}
	c.mu.Unlock()
	c.releaseAll()
	errs := c.ss.close()
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	c.ownOnce.Do(func() {}) // no pool of our own from now on
	if c.own != nil {
		add(c.own.Close())
	}
	if cl, ok := c.parent.(io.Closer); ok {
		add(cl.Close())
	}
	if len(errs) == 1 {
		return errs[0] // the parent's own error, as it is
	}
	return errors.Join(errs...)
}

func (c *connector) dialect() Dialect { return c.drv.dialect }

// session returns a parent session for a new conn, or for one whose session
// a prepared branch took: a spare if there is one, else a new parent
// connection. check is for a session that database/sql will not check
// itself (a new conn's): a spare whose socket died meanwhile is closed and
// the next one tried.
func (c *connector) session(ctx context.Context, check bool) (driver.Conn, error) {
	for {
		s := c.ss.take()
		if s == nil {
			break
		}
		if err := c.ss.finishReset(ctx, s); err != nil {
			c.ss.closeSession(s)
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		r, ok := s.(driver.SessionResetter)
		if !check || !ok || r.ResetSession(ctx) == nil {
			return s, nil
		}
		c.ss.closeSession(s)
	}
	if !c.ss.greeted {
		return c.parent.Connect(ctx)
	}
	var slot netSlot
	s, err := c.parent.Connect(context.WithValue(ctx, netSlotKey{}, &slot))
	if err == nil && slot.nc != nil {
		c.ss.track(s, socket{slot.nc, slot.thread})
	}
	return s, err
}

// tryPin counts one more conn pinned (registry.pin) while at most half of
// maxOpen, rounded down, are (any number when maxOpen is 0, no limit), and
// reports whether it did.
func (c *connector) tryPin(maxOpen int) bool {
	for {
		n := c.pinned.Load()
		if maxOpen > 0 && n >= int64(maxOpen/2) {
			return false
		}
		if c.pinned.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// learn records the caller's pool, so that phase two runs on its connections
// instead of on connections of a pool of our own.
func (c *connector) learn(db *sql.DB) {
	if db != nil && c.db.Load() == nil {
		c.db.CompareAndSwap(nil, db)
	}
}

// pool is where COMMIT/ROLLBACK PREPARED and listing run: the caller's pool
// when known (BeginDistributed and the Coordinator tell), else a pool of our
// own over the parent connector. That pool keeps up to 32 idle connections:
// opening one costs ~20 ms on PostgreSQL, and with database/sql's default of
// 2 a busy WithName caller kept reconnecting (0.7x at 16 concurrent).
func (c *connector) pool() *sql.DB {
	if db := c.db.Load(); db != nil {
		return db
	}
	c.ownOnce.Do(func() {
		c.own = sql.OpenDB(noClose{c.parent})
		c.own.SetMaxIdleConns(32)
	})
	if c.own == nil {
		// Closed before a pool was needed: a closed pool answers every
		// call with sql's "database is closed".
		db := sql.OpenDB(noClose{c.parent})
		db.Close()
		return db
	}
	return c.own
}

// noClose keeps our own pool's Close from closing the parent connector.
type noClose struct{ driver.Connector }
