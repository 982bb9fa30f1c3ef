package dtx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Postgres is the dialect of PostgreSQL (lib/pq, pgx's stdlib): a named
// transaction is BEGIN ... PREPARE TRANSACTION '<name>', finished with COMMIT
// PREPARED or ROLLBACK PREPARED from any connection of the same database.
var Postgres Dialect = postgresDialect{}

type postgresDialect struct{}

func (postgresDialect) String() string { return "postgres" }

// begin sends BEGIN itself rather than calling the parent's BeginTx: lib/pq's
// Tx would arm a cancel watcher that only its own Commit/Rollback disarm, and
// those fail on the idle session PREPARE TRANSACTION leaves behind.
func (postgresDialect) begin(ctx context.Context, c *conn, _ string, opts driver.TxOptions) error {
	q := "BEGIN"
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		q += " ISOLATION LEVEL READ UNCOMMITTED"
	case sql.LevelReadCommitted:
		q += " ISOLATION LEVEL READ COMMITTED"
	case sql.LevelRepeatableRead:
		q += " ISOLATION LEVEL REPEATABLE READ"
	case sql.LevelSerializable:
		q += " ISOLATION LEVEL SERIALIZABLE"
	default:
		return fmt.Errorf("dtx: isolation level %v is not supported by PostgreSQL", sql.IsolationLevel(opts.Isolation))
	}
	if opts.ReadOnly {
		q += " READ ONLY"
	}
	return execDriver(ctx, c.parent, q)
}

// prepare sends PREPARE TRANSACTION so that it can read the command tag: in
// a transaction where a statement failed, PostgreSQL answers ROLLBACK
// without an error and prepares nothing. The tag comes from the connector's
// WithCommandTag function (dtxpgx gives one for pgx), else from lib/pq's
// rows; a driver that reports no tag first gets a statement that fails in an
// aborted transaction. Looking in pg_prepared_xacts afterwards would not do,
// as another process may have the same name prepared.
func (postgresDialect) prepare(ctx context.Context, c *conn, name string) (driver.Conn, error) {
	q := pgLiteral("PREPARE TRANSACTION ", name)
	tag, hasTag, err := pgHookTag(ctx, c, q)
	if !hasTag && err == nil {
		if err := pgNotAborted(ctx, c, name); err != nil {
			return nil, err
		}
		tag, hasTag, err = queryDriver(ctx, c.parent, q, nil)
	}
	if err != nil {
		err = pgPrepareError(name, err)
		if f := c.c.opts.backendPID; f != nil && errors.Is(err, ErrOutcomeUnknown) {
			c.lost, _ = f(c.parent)
		}
		return nil, err
	}
	if hasTag && tag != "PREPARE TRANSACTION" {
		return nil, fmt.Errorf("%w: %q was rolled back by the server (a statement in it failed)", ErrNotPrepared, name)
	}
	return nil, nil
}

// pgHookTag runs q through the connector's WithCommandTag function, if it
// has one that knows c's parent; hasTag is false and err nil otherwise.
func pgHookTag(ctx context.Context, c *conn, q string) (tag string, hasTag bool, err error) {
	f := c.c.opts.commandTag
	if f == nil {
		return "", false, nil
	}
	tag, err = f(ctx, c.parent, q)
	if err == driver.ErrSkip {
		return "", false, nil
	}
	return tag, err == nil, err
}

// pgTagged reports whether the driver behind dc reports command tags: lib/pq
// does. The answer is kept per connection type.
func pgTagged(dc driver.Conn) bool {
	t := reflect.TypeOf(dc)
	if v, ok := taggedTypes.Load(t); ok {
		return v.(bool)
	}
	tagged := strings.HasPrefix(t.String(), "*pq.")
	taggedTypes.Store(t, tagged)
	return tagged
}

var taggedTypes sync.Map // reflect.Type -> bool

// pgNotAborted makes sure, for a driver without command tags, that the
// transaction is not aborted; if it is, it rolls it back.
func pgNotAborted(ctx context.Context, c *conn, name string) error {
	if pgTagged(c.parent) {
		return nil
	}
	err := execDriver(ctx, c.parent, "SELECT 1")
	if err == nil {
		return nil
	}
	if sqlState(err) != "" {
		execDriver(ctx, c.parent, "ROLLBACK")
	}
	return fmt.Errorf("%w: %q was rolled back (a statement in it failed): %w", ErrNotPrepared, name, err)
}

func pgPrepareError(name string, err error) error {
	switch code := sqlState(err); {
	case code == "55000" && strings.Contains(err.Error(), "disabled"):
		return fmt.Errorf("%w: %w", ErrPreparedTransactionsDisabled, err)
	case code == "42710":
		return fmt.Errorf("%w: %q is already prepared in this cluster; the new transaction was rolled back: %w", ErrNameInUse, name, err)
	case code == "0A000":
		return fmt.Errorf("%w: %q cannot be prepared (a transaction that used a temporary table, LISTEN/UNLISTEN/NOTIFY, a WITH HOLD cursor or an exported snapshot cannot be); it was rolled back: %w", ErrNotPrepared, name, err)
	case code != "":
		return fmt.Errorf("%w: %q was rolled back: %w", ErrNotPrepared, name, err)
	}
	return fmt.Errorf("%w: PREPARE TRANSACTION %q: %w", ErrOutcomeUnknown, name, err)
}

