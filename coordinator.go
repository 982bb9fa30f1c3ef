package dtx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// CoordinatorOptions configure a Coordinator.
type CoordinatorOptions struct {
	// Log keeps commit decisions durably: FileLog (embedded, the default
	// choice) or SQLLog (a table, when several nodes coordinate). Required.
	Log Log
	// Resources are the databases globals span, by name; each must be
	// opened through a dtx driver.
	Resources map[string]*sql.DB
	// Node is this process's stable identifier: letters, digits and '-', at
	// most 20 bytes. Branch names carry it, and recovery touches only
	// branches of its own node. Default: the host name, cut to fit.
	Node string
	// Timeout bounds a global from its start to its commit decision; a
	// global that outlives it is rolled back. Default 30s.
	Timeout time.Duration
	// RecoverGrace is how old a prepared branch without a commit decision
	// must be before recovery rolls it back: older than any global still
	// in flight in another incarnation of this node. Default 2×Timeout.
	RecoverGrace time.Duration
	// RecoverInterval runs Recover in the background at start-up and then
	// every interval. 0 means the default, 1 minute; negative turns it off
	// (call Recover yourself).
	RecoverInterval time.Duration
	// OnRecover, when set, receives each background recovery's report.
	OnRecover func(RecoveryReport, error)
}

// Coordinator runs global transactions over several databases: committed in
// every database or in none, whatever crashes when. See docs/coordinator.md.
type Coordinator struct {
	log       Log
	resources map[string]*sql.DB
	node      string
	timeout   time.Duration
	grace     time.Duration
	onRecover func(RecoveryReport, error)

	mu     sync.Mutex
	active map[string]bool // global ids in flight in this coordinator

	recoverMu sync.Mutex
	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
}

// Global is one global transaction in progress, handed to the function given
// to Coordinator.Do.
type Global struct {
	c        *Coordinator
	id       string
	mu       sync.Mutex
	branches []*branch
	closed   bool
}

type branch struct {
	resource string
	name     string
	tx       *sql.Tx
}

// Decision is the durable record that a global commits: written once every
// branch is prepared, before any is committed.
type Decision struct {
	Global   string
	Node     string
	Branches []BranchRef
	At       time.Time
}

// BranchRef names one branch of a global: its resource and its prepared
// transaction's name.
type BranchRef struct {
	Resource string
	Name     string
}

// RecoveryReport says what one Recover pass did, by branch name.
type RecoveryReport struct {
	Committed  []string // branches of decided globals, committed
	RolledBack []string // branches without a decision, older than the grace, rolled back
	Waiting    []string // branches without a decision, still within the grace
	Forgotten  []string // globals whose every branch is done, dropped from the log
}

