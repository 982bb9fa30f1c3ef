package dtx

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// CoordinatorOptions configure a Coordinator.
type CoordinatorOptions struct {
	// Resources are the databases globals span, by name; each must be
	// opened through a dtx driver. Every node that may recover another's
	// globals must use the same names for the same databases: decisions
	// name their branches' resources.
	Resources map[string]*sql.DB
	// Log is where outcomes are kept. Nil (the default) keeps them in a
	// table of one of the resources, DecisionResource, where a global's
	// decision commits inside that resource's own branch. A FileLog keeps
	// them in a file of this machine (one process only); an SQLLog in a
	// table of any database.
	Log Log
	// DecisionResource names the resource whose table keeps the outcomes
	// when Log is nil. Default: the first PostgreSQL resource by name, else
	// the first by name. Nodes that share globals must agree on it.
	DecisionResource string
	// DecisionTable is that table's name (default "dtx_decisions"), created
	// if absent.
	DecisionTable string
	// Node identifies this process in branch names: letters, digits and
	// '-', at most 20 bytes, stable across restarts and unique among the
	// processes sharing a store. Required unless Log is a FileLog, whose
	// own random id (kept beside the log) is the default. A host name is
	// never assumed: replicas of one deployment share theirs.
	Node string
	// Timeout bounds a global from its start to its commit decision, and
	// phase two after it; a global that outlives it before its decision is
	// rolled back. Default 30s.
	Timeout time.Duration
	// RecoverGrace is how old an undecided prepared branch of this node
	// must be before recovery aborts its global. Default 2×Timeout.
	RecoverGrace time.Duration
	// AbandonAge is how old a global of another node must be before this
	// node's recovery finishes it (takeover of dead or renamed nodes).
	// Default 4×Timeout. Negative: never.
	AbandonAge time.Duration
	// RecoverInterval runs Recover in the background at start-up and then
	// every interval. 0 means the default, 1 minute; negative turns it off
	// (call Recover yourself).
	RecoverInterval time.Duration
	// AsyncCommit makes Do return as soon as the decision is durable, with
	// phase two running in the background: a read right after Do may not
	// see every branch's change yet. Close waits for it.
	AsyncCommit bool
	// OnRecover, when set, receives each background recovery's report.
	OnRecover func(RecoveryReport, error)
	// Logger receives what the coordinator does: recovery actions at
	// Info, pending, heuristic and unknown outcomes at Warn, a line per
	// phase of each global at Debug (see docs/operations.md). Nil: the
	// logger set with SetLogger, if any; by default silent.
	Logger *slog.Logger
	// Hooks observe the coordinator's globals, their phases and recovery
	// (see Hooks). Nil: those set with SetHooks, if any. The sessions its
	// MariaDB/MySQL branches hold are reported to the resources'
	// connectors' hooks.
	Hooks *Hooks
}

// Coordinator runs global transactions over several databases: committed in
// every database or in none, whatever crashes when. See docs/coordinator.md.
type Coordinator struct {
	log       Log
	resources map[string]*sql.DB
	names     []string // resource names, sorted
	decider   string   // the resource whose branch commits the decision, or ""
	sqlLog    *SQLLog  // the decider's store
	node      string
	timeout   time.Duration
	grace     time.Duration
	abandon   time.Duration
	async     bool
	onRecover func(RecoveryReport, error)
	obs       observer
	systems   map[string]string // resource name: its db.system.name
	stats     coordCounters

	mu     sync.Mutex
	active map[string]bool // global ids in flight in this coordinator

	forget    chan string // globals whose decision can go, batched
	forgotten chan struct{}
	phase2    sync.WaitGroup // asynchronous phase twos

	recoverMu sync.Mutex
	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
}

// Decision is the durable record that a global commits: written once every
// branch is prepared, before any is committed.
type Decision struct {
	Global   string      // the global's id, a UUIDv7 in hex: the store's key
	Node     string      // the node that decided
	Branches []BranchRef // every branch that writes, the decider's included
	At       time.Time   // when it was decided, by the deciding node's clock
}

