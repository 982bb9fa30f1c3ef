// Package netproxy is the TCP proxy dtx's tests put between a client and a
// database server to play the network's faults: cut connections, delayed
// chunks, a black hole, a reply dropped mid-protocol. It counts the
// connections it made, so the tests of MariaDB sessions can count server
// sessions. The root package's fault tests and the nemesis harness
// (tests/faults) share it.
package netproxy

import (
	"bytes"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards TCP connections from one coordinator to one database
// server and applies the network's faults to them: it cuts every
// connection (Cut), delays every chunk (SetDelay), black-holes traffic
// (BlackHole: nothing passes in either direction and new connections are
// not dialled until Heal, which then lets the stalled bytes through or cuts
// the connections, as a network that comes back or one whose peers gave
// up), and drops a reply mid-protocol (DropReplyTo: the client message
// holding a pattern reaches the server, the server's answer is swallowed
// and the connection cut, so the statement runs and the client never learns
// its outcome).
type Proxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	conns   map[*pair]struct{}
	delay   time.Duration // at most this before each chunk, while > 0
	hole    chan struct{} // non-nil while black-holed: closed by Heal
	pattern []byte        // armed reply drop, or nil
	holdPat []byte        // armed hold, or nil
	holdCh  chan struct{} // closed by Heal: releases held connections
	closed  bool
	wg      sync.WaitGroup

	accepted atomic.Int64 // server connections made
	open     atomic.Int64 // server connections open now
	maxOpen  atomic.Int64 // the most open at once
	drops    atomic.Int64 // replies swallowed
}

// pair is one proxied connection: the client's and the server's sides.
type pair struct {
	client    net.Conn
	smu       sync.Mutex // guards server, set once dialled
	server    net.Conn
	once      sync.Once
	done      chan struct{} // closed when the pair is cut
	dropReply bool          // the next server chunk is swallowed; guarded by Proxy.mu
	hold      chan struct{} // client chunks wait for it to close; guarded by Proxy.mu
}

func (c *pair) cut() {
	c.once.Do(func() {
		close(c.done)
		c.client.Close()
		c.smu.Lock()
		s := c.server
		c.smu.Unlock()
		if s != nil {
			s.Close()
		}
	})
}

// NewProxy listens on listen (host:port, port 0 for any) and forwards to
// target.
func NewProxy(listen, target string) (*Proxy, error) {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &Proxy{ln: ln, target: target, conns: map[*pair]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Cut closes every open connection and reports how many there were.
func (p *Proxy) Cut() int {
	p.mu.Lock()
	cs := slices.Collect(maps.Keys(p.conns))
	p.mu.Unlock()
	for _, c := range cs {
		c.cut()
	}
	return len(cs)
}

// SetDelay delays each chunk, in either direction, by a random time up to
// d; 0 stops delaying.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	p.delay = d
	p.mu.Unlock()
}

// BlackHole stops all traffic until Heal.
func (p *Proxy) BlackHole() {
	p.mu.Lock()
	if p.hole == nil {
		p.hole = make(chan struct{})
	}
	p.mu.Unlock()
}

// HoldFrom arms the proxy: the next client message containing pattern, and
// everything after it on that connection, both ways, waits until Heal, unless the
// connection is cut first (the server closing its side cuts it). Nothing
// else waits: the message is held in the network, as a partition would
// hold it, neither lost nor delivered.
func (p *Proxy) HoldFrom(pattern string) {
	p.mu.Lock()
	p.holdPat = []byte(pattern)
	if p.holdCh == nil {
		p.holdCh = make(chan struct{})
	}
	p.mu.Unlock()
}

// Heal ends a black hole, a delay, holds and an armed reply drop. With cut,
// the connections that were open are cut first.
func (p *Proxy) Heal(cut bool) {
	if cut {
		p.Cut()
	}
	p.mu.Lock()
	if p.hole != nil {
		close(p.hole)
		p.hole = nil
	}
	if p.holdCh != nil {
		close(p.holdCh)
		p.holdCh = nil
	}
	p.holdPat = nil
	p.delay = 0
	p.pattern = nil
	p.mu.Unlock()
}

// DropReplyTo arms the proxy: the next client message containing pattern
// reaches the server; its reply does not reach the client, whose
// connection is cut.
func (p *Proxy) DropReplyTo(pattern string) {
	p.mu.Lock()
	p.pattern = []byte(pattern)
	p.mu.Unlock()
}

// Accepted is how many connections the proxy has made to the server.
func (p *Proxy) Accepted() int64 { return p.accepted.Load() }

// Open is how many connections to the server are open now.
func (p *Proxy) Open() int64 { return p.open.Load() }

// MaxOpen is the most connections to the server that were open at once.
func (p *Proxy) MaxOpen() int64 { return p.maxOpen.Load() }

// Drops is how many replies the proxy has swallowed (DropReplyTo).
func (p *Proxy) Drops() int64 { return p.drops.Load() }

// Armed reports whether a reply drop is armed and not yet triggered.
func (p *Proxy) Armed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pattern != nil
}

// Close stops accepting, cuts every connection and waits for the copiers.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	p.ln.Close()
	p.Heal(true)
	p.wg.Wait()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		cp := &pair{client: c, done: make(chan struct{})}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			c.Close()
			return
		}
		p.conns[cp] = struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go p.forward(cp)
	}
}

// forward dials the server (once no black hole stops it) and copies both
// ways until either side ends or the pair is cut.
func (p *Proxy) forward(c *pair) {
	defer p.wg.Done()
	defer func() {
		c.cut()
		p.mu.Lock()
		delete(p.conns, c)
		p.mu.Unlock()
	}()
	if !p.pass(c) {
		return
	}
	s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		return
	}
	c.smu.Lock()
	c.server = s
	c.smu.Unlock()
	p.accepted.Add(1)
	n := p.open.Add(1)
	for m := p.maxOpen.Load(); n > m && !p.maxOpen.CompareAndSwap(m, n); m = p.maxOpen.Load() {
	}
	defer p.open.Add(-1)
	select {
	case <-c.done: // cut while dialling
		s.Close()
		return
	default:
	}
	var both sync.WaitGroup
	both.Go(func() { p.pipe(c, c.client, s, true) })
	both.Go(func() { p.pipe(c, s, c.client, false) })
	both.Wait()
}

// pass waits out a black hole and a delay; false when the pair was cut.
func (p *Proxy) pass(c *pair) bool {
	p.mu.Lock()
	hole, delay, hold := p.hole, p.delay, c.hold
	p.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-c.done:
			return false
		}
	}
	if hole != nil {
		select {
		case <-hole:
		case <-c.done:
			return false
		}
	}
	if delay > 0 {
		select {
		case <-time.After(rand.N(delay)):
		case <-c.done:
			return false
		}
	}
	return true
}

// pipe copies src to dst. From the client it arms the pair's reply drop
// when a chunk holds the armed pattern; from the server it swallows the
// chunk of an armed pair and cuts it.
func (p *Proxy) pipe(c *pair, src, dst net.Conn, fromClient bool) {
	defer c.cut()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			if fromClient && p.holdPat != nil && bytes.Contains(buf[:n], p.holdPat) {
				p.holdPat = nil
				c.hold = p.holdCh
			}
			p.mu.Unlock()
			if !p.pass(c) {
				return
			}
			p.mu.Lock()
			if fromClient && p.pattern != nil && bytes.Contains(buf[:n], p.pattern) {
				p.pattern = nil
				c.dropReply = true
			}
			drop := !fromClient && c.dropReply
			p.mu.Unlock()
			if drop {
				p.drops.Add(1)
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