// NewCoordinator checks opts and starts background recovery (unless turned
// off). Close it to stop that.
func NewCoordinator(opts CoordinatorOptions) (*Coordinator, error) {
	if opts.Log == nil {
		return nil, errors.New("dtx: CoordinatorOptions.Log is required (dtx.FileLog or dtx.SQLLog)")
	}
	if len(opts.Resources) == 0 {
		return nil, errors.New("dtx: CoordinatorOptions.Resources is empty")
	}
	for name, db := range opts.Resources {
		if _, err := driverOf(db); err != nil {
			return nil, fmt.Errorf("dtx: resource %q: %w", name, err)
		}
	}
	node := opts.Node
	if node == "" {
		node = defaultNode()
	}
	if err := validNode(node); err != nil {
		return nil, err
	}
	c := &Coordinator{
		log:       opts.Log,
		resources: opts.Resources,
		node:      node,
		timeout:   opts.Timeout,
		grace:     opts.RecoverGrace,
		onRecover: opts.OnRecover,
		active:    map[string]bool{},
		stop:      make(chan struct{}),
		stopped:   make(chan struct{}),
	}
	if c.timeout <= 0 {
		c.timeout = 30 * time.Second
	}
	if c.grace <= 0 {
		c.grace = 2 * c.timeout
	}
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

const maxNodeLen = 20

func validNode(node string) error {
	if len(node) == 0 || len(node) > maxNodeLen {
		return fmt.Errorf("%w: node %q must be 1 to %d bytes", ErrInvalidName, node, maxNodeLen)
	}
	for i := 0; i < len(node); i++ {
		if !nodeByte(node[i]) {
			return fmt.Errorf("%w: node %q: byte %d is %q; allowed are letters, digits and -", ErrInvalidName, node, i, node[i])
		}
	}
	return nil
}

// nodeByte reports whether b may stand in a node id: a letter, a digit or
// '-', so that '.' stays free to separate the parts of branch names.
func nodeByte(b byte) bool {
	return 'a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-'
}

func defaultNode() string {
	h, _ := os.Hostname()
	var b strings.Builder
	for i := 0; i < len(h) && b.Len() < maxNodeLen; i++ {
		if nodeByte(h[i]) {
			b.WriteByte(h[i])
		}
	}
	if b.Len() == 0 {
		return "node"
	}
	return b.String()
}

// Branch names are "g.<node>.<global>.<n>": the node, the global's UUIDv7
// (32 hex digits, which also tell when it started) and the branch's number.
// At most 2+20+1+32+1+3 = 59 bytes, within MySQL's 64-byte gtrid; the number
// keeps two branches in databases of one PostgreSQL cluster apart.
func (c *Coordinator) prefix() string { return "g." + c.node + "." }

func (c *Coordinator) branchName(global string, n int) string {
	return c.prefix() + global + "." + strconv.Itoa(n)
}

// parseBranch returns the global id of a branch name of this node.
func (c *Coordinator) parseBranch(name string) (global string, ok bool) {
	rest, ok := strings.CutPrefix(name, c.prefix())
	if !ok {
		return "", false
	}
	global, n, ok := strings.Cut(rest, ".")
	if !ok || len(global) != 32 {
		return "", false
	}
	if _, err := strconv.Atoi(n); err != nil {
		return "", false
	}
	return global, true
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
// ordinary *sql.Tx. When fn returns nil every branch is prepared in
// parallel; once all are, the commit decision is logged durably and every
// branch committed in parallel. A global with one branch commits it in one
// phase, without a log write. When fn fails, a prepare fails, or the
// timeout passes before the decision, every branch is rolled back.
//
// After the decision the outcome is commit: a branch whose commit fails is
// retried while ctx allows, then left to Recover, and Do returns a
// *PendingError naming it. A branch found gone when it should have been
// committed is a *HeuristicError.
func (c *Coordinator) Do(ctx context.Context, fn func(ctx context.Context, g *Global) error) error {
	u, err := uuid.NewV7()
	if err != nil {
		return fmt.Errorf("dtx: global id: %w", err)
	}
	g := &Global{c: c, id: strings.ReplaceAll(u.String(), "-", "")}
	c.mu.Lock()
	c.active[g.id] = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.active, g.id)
		c.mu.Unlock()
	}()
	tctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := g.run(tctx, fn); err != nil {
		return err
	}
	return g.commit(ctx, tctx)
}

// run calls fn, rolling back every branch when it fails or panics.
func (g *Global) run(ctx context.Context, fn func(context.Context, *Global) error) (err error) {
	ok := false
	defer func() {
		if !ok {
			g.abort()
		}
	}()
	err = fn(ctx, g)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("dtx: global %s rolled back: %w", g.id, err)
	}
	ok = true
	return nil
}

// Begin starts a branch on the resource named resource: an ordinary *sql.Tx
// whose Commit and Rollback belong to the coordinator (do not call them).
func (g *Global) Begin(ctx context.Context, resource string, opts *sql.TxOptions) (*sql.Tx, error) {
	db, ok := g.c.resources[resource]
	if !ok {
		return nil, fmt.Errorf("dtx: unknown resource %q", resource)
	}
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return nil, fmt.Errorf("dtx: global %s is finished", g.id)
	}
	n := len(g.branches)
	g.branches = append(g.branches, nil)
	g.mu.Unlock()
	name := g.c.branchName(g.id, n)
	tx, err := db.BeginTx(withNameDB(ctx, name, db), opts)
	g.mu.Lock()
	defer g.mu.Unlock()
	if err != nil {
		g.branches[n] = &branch{resource: resource, name: name}
		return nil, err
	}
	g.branches[n] = &branch{resource: resource, name: name, tx: tx}
	return tx, nil
}

