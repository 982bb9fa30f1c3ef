package dtx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Global is one global transaction in progress, handed to the function given
// to Coordinator.Do.
type Global struct {
	c        *Coordinator
	id       string
	hctx     context.Context // Do's context as Hooks.Start returned it: its phases' parent
	mode     Mode            // known once fn returned
	nb       int             // branches begun, once fn returned (live)
	mu       sync.Mutex
	branches []*branch
	closed   bool
}

// branch is one database's part of a global.
type branch struct {
	n        int // its number in the global, in Begin order
	resource string
	name     string
	db       *sql.DB
	conn     *sql.Conn // held from Begin until the global is finished
	tx       *sql.Tx
	readOnly bool // begun read-only: votes read-only, no phase two
	// prepared: the branch is, or may be, prepared on its server, so only
	// a rollback by name undoes it.
	prepared bool
}

// Begin starts a branch on the resource named resource: an ordinary *sql.Tx
// whose Commit and Rollback belong to the coordinator (do not call them).
// A branch begun with opts.ReadOnly is committed in one phase at the vote
// and takes no part in phase two.
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
	b := &branch{n: n, resource: resource, name: g.c.branchName(g.id, n), db: db, readOnly: opts != nil && opts.ReadOnly}
	// The branch keeps its connection until the global is finished, as
	// hand-written two-phase commit does: released at the prepare, it
	// would sit idle while the global commits, and a pool at database/sql's
	// defaults (2 idle) closes such connections and dials new ones.
	sp := g.c.obs.start(ctx, Op{Kind: OpBegin, Global: g.id, Name: b.name, Resource: resource, System: g.c.systems[resource]})
	cn, err := db.Conn(sp.ctx)
	var tx *sql.Tx
	if err == nil {
		tx, err = cn.BeginTx(withNameDB(sp.ctx, b.name, db), opts)
		if err != nil {
			cn.Close()
		}
	}
	sp.end(err)
	g.mu.Lock()
	defer g.mu.Unlock()
	g.branches[n] = b
	if err != nil {
		return nil, err
	}
	b.conn, b.tx = cn, tx
	return tx, nil
}

// ID is the global's id (a UUIDv7 in hex).
func (g *Global) ID() string { return g.id }

// release gives every branch's connection back to its pool, once the global
// is finished (or left to recovery).
func (g *Global) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, b := range g.branches {
		if b != nil && b.conn != nil {
			b.conn.Close()
			b.conn = nil
		}
	}
}

// lent is ctx lending branch name's connection to its phase two.
func (g *Global) lent(ctx context.Context, name string) context.Context {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, b := range g.branches {
		if b != nil && b.name == name && b.conn != nil {
			return finishOn(ctx, b.db, b.conn)
		}
	}
	return ctx
}

// run calls fn, rolling back every branch when it fails or panics.
func (g *Global) run(ctx context.Context, fn func(context.Context, *Global) error) (err error) {
	ok := false
	defer func() {
		if !ok {
			g.rollback(g.live())
			g.release()
		}
	}()
	err = fn(ctx, g)
	if err == nil {
		err = ctx.Err()
	}
	if err != nil {
		return g.rolledBack(err)
	}
	ok = true
	return nil
}

func (g *Global) rolledBack(err error) error {
	return fmt.Errorf("%w: global %s: %w", ErrRolledBack, g.id, err)
}

// live closes the global to new branches and returns those that began.
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
	g.nb = len(bs)
	return bs
}

