package dtx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"
)

// RecoveryReport says what one Recover pass did, by branch name.
type RecoveryReport struct {
	Committed  []string // branches of decided globals, committed
	RolledBack []string // branches of aborted globals, rolled back
	Aborted    []string // globals this pass fenced off with an abort
	Waiting    []string // branches left alone: too young, in flight, held by a live session, or being decided
	Forgotten  []string // globals whose every branch is done, dropped from the log
	// Unresolved are decided globals kept in the log because a branch's
	// resource is not configured here or could not be listed, as
	// "global resource".
	Unresolved []string
}

// nodeRegistry is a store that knows which nodes write to it (SQLLog): only
// their globals may be taken over. A branch of a node that keeps its
// outcomes elsewhere (another application on the same server, a replica
// with its own FileLog) has no decision here, and aborting it would break
// its global.
type nodeRegistry interface {
	addNode(ctx context.Context, node string) error
	nodes(ctx context.Context) (map[string]bool, error)
}

// found is a prepared branch a recovery pass saw.
type found struct {
	resource string
	name     string
	node     string
}

// recoverJob finishes one branch.
type recoverJob struct {
	found
	global string
	commit bool
}

// Recover finishes what crashed, paused or failed globals left prepared, on
// every resource. For each global with a prepared branch:
//
//   - decided: its branches are committed, at once for this node's globals
//     and after AbandonAge for those of other nodes sharing the store;
//   - undecided, and older than RecoverGrace (this node) or AbandonAge
//     (another node of the store): recovery writes an abort under the
//     global's key first — the fence a late Decide meets — and then rolls
//     its branches back; if the key already holds a decision, it commits;
//   - otherwise, or in flight in this coordinator, it is left alone.
//
// A decision is forgotten only once every branch it names is on a resource
// configured and listed here and none is prepared any more; otherwise it is
// kept and reported Unresolved. Safe to run at any time, concurrently, and
// on every node at once: the store's key decides every race.
func (c *Coordinator) Recover(ctx context.Context) (RecoveryReport, error) {
	c.recoverMu.Lock()
	defer c.recoverMu.Unlock()
	var rep RecoveryReport
	decisions, err := c.log.Pending(ctx, "")
	if err != nil {
		return rep, fmt.Errorf("dtx: recover: reading the log: %w", err)
	}
	// read holds the decisions read before any listing: every branch of
	// these was prepared before the read, so the listings below see every
	// one not finished yet. Only these may be forgotten by this pass; a
	// decision found later (by Abort) may name a branch prepared after
	// its resource was listed.
	read := map[string]Decision{}
	decided := map[string]Decision{}
	for _, d := range decisions {
		read[d.Global] = d
		decided[d.Global] = d
	}
	peers, err := c.peers(ctx)
	if err != nil {
		return rep, fmt.Errorf("dtx: recover: reading the store's nodes: %w", err)
	}
	listed, byGlobal, errs := c.listBranches(ctx, peers)
	open := map[string]bool{} // globals with a branch not finished by this pass
	var jobs []recoverJob
	for _, global := range sortedKeys(byGlobal) {
		js, wait, err := c.plan(ctx, global, byGlobal[global], decided, &rep)
		if err != nil {
			errs = append(errs, err)
		}
		if wait || err != nil {
			open[global] = true
			for _, f := range byGlobal[global] {
				rep.Waiting = append(rep.Waiting, f.name)
			}
		}
		jobs = append(jobs, js...)
	}
	errs = append(errs, c.runJobs(ctx, jobs, open, &rep)...)
	errs = append(errs, c.forgetFinished(ctx, read, peers, listed, open, &rep)...)
	sort.Strings(rep.Committed)
	sort.Strings(rep.RolledBack)
	sort.Strings(rep.Aborted)
	sort.Strings(rep.Waiting)
	sort.Strings(rep.Forgotten)
	sort.Strings(rep.Unresolved)
	c.stats[gWaiting].Store(int64(len(rep.Waiting)))
	c.stats[gUnresolved].Store(int64(len(rep.Unresolved)))
	if len(rep.Unresolved) > 0 {
		c.obs.logAt(ctx, slog.LevelWarn, "dtx: recovery keeps decisions with branches it cannot see", slog.Any("unresolved", rep.Unresolved))
	}
	return rep, errors.Join(errs...)
}

