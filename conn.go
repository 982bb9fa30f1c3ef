package dtx

import (
	"context"
	"database/sql/driver"
	"errors"
	"sync"
	"sync/atomic"
)

// conn wraps one parent connection. It forwards every call to the parent
// untouched and returns the parent's Stmt, Rows and Result as they are; only
// BeginTx looks at the context for a global name (see tx.go).
//
// conn always implements ConnBeginTx, ConnPrepareContext, ExecerContext,
// QueryerContext and NamedValueChecker, each with the fallback database/sql
// itself would use when the parent lacks it (driver.ErrSkip for the last three,
// unwrapped). Pinger, SessionResetter and Validator change what database/sql
// does by their mere presence, so wrapConn picks a type that has exactly the
// ones the parent has.
type conn struct {
	// parent is nil after a MariaDB/MySQL prepared branch took the session
	// (see connector.session); the next call gets a new one.
	parent driver.Conn
	c      *connector
	closed bool // counted closed in c.c.ss
	// lost is the server session (MySQL thread, PostgreSQL backend) on
	// which a prepare's outcome is unknown, for tx.Commit to give the
	// name's entry (see Dialect.fence); 0 when unknown.
	lost uint32

	// home is the MariaDB/MySQL branch prepared on parent and not finished
	// yet. parent stays c's session until c is used again, when settle
	// hands it to the branch alone, or until phase two finishes the branch
	// first, on parent, under mu (connector.finishAtHome): then c goes on
	// with the session it had, as with the raw driver.
	home atomic.Pointer[entry]
	mu   sync.Mutex // guards parent while home is set
}

var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.NamedValueChecker  = (*conn)(nil)
)

// The variants of conn, one per set of the parent's Pinger (P),
// SessionResetter (R) and Validator (V).
type (
	connP   struct{ *conn }
	connR   struct{ *conn }
	connV   struct{ *conn }
	connPR  struct{ *conn }
	connPV  struct{ *conn }
	connRV  struct{ *conn }
	connPRV struct{ *conn }
)

var (
	_ driver.Pinger          = connP{}
	_ driver.SessionResetter = connR{}
	_ driver.Validator       = connV{}
	_ driver.Pinger          = connPR{}
	_ driver.SessionResetter = connPR{}
	_ driver.Pinger          = connPV{}
	_ driver.Validator       = connPV{}
	_ driver.SessionResetter = connRV{}
	_ driver.Validator       = connRV{}
	_ driver.Pinger          = connPRV{}
	_ driver.SessionResetter = connPRV{}
	_ driver.Validator       = connPRV{}
)

func (c connP) Ping(ctx context.Context) error           { return c.ping(ctx) }
func (c connR) ResetSession(ctx context.Context) error   { return c.resetSession(ctx) }
func (c connV) IsValid() bool                            { return c.isValid() }
func (c connPR) Ping(ctx context.Context) error          { return c.ping(ctx) }
func (c connPR) ResetSession(ctx context.Context) error  { return c.resetSession(ctx) }
func (c connPV) Ping(ctx context.Context) error          { return c.ping(ctx) }
func (c connPV) IsValid() bool                           { return c.isValid() }
func (c connRV) ResetSession(ctx context.Context) error  { return c.resetSession(ctx) }
func (c connRV) IsValid() bool                           { return c.isValid() }
func (c connPRV) Ping(ctx context.Context) error         { return c.ping(ctx) }
func (c connPRV) ResetSession(ctx context.Context) error { return c.resetSession(ctx) }
func (c connPRV) IsValid() bool                          { return c.isValid() }

func wrapConn(parent driver.Conn, c *connector) driver.Conn {
	cn := &conn{parent: parent, c: c}
	_, p := parent.(driver.Pinger)
	_, r := parent.(driver.SessionResetter)
	_, v := parent.(driver.Validator)
	switch {
	case p && r && v:
		return connPRV{cn}
	case p && r:
		return connPR{cn}
	case p && v:
		return connPV{cn}
	case r && v:
		return connRV{cn}
	case p:
		return connP{cn}
	case r:
		return connR{cn}
	case v:
		return connV{cn}
	}
	return cn
}

