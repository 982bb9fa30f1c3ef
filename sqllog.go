package dtx

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-sql-driver/mysql"
)

// SQLLog keeps outcomes in a table of a PostgreSQL or MySQL/MariaDB
// database: for coordinators that must not depend on one machine's disk, for
// several nodes sharing one store, and, opened on one of a Coordinator's
// resources, as the store the Coordinator uses by default (the decision then
// commits inside that resource's own branch). The table is created if
// absent:
//
//	global_id  the global's id, primary key: the one key a decision and an
//	           abort race for
//	node       the deciding node
//	state      'D' decided to commit, 'A' aborted, 'F' finished with a
//	           heuristic outcome kept for an operator
//	branches   JSON [{Resource, Name}]
//	decided_at Unix ms: when decided; for an abort, when the global started
//	heuristic  what went wrong, or NULL
//
// Every write is an explicit transaction (BeginTx … Commit, so a DSN or
// server with autocommit off cannot leave it uncommitted) and, on
// PostgreSQL, runs with synchronous_commit on, so that nothing is
// acknowledged before it is durable. On MySQL/MariaDB durability also needs
// innodb_flush_log_at_trx_commit = 1, which DurabilityWarning checks.
//
// A Decide and an Abort of one global insert the same primary key: the
// database lets one in and the other fails as a duplicate, and while one is
// uncommitted the other waits for it. A Decide also refuses a global older
// than half the abort retention (by the database's clock, not the
// coordinator's), so an abort row older than the whole retention can be
// deleted: no late Decide can meet its key again.
type SQLLog struct {
	db        *sql.DB
	table     string
	pg        bool
	retention time.Duration

	mu        sync.Mutex
	lastPurge time.Time
}

var _ Log = (*SQLLog)(nil)

// DefaultAbortRetention is how long an abort is kept to fence a late
// Decide of its global; Decide refuses a global older than half of it.
const DefaultAbortRetention = 24 * time.Hour

// abortWait bounds how long an Abort waits for a Decide of the same global
// that is being committed right now; past it the global is left for a later
// pass.
const abortWait = time.Second

// OpenSQLLog uses table (default "dtx_decisions") in db, which may be opened
// through dtx or through the plain driver. A table of the first design's
// layout is used as it is (its decisions are read and finished).
func OpenSQLLog(ctx context.Context, db *sql.DB, table string) (*SQLLog, error) {
	if table == "" {
		table = "dtx_decisions"
	}
	if !validIdent(table) {
		return nil, fmt.Errorf("%w: table name %q: want a letter or _ then up to 62 letters, digits or _", ErrInvalidName, table)
	}
	l := &SQLLog{db: db, table: table, retention: DefaultAbortRetention}
	if d, err := driverOf(db); err == nil {
		l.pg = d.dialect == Postgres
	} else {
		l.pg = !strings.Contains(strings.ToLower(fmt.Sprintf("%T", db.Driver())), "mysql")
	}
	// Looked for first, so that a user who may use the table but not create
	// tables (CREATE TABLE IF NOT EXISTS needs the privilege even when the
	// table exists) can open it.
	exists, err := l.exists(ctx)
	if err != nil {
		return nil, fmt.Errorf("dtx: sql log: looking for table %s: %w", table, err)
	}
	if exists {
		return l, nil
	}
	if _, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS"+strings.TrimPrefix(l.DDL(), "CREATE TABLE")); err != nil {
		return nil, fmt.Errorf("dtx: sql log: creating table %s (create it yourself with %s): %w", table, l.DDL(), err)
	}
	return l, nil
}

// exists reports whether the log's table is there: on PostgreSQL in the
// search path (the name folded as unquoted SQL folds it), on MySQL/MariaDB
// in the current database (information_schema lists it to a user with any
// privilege on it). Neither needs the privilege to create tables.
func (l *SQLLog) exists(ctx context.Context) (bool, error) {
	var n int
	query := "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?"
	if l.pg {
		query = "SELECT COUNT(*) FROM (SELECT to_regclass($1) AS t) r WHERE t IS NOT NULL"
	}
	err := l.db.QueryRowContext(ctx, query, l.table).Scan(&n)
	return n > 0, err
}

// DB is the database the log's table is in.
func (l *SQLLog) DB() *sql.DB { return l.db }

// DDL is the statement that creates the log's table, for a database user
// that may not create it.
func (l *SQLLog) DDL() string {
	id := "VARCHAR(64)"
	if !l.pg {
		id = "VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin"
	}
	return "CREATE TABLE " + l.table + " (global_id " + id + " NOT NULL PRIMARY KEY, node " + id +
		" NOT NULL, state CHAR(1) NOT NULL, branches TEXT NOT NULL, decided_at BIGINT NOT NULL, heuristic TEXT)"
}

