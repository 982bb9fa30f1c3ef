package faults

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/dtx-go/dtx/internal/bank"
	"github.com/dtx-go/dtx/internal/netproxy"
	"github.com/go-sql-driver/mysql"
)

// Slot is one coordinator's place in the cluster: its network namespace
// (nil without netns), its proxies to the two databases, and the process
// running there now. A killed coordinator restarts in its slot, under its
// node id or a new one.
type Slot struct {
	K     int
	Net   *NodeNet
	Proxy map[string]*netproxy.Proxy // "pg", "my"

	mu     sync.Mutex // held by a fault on this slot's process
	proc   *Proc
	paused bool
}

// Proc is a running coordinator process.
type Proc struct {
	Node string
	cmd  *exec.Cmd
	done chan struct{}
	// drained is closed when the process printed DRAINED.
	drained chan struct{}
}

// Cluster runs the coordinators of one segment and collects what they
// report.
type Cluster struct {
	Slots   []*Slot
	base    ChildConfig // Node, PgDSN and MyDSN are per slot
	binary  string
	Stderr  bank.Capped
	mu      sync.Mutex
	outcome map[string]string // global -> class
	nodes   []string          // every node id used
}

// Token is 8 random hex digits.
func Token() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// NewCluster prepares a cluster of slots whose processes run binary with
// base's settings.
func NewCluster(binary string, slots []*Slot, base ChildConfig) *Cluster {
	return &Cluster{Slots: slots, base: base, binary: binary, outcome: map[string]string{}}
}

// dsns are the slot's DSNs: through its proxies, as user coord.
func (c *Cluster) dsns(s *Slot, node string) (string, string, error) {
	pg := fmt.Sprintf("postgres://coord@%s/faults?sslmode=disable&application_name=%s&connect_timeout=5", s.Proxy["pg"].Addr(), node)
	mc := mysql.NewConfig()
	mc.User, mc.Net, mc.Addr, mc.DBName = "coord", "tcp", s.Proxy["my"].Addr(), "faults"
	mc.Timeout = 5 * time.Second
	return pg, mc.FormatDSN(), nil
}

// Start runs a coordinator in s under node ("" for a new id) and waits
// until it is ready.
func (c *Cluster) Start(s *Slot, node string) error {
	if node == "" {
		node = "f" + Token()
	}
	cfg := c.base
	cfg.Node = node
	var err error
	if cfg.PgDSN, cfg.MyDSN, err = c.dsns(s, node); err != nil {
		return err
	}
	js, _ := json.Marshal(cfg)
	args := []string{"-test.run=^TestFaultsChild$", "-test.count=1", "-test.timeout=0"}
	var cmd *exec.Cmd
	if s.Net != nil {
		cmd = s.Net.Command(c.binary, args...)
	} else {
		cmd = exec.Command(c.binary, args...)
	}
	cmd.Env = append(os.Environ(), ChildEnv+"="+string(js))
	cmd.Stderr = &c.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, node)
	c.mu.Unlock()
	p := &Proc{Node: node, cmd: cmd, done: make(chan struct{}), drained: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(p.done)
		bank.Scan(stdout, func(line string) {
			switch line {
			case "READY":
				close(ready)
			case "DRAINED":
				close(p.drained)
			}
		}, func(gid, class string) {
			c.mu.Lock()
			c.outcome[gid] = class
			c.mu.Unlock()
		})
		cmd.Wait()
	}()
	select {
	case <-ready:
	case <-p.done:
		return fmt.Errorf("node %s exited before it was ready: %s", node, c.Stderr.String())
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("node %s not ready after 90s", node)
	}
	s.proc, s.paused = p, false
	return nil
}

// Kill SIGKILLs s's process and waits for it. The caller holds s.mu.
func (s *Slot) Kill() {
	if s.proc == nil {
		return
	}
	s.proc.cmd.Process.Kill()
	<-s.proc.done
}

// Signal sends sig to s's process. The caller holds s.mu.
func (s *Slot) Signal(sig syscall.Signal) {
	if s.proc != nil {
		s.proc.cmd.Process.Signal(sig)
		s.paused = sig == syscall.SIGSTOP
	}
}

// Drain resumes every process, asks it to stop (SIGTERM) and waits up to
// d for each to drain; the rest are killed. It returns how many were
// killed.
func (c *Cluster) Drain(d time.Duration) int {
	deadline := time.After(d)
	killed := 0
	for _, s := range c.Slots {
		s.mu.Lock()
		s.Signal(syscall.SIGCONT)
		s.Signal(syscall.SIGTERM)
		s.mu.Unlock()
	}
	for _, s := range c.Slots {
		if s.proc == nil {
			continue
		}
		select {
		case <-s.proc.drained:
		case <-s.proc.done:
		case <-deadline:
		}
		select {
		case <-s.proc.done:
		case <-time.After(5 * time.Second):
		}
		select {
		case <-s.proc.drained:
		default:
			killed++
		}
		s.Kill()
	}
	return killed
}

// Outcomes are the reported outcomes so far, by global.
func (c *Cluster) Outcomes() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.outcome)
}

// Nodes are every node id the cluster used.
func (c *Cluster) Nodes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.nodes...)
}

// HealAll ends every network fault and resumes every process.
func (c *Cluster) HealAll() error {
	var errs []error
	for _, s := range c.Slots {
		for _, db := range []string{"pg", "my"} {
			s.Proxy[db].Heal(false)
			if s.Net != nil {
				if err := s.Net.Heal(db); err != nil {
					errs = append(errs, err)
				}
			}
		}
		s.mu.Lock()
		s.Signal(syscall.SIGCONT)
		s.mu.Unlock()
	}
	if len(errs) > 0 {
		return fmt.Errorf("heal: %v", errs)
	}
	return nil
}