// Unwrap returns the parent driver connection, for sql.Conn.Raw:
//
//	conn.Raw(func(dc any) error {
//		pqConn := dc.(interface{ Unwrap() driver.Conn }).Unwrap()
//		...
//	})
func (c *conn) Unwrap() driver.Conn {
	if c.attach(context.Background()) != nil {
		return nil
	}
	return c.parent
}

// dtxConn lets StatsOf find c (and its connector) through sql.Conn.Raw.
func (c *conn) dtxConn() *conn { return c }

// attach gives c a parent session again after a prepared branch took its own.
func (c *conn) attach(ctx context.Context) error {
	c.settle()
	if c.parent != nil {
		return nil
	}
	s, err := c.c.session(ctx, false)
	if err != nil {
		return err
	}
	c.parent = s
	c.c.ss.gained()
	return nil
}

// detach hands c's parent session to the caller (a held prepared branch);
// c gets another one on its next use.
func (c *conn) detach() driver.Conn {
	s := c.parent
	if s != nil {
		c.parent = nil
		c.c.ss.lost()
	}
	return s
}

// settle runs before c is used while a prepared branch is still on its
// session: the branch keeps the session, held alone until phase two, and c
// gets another one on its next use (see sessions).
func (c *conn) settle() {
	if c.home.Load() == nil {
		return
	}
	c.mu.Lock()
	if c.home.Load() != nil {
		c.home.Store(nil)
		c.detach()
	}
	c.mu.Unlock()
}

// leaveHome is settle for the branch e from outside c (its hold ends
// without phase two): when e is still on c's session, c gives it up and
// will get another one.
func (c *conn) leaveHome(e *entry) {
	c.mu.Lock()
	if c.home.Load() == e {
		c.home.Store(nil)
		c.detach()
	}
	c.mu.Unlock()
}

// discard closes c's parent session, which is in a state no next user may
// inherit; c gets another one on its next use.
func (c *conn) discard() {
	if s := c.detach(); s != nil {
		c.c.ss.closeSession(s)
	}
}

// Prepare implements driver.Conn. database/sql never calls it on a conn that
// has PrepareContext; it is served by PrepareContext, never by the parent's
// deprecated Prepare.
func (c *conn) Prepare(query string) (driver.Stmt, error) {
	return c.PrepareContext(context.Background(), query)
}

// PrepareContext implements driver.ConnPrepareContext, returning the parent's
// Stmt. Without the parent's PrepareContext it does what database/sql does:
// Prepare, then give up if ctx ended meanwhile.
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if err := c.attach(ctx); err != nil {
		return nil, err
	}
	if p, ok := c.parent.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, query)
	}
	st, err := c.parent.Prepare(query)
	if err == nil && ctx.Err() != nil {
		st.Close()
		return nil, ctx.Err()
	}
	return st, err
}

// Close implements driver.Conn. A conn without a session closes nothing
// on the server, but one spare fewer is kept (see sessions).
func (c *conn) Close() error {
	c.settle()
	if !c.closed {
		c.closed = true
		c.c.ss.closedConn(c.parent == nil)
	}
	if c.parent == nil {
		return nil
	}
	return c.c.ss.closeSession(c.parent)
}

// Begin implements driver.Conn. database/sql never calls it on a conn that
// has BeginTx; it is served by BeginTx, never by the parent's deprecated Begin.
func (c *conn) Begin() (driver.Tx, error) {
	return c.BeginTx(context.Background(), driver.TxOptions{})
}

// BeginTx implements driver.ConnBeginTx. Without a global name in ctx it is the
// parent's BeginTx and returns the parent's Tx: no statement or round trip is
// added. With one, see beginNamed.
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if n, ok := nameFrom(ctx); ok {
		return c.beginNamed(ctx, n, opts)
	}
	if err := c.attach(ctx); err != nil {
		return nil, err
	}
	if b, ok := c.parent.(driver.ConnBeginTx); ok {
		return b.BeginTx(ctx, opts)
	}
	return beginLegacy(ctx, c.parent, opts)
}

