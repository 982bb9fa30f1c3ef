package dtx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-sql-driver/mysql"
)

// MySQL is the dialect of MariaDB and MySQL (go-sql-driver/mysql): a named
// transaction is an XA branch with gtrid = name, empty bqual and formatID 1:
// XA START ... XA END; XA PREPARE, finished with XA COMMIT or XA ROLLBACK.
//
// A prepared branch stays bound to the session that prepared it, and that
// session can do nothing else; so dtx takes the session out of the pool,
// holds it, runs phase two on it, and then gives it back for reuse. See
// docs/two-phase.md for why phase two never runs from another session
// while dtx can avoid it.
var MySQL Dialect = mysqlDialect{}

type mysqlDialect struct{}

func (mysqlDialect) String() string { return "mysql" }

// MySQL and MariaDB error numbers dtx tells apart.
const (
	erXAERNota     = 1397 // unknown xid, or one bound to another session
	erXARBRollback = 1402 // branch already rolled back
	erXAERDupID    = 1440 // xid already exists
)

func myErrno(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// xid is the XA identifier for name: a hex literal, which names the same
// bytes in every sql_mode (a quoted string does not: 'a\b').
func xid(name string) string { return "X'" + hex.EncodeToString([]byte(name)) + "'" }

// xaFinish is phase two's statement for name.
func xaFinish(name string, commit bool) string {
	if commit {
		return "XA COMMIT " + xid(name)
	}
	return "XA ROLLBACK " + xid(name)
}

func (mysqlDialect) begin(ctx context.Context, c *conn, name string, opts driver.TxOptions) error {
	if !c.c.ss.greeted && mysqlDriverConn(c.parent) && c.c.ss.thread(c.parent) == 0 {
		if err := mysqlLearnThread(ctx, c); err != nil {
			return err
		}
	}
	var oneShot []string
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		oneShot = append(oneShot, "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
	case sql.LevelReadCommitted:
		oneShot = append(oneShot, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
	case sql.LevelRepeatableRead:
		oneShot = append(oneShot, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
	case sql.LevelSerializable:
		oneShot = append(oneShot, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
	default:
		return fmt.Errorf("dtx: isolation level %v is not supported by MySQL", sql.IsolationLevel(opts.Isolation))
	}
	if opts.ReadOnly {
		oneShot = append(oneShot, "SET TRANSACTION READ ONLY")
	}
	for _, q := range oneShot {
		if err := execDriver(ctx, c.parent, q); err != nil {
			c.discard()
			return err
		}
	}
	err := execDriver(ctx, c.parent, "XA START "+xid(name))
	if err == nil {
		return nil
	}
	if len(oneShot) > 0 || myErrno(err) == 0 {
		// A pending SET TRANSACTION would leak into the next transaction
		// on this session: discard it.
		c.discard()
	}
	if myErrno(err) == erXAERDupID {
		return fmt.Errorf("%w: %q is already prepared or active on this server: %w", ErrNameInUse, name, err)
	}
	return err
}

// mysqlDriverConn reports whether dc is go-sql-driver/mysql's: a test
// double's (go-sqlmock through dtxtest) is not asked for its thread, which
// it would not expect.
func mysqlDriverConn(dc driver.Conn) bool {
	return strings.HasPrefix(reflect.TypeOf(dc).String(), "*mysql.")
}

// mysqlLearnThread asks the server for the thread of c's session, once in
// the session's life, when dtx did not dial it and so did not read its
// greeting (a connector given to NewConnector, a network registered with
// mysql.RegisterDialContext): the fence of a lost prepare needs it. One
// round trip per session, before its first named transaction.
func mysqlLearnThread(ctx context.Context, c *conn) error {
	var id uint64
	_, _, err := queryDriver(ctx, c.parent, "SELECT CONNECTION_ID()", func(v []driver.Value) error {
		var err error
		switch x := v[0].(type) {
		case int64:
			id = uint64(x)
		case uint64:
			id = x
		case []byte:
			id, err = strconv.ParseUint(string(x), 10, 32)
		default:
			err = fmt.Errorf("dtx: CONNECTION_ID() gave %T", x)
		}
		return err
	})
	if err != nil {
		return err
	}
	if id > 0 && id <= math.MaxUint32 {
		c.c.ss.track(c.parent, socket{thread: uint32(id)})
	}
	return nil
}

// prepare ends and prepares the branch and returns the session it is bound
// to. A prepared session must never serve the pool: the branch holds it
// from now on, and c gives it up when it is used again before phase two
// (conn.settle).
func (mysqlDialect) prepare(ctx context.Context, c *conn, name string) (driver.Conn, error) {
	x := xid(name)
	if err := execDriver(ctx, c.parent, "XA END "+x); err != nil {
		mysqlCleanup(ctx, c, x, false)
		return nil, mysqlPrepareError(name, err, false)
	}
	if err := execDriver(ctx, c.parent, "XA PREPARE "+x); err != nil {
		if myErrno(err) == 0 {
			// The connection broke: whether the server prepared is unknown,
			// and closing the session detaches the branch if it did.
			c.lost = c.c.ss.thread(c.parent)
			c.discard()
			return nil, mysqlPrepareError(name, err, true)
		}
		mysqlCleanup(ctx, c, x, true)
		return nil, mysqlPrepareError(name, err, false)
	}
	return c.parent, nil
}

// erNoSuchThread answers KILL of a thread that is already gone.
const erNoSuchThread = 1094

// fence ends the server thread of a session whose prepare's outcome
// is unknown, and returns when the server no longer lists it. dtx closed
// its side, but a network that held the prepare rather than lost it can
// still deliver it, and the server runs it before it reads the close: the
// branch would be prepared after a phase two that found nothing, and stay
// so. Once the thread is gone, a prepare still on its way finds no session,
// and XA RECOVER shows whether one arrived before. Any error is returned as
// it is, for phase two not to report a name unknown that may yet be
// prepared.
//
// The thread id comes from the server's greeting. Behind a proxy that
// greets with ids of its own (ProxySQL, MaxScale) it may name someone
// else's session: a thread of another user is never killed, and the fence
// is then given up, as if there were none.
func (mysqlDialect) fence(ctx context.Context, db *sql.DB, thread uint32) (time.Time, error) {
	id := strconv.FormatUint(uint64(thread), 10)
	return endSession(ctx, db, "session "+id,
		"SELECT user = SUBSTRING_INDEX(USER(), '@', 1) FROM information_schema.processlist WHERE id = "+id,
		"KILL CONNECTION "+id,
		"SELECT COUNT(*) FROM information_schema.processlist WHERE id = "+id,
		func(err error) bool { return myErrno(err) == erNoSuchThread })
}

func mysqlPrepareError(name string, err error, unknown bool) error {
	if unknown {
		return fmt.Errorf("%w: XA PREPARE %q: %w", ErrOutcomeUnknown, name, err)
	}
	return fmt.Errorf("%w: %q was rolled back: %w", ErrNotPrepared, name, err)
}

// mysqlCleanup rolls back a branch that failed to end or prepare; when that
// fails too the session is discarded, which rolls back an unprepared branch.
func mysqlCleanup(ctx context.Context, c *conn, x string, ended bool) {
	if c.parent == nil {
		return
	}
	ctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if !ended {
		execDriver(ctx, c.parent, "XA END "+x)
	}
	if err := execDriver(ctx, c.parent, "XA ROLLBACK "+x); err != nil {
		c.discard()
	}
}

func (mysqlDialect) commitOnePhase(ctx context.Context, c *conn, name string) error {
	x := xid(name)
	err := execDriver(ctx, c.parent, "XA END "+x)
	if err == nil {
		err = execDriver(ctx, c.parent, "XA COMMIT "+x+" ONE PHASE")
	}
	switch {
	case err == nil:
		return nil
	case myErrno(err) == 0:
		c.discard()
		return fmt.Errorf("%w: XA COMMIT %q ONE PHASE: %w", ErrOutcomeUnknown, name, err)
	}
	mysqlCleanup(ctx, c, x, true)
	return fmt.Errorf("%w: %q: %w", ErrRolledBack, name, err)
}

func (mysqlDialect) abort(ctx context.Context, c *conn, name string) error {
	x := xid(name)
	// XA END fails when the branch already ended or was rolled back by the
	// server (deadlock); XA ROLLBACK then still clears it.
	execDriver(ctx, c.parent, "XA END "+x)
	if err := execDriver(ctx, c.parent, "XA ROLLBACK "+x); err != nil {
		// Closing the session rolls back an unprepared branch for sure.
		c.discard()
	}
	return nil
}

func (mysqlDialect) finishHeld(ctx context.Context, s driver.Conn, name string, commit bool) error {
	q := xaFinish(name, commit)
	if err := execDriver(ctx, s, q); err != nil {
		if myErrno(err) == 0 {
			return fmt.Errorf("%w: %s: %w", ErrOutcomeUnknown, q, err)
		}
		return fmt.Errorf("dtx: %s on the preparing session: %w", q, err)
	}
	return nil
}

// finish is phase two from another session, for a branch whose preparing
// session is gone or unknown. MariaDB has a race there: a commit that
// arrives right after the preparing session closed can answer OK and leave
// the branch prepared and orphaned (seen at up to 1 in 100; never with the
// commit 20 ms or more after the disconnect). So finish waits grace after
// the disconnect when dtx made it, and otherwise grace after this process
// first saw the branch in XA RECOVER: a branch of a process that died before
// that is then safe to finish; one still bound to a live session answers
// 1397 (ErrNameHeld) and nothing happens.
//
// An earlier version checked information_schema.innodb_trx after the
// commit for a new orphan. That table is a cache MariaDB refreshes only
// after 100 ms without readers, and it counts server-wide: the check
// reported correct commits as unknown. See docs/two-phase.md.
func (mysqlDialect) finish(ctx context.Context, db *sql.DB, name string, commit bool, detached time.Time, grace time.Duration) error {
	cn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer cn.Close()
	if _, err := xaRecover(ctx, db, cn); err != nil {
		return err
	}
	first, listed := xaSeen.get(db, name)
	if !listed {
		return fmt.Errorf("%w: %q is not in XA RECOVER", ErrUnknownName, name)
	}
	if first.After(detached) {
		detached = first
	}
	if err := sleepCtx(ctx, time.Until(detached.Add(grace))); err != nil {
		return err
	}
	q := xaFinish(name, commit)
	_, err = cn.ExecContext(ctx, q)
	switch n := myErrno(err); {
	case err == nil:
		xaSeen.forget(db, name)
		return nil
	case n == erXAERNota:
		// Still bound to a live session: the grace counts again from now,
		// the latest moment it is known attached.
		xaSeen.reset(db, name)
		return fmt.Errorf("%w: %q is prepared but bound to a session that is still open; finish it there or after it ends: %w", ErrNameHeld, name, err)
	case n == erXARBRollback:
		xaSeen.forget(db, name)
		if commit {
			return fmt.Errorf("%w: %q was read-only or empty and the server has already discarded it: %w", ErrNotPrepared, name, err)
		}
		return nil
	case n == 0:
		return fmt.Errorf("%w: %s: %w", ErrOutcomeUnknown, q, err)
	default:
		return fmt.Errorf("dtx: %s: %w", q, err)
	}
}

// xaSeen remembers, per *sql.DB, when this process first saw each xid in
// XA RECOVER, for finish's grace. Each listing drops the names it no longer
// shows, so a name prepared again later counts from its new sighting.
var xaSeen = &seenSet{at: map[*sql.DB]map[string]time.Time{}}

type seenSet struct {
	mu sync.Mutex
	at map[*sql.DB]map[string]time.Time
}

// update records the names XA RECOVER listed now on db and drops the others.
func (s *seenSet) update(db *sql.DB, names []string) {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.at[db]
	keep := make(map[string]time.Time, len(names))
	for _, n := range names {
		if t, ok := old[n]; ok {
			keep[n] = t
		} else {
			keep[n] = now
		}
	}
	s.at[db] = keep
}

func (s *seenSet) get(db *sql.DB, name string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.at[db][name]
	return t, ok
}

func (s *seenSet) reset(db *sql.DB, name string) {
	s.mu.Lock()
	if m := s.at[db]; m != nil {
		m[name] = time.Now()
	}
	s.mu.Unlock()
}

func (s *seenSet) forget(db *sql.DB, name string) {
	s.mu.Lock()
	delete(s.at[db], name)
	s.mu.Unlock()
}

// xaRecover lists the xids with formatID 1 and an empty bqual: the ones a
// name can address. db keys the sightings finish waits on.
func xaRecover(ctx context.Context, db *sql.DB, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}) ([]Prepared, error) {
	rows, err := q.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return nil, fmt.Errorf("dtx: XA RECOVER: %w", err)
	}
	defer rows.Close()
	var out []Prepared
	for rows.Next() {
		var format, glen, blen int64
		var data []byte
		if err := rows.Scan(&format, &glen, &blen, &data); err != nil {
			return nil, err
		}
		if format == 1 && blen == 0 && int(glen) <= len(data) {
			out = append(out, Prepared{Name: string(data[:glen])})
		}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	names := make([]string, len(out))
	for i, p := range out {
		names[i] = p.Name
	}
	xaSeen.update(db, names)
	return out, nil
}

func (mysqlDialect) list(ctx context.Context, db *sql.DB) ([]Prepared, error) {
	return xaRecover(ctx, db, db)
}
