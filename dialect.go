package dtx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"time"
)

// A Dialect is the SQL one kind of server speaks for two-phase commit:
// Postgres or MySQL (which also serves MariaDB).
type Dialect interface {
	// String names the dialect.
	String() string

	// begin starts the named transaction on c's parent session.
	begin(ctx context.Context, c *conn, name string, opts driver.TxOptions) error
	// prepare is phase one. It returns the parent session when the branch
	// stays bound to it (MySQL): the branch holds that session then, and c
	// gives it up before its next use (conn.settle).
	prepare(ctx context.Context, c *conn, name string) (held driver.Conn, err error)
	// commitOnePhase commits the named transaction without preparing it: a
	// global with a single branch needs no two-phase commit.
	commitOnePhase(ctx context.Context, c *conn, name string) error
	// abort rolls back the named transaction before it was prepared.
	abort(ctx context.Context, c *conn, name string) error
	// finishHeld is phase two on the session that prepared the branch.
	finishHeld(ctx context.Context, s driver.Conn, name string, commit bool) error
	// finish is phase two from any session of db. detached is when the
	// session that prepared the branch was closed, zero when unknown.
	finish(ctx context.Context, db *sql.DB, name string, commit bool, detached time.Time, grace time.Duration) error
	// fence ends, through db, the server session id names (a MySQL
	// thread, a PostgreSQL backend) on which a prepare's outcome is
	// unknown, and returns when the server no longer lists it; the zero
	// time when it does not (a session of another user, left alone).
	fence(ctx context.Context, db *sql.DB, id uint32) (time.Time, error)
	// list returns the prepared transactions of db's database.
	list(ctx context.Context, db *sql.DB) ([]Prepared, error)
}

// Prepared is a transaction that is prepared and waits for its commit or
// rollback. Fields a server does not report stay zero.
type Prepared struct {
	// Name is the global name: the gid on PostgreSQL, the gtrid of an XA
	// branch with formatID 1 and an empty bqual on MariaDB/MySQL.
	Name string
	// PreparedAt is when the server prepared it (PostgreSQL only).
	PreparedAt time.Time
	// Owner is the role that prepared it, the only one besides a
	// superuser that may finish it (PostgreSQL only).
	Owner string
	// Database is the database it belongs to, where it must be finished
	// (PostgreSQL only; MariaDB/MySQL lists XA branches server-wide).
	Database string
}

// execDriver runs one statement without arguments on a parent session.
func execDriver(ctx context.Context, dc driver.Conn, query string) error {
	if e, ok := dc.(driver.ExecerContext); ok {
		_, err := e.ExecContext(ctx, query, nil)
		if err != driver.ErrSkip {
			return err
		}
	}
	st, err := prepareDriver(ctx, dc, query)
	if err != nil {
		return err
	}
	defer st.Close()
	if se, ok := st.(driver.StmtExecContext); ok {
		_, err = se.ExecContext(ctx, nil)
		return err
	}
	_, err = st.Exec(nil) //nolint:staticcheck // only for a Stmt without ExecContext
	return err
}

// queryDriver runs one query without arguments on a parent session, reads
// every row with scan, and returns the rows' command tag when the driver
// reports one (lib/pq does).
func queryDriver(ctx context.Context, dc driver.Conn, query string, scan func([]driver.Value) error) (tag string, hasTag bool, err error) {
	var rows driver.Rows
	if q, ok := dc.(driver.QueryerContext); ok {
		rows, err = q.QueryContext(ctx, query, nil)
	} else {
		err = driver.ErrSkip
	}
	if err == driver.ErrSkip {
		var st driver.Stmt
		if st, err = prepareDriver(ctx, dc, query); err != nil {
			return "", false, err
		}
		defer st.Close()
		if sq, ok := st.(driver.StmtQueryContext); ok {
			rows, err = sq.QueryContext(ctx, nil)
		} else {
			rows, err = st.Query(nil) //nolint:staticcheck // only for a Stmt without QueryContext
		}
	}
	if err != nil {
		return "", false, err
	}
	dest := make([]driver.Value, len(rows.Columns()))
	for {
		if err = rows.Next(dest); err != nil {
			break
		}
		if scan != nil {
			if err = scan(dest); err != nil {
				rows.Close()
				return "", false, err
			}
		}
	}
	if err != io.EOF {
		rows.Close()
		return "", false, err
	}
	if t, ok := rows.(interface{ Tag() string }); ok {
		tag, hasTag = t.Tag(), true
	}
	return tag, hasTag, rows.Close()
}

func prepareDriver(ctx context.Context, dc driver.Conn, query string) (driver.Stmt, error) {
	if p, ok := dc.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, query)
	}
	return dc.Prepare(query) //nolint:staticcheck // only for a Conn without PrepareContext
}

// finishKey is the context key of a connection lent for phase two.
type finishKey struct{}

type lentConn struct {
	db *sql.DB
	cn *sql.Conn
}

// finishOn returns a context under which phase two on db runs on cn, a
// connection of db the caller holds (the coordinator's branch connection),
// instead of one taken from the pool. Taking one would make a pool at
// database/sql's defaults (2 idle connections) close and dial connections
// under load: the branch's own is idle while its global commits.
func finishOn(ctx context.Context, db *sql.DB, cn *sql.Conn) context.Context {
	return context.WithValue(ctx, finishKey{}, lentConn{db, cn})
}

// finishConn returns the connection of db lent by ctx, or nil.
func finishConn(ctx context.Context, db *sql.DB) *sql.Conn {
	if l, ok := ctx.Value(finishKey{}).(lentConn); ok && l.db == db {
		return l.cn
	}
	return nil
}

// cleanupCtx is for statements that must run even when the caller's context
// has ended (ROLLBACK, XA ROLLBACK): on a cancelled context lib/pq would
// cancel them at once.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// sqlState returns the SQLSTATE of a PostgreSQL error from lib/pq or pgx.
func sqlState(err error) string {
	var s interface{ SQLState() string }
	if errors.As(err, &s) {
		return s.SQLState()
	}
	return ""
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// endSession is Dialect.fence on db for the session what names: ours
// answers one row, whether the session is this login user's (no row: it is
// gone already); end ends it, an error gone tells is fine; live counts it,
// polled until 0. It returns when the session is gone, or the zero time
// when it is another user's, which is left alone.
func endSession(ctx context.Context, db *sql.DB, what, ours, end, live string, gone func(error) bool) (time.Time, error) {
	var mine bool
	err := db.QueryRowContext(ctx, ours).Scan(&mine)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return time.Now(), nil
	case err != nil:
		return time.Time{}, fmt.Errorf("dtx: looking for %s, whose prepare's outcome is unknown: %w", what, err)
	case !mine:
		return time.Time{}, nil
	}
	if _, err := db.ExecContext(ctx, end); err != nil && !gone(err) {
		return time.Time{}, fmt.Errorf("dtx: ending %s, whose prepare's outcome is unknown: %w", what, err)
	}
	for {
		var n int
		if err := db.QueryRowContext(ctx, live).Scan(&n); err != nil {
			return time.Time{}, fmt.Errorf("dtx: waiting for %s to end: %w", what, err)
		}
		if n == 0 {
			return time.Now(), nil
		}
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return time.Time{}, err
		}
	}
}
