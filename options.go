package dtx

import "time"

// Option tunes a dtx connector; pass options to NewConnector or Register.
type Option func(*options)

type options struct {
	holdLimit   int
	holdTimeout time.Duration
	detachGrace time.Duration
	unsearched  bool
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
