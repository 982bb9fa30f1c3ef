package dtx

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// SQLLog keeps decisions in a table of a PostgreSQL or MySQL/MariaDB
// database, for coordinators that must not depend on one machine's disk or
// that run on several nodes (each sees only its own node's rows). A
// decision is durable when its INSERT commits. The table is created if
// absent:
//
//	global_id VARCHAR(64) PRIMARY KEY, node VARCHAR(64), state CHAR(1)
//	('D' decided, 'F' finished with a heuristic outcome), branches TEXT
//	(JSON), decided_at BIGINT (Unix ms), heuristic TEXT
type SQLLog struct {
	db    *sql.DB
	table string
	pg    bool
}

var _ Log = (*SQLLog)(nil)

// OpenSQLLog uses table (default "dtx_decisions") in db, which may be opened
// through dtx or through the plain driver.
func OpenSQLLog(ctx context.Context, db *sql.DB, table string) (*SQLLog, error) {
	if table == "" {
		table = "dtx_decisions"
	}
	if !validIdent(table) {
		return nil, fmt.Errorf("%w: table name %q: want a letter or _ then up to 62 letters, digits or _", ErrInvalidName, table)
	}
	l := &SQLLog{db: db, table: table}
	if d, err := driverOf(db); err == nil {
		l.pg = d.dialect == Postgres
	} else {
		l.pg = !strings.Contains(strings.ToLower(fmt.Sprintf("%T", db.Driver())), "mysql")
	}
	_, err := db.ExecContext(ctx, "CREATE TABLE IF NOT EXISTS "+table+` (
		global_id VARCHAR(64) NOT NULL PRIMARY KEY,
		node VARCHAR(64) NOT NULL,
		state CHAR(1) NOT NULL,
		branches TEXT NOT NULL,
		decided_at BIGINT NOT NULL,
		heuristic TEXT)`)
	if err != nil {
		return nil, fmt.Errorf("dtx: sql log: creating %s: %w", table, err)
	}
	return l, nil
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

// q rewrites ? placeholders as $n for PostgreSQL.
func (l *SQLLog) q(query string) string {
	query = strings.ReplaceAll(query, "T_", l.table)
	if !l.pg {
		return query
	}
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

// Decide implements Log with an INSERT in autocommit.
func (l *SQLLog) Decide(ctx context.Context, d Decision) error {
	bs, err := json.Marshal(d.Branches)
	if err != nil {
		return err
	}
	_, err = l.db.ExecContext(ctx, l.q("INSERT INTO T_ (global_id, node, state, branches, decided_at) VALUES (?, ?, 'D', ?, ?)"),
		d.Global, d.Node, string(bs), d.At.UnixMilli())
	return err
}

// Abort implements Log (provisional: the fenced version follows).
func (l *SQLLog) Abort(ctx context.Context, global string) (*Decision, error) {
	return nil, nil
}

// Forget implements Log: the rows go, unless they record a heuristic outcome.
func (l *SQLLog) Forget(ctx context.Context, globals ...string) error {
	for _, g := range globals {
		if err := l.forget(ctx, g); err != nil {
			return err
		}
	}
	return nil
}

func (l *SQLLog) forget(ctx context.Context, global string) error {
	res, err := l.db.ExecContext(ctx, l.q("DELETE FROM T_ WHERE global_id = ? AND heuristic IS NULL"), global)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err == nil && n > 0 {
		return nil
	}
	_, err = l.db.ExecContext(ctx, l.q("UPDATE T_ SET state = 'F' WHERE global_id = ?"), global)
	return err
}

// Heuristic implements Log.
func (l *SQLLog) Heuristic(ctx context.Context, global, detail string) error {
	_, err := l.db.ExecContext(ctx, l.q("UPDATE T_ SET heuristic = ? WHERE global_id = ?"), detail, global)
	return err
}

// Pending implements Log.
func (l *SQLLog) Pending(ctx context.Context, node string) ([]Decision, error) {
	rows, err := l.db.QueryContext(ctx, l.q("SELECT global_id, node, branches, decided_at FROM T_ WHERE node = ? AND state = 'D' ORDER BY global_id"), node)
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
		if err := json.Unmarshal([]byte(bs), &d.Branches); err != nil {
			return nil, fmt.Errorf("%w: %s row %s: %v", ErrLogCorrupt, l.table, d.Global, err)
		}
		d.At = time.UnixMilli(at).UTC()
		out = append(out, d)
	}
	return out, rows.Err()
}
