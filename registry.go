package dtx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
)

// reg is the package registry of global names: which are active, which are
// prepared and where, which were finished (kept for retry-safe finishing),
// and every connector this process opened, to search after a restart.
var reg = &registry{names: map[string]*entry{}, connectors: map[*connector]struct{}{}, every: map[*connector]struct{}{}}

// keepFinished is how many finished names the registry remembers, so that
// finishing one again the same way answers nil.
const keepFinished = 10000

type state int

const (
	stActive state = iota
	stPrepared
	stUncertain // prepare's outcome is unknown
	stCommitted
	stRolledBack
)

type registry struct {
	mu         sync.Mutex
	names      map[string]*entry
	finished   []string // oldest first
	connectors map[*connector]struct{}
	every      map[*connector]struct{} // connectors too, WithoutSearch ones included (StatsOf)
}

// entry is one global name. state is guarded by registry.mu; the rest by
// entry.mu, which also makes phase two on one name run once at a time.
type entry struct {
	name     string
	c        *connector
	state    state
	onePhase bool // commit without prepare (a global's only branch)

	at place // where a name finished outside a transaction of this process was

	mu       sync.Mutex
	held     driver.Conn // MySQL: the session the branch is bound to
	home     *conn       // the conn whose session held was, while it may still be
	pin      *sql.Conn   // BeginDistributed's conn, kept out of the pool until phase two
	detached time.Time   // when dtx closed the branch's session
	unsure   bool        // an earlier phase two's outcome is unknown
	thread   uint32      // the server session a lost prepare ran on, until ended (Dialect.fence)
}

// addConnector makes c's database one that a by-name finish searches,
// unless c was made with WithoutSearch.
func (r *registry) addConnector(c *connector) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.every[c] = struct{}{}
	if !c.opts.unsearched {
		r.connectors[c] = struct{}{}
	}
}

func (r *registry) removeConnector(c *connector) {
	r.mu.Lock()
	delete(r.connectors, c)
	delete(r.every, c)
	r.mu.Unlock()
}

// connectorOf returns the open connector that knows db as its pool, or nil.
func (r *registry) connectorOf(db *sql.DB) *connector {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range r.every {
		if c.db.Load() == db {
			return c
		}
	}
	return nil
}

// reserve claims name for a transaction about to begin on c.
func (r *registry) reserve(name string, c *connector) (*entry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.freeLocked(name); err != nil {
		return nil, err
	}
	e := &entry{name: name, c: c}
	r.names[name] = e
	return e, nil
}

// free returns the error reserve would give for name, or nil.
func (r *registry) free(name string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.freeLocked(name)
}

func (r *registry) freeLocked(name string) error {
	e, ok := r.names[name]
	if !ok {
		return nil
	}
	switch e.state {
	case stActive:
		return fmt.Errorf("%w: %q is active in this process (its transaction has not ended)", ErrNameInUse, name)
	case stPrepared:
		return fmt.Errorf("%w: %q is prepared in this process; finish it first", ErrNameInUse, name)
	case stUncertain:
		return fmt.Errorf("%w: %q is in doubt in this process (whether its prepare took effect is unknown); finish it by name, or drop it with dtx.Forget", ErrNameInUse, name)
	}
	return nil
}

func (r *registry) lookup(name string) *entry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.names[name]
}

// setOnePhase makes the active transaction name commit in one phase.
func (r *registry) setOnePhase(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.names[name]; e != nil && e.state == stActive {
		e.onePhase = true
	}
}

func (r *registry) isOnePhase(e *entry) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return e.onePhase
}

func (r *registry) drop(e *entry) {
	r.mu.Lock()
	if r.names[e.name] == e {
		delete(r.names, e.name)
		countState(e, e.state, -1)
	}
	r.mu.Unlock()
}

// setState moves e to state s. The Stats gauges count the entries of
// r.names by state: an entry forgotten meanwhile is not counted again.
func (r *registry) setState(e *entry, s state) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.names[e.name] == e {
		countState(e, e.state, -1)
		countState(e, s, 1)
	}
	e.state = s
	if s < stCommitted {
		return
	}
	r.finished = append(r.finished, e.name)
	if len(r.finished) > keepFinished {
		old := r.finished[0]
		r.finished = r.finished[1:]
		if o := r.names[old]; o != nil && o.state >= stCommitted {
			delete(r.names, old)
		}
	}
}

