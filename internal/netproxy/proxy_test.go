package netproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// echoServer answers each line with "re:" and the line, and sends the lines
// it got to seen.
func echoServer(t *testing.T) (addr string, seen chan string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	seen = make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					seen <- sc.Text()
					io.WriteString(c, "re:"+sc.Text()+"\n")
				}
			}()
		}
	}()
	return ln.Addr().String(), seen
}

func proxied(t *testing.T) (*Proxy, net.Conn, *bufio.Reader, chan string) {
	addr, seen := echoServer(t)
	p, err := NewProxy("127.0.0.1:0", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return p, c, bufio.NewReader(c), seen
}

func say(t *testing.T, c net.Conn, r *bufio.Reader, line string) (string, error) {
	t.Helper()
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	defer c.SetReadDeadline(time.Time{})
	got, err := r.ReadString('\n')
	return strings.TrimSpace(got), err
}

func timedOut(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestProxyForwardsAndCuts(t *testing.T) {
	p, c, r, _ := proxied(t)
	if got, err := say(t, c, r, "a"); err != nil || got != "re:a" {
		t.Fatalf("through the proxy: %q, %v", got, err)
	}
	if n := p.Cut(); n != 1 {
		t.Fatalf("Cut cut %d connections, want 1", n)
	}
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("a cut connection still reads")
	}
}

func TestProxyDelayKeepsTheStream(t *testing.T) {
	p, c, r, _ := proxied(t)
	p.SetDelay(50 * time.Millisecond)
	for _, s := range []string{"x", "y", "z"} {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, s+"\n")
		if got, err := r.ReadString('\n'); err != nil || got != "re:"+s+"\n" {
			t.Fatalf("delayed: %q, %v", got, err)
		}
	}
}

func TestProxyBlackHole(t *testing.T) {
	for _, cut := range []bool{false, true} {
		p, c, r, seen := proxied(t)
		p.BlackHole()
		if _, err := say(t, c, r, "lost"); !timedOut(err) {
			t.Fatalf("a black hole answered: %v", err)
		}
		select {
		case l := <-seen:
			t.Fatalf("the server got %q through a black hole", l)
		default:
		}
		p.Heal(cut)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := r.ReadString('\n')
		if cut {
			if err == nil {
				t.Fatalf("healed with a cut, the connection still reads %q", got)
			}
			continue
		}
		if err != nil || got != "re:lost\n" {
			t.Fatalf("healed: the stalled line did not pass: %q, %v", got, err)
		}
	}
}

func TestProxyDropReply(t *testing.T) {
	p, c, r, seen := proxied(t)
	p.DropReplyTo("COMMIT")
	if !p.Armed() {
		t.Fatal("not armed")
	}
	if got, err := say(t, c, r, "SELECT 1"); err != nil || got != "re:SELECT 1" {
		t.Fatalf("an unmatched statement: %q, %v", got, err)
	}
	<-seen
	io.WriteString(c, "XA COMMIT 'x'\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); err == nil {
		t.Fatalf("the reply to the matched statement arrived: %q", got)
	}
	if l := <-seen; l != "XA COMMIT 'x'" {
		t.Fatalf("the server got %q", l)
	}
	if p.Armed() {
		t.Fatal("still armed after the drop")
	}
}

// HoldFrom holds the matching message and what follows on that connection
// until Heal, and lets other connections pass meanwhile.
func TestProxyHoldFrom(t *testing.T) {
	p, c, r, seen := proxied(t)
	if got, err := say(t, c, r, "before"); err != nil || got != "re:before" {
		t.Fatalf("before the hold: %q, %v", got, err)
	}
	<-seen
	p.HoldFrom("held")
	if _, err := say(t, c, r, "held"); !timedOut(err) {
		t.Fatalf("a held message was answered: %v", err)
	}
	other, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if got, err := say(t, other, bufio.NewReader(other), "other"); err != nil || got != "re:other" {
		t.Fatalf("another connection during the hold: %q, %v", got, err)
	}
	if l := <-seen; l != "other" {
		t.Fatalf("the server got %q during the hold, want only the other connection's line", l)
	}
	p.Heal(false)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); err != nil || got != "re:held\n" {
		t.Fatalf("healed: the held line did not pass: %q, %v", got, err)
	}
}