// ID is the global's id (a UUIDv7 in hex).
func (g *Global) ID() string { return g.id }

func (g *Global) live() []*branch {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	var bs []*branch
	for _, b := range g.branches {
		if b != nil && b.tx != nil {
			bs = append(bs, b)
		}
	}
	return bs
}

func (g *Global) abort() {
	for _, b := range g.live() {
		b.tx.Rollback()
	}
}

// hook is called at each step of the protocol; tests set it to kill the
// process at a chosen point.
var hook = func(point string) {}

func (g *Global) commit(ctx, tctx context.Context) error {
	bs := g.live()
	switch len(bs) {
	case 0:
		return nil
	case 1:
		reg.setOnePhase(bs[0].name)
		hook("before-commit-one-phase")
		if err := bs[0].tx.Commit(); err != nil {
			return fmt.Errorf("dtx: global %s: %w", g.id, err)
		}
		return nil
	}
	hook("before-prepare")
	errs := parallel(bs, func(i int, b *branch) error {
		err := b.tx.Commit()
		if err == nil {
			hook("prepared:" + strconv.Itoa(i))
		}
		return err
	})
	if err := errors.Join(errs...); err != nil || tctx.Err() != nil {
		if err == nil {
			err = tctx.Err()
		}
		g.rollbackPrepared(ctx, bs, errs)
		return fmt.Errorf("dtx: global %s rolled back: %w", g.id, err)
	}
	d := Decision{Global: g.id, Node: g.c.node, At: time.Now().UTC()}
	for _, b := range bs {
		d.Branches = append(d.Branches, BranchRef{Resource: b.resource, Name: b.name})
	}
	if err := g.c.log.Decide(ctx, d); err != nil {
		// The record may or may not be durable: leave the branches
		// prepared; Recover decides from what the log says.
		return fmt.Errorf("%w: global %s: writing the commit decision: %w", ErrOutcomeUnknown, g.id, err)
	}
	hook("decided")
	// Phase two retries for at most another timeout; Recover does the rest.
	pctx, cancel := context.WithTimeout(ctx, g.c.timeout)
	defer cancel()
	return g.c.commitBranches(pctx, d)
}

// rollbackPrepared rolls back the branches that did prepare after another
// failed; what it cannot roll back now, Recover rolls back after the grace
// (no decision was logged).
func (g *Global) rollbackPrepared(ctx context.Context, bs []*branch, errs []error) {
	var prepared []*branch
	for i, b := range bs {
		if errs[i] == nil || errors.Is(errs[i], ErrOutcomeUnknown) {
			prepared = append(prepared, b)
		}
	}
	rctx, cancel := cleanupCtx(ctx)
	defer cancel()
	parallel(prepared, func(_ int, b *branch) error {
		err := RollbackDistributed(rctx, b.name)
		if errors.Is(err, ErrUnknownName) {
			return nil
		}
		return err
	})
}

// commitBranches is phase two of a decided global: commit every branch in
// parallel, retrying while ctx allows, and forget the decision once all are.
func (c *Coordinator) commitBranches(ctx context.Context, d Decision) error {
	errs := parallel(d.Branches, func(i int, b BranchRef) error {
		err := c.commitBranch(ctx, b)
		if err == nil {
			hook("committed:" + strconv.Itoa(i))
		}
		return err
	})
	var pending, gone []string
	for i, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, ErrUnknownName):
			gone = append(gone, d.Branches[i].Name)
		default:
			pending = append(pending, d.Branches[i].Name)
		}
	}
	if len(gone) > 0 {
		herr := &HeuristicError{Global: d.Global, Gone: gone, Pending: pending, Err: errors.Join(errs...)}
		c.log.Heuristic(context.WithoutCancel(ctx), d.Global, herr.Error())
		return herr
	}
	if len(pending) > 0 {
		return &PendingError{Global: d.Global, Pending: pending, Err: errors.Join(errs...)}
	}
	hook("before-done")
	c.log.Forget(context.WithoutCancel(ctx), d.Global)
	return nil
}