func (r *registry) getState(e *entry) state {
	r.mu.Lock()
	defer r.mu.Unlock()
	return e.state
}

// prepared records that e's transaction is prepared; held is the session it
// is bound to (MySQL), or nil, and home the conn that prepared it on that
// session. The session is held first, so that Forget, which takes only
// prepared names, never misses it.
func (r *registry) prepared(e *entry, held driver.Conn, home *conn) {
	if held != nil {
		e.c.hold(e, held, home)
	}
	r.setState(e, stPrepared)
}

// pin gives the prepared name's entry the *sql.Conn its transaction ran
// on, to keep out of the pool until phase two (see BeginDistributed); when
// the session already left that conn, or the name is finished, or the pool
// has no room for it, cn goes back to the pool at once.
//
// The room: a pool of at most maxOpen connections (SetMaxOpenConns; 0 for
// no limit) keeps at most half of them pinned (connector.tryPin). The rest serve everybody
// else, the pinning caller too: one that prepares several names, or runs a
// query, before committing them never waits for a connection that only its
// own later commit would free, as it would if every connection were pinned.
// A connection over the bound goes back to the pool, and its session
// leaves it for the branch if it is used before phase two (conn.settle).
func (r *registry) pin(name string, cn *sql.Conn, maxOpen int) {
	e := r.lookup(name)
	if e == nil {
		cn.Close()
		return
	}
	e.mu.Lock()
	if e.home != nil && e.home.home.Load() == e && e.pin == nil && e.c.tryPin(maxOpen) {
		e.pin, cn = cn, nil
	}
	e.mu.Unlock()
	if cn != nil {
		cn.Close()
	}
}

// unpin gives e's pinned conn back to the pool; e.mu is held.
func (e *entry) unpin() {
	if e.pin != nil {
		e.pin.Close()
		e.pin = nil
		e.c.pinned.Add(-1)
	}
}

// uncertain records that e's prepare has an unknown outcome; thread is the
// server session it ran on (a MySQL thread, a PostgreSQL backend), when
// known, which phase two ends first (Dialect.fence).
func (r *registry) uncertain(e *entry, thread uint32) {
	e.mu.Lock()
	e.detached = time.Now()
	e.thread = thread
	e.mu.Unlock()
	r.setState(e, stUncertain)
}

// finish is phase two of name: commit or roll back. A context from
// WithDatabases bounds the databases it searches.
func (r *registry) finish(ctx context.Context, name string, commit bool) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dtx: %q not finished, nothing was sent: %w", name, err)
	}
	e := r.lookup(name)
	if e == nil {
		return r.search(ctx, name, commit)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	switch st := r.getState(e); {
	case st == stActive:
		return fmt.Errorf("%w: %q is still running; commit its transaction first", ErrNotPrepared, name)
	case st >= stCommitted:
		// Finished here before. If the database where it finished has
		// the name prepared again (another process reused it), that one
		// is finished; otherwise memory answers, so that a retry is safe.
		ps, ok, err := searched(ctx)
		if err != nil {
			return err
		}
		if !ok {
			ps = r.placesOf(e)
		}
		p, err := r.locate(ctx, name, ps)
		if p != nil {
			return r.finishAt(ctx, *p, name, commit)
		}
		if err != nil {
			return err
		}
		switch {
		case st == stCommitted && commit, st == stRolledBack && !commit:
			return nil
		case st == stCommitted:
			return fmt.Errorf("%w: %q was committed", ErrAlreadyFinished, name)
		}
		return fmt.Errorf("%w: %q was rolled back", ErrAlreadyFinished, name)
	}
	err := e.c.phaseTwo(ctx, e, commit)
	switch {
	case err == nil:
		r.setState(e, finalState(commit))
	case errors.Is(err, ErrUnknownName):
		if e.unsure {
			err = fmt.Errorf("%w: %q is no longer prepared after an earlier attempt whose outcome was unknown: %w", ErrOutcomeUnknown, name, err)
		}
		r.drop(e)
	}
	return err
}