// DurabilityWarning returns why a committed row might not survive a crash
// of the database server, or "" when the settings dtx can see are safe. On
// MySQL/MariaDB that is innodb_flush_log_at_trx_commit other than 1;
// PostgreSQL writes are made durable by dtx itself (synchronous_commit).
func (l *SQLLog) DurabilityWarning(ctx context.Context) string {
	if l.pg {
		return ""
	}
	var v string
	if err := l.db.QueryRowContext(ctx, "SELECT @@innodb_flush_log_at_trx_commit").Scan(&v); err != nil {
		return "dtx: sql log: cannot read innodb_flush_log_at_trx_commit: " + err.Error()
	}
	if v != "1" {
		return "dtx: sql log: innodb_flush_log_at_trx_commit = " + v + ": a committed decision can be lost if the MariaDB/MySQL server crashes; set it to 1"
	}
	return ""
}

// checkKey refuses a global id or node the table cannot keep exactly: not
// UTF-8, or on MySQL/MariaDB not ASCII (the columns are ascii there, and a
// server not in strict mode would store each other character as '?').
func (l *SQLLog) checkKey(ids ...string) error {
	for _, s := range ids {
		if err := checkID("global or node", s); err != nil {
			return err
		}
		if l.pg {
			continue
		}
		for i := 0; i < len(s); i++ {
			if s[i] >= utf8.RuneSelf {
				return fmt.Errorf("%w: %q is not ASCII (byte %d is %s), and the MySQL/MariaDB table's ascii columns would keep it as another", ErrInvalidName, s, i, describeByte(s, i))
			}
		}
	}
	return nil
}

func validIdent(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_' || i > 0 && '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// q puts the table name in for T_ and rewrites ? placeholders as $n for
// PostgreSQL; NOW_MS_ becomes the database's clock in Unix ms, INT64_ the
// dialect's 64-bit integer type for CAST, and SYNC_ a condition that is true
// and, on PostgreSQL, sets synchronous_commit on for the transaction (in the
// statement itself, saving a SET LOCAL round trip).
func (l *SQLLog) q(query string) string {
	query = strings.ReplaceAll(query, "T_", l.table)
	if !l.pg {
		query = strings.ReplaceAll(query, "NOW_MS_", "CAST(UNIX_TIMESTAMP(NOW(3)) * 1000 AS SIGNED)")
		query = strings.ReplaceAll(query, "SYNC_", "TRUE")
		return strings.ReplaceAll(query, "INT64_", "SIGNED")
	}
	query = strings.ReplaceAll(query, "NOW_MS_", "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)")
	query = strings.ReplaceAll(query, "INT64_", "BIGINT")
	query = strings.ReplaceAll(query, "SYNC_", "set_config('synchronous_commit', 'on', true) IS NOT NULL")
	query = strings.ReplaceAll(query, " FROM DUAL", "")
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// txExecer is a *sql.Tx or a *sql.Conn.
type txExecer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// Decide implements Log in a transaction of its own.
func (l *SQLLog) Decide(ctx context.Context, d Decision) error {
	err := l.inTx(ctx, func(tx *sql.Tx) error { return l.insertDecision(ctx, tx, d) })
	return l.decideOutcome(ctx, d.Global, err)
}

// insertDecision inserts d's row in tx, unless d's global is too old to be
// decided (its abort may have been dropped already): then ErrAborted.
func (l *SQLLog) insertDecision(ctx context.Context, tx txExecer, d Decision) error {
	if err := validDecision(d); err != nil {
		return err
	}
	if err := l.checkKey(d.Global, d.Node); err != nil {
		return fmt.Errorf("%w: %w", ErrNotDecided, err)
	}
	bs, err := json.Marshal(d.Branches)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNotDecided, err)
	}
	query := "INSERT INTO T_ (global_id, node, state, branches, decided_at) SELECT ?, ?, 'D', ?, CAST(? AS INT64_) FROM DUAL WHERE SYNC_"
	args := []any{d.Global, d.Node, string(bs), d.At.UnixMilli()}
	if at, ok := globalTime(d.Global); ok {
		query += " AND CAST(? AS INT64_) > NOW_MS_ - CAST(? AS INT64_)"
		args = append(args, at.UnixMilli(), (l.retention / 2).Milliseconds())
	}
	res, err := tx.ExecContext(ctx, l.q(query), args...)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return fmt.Errorf("%w: global %s is older than half the abort retention (%v) by the database's clock", ErrAborted, d.Global, l.retention)
	}
	return nil
}

