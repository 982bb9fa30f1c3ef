package faults

import (
	"context"
	"fmt"
	"maps"
	mrand "math/rand/v2"
	"sort"
	"sync"
	"syscall"
	"time"
)

// Kind is a kind of fault.
type Kind string

// The fault kinds. Each models something a deployment meets; see
// docs/reliability.md.
const (
	Kill       Kind = "kill -9 + restart"      // a process crash; restarted under its node id or a new one
	PauseLong  Kind = "SIGSTOP > abandon age"  // a GC pause, a frozen VM: peers take the node's globals over
	PauseShort Kind = "SIGSTOP < timeout"      // a short stall
	Cut        Kind = "proxy: cut connections" // a reset, a restarted load balancer
	Delay      Kind = "proxy: delay chunks"    // a slow, congested link
	Hole       Kind = "proxy: black hole"      // a link that silently drops everything, then recovers or resets
	DropReply  Kind = "proxy: drop a reply"    // a statement runs, its answer is lost
	RestartPG  Kind = "restart PostgreSQL"     // pg_ctl stop -m immediate, start: a server crash
	RestartMy  Kind = "restart MariaDB"        // SIGKILL mariadbd, start: a server crash
	Partition  Kind = "netns partition"        // one coordinator cut off from one database
)

// AllKinds are the fault kinds in the order of the report.
var AllKinds = []Kind{Kill, PauseLong, PauseShort, Cut, Delay, Hole, DropReply, RestartPG, RestartMy, Partition}

// fault is one drawn fault: every random choice is made when it is drawn,
// in the schedule's order, so a seed replays the schedule.
type fault struct {
	kind     Kind
	slot     int
	db       string // "pg" or "my"
	dur      time.Duration
	delay    time.Duration
	newNode  bool   // Kill: restart under a new node id
	cutAfter bool   // Hole: heal by cutting the stalled connections
	pattern  string // DropReply
	wait     bool   // guaranteed: wait for the target instead of skipping
}

// Nemesis applies a random schedule of faults to a cluster and the
// servers.
type Nemesis struct {
	c       *Cluster
	srv     *Servers
	kinds   []Kind
	rng     *mrand.Rand
	logf    func(string, ...any)
	drops   map[string][]string // reply-drop patterns by database
	serving sync.Mutex          // one server restart at a time
	links   map[[2]int]*sync.Mutex

	mu     sync.Mutex
	counts map[Kind]int
	missed int // reply drops armed that no statement hit
	errs   []string
	wg     sync.WaitGroup
}

// NewNemesis builds a nemesis for kinds. table is the store's table, whose
// INSERT (a decision or an abort) is one of the replies it drops.
func NewNemesis(c *Cluster, srv *Servers, kinds []Kind, rng *mrand.Rand, table string, logf func(string, ...any)) *Nemesis {
	n := &Nemesis{c: c, srv: srv, kinds: kinds, rng: rng, logf: logf, counts: map[Kind]int{}, links: map[[2]int]*sync.Mutex{}}
	n.drops = map[string][]string{
		"pg": {"PREPARE TRANSACTION", "COMMIT PREPARED", "ROLLBACK PREPARED", "COMMIT", "INSERT INTO " + table},
		"my": {"XA PREPARE", "XA COMMIT", "XA ROLLBACK", "XA END", "COMMIT", "INSERT INTO " + table},
	}
	for k := range c.Slots {
		n.links[[2]int{k, 0}] = &sync.Mutex{}
		n.links[[2]int{k, 1}] = &sync.Mutex{}
	}
	return n
}

// Run applies faults until ctx ends: first each kind once, in random order,
// waiting for its target if need be (so a short schedule applies every
// kind), then random ones, up to three at a time, drawn every 0.3–2 s.
// It returns once every fault it started has healed.
func (n *Nemesis) Run(ctx context.Context) {
	sem := make(chan struct{}, 3)
	order := append([]Kind(nil), n.kinds...)
	n.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	for i := 0; ctx.Err() == nil; i++ {
		var f fault
		if i < len(order) {
			f = n.draw(order[i])
			f.wait = true
		} else {
			f = n.draw(n.kinds[n.rng.IntN(len(n.kinds))])
		}
		pause := time.Duration(300+n.rng.IntN(1700)) * time.Millisecond
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		n.wg.Go(func() {
			defer func() { <-sem }()
			n.apply(ctx, f)
		})
		select {
		case <-time.After(pause):
		case <-ctx.Done():
		}
	}
	n.wg.Wait()
}