// forget drops name from the registry; see Forget.
func (r *registry) forget(name string) error {
	e := r.lookup(name)
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	r.mu.Lock()
	if r.names[name] != e {
		r.mu.Unlock()
		return nil // finished and replaced meanwhile
	}
	if e.state == stActive {
		r.mu.Unlock()
		return fmt.Errorf("%w: %q is active in this process: end its transaction instead", ErrNameInUse, name)
	}
	delete(r.names, name)
	countState(e, e.state, -1)
	r.mu.Unlock()
	if e.c != nil {
		e.c.releaseLocked(e, ReleaseForget)
	}
	return nil
}

func finalState(commit bool) state {
	if commit {
		return stCommitted
	}
	return stRolledBack
}

// A place is a database where a name can be searched for and finished.
type place struct {
	d     Dialect
	db    *sql.DB
	grace time.Duration
	c     *connector // nil for a database known only by its *sql.DB
}

// observer is where p's logs and hooks go: its connector's, else its
// driver's (a place is copied into every remembered entry, so it keeps no
// pointer of its own for this).
func (p place) observer() *observer {
	if p.c != nil {
		return &p.c.drv.obs
	}
	if d, err := driverOf(p.db); err == nil {
		return &d.obs
	}
	return &silent
}

// silent observes nothing but the process defaults.
var silent observer

func placeOfConnector(c *connector) place {
	return place{d: c.dialect(), db: c.pool(), grace: c.opts.detachGrace, c: c}
}

func placeOfDB(db *sql.DB) (place, error) {
	d, err := driverOf(db)
	if err != nil {
		return place{}, err
	}
	return place{d: d.dialect, db: db, grace: defaultOptions(d.opts).detachGrace}, nil
}

// placesOf is where a finished e can be prepared again: where it was, when
// known and still open, else every searched database.
func (r *registry) placesOf(e *entry) []place {
	switch {
	case e.c != nil && !e.c.isClosed():
		return []place{placeOfConnector(e.c)}
	case e.at.db != nil:
		return []place{e.at}
	}
	return r.all()
}