// commit is everything after fn succeeded: the vote, the decision and
// phase two. ctx is the caller's, tctx the one bounded by the timeout.
func (g *Global) commit(ctx, tctx context.Context) error {
	async := false
	defer func() {
		if !async {
			g.release()
		}
	}()
	bs := g.live()
	var ro, rw []*branch
	for _, b := range bs {
		if b.readOnly {
			ro = append(ro, b)
		} else {
			rw = append(rw, b)
		}
	}
	if len(rw) <= 1 {
		g.mode = ModeOnePhase
		sp := g.phase(ctx, OpCommit)
		err := g.commitOnePhase(tctx, ro, rw)
		sp.end(err)
		return err
	}
	g.mode = ModeTwoPhase
	decider, others := g.split(rw)
	d := Decision{Global: g.id, Node: g.c.node, At: time.Now().UTC()}
	for _, b := range rw {
		d.Branches = append(d.Branches, BranchRef{Resource: b.resource, Name: b.name})
	}
	hook("before-prepare")
	sp := g.phase(ctx, OpPrepare)
	err := g.vote(tctx, ro, others, decider, d)
	sp.end(err)
	if err != nil {
		g.rollback(bs)
		return g.rolledBack(err)
	}
	sp = g.phase(ctx, OpDecide)
	err = g.decide(ctx, decider, others, d)
	sp.end(err)
	if err != nil {
		return err
	}
	hook("decided")
	refs := make([]BranchRef, len(others))
	for i, b := range others {
		refs[i] = BranchRef{Resource: b.resource, Name: b.name}
	}
	// Phase two runs to completion under its own deadline, whatever the
	// caller's ctx does: the outcome is commit already.
	sp = g.phase(ctx, OpCommit)
	pctx, cancel := context.WithTimeout(context.WithoutCancel(sp.ctx), g.c.timeout)
	if g.c.async {
		async = true
		g.c.phase2.Add(1)
		go func() {
			defer g.c.phase2.Done()
			defer g.release()
			defer cancel()
			err := g.c.commitBranches(pctx, d, refs, g)
			sp.end(err)
			if err != nil {
				g.c.obs.logAt(pctx, slog.LevelWarn, "dtx: asynchronous phase two incomplete", slog.String(keyGlobal, g.id), slog.Any(keyErr, err))
			}
		}()
		return nil
	}
	defer cancel()
	err = g.c.commitBranches(pctx, d, refs, g)
	sp.end(err)
	return err
}

// phase begins observing one phase of g.
func (g *Global) phase(ctx context.Context, kind OpKind) opSpan {
	return g.c.obs.start(ctx, Op{Kind: kind, Mode: g.mode, Global: g.id, Branches: g.nb})
}

// split picks the branch whose one-phase commit is the decision: the first
// on the decision resource, when outcomes live there.
func (g *Global) split(rw []*branch) (decider *branch, others []*branch) {
	for _, b := range rw {
		if decider == nil && g.c.decider != "" && b.resource == g.c.decider {
			decider = b
			continue
		}
		others = append(others, b)
	}
	return decider, others
}

// commitOnePhase commits a global with at most one branch that writes: no
// prepare and no decision are needed. Read-only branches commit first; if
// one fails, the writer is rolled back.
func (g *Global) commitOnePhase(ctx context.Context, ro, rw []*branch) error {
	if errs := parallel(ro, func(_ int, b *branch) error { return g.commitReadOnly(b) }); errors.Join(errs...) != nil {
		g.rollback(rw)
		return g.rolledBack(errors.Join(errs...))
	}
	if len(rw) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		g.rollback(rw)
		return g.rolledBack(err)
	}
	b := rw[0]
	reg.setOnePhase(b.name)
	hook("before-commit-one-phase")
	err := b.tx.Commit()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ErrOutcomeUnknown), errors.Is(err, ErrRolledBack):
		return fmt.Errorf("dtx: global %s: %w", g.id, err)
	}
	return g.rolledBack(err)
}

// commitReadOnly is a read-only branch's vote: it commits in one phase, as
// its outcome cannot matter to the others.
func (g *Global) commitReadOnly(b *branch) error {
	reg.setOnePhase(b.name)
	return b.tx.Commit()
}

// vote is phase one: every read-only branch commits, every other branch but
// the decider prepares, and the decision row goes into the decider's branch,
// all in parallel. It fails if any of them fails, or if the timeout passed.
func (g *Global) vote(ctx context.Context, ro, others []*branch, decider *branch, d Decision) error {
	var jobs []func() error
	for _, b := range ro {
		jobs = append(jobs, func() error { return g.commitReadOnly(b) })
	}
	for _, b := range others {
		jobs = append(jobs, func() error {
			err := b.tx.Commit()
			if err == nil || errors.Is(err, ErrOutcomeUnknown) {
				b.prepared = true
			}
			if err == nil {
				hook("prepared:" + strconv.Itoa(b.n))
			}
			return err
		})
	}
	if decider != nil {
		jobs = append(jobs, func() error { return g.c.sqlLog.decideIn(ctx, decider.tx, d) })
	}
	err := errors.Join(parallel(jobs, func(_ int, f func() error) error { return f() })...)
	if cerr := ctx.Err(); cerr != nil {
		// The caller's cancel or the timeout is the cause; what it cut
		// off (a bad connection) is the detail.
		return errors.Join(cerr, err)
	}
	return err
}