// BranchRef names one branch of a global: its resource and its prepared
// transaction's name.
type BranchRef struct {
	Resource string // the resource's name in CoordinatorOptions.Resources
	Name     string // the branch's prepared transaction name, g.<node>.<global>.<n>
}

// NewCoordinator checks opts, opens the decision table when Log is nil, and
// starts background recovery (unless turned off). Close it to stop that.
func NewCoordinator(opts CoordinatorOptions) (*Coordinator, error) {
	if len(opts.Resources) == 0 {
		return nil, errors.New("dtx: CoordinatorOptions.Resources is empty")
	}
	c := &Coordinator{
		log:       opts.Log,
		resources: opts.Resources,
		timeout:   opts.Timeout,
		grace:     opts.RecoverGrace,
		abandon:   opts.AbandonAge,
		async:     opts.AsyncCommit,
		onRecover: opts.OnRecover,
		obs:       observer{logger: opts.Logger, hooks: opts.Hooks},
		systems:   map[string]string{},
		active:    map[string]bool{},
		forget:    make(chan string, 4096),
		forgotten: make(chan struct{}),
		stop:      make(chan struct{}),
		stopped:   make(chan struct{}),
	}
	for name, db := range opts.Resources {
		if err := checkID("resource", name); err != nil {
			return nil, err // a decision naming it could not be stored exactly
		}
		d, err := driverOf(db)
		if err != nil {
			return nil, fmt.Errorf("dtx: resource %q: %w", name, err)
		}
		c.names = append(c.names, name)
		c.systems[name] = systemOf(d.dialect)
	}
	sort.Strings(c.names)
	if c.timeout <= 0 {
		c.timeout = 30 * time.Second
	}
	if c.grace <= 0 {
		c.grace = 2 * c.timeout
	}
	if c.abandon == 0 {
		c.abandon = 4 * c.timeout
	}
	if err := c.openStore(opts); err != nil {
		return nil, err
	}
	if err := c.claimNode(opts.Node); err != nil {
		return nil, err
	}
	if nr, ok := c.log.(nodeRegistry); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := nr.addNode(ctx, c.node)
		cancel()
		if err != nil {
			c.releaseNode()
			return nil, fmt.Errorf("dtx: registering node %q in the decision store: %w", c.node, err)
		}
	}
	go c.forgetLoop()
	interval := opts.RecoverInterval
	if interval == 0 {
		interval = time.Minute
	}
	if interval < 0 {
		close(c.stopped)
		return c, nil
	}
	go c.recoverLoop(interval)
	return c, nil
}

