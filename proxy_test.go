package dtx_test

import (
	"testing"

	"github.com/dtx-go/dtx/internal/netproxy"
)

// newProxy starts a proxy (netproxy, shared with the nemesis harness) to
// target (host:port) on a free loopback port, closed when t ends. Its
// DropReplyTo loses a reply: the statement runs on the server, the client
// never learns its outcome; Accepted, Open and MaxOpen count the server
// sessions made through it.
func newProxy(t testing.TB, target string) *netproxy.Proxy {
	t.Helper()
	p, err := netproxy.NewProxy("127.0.0.1:0", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}
