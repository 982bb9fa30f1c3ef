package dtx

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"
)

// The process-wide logger and hooks, for connectors and coordinators given
// none of their own.
var defaults struct {
	logger atomic.Pointer[slog.Logger]
	hooks  atomic.Pointer[Hooks]
}

// SetLogger sets the logger of every connector and Coordinator that has
// none of its own (WithLogger, CoordinatorOptions.Logger), the built-in
// dtx+postgres and dtx+mysql drivers included; nil makes them silent again,
// the default. It takes effect at once, for operations that start after it.
// See docs/operations.md for the lines and their attributes.
func SetLogger(l *slog.Logger) { defaults.logger.Store(l) }

// SetHooks sets the hooks of every connector and Coordinator that has none
// of its own (WithHooks, CoordinatorOptions.Hooks), the built-in drivers
// included; nil removes them, the default.
func SetHooks(h *Hooks) { defaults.hooks.Store(h) }

// The attribute keys of dtx's log lines; docs/operations.md lists them.
const (
	keyPhase     = "phase"
	keyMode      = "mode"
	keyGlobal    = "global"
	keyName      = "name"
	keyBranch    = "branch"
	keyResource  = "resource"
	keySystem    = "system"
	keyBranches  = "branches"
	keyDuration  = "duration"
	keyErr       = "err"
	keyRetryable = "retryable"
	keyNode      = "node"
	keyReason    = "reason"
	keyHeldFor   = "held_for"
	keyPending   = "pending"
	keyGone      = "gone"
	keyAge       = "age"
)

// observer is where one connector's or coordinator's logs and hooks go:
// its own, else the process-wide ones. Both nil: nothing is observed.
type observer struct {
	logger *slog.Logger
	hooks  *Hooks
}

func (o *observer) log() *slog.Logger {
	if o.logger != nil {
		return o.logger
	}
	return defaults.logger.Load()
}

func (o *observer) hks() *Hooks {
	if o.hooks != nil {
		return o.hooks
	}
	return defaults.hooks.Load()
}

// logAt writes one line when there is a logger; for lines off the hot path.
func (o *observer) logAt(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	if l := o.log(); l != nil {
		l.LogAttrs(ctx, level, msg, attrs...)
	}
}

// opSpan is one observed operation in flight; the zero one observes nothing.
type opSpan struct {
	ctx   context.Context
	op    Op
	start time.Time
	h     *Hooks
	l     *slog.Logger // nil unless Debug is enabled
}

// start begins observing op: Hooks.Start runs and the clock is read only
// when a hook or a Debug logger wants it.
func (o *observer) start(ctx context.Context, op Op) opSpan {
	h, l := o.hks(), o.log()
	if l != nil && !l.Enabled(ctx, slog.LevelDebug) {
		l = nil
	}
	if h == nil && l == nil {
		return opSpan{ctx: ctx}
	}
	if h != nil && h.Start != nil {
		ctx = h.Start(ctx, op)
	}
	return opSpan{ctx: ctx, op: op, start: time.Now(), h: h, l: l}
}

// end reports s's operation ended with err: Hooks.End and the Debug line
// "dtx: global phase" (a global's operations) or "dtx: named phase".
func (s *opSpan) end(err error) {
	if s.h == nil && s.l == nil {
		return
	}
	d := time.Since(s.start)
	if s.h != nil && s.h.End != nil {
		s.h.End(s.ctx, s.op, Result{Duration: d, Err: err})
	}
	if s.l == nil {
		return
	}
	op := &s.op
	attrs := make([]slog.Attr, 0, 8)
	attrs = append(attrs, slog.String(keyPhase, op.Kind.String()))
	msg := "dtx: named phase"
	if op.Global != "" {
		msg = "dtx: global phase"
		attrs = append(attrs, slog.String(keyGlobal, op.Global))
		if op.Name != "" {
			attrs = append(attrs, slog.String(keyBranch, op.Name), slog.String(keyResource, op.Resource))
		}
	} else {
		attrs = append(attrs, slog.String(keyName, op.Name))
	}
	if op.Mode != 0 {
		attrs = append(attrs, slog.String(keyMode, op.Mode.String()))
	}
	if op.System != "" {
		attrs = append(attrs, slog.String(keySystem, op.System))
	}
	if op.Kind == OpGlobal || op.Global != "" && op.Name == "" {
		attrs = append(attrs, slog.Int(keyBranches, op.Branches))
	}
	attrs = append(attrs, slog.Duration(keyDuration, d))
	if err != nil {
		attrs = append(attrs, slog.Any(keyErr, err))
	}
	s.l.LogAttrs(s.ctx, slog.LevelDebug, msg, attrs...)
}