// peers returns the nodes whose globals this one may take over: those
// writing to the same store, when the store knows them.
func (c *Coordinator) peers(ctx context.Context) (map[string]bool, error) {
	nr, ok := c.log.(nodeRegistry)
	if !ok || c.abandon < 0 {
		return map[string]bool{c.node: true}, nil
	}
	ns, err := nr.nodes(ctx)
	if err != nil {
		return nil, err
	}
	ns[c.node] = true
	return ns, nil
}

// listBranches lists every resource's prepared branches of peers' globals.
// A MariaDB server lists its xids to every database, so a name is kept once.
func (c *Coordinator) listBranches(ctx context.Context, peers map[string]bool) (listed map[string]bool, byGlobal map[string][]found, errs []error) {
	listed, byGlobal = map[string]bool{}, map[string][]found{}
	seen := map[string]bool{}
	for _, r := range c.names {
		ps, err := ListPrepared(ctx, c.resources[r])
		if err != nil {
			errs = append(errs, fmt.Errorf("dtx: recover: resource %q: %w", r, err))
			continue
		}
		listed[r] = true
		for _, p := range ps {
			node, global, ok := parseBranch(p.Name)
			if !ok || !peers[node] || seen[p.Name] {
				continue
			}
			if _, ok := globalTime(global); !ok {
				continue
			}
			seen[p.Name] = true
			byGlobal[global] = append(byGlobal[global], found{resource: r, name: p.Name, node: node})
		}
	}
	return listed, byGlobal, errs
}

// plan decides what to do with one global's prepared branches. It may fence
// the global (Abort), which is why it takes ctx.
func (c *Coordinator) plan(ctx context.Context, global string, fs []found, decided map[string]Decision, rep *RecoveryReport) (jobs []recoverJob, wait bool, err error) {
	if c.inFlight(global) {
		// Its Do may still return with a branch pending: keep its
		// decision and leave its branches to it.
		return nil, true, nil
	}
	at, _ := globalTime(global)
	own := fs[0].node == c.node
	age := time.Since(at)
	due := own && age >= c.grace || !own && c.abandon >= 0 && age >= c.abandon
	d, isDecided := decided[global]
	switch {
	case isDecided && (own || due):
		return c.jobs(global, fs, &d), false, nil
	case isDecided, !due:
		return nil, true, nil
	}
	dec, err := c.log.Abort(ctx, global)
	if err != nil {
		err = fmt.Errorf("dtx: recover: fencing global %s: %w", global, err)
		c.recovered(ctx, RecoveryAction{Kind: RecoverAbort, Global: global, Node: fs[0].node, Err: err})
		return nil, true, err
	}
	if dec != nil {
		// Decided after the log was read: commit.
		decided[global] = *dec
		return c.jobs(global, fs, dec), false, nil
	}
	rep.Aborted = append(rep.Aborted, global)
	c.recovered(ctx, RecoveryAction{Kind: RecoverAbort, Global: global, Node: fs[0].node}, slog.Duration(keyAge, age.Round(time.Millisecond)))
	return c.jobs(global, fs, nil), false, nil
}

// jobs finishes fs: committed when d is its decision, rolled back when nil.
// A decided branch is committed through the resource its decision names.
func (c *Coordinator) jobs(global string, fs []found, d *Decision) []recoverJob {
	js := make([]recoverJob, len(fs))
	for i, f := range fs {
		js[i] = recoverJob{found: f, global: global, commit: d != nil}
		if d == nil {
			continue
		}
		for _, b := range d.Branches {
			if b.Name == f.name && c.resources[b.Resource] != nil {
				js[i].resource = b.Resource
			}
		}
	}
	return js
}

// recoverParallel bounds how many branches one Recover pass finishes at
// once: a MariaDB branch whose session is gone waits out the detach grace
// (1s by default) first, and one after the other that made recovery after a
// crash with many branches prepared take that many seconds.
const recoverParallel = 16