func (n *Nemesis) draw(k Kind) fault {
	r := n.rng
	f := fault{kind: k, slot: r.IntN(len(n.c.Slots)), db: []string{"pg", "my"}[r.IntN(2)]}
	switch k {
	case Kill:
		f.newNode = r.IntN(2) == 0
		f.dur = time.Duration(r.IntN(1000)) * time.Millisecond // down before the restart
	case PauseLong:
		f.dur = ChildAbandon + time.Duration(1000+r.IntN(3000))*time.Millisecond
	case PauseShort:
		f.dur = time.Duration(200+r.IntN(1300)) * time.Millisecond
	case Delay:
		f.delay = time.Duration(20+r.IntN(280)) * time.Millisecond
		f.dur = time.Duration(1000+r.IntN(4000)) * time.Millisecond
	case Hole:
		f.dur = time.Duration(1000+r.IntN(5000)) * time.Millisecond
		f.cutAfter = r.IntN(2) == 0
	case DropReply:
		ps := n.drops[f.db]
		f.pattern = ps[r.IntN(len(ps))]
		f.dur = 5 * time.Second // armed at most this long
	case Partition:
		f.dur = time.Duration(1000+r.IntN(7000)) * time.Millisecond
	}
	return f
}

// lock takes what f acts on: the slot's process, the link, or the servers.
// Without f.wait it gives up when the target is busy.
func (n *Nemesis) lock(f fault) (unlock func(), ok bool) {
	var m *sync.Mutex
	switch f.kind {
	case Kill, PauseLong, PauseShort:
		m = &n.c.Slots[f.slot].mu
	case RestartPG, RestartMy:
		m = &n.serving
	default:
		m = n.links[[2]int{f.slot, map[string]int{"pg": 0, "my": 1}[f.db]}]
	}
	if f.wait {
		m.Lock()
	} else if !m.TryLock() {
		return nil, false
	}
	return m.Unlock, true
}

func (n *Nemesis) apply(ctx context.Context, f fault) {
	unlock, ok := n.lock(f)
	if !ok {
		return
	}
	defer unlock()
	s := n.c.Slots[f.slot]
	applied := true
	var err error
	switch f.kind {
	case Kill:
		var old string
		if s.proc != nil {
			old = s.proc.Node
		}
		s.Kill()
		time.Sleep(f.dur)
		node := old
		if f.newNode || old == "" {
			node = ""
		}
		err = n.c.Start(s, node)
	case PauseLong, PauseShort:
		s.Signal(syscall.SIGSTOP)
		time.Sleep(f.dur)
		s.Signal(syscall.SIGCONT)
	case Cut:
		s.Proxy[f.db].Cut()
	case Delay:
		s.Proxy[f.db].SetDelay(f.delay)
		time.Sleep(f.dur)
		s.Proxy[f.db].SetDelay(0)
	case Hole:
		s.Proxy[f.db].BlackHole()
		time.Sleep(f.dur)
		s.Proxy[f.db].Heal(f.cutAfter)
	case DropReply:
		p := s.Proxy[f.db]
		dur := f.dur
		if f.wait {
			// Guaranteed: a statement every global sends, and time for a
			// paused or restarting node to send it.
			f.pattern, dur = "COMMIT", 60*time.Second
		}
		p.DropReplyTo(f.pattern)
		deadline := time.Now().Add(dur)
		for p.Armed() && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if p.Armed() {
			p.Heal(false)
			applied = false
		}
	case RestartPG:
		err = n.srv.RestartPG(context.WithoutCancel(ctx))
	case RestartMy:
		err = n.srv.RestartMy(context.WithoutCancel(ctx))
	case Partition:
		if err = s.Net.Partition(f.db); err == nil {
			time.Sleep(f.dur)
			err = s.Net.Heal(f.db)
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		n.errs = append(n.errs, fmt.Sprintf("%s on slot %d: %v", f.kind, f.slot, err))
	}
	if !applied {
		n.missed++
		return
	}
	n.counts[f.kind]++
	n.logf("fault: %s slot=%d db=%s dur=%v %s", f.kind, f.slot, f.db, f.dur, f.pattern)
}

// Counts are the faults applied, by kind.
func (n *Nemesis) Counts() map[Kind]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return maps.Clone(n.counts)
}

// Errors are the faults that could not be applied or healed as planned.
func (n *Nemesis) Errors() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	es := append([]string(nil), n.errs...)
	sort.Strings(es)
	return es
}

// Missed is how many armed reply drops no statement hit.
func (n *Nemesis) Missed() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.missed
}