// decide makes the commit decision durable: the decider's one-phase commit,
// or a Decide in the store. When its outcome is unknown, an Abort in the
// store settles it: the two race for the global's key, so the answer is
// final either way. It returns nil when the global is decided; otherwise
// the branches are rolled back (or left prepared when nothing could be
// settled) and the error says which.
func (g *Global) decide(ctx context.Context, decider *branch, others []*branch, d Decision) error {
	all := others
	if decider != nil {
		all = append([]*branch{decider}, others...)
	}
	if err := ctx.Err(); err != nil {
		// The caller gave up before the decision: roll back now rather
		// than leave the branches to recovery.
		g.rollback(all)
		return g.rolledBack(err)
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.c.timeout)
	defer cancel()
	var err error
	if decider != nil {
		reg.setOnePhase(decider.name)
		hook("before-decide")
		err = decider.tx.Commit()
		if err != nil && !errors.Is(err, ErrOutcomeUnknown) {
			g.rollback(others)
			return g.rolledBack(err)
		}
	} else {
		hook("before-decide")
		err = g.c.log.Decide(dctx, d)
		if errors.Is(err, ErrAborted) || errors.Is(err, ErrNotDecided) {
			g.rollback(others)
			return g.rolledBack(err)
		}
	}
	if err == nil {
		return nil
	}
	decided, ferr := g.c.log.Abort(dctx, g.id)
	switch {
	case ferr != nil:
		return fmt.Errorf("%w: global %s: the decision could not be confirmed (%w) nor fenced (%w); its branches stay prepared until Recover settles them", ErrOutcomeUnknown, g.id, err, ferr)
	case decided != nil:
		return nil
	}
	g.rollback(others)
	return g.rolledBack(fmt.Errorf("the decision was not recorded and is now fenced off: %w", err))
}

// rollback rolls back every branch of bs: by name those that are or may be
// prepared, through their *sql.Tx the others. A prepared branch whose
// rollback fails stays prepared without a decision: recovery aborts it.
func (g *Global) rollback(bs []*branch) {
	if len(bs) == 0 {
		return
	}
	hctx := g.hctx
	if hctx == nil {
		hctx = context.Background()
	}
	sp := g.phase(hctx, OpRollback)
	rctx, cancel := cleanupCtx(context.Background())
	defer cancel()
	errs := parallel(bs, func(_ int, b *branch) error {
		if !b.prepared {
			b.tx.Rollback()
			return nil
		}
		err := RollbackDistributed(rctx, b.name)
		if errors.Is(err, ErrUnknownName) {
			return nil
		}
		return err
	})
	err := errors.Join(errs...)
	sp.end(err)
	if err != nil {
		g.c.obs.logAt(sp.ctx, slog.LevelWarn, "dtx: rolling back a global left branches for recovery", slog.String(keyGlobal, g.id), slog.Any(keyErr, err))
	}
}

// commitBranches is phase two of a decided global: commit every branch in
// refs in parallel, retrying while ctx allows, and queue the decision to be
// forgotten once all are. The first attempt for each branch runs on the
// branch's own connection (g lends it).
func (c *Coordinator) commitBranches(ctx context.Context, d Decision, refs []BranchRef, g *Global) error {
	outs := parallel(refs, func(_ int, b BranchRef) branchOutcome {
		out := c.commitBranch(ctx, b, g.lent(ctx, b.Name))
		if out.err == nil {
			hook("committed:" + b.Name[strings.LastIndexByte(b.Name, '.')+1:])
		}
		return out
	})
	var pending, gone []string
	var errs []error
	for i, out := range outs {
		switch {
		case out.err == nil:
		case out.heuristic:
			gone = append(gone, refs[i].Name)
			errs = append(errs, out.err)
		default:
			pending = append(pending, refs[i].Name)
			errs = append(errs, out.err)
		}
	}
	if len(gone) > 0 {
		herr := &HeuristicError{Global: d.Global, Gone: gone, Pending: pending, Err: errors.Join(errs...)}
		c.log.Heuristic(context.WithoutCancel(ctx), d.Global, herr.Error())
		c.stats[gHeuristic].Add(1)
		c.obs.outcome(ctx, Outcome{Kind: OutcomeHeuristic, Global: d.Global, Branches: gone, Err: herr})
		return herr
	}
	if len(pending) > 0 {
		perr := &PendingError{Global: d.Global, Pending: pending, Err: errors.Join(errs...)}
		c.stats[gPending].Add(1)
		c.obs.outcome(ctx, Outcome{Kind: OutcomePending, Global: d.Global, Branches: pending, Err: perr})
		return perr
	}
	hook("before-done")
	c.forgetLater(d.Global)
	return nil
}