// decideOutcome turns the error of a decision's transaction into Decide's
// answer: a duplicate key is the global's existing row speaking.
func (l *SQLLog) decideOutcome(ctx context.Context, global string, err error) error {
	switch {
	case err == nil, errors.Is(err, ErrAborted), errors.Is(err, ErrNotDecided):
		return err
	case l.duplicate(err):
		st, _, rerr := l.read(ctx, global)
		switch {
		case rerr != nil:
			return fmt.Errorf("dtx: sql log: global %s already has a row, which could not be read: %w", global, rerr)
		case st == 'A':
			return fmt.Errorf("%w: global %s", ErrAborted, global)
		}
		return nil // decided before: a retry
	case serverError(err):
		// The server refused the statement or the commit: the
		// transaction rolled back and nothing was recorded.
		return fmt.Errorf("%w: %w", ErrNotDecided, err)
	}
	return fmt.Errorf("dtx: sql log: deciding global %s: %w", global, err)
}

// Abort implements Log: it inserts the abort row, waiting at most abortWait
// for a Decide of the same global that holds the key uncommitted.
func (l *SQLLog) Abort(ctx context.Context, global string) (*Decision, error) {
	if err := l.checkKey(global); err != nil {
		return nil, err
	}
	var at int64
	if t, ok := globalTime(global); ok {
		at = t.UnixMilli()
	}
	err := l.inTx(ctx, func(tx *sql.Tx) error {
		q := "INSERT INTO T_ (global_id, node, state, branches, decided_at) SELECT ?, '', 'A', '[]', CAST(? AS INT64_) FROM DUAL WHERE SYNC_"
		if l.pg {
			// The lock wait bound, set in the statement itself: one round trip.
			q += fmt.Sprintf(" AND set_config('lock_timeout', '%d', true) IS NOT NULL", abortWait.Milliseconds())
		} else {
			q = fmt.Sprintf("SET STATEMENT innodb_lock_wait_timeout = %d FOR ", int(abortWait.Seconds())) + q
		}
		_, err := tx.ExecContext(ctx, l.q(q), global, at)
		return err
	})
	switch {
	case err == nil:
		return nil, nil
	case l.duplicate(err):
		st, d, rerr := l.read(ctx, global)
		if rerr != nil {
			return nil, fmt.Errorf("dtx: sql log: global %s already has a row, which could not be read: %w", global, rerr)
		}
		if st == 'A' {
			return nil, nil
		}
		return d, nil
	case l.lockTimeout(err):
		return nil, fmt.Errorf("dtx: sql log: global %s is being decided right now: %w", global, err)
	}
	return nil, fmt.Errorf("dtx: sql log: aborting global %s: %w", global, err)
}

// inTx runs f in a transaction and commits it. Each write in it carries
// SYNC_, so that on PostgreSQL the commit waits for its WAL flush whatever
// synchronous_commit says elsewhere.
func (l *SQLLog) inTx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// read returns the state of global's row and, when decided, the decision.
func (l *SQLLog) read(ctx context.Context, global string) (byte, *Decision, error) {
	var st, bs string
	var d Decision
	var at int64
	err := l.db.QueryRowContext(ctx, l.q("SELECT global_id, node, state, branches, decided_at FROM T_ WHERE global_id = ?"), global).
		Scan(&d.Global, &d.Node, &st, &bs, &at)
	if err != nil {
		return 0, nil, err
	}
	if st == "A" {
		return 'A', nil, nil
	}
	if err := json.Unmarshal([]byte(bs), &d.Branches); err != nil {
		return 0, nil, fmt.Errorf("%w: %s row %s: %v", ErrLogCorrupt, l.table, global, err)
	}
	d.At = time.UnixMilli(at).UTC()
	return st[0], &d, nil
}

// Forget implements Log: the decided rows go in one statement, except those
// recording a heuristic outcome, which are marked finished. Abort rows older
// than the retention are deleted at most once a minute.
func (l *SQLLog) Forget(ctx context.Context, globals ...string) error {
	if len(globals) > 0 {
		in := "(?" + strings.Repeat(", ?", len(globals)-1) + ")"
		args := make([]any, len(globals))
		for i, g := range globals {
			args[i] = g
		}
		if _, err := l.db.ExecContext(ctx, l.q("DELETE FROM T_ WHERE global_id IN "+in+" AND state = 'D' AND heuristic IS NULL"), args...); err != nil {
			return fmt.Errorf("dtx: sql log: forgetting: %w", err)
		}
		if _, err := l.db.ExecContext(ctx, l.q("UPDATE T_ SET state = 'F' WHERE global_id IN "+in+" AND state = 'D'"), args...); err != nil {
			return fmt.Errorf("dtx: sql log: forgetting: %w", err)
		}
	}
	return l.purgeAborts(ctx)
}

