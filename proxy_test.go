package dtx_test

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// tcpProxy forwards loopback TCP connections to a database server and can
// lose a reply: once armed with a pattern, the first client message that
// contains it is forwarded, and the server's answer to it is swallowed and
// both sides of that connection are cut. The statement runs on the server;
// the client never learns its outcome. It also counts connections.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	pattern []byte // armed pattern, or nil
	conns   map[net.Conn]struct{}

	accepted atomic.Int64 // connections made
	open     atomic.Int64 // connections open now
	maxOpen  atomic.Int64 // the most open at once
	cuts     atomic.Int64
	wg       sync.WaitGroup
}

// newProxy starts a proxy to target (host:port), closed when t ends.
func newProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

// Addr is the proxy's host:port.
func (p *tcpProxy) Addr() string { return p.ln.Addr().String() }

// LoseReplyTo arms the proxy: the next client message containing pattern
// reaches the server, its reply does not reach the client.
func (p *tcpProxy) LoseReplyTo(pattern string) {
	p.mu.Lock()
	p.pattern = []byte(pattern)
	p.mu.Unlock()
}

// Cuts is how many replies the proxy has swallowed.
func (p *tcpProxy) Cuts() int64 { return p.cuts.Load() }

// Close stops accepting, cuts every connection and waits for the copiers.
func (p *tcpProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *tcpProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.accepted.Add(1)
		n := p.open.Add(1)
		for m := p.maxOpen.Load(); n > m && !p.maxOpen.CompareAndSwap(m, n); m = p.maxOpen.Load() {
		}
		p.mu.Lock()
		p.conns[c], p.conns[s] = struct{}{}, struct{}{}
		p.mu.Unlock()
		var cut atomic.Bool
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			var pair sync.WaitGroup
			pair.Go(func() { p.pipe(c, s, func(b []byte) { p.match(b, &cut) }, nil) })
			pair.Go(func() { p.pipe(s, c, nil, &cut) })
			pair.Wait()
			p.open.Add(-1)
		}()
	}
}

// match arms cut for this connection when b holds the armed pattern.
func (p *tcpProxy) match(b []byte, cut *atomic.Bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pattern != nil && bytes.Contains(b, p.pattern) {
		p.pattern = nil
		cut.Store(true)
	}
}

// pipe copies from src to dst; seen looks at each chunk before it is sent;
// when cut is set, the next chunk is dropped and both connections closed.
func (p *tcpProxy) pipe(src, dst net.Conn, seen func([]byte), cut *atomic.Bool) {
	defer func() {
		src.Close()
		dst.Close()
		p.mu.Lock()
		delete(p.conns, src)
		delete(p.conns, dst)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if cut != nil && cut.Load() {
				p.cuts.Add(1)
				return
			}
			if seen != nil {
				seen(buf[:n])
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
