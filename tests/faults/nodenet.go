package faults

import (
	"fmt"
	"math/rand/v2"
	"os/exec"
	"strings"
)

// NodeNet is one coordinator's network namespace, joined to the host by
// two veth pairs: one that carries its traffic to PostgreSQL, one to
// MariaDB (each to the coordinator's proxy of that database, which listens
// on the pair's host address). Partition takes the host end of one pair
// down: the kernel drops every packet between that coordinator and that
// database, in both directions, with no error to either side (connections
// stall and TCP retransmits), while the coordinator still reaches the
// other database. Heal brings it up; TCP resumes the stalled connections.
type NodeNet struct {
	Name string
	// Host and NS are the host's and the namespace's address of each
	// pair, by database ("pg", "my").
	Host, NS map[string]string
	ifs      map[string]string // host interface, by database
}

// NetnsUsable says why network namespaces cannot be used here, or "".
func NetnsUsable() string {
	probe := fmt.Sprintf("dtxprobe%04x", rand.IntN(1<<16))
	if err := ip("netns", "add", probe); err != nil {
		return err.Error()
	}
	defer ip("netns", "del", probe)
	a, b := probe[3:]+"a", probe[3:]+"b"
	if err := ip("link", "add", a, "type", "veth", "peer", "name", b); err != nil {
		return err.Error()
	}
	ip("link", "del", a)
	return ""
}

// NewNodeNet creates namespace name with its two pairs. subnet is the
// second byte of the 10.x.0.0/16 the run uses and k the node's number:
// the pairs get 10.x.(2k).0/30 and 10.x.(2k+1).0/30.
func NewNodeNet(run string, subnet, k int) (*NodeNet, error) {
	n := &NodeNet{Name: fmt.Sprintf("dtxf%s%d", run, k), Host: map[string]string{}, NS: map[string]string{}, ifs: map[string]string{}}
	if err := ip("netns", "add", n.Name); err != nil {
		return nil, err
	}
	if err := n.nsIP("link", "set", "lo", "up"); err != nil {
		n.Close()
		return nil, err
	}
	for i, db := range []string{"pg", "my"} {
		host, peer := fmt.Sprintf("df%s%d%sh", run, k, db), fmt.Sprintf("df%s%d%sn", run, k, db)
		n.ifs[db] = host
		n.Host[db] = fmt.Sprintf("10.%d.%d.1", subnet, 2*k+i)
		n.NS[db] = fmt.Sprintf("10.%d.%d.2", subnet, 2*k+i)
		steps := [][]string{
			{"link", "add", host, "type", "veth", "peer", "name", peer},
			{"link", "set", peer, "netns", n.Name},
			{"addr", "add", n.Host[db] + "/30", "dev", host},
			{"link", "set", host, "up"},
		}
		for _, s := range steps {
			if err := ip(s...); err != nil {
				n.Close()
				return nil, err
			}
		}
		for _, s := range [][]string{{"addr", "add", n.NS[db] + "/30", "dev", peer}, {"link", "set", peer, "up"}} {
			if err := n.nsIP(s...); err != nil {
				n.Close()
				return nil, err
			}
		}
	}
	return n, nil
}

// Partition cuts the coordinator off from db.
func (n *NodeNet) Partition(db string) error { return ip("link", "set", n.ifs[db], "down") }

// Heal reconnects the coordinator to db.
func (n *NodeNet) Heal(db string) error { return ip("link", "set", n.ifs[db], "up") }

// Command runs name inside the namespace (ip netns exec execs it, so the
// process's pid is the command's).
func (n *NodeNet) Command(name string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Close deletes the namespace and the pairs (deleting one end of a pair
// deletes both).
func (n *NodeNet) Close() {
	for _, i := range n.ifs {
		ip("link", "del", i)
	}
	ip("netns", "del", n.Name)
}

func (n *NodeNet) nsIP(args ...string) error {
	return ip(append([]string{"-n", n.Name}, args...)...)
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
