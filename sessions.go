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
// The bound: spares (ready or being reset) number at most bare+held+1 while
// any conn of the connector is open, and none once all are closed. bare
// counts the open conns that have no session: each spare can stand in for
// the session of one of them. held counts the sessions held by prepared
// branches: a conn gives its session up at the prepare and goes back to the
// pool at once, where database/sql may close it as an idle conn over
// SetMaxIdleConns while its session is still busy with phase two; the raw
// driver's caller would still hold that conn, so its session may come back
// as a spare. The one spare more lets a session be reset while another
// serves the next transaction: without it a lone caller waited for every
// reset or dialed. So the server sees at most the pool's open connections
// plus twice the held sessions plus one (plus the takers waiting for a
// reset, each of which would otherwise dial).
//
// Spares expire with the pool's connections: when database/sql closes a
// conn without a session (over SetMaxIdleConns, after SetConnMaxIdleTime or
// SetConnMaxLifetime) and when phase two ends, the spares over the bound are
// closed, those waiting longest first. Once the pool is idle and its
// conns closed, no spare is left.
type sessions struct {
	mu        sync.Mutex
	free      []driver.Conn // ready; the one waiting longest first
	resetting int           // being reset, on their way to free
	bare      int           // open conns without a session
	held      int           // sessions held by prepared branches
	waiting   int           // takers waiting for a reset to end
	ready     chan struct{} // closed when a reset ends, for the waiting
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
	return ss.bare + ss.held + ss.waiting + 1
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

// take returns a ready spare, the one that came back last, or nil when
// there is none and a new session should be dialed. When two or more are
// being reset it waits for one: a reset is one round trip already on its
// way, a dial several. With only one being reset it does not wait: that is
// the spare that lets resets run beside the caller's work, and a lone
// caller that waited for each reset would never get a second session.
func (ss *sessions) take(ctx context.Context) (driver.Conn, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for {
		if n := len(ss.free); n > 0 {
			s := ss.free[n-1]
			ss.free[n-1] = nil
			ss.free = ss.free[:n-1]
			return s, nil
		}
		if ss.closed || ss.resetting < 2 {
			return nil, nil
		}
		if ss.ready == nil {
			ss.ready = make(chan struct{})
		}
		ready := ss.ready
		ss.waiting++
		ss.mu.Unlock()
		var err error
		select {
		case <-ready:
		case <-ctx.Done():
			err = ctx.Err()
		}
		ss.mu.Lock()
		ss.waiting--
		if err != nil {
			return nil, err
		}
	}
}

// wakeLocked wakes the takers waiting for a reset to end.
func (ss *sessions) wakeLocked() {
	if ss.ready != nil {
		close(ss.ready)
		ss.ready = nil
	}
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
// The reset runs in the background; phase two does not wait for it. s is
// counted as held until it is a spare or closed, so that a session moving
// from held to spare does not push another spare over the bound.
func (ss *sessions) recycle(s driver.Conn) {
	ss.mu.Lock()
	nc := ss.nets[s]
	if ss.reset == nil || nc == nil || len(ss.free)+ss.resetting >= ss.boundLocked() {
		ss.held--
		over := ss.trimLocked()
		ss.mu.Unlock()
		ss.closeAll(over)
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
		ss.wakeLocked() // with a spare, or fewer resets to wait for
		ss.held--
		over := ss.trimLocked()
		ss.mu.Unlock()
		ss.closeAll(over)
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