// runJobs finishes the planned branches, at most recoverParallel at a time.
func (c *Coordinator) runJobs(ctx context.Context, jobs []recoverJob, open map[string]bool, rep *RecoveryReport) []error {
	var mu sync.Mutex
	var errs []error
	sem := make(chan struct{}, recoverParallel)
	parallel(jobs, func(_ int, j recoverJob) struct{} {
		sem <- struct{}{}
		defer func() { <-sem }()
		db := c.resources[j.resource]
		var err error
		if j.commit {
			err = CommitPrepared(ctx, db, j.name)
		} else {
			err = RollbackPrepared(ctx, db, j.name)
		}
		a := RecoveryAction{Kind: RecoverRollback, Global: j.global, Node: j.node, Name: j.name, Resource: j.resource}
		if j.commit {
			a.Kind = RecoverCommit
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err == nil, errors.Is(err, ErrUnknownName), j.commit && myErrno(err) == erXARBRollback:
			c.recovered(ctx, a)
			// Unknown: finished meanwhile, by Do's phase two or another
			// node's recovery, the same way (the fence allows no other).
			// XA_RBROLLBACK on a commit: a read-only branch.
			if j.commit {
				rep.Committed = append(rep.Committed, j.name)
			} else {
				rep.RolledBack = append(rep.RolledBack, j.name)
			}
		case errors.Is(err, ErrNameHeld):
			open[j.global] = true
			rep.Waiting = append(rep.Waiting, j.name)
		default:
			open[j.global] = true
			verb := "roll back"
			if j.commit {
				verb = "commit"
			}
			a.Err = fmt.Errorf("dtx: recover: %s %s: %w", verb, j.name, err)
			errs = append(errs, a.Err)
			c.recovered(ctx, a)
		}
		return struct{}{}
	})
	return errs
}

// forgetFinished drops the decisions read at the start of the pass whose
// every branch is known finished: on a resource listed by this pass, of a
// node whose branches it looked for, and not prepared any more.
func (c *Coordinator) forgetFinished(ctx context.Context, read map[string]Decision, peers, listed, open map[string]bool, rep *RecoveryReport) []error {
	var done []string
	for _, g := range sortedKeys(read) {
		if open[g] || c.inFlight(g) || !peers[read[g].Node] {
			continue
		}
		if r := c.unlisted(read[g], listed); r != "" {
			rep.Unresolved = append(rep.Unresolved, g+" "+r)
			continue
		}
		done = append(done, g)
	}
	if len(done) == 0 {
		return nil
	}
	if err := c.log.Forget(ctx, done...); err != nil {
		return []error{err}
	}
	rep.Forgotten = append(rep.Forgotten, done...)
	return nil
}

// unlisted returns a resource of d's branches that this pass could not
// look at (not configured, or its listing failed), or "".
func (c *Coordinator) unlisted(d Decision, listed map[string]bool) string {
	for _, b := range d.Branches {
		if !listed[b.Resource] {
			return b.Resource
		}
	}
	return ""
}

// recovered counts and reports one recovery action: Hooks.Recovery, a line
// at Info when it was done, at Warn when it failed.
func (c *Coordinator) recovered(ctx context.Context, a RecoveryAction, extra ...slog.Attr) {
	switch {
	case a.Err != nil:
		c.stats[gRecoveryErrors].Add(1)
	case a.Kind == RecoverCommit:
		c.stats[gRecoveredCommits].Add(1)
	case a.Kind == RecoverRollback:
		c.stats[gRecoveredRollbacks].Add(1)
	default:
		c.stats[gRecoveryAborts].Add(1)
	}
	if h := c.obs.hks(); h != nil && h.Recovery != nil {
		h.Recovery(ctx, a)
	}
	l := c.obs.log()
	if l == nil {
		return
	}
	msg, level := recoveryLines[a.Kind], slog.LevelInfo
	attrs := append([]slog.Attr{slog.String(keyGlobal, a.Global), slog.String(keyNode, a.Node)}, extra...)
	if a.Name != "" {
		attrs = append(attrs, slog.String(keyBranch, a.Name), slog.String(keyResource, a.Resource))
	}
	if a.Err != nil {
		msg, level = "dtx: recovery failed to "+a.Kind.String(), slog.LevelWarn
		attrs = append(attrs, slog.Bool(keyRetryable, Retryable(a.Err)), slog.Any(keyErr, a.Err))
	}
	l.LogAttrs(ctx, level, msg, attrs...)
}

// recoveryLines are the messages of recovery actions done.
var recoveryLines = [...]string{
	RecoverCommit:   "dtx: recovery committed a branch",
	RecoverRollback: "dtx: recovery rolled back a branch",
	RecoverAbort:    "dtx: recovery aborted an undecided global",
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
