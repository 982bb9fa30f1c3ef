package dtx

import (
	"context"
	"database/sql/driver"
	"log/slog"
	"time"
)

// Option tunes a dtx connector; pass options to NewConnector or Register.
type Option func(*options)

type options struct {
	holdLimit   int
	holdTimeout time.Duration
	detachGrace time.Duration
	commandTag  func(ctx context.Context, parent driver.Conn, query string) (string, error)
	backendPID  func(parent driver.Conn) (uint32, bool)
	unsearched  bool
	logger      *slog.Logger
	hooks       *Hooks
}

func defaultOptions(opts []Option) options {
	o := options{holdLimit: 64, holdTimeout: 2 * time.Minute, detachGrace: time.Second}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// WithHoldLimit bounds how many prepared MariaDB/MySQL sessions one connector
// keeps open so that phase two runs on the session that prepared (default 64).
// When a prepare would go over it, the session held longest is released: its
// branch stays prepared on the server and is finished from another session
// after the detach grace. PostgreSQL holds no sessions.
func WithHoldLimit(n int) Option {
	return func(o *options) {
		if n >= 0 {
			o.holdLimit = n
		}
	}
}

// WithHoldTimeout releases a held MariaDB/MySQL prepared session that has
// waited longer than d for its commit or rollback (default 2 minutes).
func WithHoldTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.holdTimeout = d
		}
	}
}

// WithDetachGrace sets how long dtx waits before it finishes a MariaDB/MySQL
// branch from a session other than the one that prepared it (default 1s):
// after dtx closed the preparing session itself, or else after this process
// first saw the branch in XA RECOVER (again after each answer that a live
// session still holds it). MariaDB can report such a commit as done while
// the branch stays prepared when it comes right after the disconnect; see
// docs/two-phase.md.
func WithDetachGrace(d time.Duration) Option {
	return func(o *options) {
		if d >= 0 {
			o.detachGrace = d
		}
	}
}

// WithCommandTag gives the Postgres dialect a way to run a statement without
// arguments on a parent connection and read its command tag, for a driver
// whose results carry none (lib/pq's rows do, and dtx reads those itself).
// dtx needs the tag of PREPARE TRANSACTION and of a one-phase COMMIT: in a
// transaction where a statement failed, PostgreSQL answers ROLLBACK without
// an error. Without it dtx first runs a statement that fails in an aborted
// transaction, one round trip more. f returns driver.ErrSkip for a
// connection it does not know; dtx then falls back.
//
// The dtxpgx package (module github.com/dtx-go/dtx/pgx) passes one for pgx.
func WithCommandTag(f func(ctx context.Context, parent driver.Conn, query string) (tag string, err error)) Option {
	return func(o *options) { o.commandTag = f }
}

// WithBackendPID gives dtx a function that returns the PostgreSQL backend
// process of a parent connection, known to the driver from the server's
// BackendKeyData (false for a connection it does not know). With it, phase
// two of a name whose prepare's outcome is unknown first ends that backend
// (pg_terminate_backend) and waits until pg_stat_activity no longer lists
// it: the driver gave up on the prepare, but a network that held PREPARE
// TRANSACTION rather than lost it could still deliver it, and the backend
// would prepare after phase two found nothing. lib/pq never gives up on a
// prepare and needs none. The dtxpgx package passes one for pgx.
func WithBackendPID(f func(parent driver.Conn) (pid uint32, ok bool)) Option {
	return func(o *options) { o.backendPID = f }
}

// WithoutSearch keeps the database out of the by-name search: after a
// restart, or for a name another process prepared, CommitDistributed and
// RollbackDistributed look for the name in every database opened through
// dtx except those made WithoutSearch; a context from WithDatabases naming
// the database still reaches it, and so do CommitPrepared and
// RollbackPrepared. For a database that never holds named transactions
// that a search should find (a replica, a store of the caller's own), and
// for test doubles (the dtxtest package uses it).
func WithoutSearch() Option {
	return func(o *options) { o.unsearched = true }
}

// WithLogger gives the connector's named transactions a logger: a Debug
// line per phase ("dtx: named phase"), a Warn line for an unknown outcome
// and for a MariaDB/MySQL session released with its branch still prepared.
// Without it the connector logs to the logger set with SetLogger, if any;
// by default it is silent. See docs/operations.md for every line.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// WithHooks gives the connector's named transactions and held sessions
// hooks (see Hooks). Without it the connector uses the hooks set with
// SetHooks, if any. Operations on a Coordinator's branches go to the
// Coordinator's hooks, except their held sessions, which are the
// connector's.
func WithHooks(h *Hooks) Option {
	return func(o *options) { o.hooks = h }
}