// errNoBeginTx mirrors database/sql's refusals for a driver without BeginTx.
var (
	errNoIsolation = errors.New("sql: driver does not support non-default isolation level")
	errNoReadOnly  = errors.New("sql: driver does not support read-only transactions")
)

// beginLegacy is database/sql's fallback for a parent without ConnBeginTx.
func beginLegacy(ctx context.Context, parent driver.Conn, opts driver.TxOptions) (driver.Tx, error) {
	if opts.Isolation != 0 {
		return nil, errNoIsolation
	}
	if opts.ReadOnly {
		return nil, errNoReadOnly
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	//lint:ignore SA1019 database/sql's own fallback for drivers without BeginTx.
	tx, err := parent.Begin() //nolint:staticcheck
	if err == nil && ctx.Err() != nil {
		tx.Rollback()
		return nil, ctx.Err()
	}
	return tx, err
}

// ExecContext implements driver.ExecerContext. Without the parent's
// ExecerContext it uses the parent's deprecated Execer, as database/sql does;
// without either it returns driver.ErrSkip, so database/sql prepares instead,
// exactly as it would on the parent.
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := c.attach(ctx); err != nil {
		return nil, err
	}
	switch e := c.parent.(type) {
	case driver.ExecerContext:
		return e.ExecContext(ctx, query, args)
	case driver.Execer: //nolint:staticcheck // database/sql's fallback for drivers without ExecerContext
		vs, err := legacyArgs(ctx, args)
		if err != nil {
			return nil, err
		}
		return e.Exec(query, vs)
	}
	return nil, driver.ErrSkip
}

// QueryContext implements driver.QueryerContext and returns the parent's Rows.
// Without the parent's QueryerContext it uses the parent's deprecated Queryer,
// as database/sql does; without either it returns driver.ErrSkip.
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if err := c.attach(ctx); err != nil {
		return nil, err
	}
	switch q := c.parent.(type) {
	case driver.QueryerContext:
		return q.QueryContext(ctx, query, args)
	case driver.Queryer: //nolint:staticcheck // database/sql's fallback for drivers without QueryerContext
		vs, err := legacyArgs(ctx, args)
		if err != nil {
			return nil, err
		}
		return q.Query(query, vs)
	}
	return nil, driver.ErrSkip
}

// legacyArgs is what database/sql does before calling a deprecated Execer or
// Queryer: refuse named arguments, and give up if ctx has ended.
func legacyArgs(ctx context.Context, args []driver.NamedValue) ([]driver.Value, error) {
	vs := make([]driver.Value, len(args))
	for i, a := range args {
		if a.Name != "" {
			return nil, errors.New("sql: driver does not support the use of Named Parameters")
		}
		vs[i] = a.Value
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return vs, nil
}

// CheckNamedValue implements driver.NamedValueChecker. Without the parent's
// it returns driver.ErrSkip, so database/sql applies its default conversion.
func (c *conn) CheckNamedValue(nv *driver.NamedValue) error {
	if err := c.attach(context.Background()); err != nil {
		return err
	}
	if n, ok := c.parent.(driver.NamedValueChecker); ok {
		return n.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// ping serves driver.Pinger, present only when the parent is a Pinger.
func (c *conn) ping(ctx context.Context) error {
	if err := c.attach(ctx); err != nil {
		return err
	}
	return c.parent.(driver.Pinger).Ping(ctx)
}

// resetSession serves driver.SessionResetter, present only when the parent is
// one. A conn whose session a prepared branch took gets its new one here.
func (c *conn) resetSession(ctx context.Context) error {
	c.settle()
	if c.parent == nil {
		if err := c.attach(ctx); err != nil {
			return driver.ErrBadConn
		}
	}
	// A spare session just attached is checked too: a stale one makes
	// database/sql close c, and with it the session.
	return c.parent.(driver.SessionResetter).ResetSession(ctx)
}

// isValid serves driver.Validator, present only when the parent is one.
// database/sql asks as the conn goes back to the pool, right after a
// prepare: a session that a prepared branch still uses is left alone (c
// gets another one if it is used before phase two).
func (c *conn) isValid() bool {
	if c.home.Load() != nil {
		return true
	}
	return c.parent == nil || c.parent.(driver.Validator).IsValid()
}
