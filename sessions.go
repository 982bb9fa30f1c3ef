package dtx

import (
	"context"
	"database/sql/driver"
	"net"
	"sync"
	"time"
)

// sessions keeps one connector's spare parent sessions: MariaDB/MySQL
// sessions back from a held prepared branch, reset, waiting for a conn that
// lost its own session to a prepare, or for Connect.
//
// The bound: spares (ready or being reset) number at most bare+1 while any
// conn of the connector is open, and none once all are closed. bare counts
// the open conns that have no session; each spare stands in for the session
// of one of them, so the server sees at most the pool's open connections,
// plus the sessions held by prepared branches, plus one. The one spare more
// lets a session be reset while another serves the next transaction: without
// it a lone caller waited for every reset.
//
// Spares expire with the pool's connections: when database/sql closes a conn
// without a session (over SetMaxIdleConns, after SetConnMaxIdleTime or
// SetConnMaxLifetime), the spare that has waited longest is closed.
type sessions struct {
	mu        sync.Mutex
	free      []driver.Conn // ready; the one waiting longest first
	resetting int           // being reset, on their way to free
	bare      int           // open conns without a session
	live      int           // open conns
	closed    bool
	nets      map[driver.Conn]net.Conn // a session's socket, for reset
	wg        sync.WaitGroup           // resets in flight

	// reset clears a session's state before reuse; nil when sessions
	// cannot be reset, which then are never reused.
	reset func(ctx context.Context, s driver.Conn, nc net.Conn) error
}

// resetTimeout bounds one reset; a session that does not answer is closed.
const resetTimeout = 10 * time.Second

// boundLocked is how many spares may exist now (ready or being reset).
func (ss *sessions) boundLocked() int {
	if ss.closed || ss.live == 0 {
		return 0
	}
	return ss.bare + 1
}

// take returns a ready spare, the one that came back last, or nil.
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

// track records nc as the socket of s.
func (ss *sessions) track(s driver.Conn, nc net.Conn) {
	ss.mu.Lock()
	if ss.nets == nil {
		ss.nets = map[driver.Conn]net.Conn{}
	}
	ss.nets[s] = nc
	ss.mu.Unlock()
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
	n := len(ss.free) + ss.resetting - ss.boundLocked()
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

// recycle takes back a session whose held branch is finished: it is reset
// and becomes a spare, or closed when it cannot be reset or is not needed.
// The reset runs in the background; phase two does not wait for it.
func (ss *sessions) recycle(s driver.Conn) {
	ss.mu.Lock()
	nc := ss.nets[s]
	if ss.reset == nil || nc == nil || len(ss.free)+ss.resetting >= ss.boundLocked() {
		ss.mu.Unlock()
		ss.closeSession(s)
		return
	}
	ss.resetting++
	ss.wg.Add(1)
	ss.mu.Unlock()
	go func() {
		defer ss.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), resetTimeout)
		err := ss.reset(ctx, s, nc)
		cancel()
		ss.mu.Lock()
		ss.resetting--
		if err == nil && len(ss.free)+ss.resetting < ss.boundLocked() {
			ss.free = append(ss.free, s)
			s = nil
		}
		ss.mu.Unlock()
		if s != nil {
			ss.closeSession(s)
		}
	}()
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

// close closes every spare and waits for the resets in flight, whose
// sessions are closed too.
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
	ss.wg.Wait()
	return errs
}

// stats reports the spares and the conns without a session, for tests.
func (ss *sessions) stats() (spares, bare, live int) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.free) + ss.resetting, ss.bare, ss.live
}