// commitBranch commits one decided branch, retrying transient failures with
// backoff while ctx allows.
func (c *Coordinator) commitBranch(ctx context.Context, b BranchRef) error {
	wait := 10 * time.Millisecond
	for {
		err := CommitDistributed(ctx, b.Name)
		if err == nil || errors.Is(err, ErrUnknownName) || errors.Is(err, ErrAlreadyFinished) || errors.Is(err, ErrInvalidName) {
			return err
		}
		if sleepCtx(ctx, wait) != nil {
			return err
		}
		wait = min(2*wait, time.Second)
	}
}

func parallel[T any](items []T, f func(int, T) error) []error {
	errs := make([]error, len(items))
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(i, it)
		}()
	}
	wg.Wait()
	return errs
}

// ErrPending is matched (errors.Is) by a *PendingError.
var ErrPending = errors.New("dtx: global committed, some branches still pending")

// ErrHeuristic is matched (errors.Is) by a *HeuristicError.
var ErrHeuristic = errors.New("dtx: heuristic outcome")

// PendingError: the global is decided and will commit, but these branches
// are not committed yet; Recover commits them.
type PendingError struct {
	Global  string
	Pending []string
	Err     error
}

func (e *PendingError) Error() string {
	return fmt.Sprintf("dtx: global %s is decided to commit; branches %s not committed yet (Recover retries them): %v", e.Global, strings.Join(e.Pending, ", "), e.Err)
}
func (e *PendingError) Is(target error) bool { return target == ErrPending }
func (e *PendingError) Unwrap() error        { return e.Err }

// HeuristicError: a branch of a global decided to commit was gone (rolled
// back or finished by someone else): the global may be half applied. It is
// also written to the log.
type HeuristicError struct {
	Global  string
	Gone    []string
	Pending []string
	Err     error
}

func (e *HeuristicError) Error() string {
	return fmt.Sprintf("dtx: heuristic outcome for global %s: branches %s were gone when they should have been committed", e.Global, strings.Join(e.Gone, ", "))
}
func (e *HeuristicError) Is(target error) bool { return target == ErrHeuristic }
func (e *HeuristicError) Unwrap() error        { return e.Err }