// branchOutcome is how phase two left one branch: committed (err nil),
// finished the other way or gone (heuristic), or not yet (pending).
type branchOutcome struct {
	err       error
	heuristic bool
}

// commitBranch commits one decided branch, retrying transient failures with
// backoff while ctx allows.
//
// A branch that is no longer prepared after an attempt whose outcome was
// unknown (a lost reply) was committed by that attempt, and one gone after
// the abandon age was committed by another node's recovery: the fence keeps
// dtx from rolling back a decided global. Otherwise a gone branch was
// finished by hand, which is a heuristic outcome. A
// MariaDB branch that answers XA_RBROLLBACK was read-only or empty: the
// server had nothing to commit, which is a commit.
func (c *Coordinator) commitBranch(ctx context.Context, b BranchRef, first context.Context) branchOutcome {
	unsure := false
	wait := 10 * time.Millisecond
	for try := 0; ; try++ {
		actx := ctx
		if try == 0 {
			actx = first // a retry never reuses a connection that may be broken
		}
		err := CommitDistributed(actx, b.Name)
		switch {
		case err == nil:
			return branchOutcome{}
		case errors.Is(err, ErrUnknownName):
			if unsure || errors.Is(err, ErrOutcomeUnknown) || c.takenOver(b.Name) {
				return branchOutcome{}
			}
			return branchOutcome{err: err, heuristic: true}
		case myErrno(err) == erXARBRollback:
			return branchOutcome{}
		case errors.Is(err, ErrAlreadyFinished):
			return branchOutcome{err: err, heuristic: true}
		case errors.Is(err, ErrInvalidName):
			return branchOutcome{err: err}
		case errors.Is(err, ErrOutcomeUnknown):
			unsure = true
		}
		if sleepCtx(ctx, wait) != nil {
			return branchOutcome{err: err}
		}
		wait = min(2*wait, time.Second)
	}
}

// takenOver reports whether another node's recovery may have finished the
// branch: its global is past the abandon age (this coordinator was paused
// or cut off that long). Recovery commits a decided global's branches and
// never rolls them back, so a branch gone then was committed.
func (c *Coordinator) takenOver(branch string) bool {
	_, global, ok := parseBranch(branch)
	if !ok || c.abandon < 0 {
		return false
	}
	at, ok := globalTime(global)
	return ok && time.Since(at) >= c.abandon
}

func parallel[T, R any](items []T, f func(int, T) R) []R {
	out := make([]R, len(items))
	if len(items) == 1 {
		out[0] = f(0, items[0])
		return out
	}
	var wg sync.WaitGroup
	for i, it := range items {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = f(i, it)
		}()
	}
	wg.Wait()
	return out
}

// ErrPending is matched (errors.Is) by a *PendingError.
var ErrPending = errors.New("dtx: global committed, some branches still pending")

// ErrHeuristic is matched (errors.Is) by a *HeuristicError.
var ErrHeuristic = errors.New("dtx: heuristic outcome")

// PendingError: the global is decided and will commit, but these branches
// are not committed yet; Recover commits them.
type PendingError struct {
	Global  string   // the global's id
	Pending []string // the branches not committed yet
	Err     error    // why, per branch
}

// Error implements error.
func (e *PendingError) Error() string {
	return fmt.Sprintf("dtx: global %s is decided to commit; branches %s not committed yet (Recover retries them): %v", e.Global, strings.Join(e.Pending, ", "), e.Err)
}

// Is makes errors.Is(err, ErrPending) true.
func (e *PendingError) Is(target error) bool { return target == ErrPending }

// Unwrap returns the branches' errors.
func (e *PendingError) Unwrap() error { return e.Err }

// HeuristicError: a branch of a global decided to commit was found rolled
// back or gone without dtx having committed it (someone finished it by hand
// the other way): the global may be half applied. It is also written to
// the log.
type HeuristicError struct {
	Global  string   // the global's id
	Gone    []string // branches found finished the other way or gone
	Pending []string // branches not committed yet
	Err     error    // why, per branch
}

// Error implements error.
func (e *HeuristicError) Error() string {
	return fmt.Sprintf("dtx: heuristic outcome for global %s: branches %s were rolled back or gone when they should have been committed", e.Global, strings.Join(e.Gone, ", "))
}

// Is makes errors.Is(err, ErrHeuristic) true.
func (e *HeuristicError) Is(target error) bool { return target == ErrHeuristic }

// Unwrap returns the branches' errors.
func (e *HeuristicError) Unwrap() error { return e.Err }