// all is every database a by-name finish searches when its context names
// none: those opened through dtx in this process, not closed, and not
// made WithoutSearch.
func (r *registry) all() []place {
	r.mu.Lock()
	cs := make([]*connector, 0, len(r.connectors))
	for c := range r.connectors {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	ps := make([]place, len(cs))
	for i, c := range cs {
		ps[i] = placeOfConnector(c)
	}
	return ps
}

// search finishes a name this process does not know (it restarted, or
// another process prepared it) in the database where it is prepared, among
// those the context names (WithDatabases) or else all r searches.
func (r *registry) search(ctx context.Context, name string, commit bool) error {
	ps, ok, err := searched(ctx)
	if err != nil {
		return err
	}
	scope := "any database named by dtx.WithDatabases"
	if !ok {
		ps = r.all()
		scope = "any database opened through dtx in this process"
	}
	p, err := r.locate(ctx, name, ps)
	if p != nil {
		return r.finishAt(ctx, *p, name, commit)
	}
	if err != nil {
		return err
	}
	return fmt.Errorf("%w: %q is not prepared in %s (%d searched)", ErrUnknownName, name, scope, len(ps))
}

// locate returns a place among ps where name is prepared. When none has it
// and some could not be listed, the error says how many answered and
// joins the others' errors: an unlisted database may have the name, so the
// error is not ErrUnknownName.
func (r *registry) locate(ctx context.Context, name string, ps []place) (*place, error) {
	var errs []error
	for i := range ps {
		list, err := ps[i].d.list(ctx, ps[i].db)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, p := range list {
			if p.Name == name {
				return &ps[i], nil
			}
		}
	}
	if len(errs) == 0 {
		return nil, nil
	}
	return nil, fmt.Errorf("dtx: %q is not prepared in the %d of %d databases searched that could be listed; %d could not be listed: %w",
		name, len(ps)-len(errs), len(ps), len(errs), errors.Join(errs...))
}

// finishAt finishes name, prepared in p's database, from another session.
func (r *registry) finishAt(ctx context.Context, p place, name string, commit bool) error {
	o := p.observer()
	sp := o.startNamed(ctx, finishKind(commit), name, p.d)
	err := p.d.finish(ctx, p.db, name, commit, time.Time{}, p.grace)
	o.endNamed(&sp, p.c, finishKind(commit), name, err)
	if err != nil {
		return err
	}
	r.remember(name, p, commit)
	return nil
}

// remember records a name finished outside a transaction of this process,
// and where.
func (r *registry) remember(name string, p place, commit bool) {
	e := &entry{name: name, c: p.c, at: p}
	r.mu.Lock()
	if old, ok := r.names[name]; ok && old.state <= stUncertain {
		r.mu.Unlock()
		return
	}
	r.names[name] = e
	r.mu.Unlock()
	r.setState(e, finalState(commit))
}

// phaseTwo finishes e, which is prepared; e.mu is held.
func (c *connector) phaseTwo(ctx context.Context, e *entry, commit bool) error {
	if e.held == nil && c.isClosed() {
		return reg.search(ctx, e.name, commit) // observed where it is found
	}
	o := &c.drv.obs
	sp := o.startNamed(ctx, finishKind(commit), e.name, c.dialect())
	err := c.phaseTwoOn(ctx, e, commit)
	o.endNamed(&sp, c, finishKind(commit), e.name, err)
	return err
}

// phaseTwoOn is phaseTwo on the session e holds, or from c's pool.
func (c *connector) phaseTwoOn(ctx context.Context, e *entry, commit bool) error {
	d := c.dialect()
	if s := e.held; s != nil {
		atHome, err := c.finishAtHome(ctx, e, commit)
		if !atHome {
			err = d.finishHeld(ctx, s, e.name, commit)
		}
		if err == nil {
			e.held, e.home = nil, nil
			at, held := c.unhold(e)
			if held {
				c.heldEnded(SessionEvent{Kind: SessionFinished, Name: e.name, HeldFor: time.Since(at)})
			}
			switch {
			case atHome && held:
				c.ss.holding(-1) // the session stays its conn's
			case held:
				c.ss.recycle(s)
			case !atHome:
				c.ss.closeSession(s)
			}
			e.unpin()
			return nil
		}
		if errors.Is(err, ErrOutcomeUnknown) {
			e.unsure = true
			c.releaseLocked(e, ReleaseUnknown)
		}
		return err
	}
	if e.thread != 0 {
		// The prepare may still be on its way to that session: end it on
		// the server first, or the server could prepare after this phase
		// two found nothing.
		gone, err := d.fence(ctx, c.pool(), e.thread)
		if err != nil {
			return err
		}
		e.thread = 0
		if gone.After(e.detached) {
			e.detached = gone
		}
	}
	err := d.finish(ctx, c.pool(), e.name, commit, e.detached, c.opts.detachGrace)
	if errors.Is(err, ErrOutcomeUnknown) {
		e.unsure = true
	}
	return err
}

// finishAtHome is phase two of e on its session while that is still the
// session of the conn that prepared it, which is not used meanwhile (it
// waits in settle). It reports false, having sent nothing, when the conn
// has given the session up; the session is then e's alone. e.mu is held.
func (c *connector) finishAtHome(ctx context.Context, e *entry, commit bool) (bool, error) {
	h := e.home
	if h == nil {
		return false, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.home.Load() != e {
		e.home = nil
		return false, nil
	}
	err := c.dialect().finishHeld(ctx, e.held, e.name, commit)
	if err == nil {
		h.home.Store(nil)
	}
	return true, err
}

// hold keeps s, the session e's branch is bound to, out of the pool until
// phase two, for at most the hold timeout; over the hold limit the session
// held longest is released. home is the conn that prepared on s.
func (c *connector) hold(e *entry, s driver.Conn, home *conn) {
	e.mu.Lock()
	e.held = s
	if home != nil {
		e.home = home
		home.home.Store(e)
	}
	e.mu.Unlock()
	c.mu.Lock()
	if c.heldAt == nil {
		c.heldAt = map[*entry]time.Time{}
	}
	now := time.Now()
	c.heldAt[e] = now
	c.armSweepLocked(now)
	c.ss.holding(1)
	count(c, cHeld, 1)
	var victim *entry
	reason := ReleaseLimit
	if len(c.heldAt) > c.opts.holdLimit || c.closed {
		for h, at := range c.heldAt {
			if victim == nil || at.Before(c.heldAt[victim]) {
				victim = h
			}
		}
		if c.closed {
			reason = ReleaseClosed
		}
	}
	c.mu.Unlock()
	if h := c.drv.obs.hks(); h != nil && h.Session != nil {
		h.Session(context.Background(), SessionEvent{Kind: SessionHeld, Name: e.name})
	}
	if victim != nil {
		c.release(victim, reason)
	}
}

// armSweepLocked makes sure a sweep runs by the time a session held since at
// is due for release, unless one is already due.
//
// One timer per connector, not one per held session: arming a timer can
// wake the runtime's network poller (a write to its eventfd and a thread
// woken when nothing else waits on a timer): a profile at conc=1 put 12 µs
// of CPU per MariaDB named cycle there. Sessions are held in the order they
// are taken, all for the same timeout, so a sweep due for the oldest is on
// time for every other; under steady load it fires about once per timeout.
func (c *connector) armSweepLocked(at time.Time) {
	if c.sweepDue {
		return
	}
	c.sweepDue = true
	d := time.Until(at.Add(c.opts.holdTimeout))
	if c.sweep == nil {
		c.sweep = time.AfterFunc(d, c.sweepHeld)
	} else {
		c.sweep.Reset(d)
	}
}

// sweepHeld releases the sessions held for the hold timeout or longer and
// arms the next sweep for the oldest of the others.
func (c *connector) sweepHeld() {
	now := time.Now()
	var due []*entry
	var oldest time.Time
	c.mu.Lock()
	c.sweepDue = false
	for e, at := range c.heldAt {
		switch {
		case now.Sub(at) >= c.opts.holdTimeout:
			due = append(due, e)
		case oldest.IsZero() || at.Before(oldest):
			oldest = at
		}
	}
	if !oldest.IsZero() && !c.closed {
		c.armSweepLocked(oldest)
	}
	c.mu.Unlock()
	for _, e := range due {
		c.release(e, ReleaseTimeout) // a no-op if phase two came first
	}
}

// heldEnded counts a held session no longer held and reports ev.
func (c *connector) heldEnded(ev SessionEvent) {
	count(c, cHeld, -1)
	if ev.Kind == SessionReleased {
		count(c, cReleased, 1)
	}
	c.drv.obs.session(ev)
}

// unhold forgets that e holds a session and reports whether it did, and
// since when; the caller recycles or closes the session.
func (c *connector) unhold(e *entry) (time.Time, bool) {
	c.mu.Lock()
	at, ok := c.heldAt[e]
	delete(c.heldAt, e)
	c.mu.Unlock()
	return at, ok
}

// release closes the session e's branch is bound to. The branch stays
// prepared on the server, detached; phase two then runs from another
// session after the detach grace. reason says why (ReleaseTimeout, ...).
func (c *connector) release(e *entry, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c.releaseLocked(e, reason)
}

func (c *connector) releaseLocked(e *entry, reason string) {
	if e.held == nil {
		return
	}
	if e.home != nil {
		e.home.leaveHome(e)
		e.home = nil
	}
	c.ss.closeSession(e.held)
	e.held = nil
	e.unpin()
	e.detached = time.Now()
	if at, ok := c.unhold(e); ok {
		c.ss.holding(-1)
		c.heldEnded(SessionEvent{Kind: SessionReleased, Name: e.name, Reason: reason, HeldFor: e.detached.Sub(at)})
	}
}

// releaseAll releases every session c holds, when c closes.
func (c *connector) releaseAll() {
	c.mu.Lock()
	es := slices.Collect(maps.Keys(c.heldAt))
	c.mu.Unlock()
	for _, e := range es {
		c.release(e, ReleaseClosed)
	}
}

func (c *connector) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}