// commitOnePhase sends COMMIT and reads its tag: ROLLBACK means a statement
// failed and nothing was committed. A driver that reports no tag (anything
// but lib/pq) first gets a statement that fails in an aborted transaction.
func (postgresDialect) commitOnePhase(ctx context.Context, c *conn, name string) error {
	tag, hasTag, err := pgHookTag(ctx, c, "COMMIT")
	if !hasTag && err == nil {
		if err := pgNotAborted(ctx, c, name); err != nil {
			return fmt.Errorf("%w: %w", ErrRolledBack, err)
		}
		tag, hasTag, err = queryDriver(ctx, c.parent, "COMMIT", nil)
	}
	switch {
	case err != nil && sqlState(err) != "":
		return fmt.Errorf("%w: %q: %w", ErrRolledBack, name, err)
	case err != nil:
		return fmt.Errorf("%w: COMMIT %q: %w", ErrOutcomeUnknown, name, err)
	case hasTag && tag != "COMMIT":
		return fmt.Errorf("%w: %q was rolled back by the server (a statement in it failed)", ErrRolledBack, name)
	}
	return nil
}

func (postgresDialect) abort(ctx context.Context, c *conn, _ string) error {
	return execDriver(ctx, c.parent, "ROLLBACK")
}

func (postgresDialect) finishHeld(context.Context, driver.Conn, string, bool) error {
	panic("dtx: PostgreSQL holds no prepared sessions")
}

// fence ends the backend pid, on which a prepare's outcome is unknown, and
// returns when pg_stat_activity no longer lists it: a PREPARE TRANSACTION
// the network held can then find no backend to run it, and
// pg_prepared_xacts shows whether one arrived before. Only a backend of the
// same session user is ended (pg_terminate_backend allows that without
// pg_signal_backend); a pid that names another user's is left alone, and
// the zero time says the fence was given up.
func (postgresDialect) fence(ctx context.Context, db *sql.DB, pid uint32) (time.Time, error) {
	id := strconv.FormatUint(uint64(pid), 10)
	return endSession(ctx, db, "backend "+id,
		"SELECT usename = session_user FROM pg_stat_activity WHERE pid = "+id,
		"SELECT pg_terminate_backend("+id+")",
		"SELECT COUNT(*) FROM pg_stat_activity WHERE pid = "+id,
		func(error) bool { return false })
}

// finish runs COMMIT/ROLLBACK PREPARED on any connection of db: PostgreSQL
// does not bind a prepared transaction to a session.
func (postgresDialect) finish(ctx context.Context, db *sql.DB, name string, commit bool, _ time.Time, _ time.Duration) error {
	verb := "ROLLBACK PREPARED "
	if commit {
		verb = "COMMIT PREPARED "
	}
	// On a *sql.Conn, not the pool: the pool re-sends a statement whose
	// reply was lost when the driver answers ErrBadConn, and a COMMIT
	// PREPARED that did commit then comes back as "does not exist".
	// The coordinator lends the branch's own connection (see finishOn).
	cn := finishConn(ctx, db)
	if cn == nil {
		var err error
		if cn, err = db.Conn(ctx); err != nil {
			return err
		}
		defer cn.Close()
	}
	_, err := cn.ExecContext(ctx, pgLiteral(verb, name))
	if err == nil {
		return nil
	}
	switch sqlState(err) {
	case "":
		return fmt.Errorf("%w: %s%q: %w", ErrOutcomeUnknown, verb, name, err)
	case "42704":
		return fmt.Errorf("%w: %q: %w", ErrUnknownName, name, err)
	case "0A000":
		return fmt.Errorf("%w: %q is prepared in another database of this server: %w", ErrUnknownName, name, err)
	}
	return fmt.Errorf("dtx: %s%q: %w", verb, name, err)
}

func (postgresDialect) list(ctx context.Context, db *sql.DB) ([]Prepared, error) {
	rows, err := db.QueryContext(ctx, "SELECT gid, prepared, owner, database FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared, gid")
	if err != nil {
		return nil, fmt.Errorf("dtx: listing prepared transactions: %w", err)
	}
	defer rows.Close()
	var out []Prepared
	for rows.Next() {
		var p Prepared
		if err := rows.Scan(&p.Name, &p.PreparedAt, &p.Owner, &p.Database); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

// pgLiteral returns prefix followed by s quoted as a string literal that
// means s whatever standard_conforming_strings is: with a backslash in s it
// gets the E prefix. Names are validated before they get here (they hold
// neither quotes nor backslashes); this is the second line.
func pgLiteral(prefix, s string) string {
	if !strings.ContainsAny(s, `'\`) {
		return prefix + "'" + s + "'"
	}
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = "E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return prefix + q
}
