package dtx

import (
	"context"
	"database/sql"
	"time"
)

// SetHook replaces the coordinator's test hook, called with the name of
// each protocol step ("before-prepare", "prepared:<i>", "decided",
// "committed:<i>", "before-done", "before-commit-one-phase"), and returns
// a function that puts the previous one back. Set it before any global
// runs: the hook is read without a lock.
func SetHook(f func(point string)) (restore func()) {
	old := hook
	if f == nil {
		f = func(string) {}
	}
	hook = f
	return func() { hook = old }
}

// SetPrepareTimeout replaces the bound on a prepare begun under a context
// that can end, and returns a function that puts the old one back.
func SetPrepareTimeout(d time.Duration) (restore func()) {
	old := prepareTimeout
	prepareTimeout = d
	return func() { prepareTimeout = old }
}

// PgLiteral and Xid expose the quoting of names for tests of the second
// line of defence (names are validated before they reach SQL).
var (
	PgLiteral = pgLiteral
	Xid       = xid
)

// HeldSessions counts the names under prefix whose prepared MariaDB/MySQL
// branch still holds its session, and Connectors the connectors open in
// this process: for the leak tests.
func HeldSessions(prefix string) int {
	reg.mu.Lock()
	es := make([]*entry, 0, len(reg.names))
	for name, e := range reg.names {
		if len(name) >= len(prefix) && name[:len(prefix)] == prefix {
			es = append(es, e)
		}
	}
	reg.mu.Unlock()
	n := 0
	for _, e := range es {
		e.mu.Lock()
		if e.held != nil {
			n++
		}
		e.mu.Unlock()
	}
	return n
}

// Connectors counts the connectors this process has open.
func Connectors() int {
	reg.mu.Lock()
	defer reg.mu.Unlock()
	return len(reg.connectors)
}

// Fence exposes the fence phase two runs for a name whose prepare's
// outcome is unknown: it ends the server session id names (a MariaDB/MySQL
// thread, a PostgreSQL backend), and returns when it is gone (zero time:
// not fenced, another user's session).
func Fence(d Dialect) func(ctx context.Context, db *sql.DB, id uint32) (time.Time, error) {
	return d.fence
}

// SessionThread is the server thread id dtx knows for the session under cn
// (read from its greeting), 0 when it knows none.
func SessionThread(cn *sql.Conn) (id uint32, err error) {
	err = cn.Raw(func(dc any) error {
		if x, ok := dc.(interface{ dtxConn() *conn }); ok {
			c := x.dtxConn()
			id = c.c.ss.thread(c.parent)
		}
		return nil
	})
	return id, err
}