// session reports a held session's change: Hooks.Session, and a Warn line
// for a release.
func (o *observer) session(ev SessionEvent) {
	ctx := context.Background()
	if h := o.hks(); h != nil && h.Session != nil {
		h.Session(ctx, ev)
	}
	if ev.Kind == SessionReleased {
		o.logAt(ctx, slog.LevelWarn, "dtx: released a held session; its branch stays prepared",
			slog.String(keyName, ev.Name), slog.String(keyReason, ev.Reason), slog.Duration(keyHeldFor, ev.HeldFor))
	}
}

// outcome reports o: Hooks.Outcome and a Warn line.
func (o *observer) outcome(ctx context.Context, out Outcome) {
	if h := o.hks(); h != nil && h.Outcome != nil {
		h.Outcome(ctx, out)
	}
	l := o.log()
	if l == nil {
		return
	}
	var attrs []slog.Attr
	if out.Global != "" {
		attrs = append(attrs, slog.String(keyGlobal, out.Global))
	} else {
		attrs = append(attrs, slog.String(keyName, out.Name))
	}
	var msg string
	switch out.Kind {
	case OutcomePending:
		msg = "dtx: global decided, branches pending for recovery"
		attrs = append(attrs, slog.Any(keyPending, out.Branches))
	case OutcomeHeuristic:
		msg = "dtx: heuristic outcome"
		attrs = append(attrs, slog.Any(keyGone, out.Branches))
	default:
		msg = "dtx: outcome unknown"
	}
	attrs = append(attrs, slog.Bool(keyRetryable, Retryable(out.Err)), slog.Any(keyErr, out.Err))
	l.LogAttrs(ctx, slog.LevelWarn, msg, attrs...)
}

// systemOf is d as OpenTelemetry's db.system.name.
func systemOf(d Dialect) string {
	if d == Postgres {
		return "postgresql"
	}
	return d.String()
}

// startNamed begins observing a named transaction's operation. A
// Coordinator's branches are reported by the Coordinator, as phases of
// their global: for those it observes nothing.
func (o *observer) startNamed(ctx context.Context, kind OpKind, name string, d Dialect) opSpan {
	if o.hks() == nil && o.log() == nil || isBranchName(name) {
		return opSpan{ctx: ctx}
	}
	return o.start(ctx, Op{Kind: kind, Mode: ModeNamed, Name: name, System: systemOf(d)})
}

// endNamed ends sp, counts a phase two done on c (kind OpCommit or
// OpRollback), and reports an unknown outcome. Stats count whether or not
// anything observes.
func (o *observer) endNamed(sp *opSpan, c *connector, kind OpKind, name string, err error) {
	sp.end(err)
	switch {
	case err == nil && (kind == OpCommit || kind == OpRollback):
		if isBranchName(name) {
			return
		}
		if kind == OpCommit {
			count(c, cCommits, 1)
		} else {
			count(c, cRollbacks, 1)
		}
	case err != nil && errors.Is(err, ErrOutcomeUnknown) && !isBranchName(name):
		o.outcome(sp.ctx, Outcome{Kind: OutcomeUnknown, Name: name, Err: err})
	}
}

// finishKind is phase two's operation.
func finishKind(commit bool) OpKind {
	if commit {
		return OpCommit
	}
	return OpRollback
}

// isBranchName reports whether name is a Coordinator branch's
// (g.<node>.<global>.<n>), as recovery and the dtx command read it.
func isBranchName(name string) bool {
	_, _, ok := parseBranch(name)
	return ok
}