// Recover finishes what crashed or failed globals of this node left: for
// every resource, each prepared branch of this node's namespace is committed
// when its global has a commit decision, rolled back when it has none and is
// older than the grace, and left alone otherwise; a decision whose branches
// are all finished is forgotten. Globals in flight in this coordinator are
// never touched. Safe to run at any time and concurrently.
//
// Branches are finished in parallel (at most recoverParallel at a time): a
// MariaDB branch whose session is gone waits out the detach grace (1s by
// default) before it is finished, and one after the other that made
// recovery after a crash with many branches prepared take that many
// seconds while their rows stayed locked.
func (c *Coordinator) Recover(ctx context.Context) (RecoveryReport, error) {
	c.recoverMu.Lock()
	defer c.recoverMu.Unlock()
	var rep RecoveryReport
	decisions, err := c.log.Pending(ctx, c.node)
	if err != nil {
		return rep, fmt.Errorf("dtx: recover: reading the log: %w", err)
	}
	decided := map[string]Decision{}
	for _, d := range decisions {
		decided[d.Global] = d
	}
	open := map[string]bool{} // globals with a branch still prepared or unreachable
	seen := map[string]bool{}
	var errs []error
	type job struct {
		resource string
		name     string
		global   string
		commit   bool
	}
	var jobs, undecided []job
	resources := make([]string, 0, len(c.resources))
	for r := range c.resources {
		resources = append(resources, r)
	}
	sort.Strings(resources)
	for _, r := range resources {
		db := c.resources[r]
		ps, err := ListPrepared(ctx, db)
		if err != nil {
			errs = append(errs, fmt.Errorf("dtx: recover: resource %q: %w", r, err))
			for g := range decided {
				open[g] = true // cannot tell: keep every decision
			}
			continue
		}
		for _, p := range ps {
			global, ok := c.parseBranch(p.Name)
			if !ok || seen[p.Name] {
				continue
			}
			seen[p.Name] = true
			if c.inFlight(global) {
				// Its Do may still return with this branch pending
				// (PendingError) before this pass ends: keep its decision.
				// Without this the pass forgot the decision of a global
				// whose branch it saw prepared, and the next pass rolled
				// that branch back while the others were committed.
				open[global] = true
				continue
			}
			if _, ok := decided[global]; ok {
				jobs = append(jobs, job{r, p.Name, global, true})
				continue
			}
			if at, ok := globalTime(global); ok && time.Since(at) < c.grace {
				rep.Waiting = append(rep.Waiting, p.Name)
				continue
			}
			undecided = append(undecided, job{r, p.Name, global, false})
		}
	}
	if len(undecided) > 0 {
		// Read the log again before rolling anything back. The first read
		// may predate the decision of a global that was still in flight
		// then and has since returned with a branch pending: its decision
		// was written while it was in flight, so before the in-flight check
		// above, so before this read. Rolling that branch back on the
		// strength of the first read alone broke atomicity.
		again, err := c.log.Pending(ctx, c.node)
		if err != nil {
			errs = append(errs, fmt.Errorf("dtx: recover: reading the log: %w", err))
			undecided = nil // roll nothing back on an unreadable log
		}
		now := map[string]bool{}
		for _, d := range again {
			now[d.Global] = true
		}
		for _, j := range undecided {
			if now[j.global] {
				// Commit it; the decision is forgotten by a later pass.
				j.commit = true
				open[j.global] = true
			}
			jobs = append(jobs, j)
		}
	}
	var mu sync.Mutex
	sem := make(chan struct{}, recoverParallel)
	parallel(jobs, func(_ int, j job) error {
		sem <- struct{}{}
		defer func() { <-sem }()
		db := c.resources[j.resource]
		if j.commit {
			err := CommitPrepared(ctx, db, j.name)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && !errors.Is(err, ErrUnknownName) {
				errs = append(errs, fmt.Errorf("dtx: recover: commit %s: %w", j.name, err))
				open[j.global] = true
				return nil
			}
			rep.Committed = append(rep.Committed, j.name)
			return nil
		}
		err := RollbackPrepared(ctx, db, j.name)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil, errors.Is(err, ErrUnknownName):
			rep.RolledBack = append(rep.RolledBack, j.name)
		case errors.Is(err, ErrAlreadyFinished):
			// This process committed it after the listing: the branch of
			// a decided global that finished meanwhile. Nothing to do.
		default:
			errs = append(errs, fmt.Errorf("dtx: recover: roll back %s: %w", j.name, err))
		}
		return nil
	})
	for g := range decided {
		if open[g] || c.inFlight(g) {
			continue
		}
		if err := c.log.Forget(ctx, g); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Forgotten = append(rep.Forgotten, g)
	}
	sort.Strings(rep.Committed)
	sort.Strings(rep.RolledBack)
	sort.Strings(rep.Waiting)
	sort.Strings(rep.Forgotten)
	return rep, errors.Join(errs...)
}

// recoverParallel bounds how many branches one Recover pass finishes at once.
const recoverParallel = 16

func (c *Coordinator) inFlight(global string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.active[global]
}

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

// Close stops background recovery. It does not close the log or the
// resources, which the caller owns.
func (c *Coordinator) Close() error {
	c.closeOnce.Do(func() {
		select {
		case <-c.stopped:
		default:
			close(c.stop)
		}
		<-c.stopped
	})
	return nil
}