// purgeAborts deletes abort rows whose global started more than the
// retention ago by the database's clock: Decide refuses such a global
// already at half that age.
func (l *SQLLog) purgeAborts(ctx context.Context) error {
	l.mu.Lock()
	due := time.Since(l.lastPurge) > time.Minute
	if due {
		l.lastPurge = time.Now()
	}
	l.mu.Unlock()
	if !due {
		return nil
	}
	_, err := l.db.ExecContext(ctx, l.q("DELETE FROM T_ WHERE state = 'A' AND decided_at > 0 AND decided_at < NOW_MS_ - CAST(? AS INT64_)"), l.retention.Milliseconds())
	if err != nil {
		return fmt.Errorf("dtx: sql log: dropping old aborts: %w", err)
	}
	return nil
}

// Heuristic implements Log. A detail that is not valid UTF-8 is kept with
// each bad byte sequence as U+FFFD, as the FileLog keeps it.
func (l *SQLLog) Heuristic(ctx context.Context, global, detail string) error {
	if err := l.checkKey(global); err != nil {
		return err
	}
	_, err := l.db.ExecContext(ctx, l.q("UPDATE T_ SET heuristic = ? WHERE global_id = ?"), strings.ToValidUTF8(detail, "\uFFFD"), global)
	return err
}

// Pending implements Log. Node is compared exactly, whatever the table's
// collation (a table made by the first design may compare without case).
func (l *SQLLog) Pending(ctx context.Context, node string) ([]Decision, error) {
	query, args := "SELECT global_id, node, branches, decided_at FROM T_ WHERE state = 'D' ORDER BY global_id", []any(nil)
	if node != "" {
		query, args = "SELECT global_id, node, branches, decided_at FROM T_ WHERE node = ? AND state = 'D' ORDER BY global_id", []any{node}
	}
	rows, err := l.db.QueryContext(ctx, l.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Decision
	for rows.Next() {
		var d Decision
		var bs string
		var at int64
		if err := rows.Scan(&d.Global, &d.Node, &bs, &at); err != nil {
			return nil, err
		}
		if node != "" && d.Node != node {
			continue
		}
		if err := json.Unmarshal([]byte(bs), &d.Branches); err != nil {
			return nil, fmt.Errorf("%w: %s row %s: %v", ErrLogCorrupt, l.table, d.Global, err)
		}
		d.At = time.UnixMilli(at).UTC()
		out = append(out, d)
	}
	return out, rows.Err()
}

// Heuristics returns the heuristic outcomes recorded, by global.
func (l *SQLLog) Heuristics(ctx context.Context) (map[string]string, error) {
	rows, err := l.db.QueryContext(ctx, l.q("SELECT global_id, heuristic FROM T_ WHERE heuristic IS NOT NULL"))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var g, h string
		if err := rows.Scan(&g, &h); err != nil {
			return nil, err
		}
		out[g] = h
	}
	return out, rows.Err()
}

func (l *SQLLog) duplicate(err error) bool {
	return sqlState(err) == "23505" || myErrno(err) == 1062
}

func (l *SQLLog) lockTimeout(err error) bool {
	return sqlState(err) == "55P03" || myErrno(err) == 1205
}

// serverError reports whether err is an answer of the database server (the
// statement or transaction was refused), as opposed to a lost connection.
func serverError(err error) bool {
	var me *mysql.MySQLError
	return sqlState(err) != "" || errors.As(err, &me)
}

// decideIn inserts d's decision row in tx, the decision resource's own
// branch: that branch's one-phase commit is then the decision.
func (l *SQLLog) decideIn(ctx context.Context, tx *sql.Tx, d Decision) error {
	err := l.insertDecision(ctx, tx, d)
	if l.duplicate(err) {
		return fmt.Errorf("%w: global %s: %w", ErrAborted, d.Global, err)
	}
	return err
}

// nodeKey is the row that records a node writing to this store: a key no
// global id (32 hex digits) can take.
func nodeKey(node string) string { return "node:" + node }

// addNode records that node writes to this store, so that the other nodes'
// recovery may take over its globals; state 'N' rows are never pending.
func (l *SQLLog) addNode(ctx context.Context, node string) error {
	err := l.inTx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, l.q("INSERT INTO T_ (global_id, node, state, branches, decided_at) SELECT ?, ?, 'N', '[]', NOW_MS_ FROM DUAL WHERE SYNC_"), nodeKey(node), node)
		return err
	})
	if l.duplicate(err) {
		return nil
	}
	return err
}

// nodes returns the nodes that write to this store.
func (l *SQLLog) nodes(ctx context.Context) (map[string]bool, error) {
	rows, err := l.db.QueryContext(ctx, l.q("SELECT node FROM T_ WHERE state = 'N'"))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		out[n] = true
	}
	return out, rows.Err()
}