// openStore settles where outcomes are kept and which resource, if any,
// commits a global's decision inside its own branch.
func (c *Coordinator) openStore(opts CoordinatorOptions) error {
	if c.log == nil {
		res := opts.DecisionResource
		if res == "" {
			res = c.defaultDecider()
		}
		db, ok := c.resources[res]
		if !ok {
			return fmt.Errorf("dtx: DecisionResource %q is not one of the resources", res)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		l, err := OpenSQLLog(ctx, db, opts.DecisionTable)
		if err != nil {
			return err
		}
		c.log = l
	}
	if l, ok := c.log.(*SQLLog); ok {
		for _, name := range c.names {
			if c.resources[name] == l.db {
				c.decider, c.sqlLog = name, l
				break
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if w := l.DurabilityWarning(ctx); w != "" {
			c.obs.logAt(ctx, slog.LevelWarn, w)
		}
	}
	return nil
}

// defaultDecider is the first PostgreSQL resource by name, else the first by
// name: the same on every node configured with the same resources.
func (c *Coordinator) defaultDecider() string {
	for _, name := range c.names {
		if d, _ := driverOf(c.resources[name]); d.dialect == Postgres {
			return name
		}
	}
	return c.names[0]
}

// liveNodes are the node ids of this process's open coordinators: two
// coordinators with one node in one process would each take the other's
// globals for its own.
var liveNodes = struct {
	sync.Mutex
	m map[string]bool
}{m: map[string]bool{}}

func (c *Coordinator) claimNode(node string) error {
	if node == "" {
		n, ok := c.log.(interface{ Node() string })
		if !ok {
			return errors.New("dtx: CoordinatorOptions.Node is required unless Log is a FileLog: a stable id unique to this process among those sharing the decision store (a host name is not: replicas share it)")
		}
		node = n.Node()
	}
	if err := validNode(node); err != nil {
		return err
	}
	liveNodes.Lock()
	defer liveNodes.Unlock()
	if liveNodes.m[node] {
		return fmt.Errorf("%w: node %q belongs to another open Coordinator of this process", ErrNameInUse, node)
	}
	liveNodes.m[node] = true
	c.node = node
	return nil
}

const maxNodeLen = 20

func validNode(node string) error {
	if len(node) == 0 || len(node) > maxNodeLen {
		return fmt.Errorf("%w: node %q must be 1 to %d bytes", ErrInvalidName, node, maxNodeLen)
	}
	for i := 0; i < len(node); i++ {
		if !nodeByte(node[i]) {
			return fmt.Errorf("%w: node %q: byte %d is %s; allowed are letters, digits and -", ErrInvalidName, node, i, describeByte(node, i))
		}
	}
	return nil
}

// nodeByte reports whether b may stand in a node id: a letter, a digit or
// '-', so that '.' stays free to separate the parts of branch names.
func nodeByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-'
}

// RandomNode returns a fresh random node id ("n" and 16 hex digits), for a
// process that has no stable identity of its own and keeps this one where
// it survives restarts.
func RandomNode() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "n" + hex.EncodeToString(b)
}

// Node is this coordinator's node id.
func (c *Coordinator) Node() string { return c.node }

// Branch names are "g.<node>.<global>.<n>": the node, the global's UUIDv7
// (32 hex digits, which also tell when it started) and the branch's number.
// At most 2+20+1+32+1+3 = 59 bytes, within MySQL's 64-byte gtrid; the number
// keeps two branches in databases of one PostgreSQL cluster apart.
func (c *Coordinator) branchName(global string, n int) string {
	return "g." + c.node + "." + global + "." + strconv.Itoa(n)
}

// parseBranch splits a branch name of any node into its node and global.
func parseBranch(name string) (node, global string, ok bool) {
	rest, ok := strings.CutPrefix(name, "g.")
	if !ok {
		return "", "", false
	}
	node, rest, ok = strings.Cut(rest, ".")
	if !ok || validNode(node) != nil {
		return "", "", false
	}
	global, n, ok := strings.Cut(rest, ".")
	if !ok || len(global) != 32 {
		return "", "", false
	}
	if _, err := strconv.Atoi(n); err != nil {
		return "", "", false
	}
	return node, global, true
}

// globalTime is when a global started, read from its UUIDv7.
func globalTime(global string) (time.Time, bool) {
	u, err := uuid.Parse(global)
	if err != nil || u.Version() != 7 {
		return time.Time{}, false
	}
	sec, nsec := u.Time().UnixTime()
	return time.Unix(sec, nsec), true
}

// Do runs fn as one global transaction. Branches fn begins with g.Begin are
// ordinary *sql.Tx. When fn returns nil the global commits: see
// docs/coordinator.md for the protocol. When fn fails or panics, a branch
// cannot prepare, ctx ends or the timeout passes before the decision, every
// branch is rolled back and Do returns an error wrapping ErrRolledBack (and
// fn's error).
//
// After the decision the outcome is commit, whatever ctx does: phase two
// runs under its own deadline. A branch still not committed after it is
// left to Recover and Do returns a *PendingError; a branch found finished
// the other way is a *HeuristicError. ErrOutcomeUnknown means the decision
// could neither be confirmed nor fenced (the store was unreachable): the
// branches stay prepared and Recover settles them.
func (c *Coordinator) Do(ctx context.Context, fn func(ctx context.Context, g *Global) error) error {
	if err := c.healthy(); err != nil {
		return err
	}
	u, err := uuid.NewV7()
	if err != nil {
		return fmt.Errorf("dtx: global id: %w", err)
	}
	g := &Global{c: c, id: strings.ReplaceAll(u.String(), "-", "")}
	c.setActive(g.id, true)
	defer c.setActive(g.id, false)
	c.stats[gActive].Add(1)
	defer c.stats[gActive].Add(-1)
	sp := c.obs.start(ctx, Op{Kind: OpGlobal, Global: g.id})
	ctx, g.hctx = sp.ctx, sp.ctx
	tctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	err = g.run(tctx, fn)
	if err == nil {
		err = g.commit(ctx, tctx)
	}
	sp.op.Mode, sp.op.Branches = g.mode, g.nb
	sp.end(err)
	c.ended(ctx, g, err)
	return err
}

// ended counts a global Do is done with, by how it ended, and reports an
// unknown outcome. Pending and heuristic outcomes are counted and reported
// by phase two, which knows them first.
func (c *Coordinator) ended(ctx context.Context, g *Global, err error) {
	switch {
	case err == nil && g.mode == ModeTwoPhase:
		c.stats[gCommitsTwoPhase].Add(1)
	case err == nil:
		c.stats[gCommitsOnePhase].Add(1)
	case errors.Is(err, ErrPending), errors.Is(err, ErrHeuristic):
	case errors.Is(err, ErrRolledBack):
		c.stats[gRolledBack].Add(1)
	case errors.Is(err, ErrOutcomeUnknown):
		c.stats[gUnknown].Add(1)
		c.obs.outcome(ctx, Outcome{Kind: OutcomeUnknown, Global: g.id, Err: err})
	}
}

// Stats returns the coordinator's counters.
func (c *Coordinator) Stats() CoordinatorStats { return c.stats.load() }

// healthy refuses new globals while the store is known broken: they would
// prepare, fail to decide and hold their locks until recovery.
func (c *Coordinator) healthy() error {
	if h, ok := c.log.(interface{ Err() error }); ok {
		if err := h.Err(); err != nil {
			return fmt.Errorf("dtx: the decision log cannot take decisions: %w", err)
		}
	}
	return nil
}

func (c *Coordinator) setActive(global string, on bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if on {
		c.active[global] = true
	} else {
		delete(c.active, global)
	}
}

func (c *Coordinator) inFlight(global string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active[global]
}

// forgetLater queues a finished global's decision for deletion in a batch,
// off Do's path. A full queue drops it: recovery forgets it later.
func (c *Coordinator) forgetLater(global string) {
	select {
	case c.forget <- global:
	default:
	}
}

// forgetLoop deletes queued decisions in batches of up to 256, at most
// every 50 ms, and flushes what is queued when the coordinator closes.
func (c *Coordinator) forgetLoop() {
	defer close(c.forgotten)
	var batch []string
	flush := func() {
		if len(batch) == 0 {
			return
		}
		// Not during a recovery pass: a pass that read the log before
		// this global's decision and listed its branches before their
		// commit must still find the decision when it fences the global.
		c.recoverMu.Lock()
		defer c.recoverMu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		if err := c.log.Forget(ctx, batch...); err != nil {
			c.obs.logAt(ctx, slog.LevelWarn, "dtx: forgetting finished decisions failed; recovery retries", slog.Int("globals", len(batch)), slog.Any(keyErr, err))
		}
		cancel()
		batch = batch[:0]
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case g, ok := <-c.forget:
			if !ok {
				flush()
				return
			}
			batch = append(batch, g)
			if len(batch) >= 256 {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// hook is called at each step of the protocol; tests set it to kill the
// process at a chosen point.
var hook = func(point string) {}

func (c *Coordinator) recoverLoop(interval time.Duration) {
	defer close(c.stopped)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), interval+c.timeout)
		go func() {
			select {
			case <-c.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		rep, err := c.Recover(ctx)
		cancel()
		if c.onRecover != nil {
			c.onRecover(rep, err)
		}
		t.Reset(interval)
	}
}

// Close stops background recovery, waits for asynchronous phase twos,
// writes the queued forgets and frees the node id. It does not close the
// log or the resources, which the caller owns.
func (c *Coordinator) Close() error {
	c.closeOnce.Do(func() {
		select {
		case <-c.stopped:
		default:
			close(c.stop)
		}
		<-c.stopped
		c.phase2.Wait()
		close(c.forget)
		<-c.forgotten
		c.releaseNode()
	})
	return nil
}

func (c *Coordinator) releaseNode() {
	liveNodes.Lock()
	delete(liveNodes.m, c.node)
	liveNodes.Unlock()
}
