package dtx

import (
	"context"
	"database/sql/driver"
	"errors"
	"net"
	"sync"
	"time"
)

// sessions keeps one connector's spare parent sessions: MariaDB/MySQL
// sessions back from a held prepared branch, reset, waiting for a conn that
// gave its own session up to a prepared branch, or for Connect.
//
// The bound: spares number at most the connector's open conns (live),
// none once all are closed. Each spare can stand in for the session of one
// of them: the next time a conn gives its session up to a prepared branch
// (it is used before phase two, see conn.settle) or the pool opens a conn.
// A tighter bound was tried and dialed far more: counting only the conns
// without a session and the held sessions (bare+held+1), a conn that gives
// its session up right after each prepare found no spare about half the
// time, because the session freed by one cycle's phase two is needed by
// the next cycle's settle, when nothing counts it (TestMySQLSparesExpire:
// 45-55% of cycles dialed, against 5-25% with this bound). When the pool
// is idle, live is at most its MaxIdleConns, so spares never outnumber
// what the pool keeps idle. The server sees at most twice the pool's open
// connections plus the held sessions.
//
// The reset is pipelined: when phase two ends, COM_RESET_CONNECTION (and
// what the DSN set at connect) is written on the session's socket and the
// session is a spare at once; the server's answers are read when the spare
// is taken (finishReset), before the driver sends anything on it. Nobody
// waits for a reset that the server has already done, and no goroutine runs
// for it.
//
// Spares expire with the pool's connections: when database/sql closes a
// conn without a session (over SetMaxIdleConns, after SetConnMaxIdleTime or
// SetConnMaxLifetime) and when phase two ends, the spares over the bound are
// closed, those waiting longest first. Once the pool is idle and its
// conns closed, no spare is left.
type sessions struct {
	mu     sync.Mutex
	free   []driver.Conn // reset sent; the one waiting longest first
	bare   int           // open conns without a session
	held   int           // sessions held by prepared branches
	live   int           // open conns
	closed bool
	nets   map[driver.Conn]socket // what dtx knows of each session it opened

	// reset clears a session's state before reuse; nil when sessions
	// cannot be reset, which then are never reused.
	reset *sessionReset
	// greeted: the parent dials through dtx's dial function, which reads
	// each session's greeting (its thread id) and records the socket
	// (nets); TLS and compressed sessions too, which cannot be reset.
	greeted bool
}

// socket is what dtx knows of a session it opened: the socket, for the
// reset, and the server's thread id (from its greeting), to end the session
// on the server after a lost prepare (Dialect.fence).
type socket struct {
	nc     net.Conn
	thread uint32
}

// A sessionReset clears a session's state in two halves: start writes the
// commands on the idle session's socket, finish reads their answers.
type sessionReset struct {
	start  func(nc net.Conn) error
	finish func(ctx context.Context, nc net.Conn) error
}

// resetTimeout bounds one reset; a session that does not answer is closed.
const resetTimeout = 10 * time.Second

// boundLocked is how many spares may exist now.
func (ss *sessions) boundLocked() int {
	if ss.closed {
		return 0
	}
	return ss.live
}

// holding counts a session taken for a prepared branch (+1) or closed
// while held (-1); recycle counts one given back.
func (ss *sessions) holding(delta int) {
	ss.mu.Lock()
	ss.held += delta
	over := ss.trimLocked()
	ss.mu.Unlock()
	ss.closeAll(over)
}

// take returns a spare, the one that came back last, or nil when there is
// none and a new session should be dialed. Its reset is not finished: see
// finishReset.
func (ss *sessions) take() driver.Conn {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	n := len(ss.free)
	if n == 0 {
		return nil
	}
	s := ss.free[n-1]
	ss.free[n-1] = nil
	ss.free = ss.free[:n-1]
	return s
}

