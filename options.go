package dtx

import "time"

// Option tunes a dtx connector; pass options to NewConnector or Register.
type Option func(*options)

type options struct {
	holdLimit   int
	holdTimeout time.Duration
	detachGrace time.Duration
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
