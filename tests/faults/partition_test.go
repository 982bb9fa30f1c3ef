package faults

import (
	"net"
	"os/exec"
	"testing"
	"time"
)

// TestPartition: a coordinator's namespace reaches the host's end of its
// pair, not while the pair is partitioned, and again once healed.
func TestPartition(t *testing.T) {
	if why := NetnsUsable(); why != "" {
		t.Skip("network namespaces unusable:", why)
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	n, err := NewNodeNet(Token()[:4], freeSubnet(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ln, err := net.Listen("tcp", net.JoinHostPort(n.Host["pg"], "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	connect := func() error {
		cmd := n.Command("timeout", "2", "bash", "-c", "exec 3<>/dev/tcp/"+n.Host["pg"]+"/"+port)
		return cmd.Run()
	}
	if err := connect(); err != nil {
		t.Fatalf("from the namespace before the partition: %v", err)
	}
	if err := n.Partition("pg"); err != nil {
		t.Fatal(err)
	}
	if err := connect(); err == nil {
		t.Fatal("connected across the partition")
	}
	if err := n.Heal("pg"); err != nil {
		t.Fatal(err)
	}
	// A failed ARP entry may refuse at once for a few seconds, as on a
	// real link that comes back.
	for try := 0; ; try++ {
		err := connect()
		if err == nil {
			break
		}
		if try == 10 {
			t.Fatalf("after the heal: %v", err)
		}
		time.Sleep(time.Second)
	}
}