// finishReset reads the answers to the reset written on s when it became a
// spare; an error means s must be closed.
func (ss *sessions) finishReset(ctx context.Context, s driver.Conn) error {
	ss.mu.Lock()
	nc := ss.nets[s].nc
	ss.mu.Unlock()
	if nc == nil {
		return errors.New("dtx: spare session without a socket")
	}
	ctx, cancel := context.WithTimeout(ctx, resetTimeout)
	defer cancel()
	return ss.reset.finish(ctx, nc)
}

// track records sk as what dtx knows of s: the socket and thread of a
// session dtx dialed, or only the thread of one it did not (asked of the
// server, mysqlLearnThread). closeSession forgets it with the session.
func (ss *sessions) track(s driver.Conn, sk socket) {
	ss.mu.Lock()
	if ss.nets == nil {
		ss.nets = map[driver.Conn]socket{}
	}
	ss.nets[s] = sk
	ss.mu.Unlock()
}

// thread is the server's thread id of s, 0 when unknown.
func (ss *sessions) thread(s driver.Conn) uint32 {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.nets[s].thread
}

// opened counts a new conn, which has a session.
func (ss *sessions) opened() {
	ss.mu.Lock()
	ss.live++
	ss.mu.Unlock()
}

// lost counts a conn that no longer has a session.
func (ss *sessions) lost() {
	ss.mu.Lock()
	ss.bare++
	ss.mu.Unlock()
}

// gained counts a conn that has a session again.
func (ss *sessions) gained() {
	ss.mu.Lock()
	ss.bare--
	ss.mu.Unlock()
}

// closedConn counts a conn closed, bare when it had no session, and closes
// the spares over the bound.
func (ss *sessions) closedConn(bare bool) {
	ss.mu.Lock()
	ss.live--
	if bare {
		ss.bare--
	}
	over := ss.trimLocked()
	ss.mu.Unlock()
	ss.closeAll(over)
}

// trimLocked removes the spares over the bound, those waiting longest first,
// and returns them to be closed.
func (ss *sessions) trimLocked() []driver.Conn {
	n := len(ss.free) - ss.boundLocked()
	if n <= 0 {
		return nil
	}
	n = min(n, len(ss.free))
	over := append([]driver.Conn(nil), ss.free[:n]...)
	ss.free = append(ss.free[:0], ss.free[n:]...)
	for _, s := range over {
		delete(ss.nets, s)
	}
	return over
}

// recycle takes back a session whose held branch is finished: its reset is
// written and it becomes a spare, or it is closed when it cannot be reset
// or is not needed. Phase two does not wait for the server's answer.
func (ss *sessions) recycle(s driver.Conn) {
	ss.mu.Lock()
	ss.held--
	nc := ss.nets[s].nc
	keep := ss.reset != nil && nc != nil && len(ss.free) < ss.boundLocked()
	over := ss.trimLocked()
	ss.mu.Unlock()
	ss.closeAll(over)
	if keep && ss.reset.start(nc) == nil {
		ss.mu.Lock()
		if len(ss.free) < ss.boundLocked() {
			ss.free = append(ss.free, s)
			s = nil
		}
		ss.mu.Unlock()
	}
	if s != nil {
		ss.closeSession(s)
	}
}

// closeSession closes s, which serves no conn.
func (ss *sessions) closeSession(s driver.Conn) error {
	ss.mu.Lock()
	delete(ss.nets, s)
	ss.mu.Unlock()
	return s.Close()
}

func (ss *sessions) closeAll(s []driver.Conn) {
	for _, x := range s {
		x.Close()
	}
}

// close closes every spare.
func (ss *sessions) close() []error {
	ss.mu.Lock()
	ss.closed = true
	free := ss.free
	ss.free = nil
	for _, s := range free {
		delete(ss.nets, s)
	}
	ss.mu.Unlock()
	var errs []error
	for _, s := range free {
		if err := s.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// stats reports the spares and the conns without a session, for tests.
func (ss *sessions) stats() (spares, bare, live int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.free), ss.bare, ss.live
}
