package dtx

import (
	"context"
	"time"
)

// Hooks observe what dtx does, for metrics and traces (the nested module
// github.com/dtx-go/dtx/otel implements them with OpenTelemetry). Every
// field may be nil. Give them to a connector with WithHooks, to a
// Coordinator with CoordinatorOptions.Hooks, or to every connector and
// coordinator given none with SetHooks. A hook runs on the path of the
// operation it observes, so it must be quick and must not call dtx back.
//
// Unset hooks cost nothing: no allocation, no clock read. Statements dtx
// only passes through (queries, unnamed transactions) are never observed.
type Hooks struct {
	// Start is called when an operation begins. The context it returns
	// is the one End gets, and for OpGlobal the parent of the global's
	// phases and of the context fn runs with (a span's, typically). A nil
	// Start leaves the context as it is.
	Start func(ctx context.Context, op Op) context.Context
	// End is called when the operation Start saw ends, with op's Mode and
	// Branches filled in as far as they became known.
	End func(ctx context.Context, op Op, r Result)
	// Recovery is called for each action a recovery pass takes: a branch
	// committed or rolled back, a global fenced with an abort, and for
	// each that failed (RecoveryAction.Err).
	Recovery func(ctx context.Context, a RecoveryAction)
	// Outcome is called when a global or named transaction ends in a
	// state an operator must know of: decided with branches pending, a
	// heuristic outcome, or an unknown outcome.
	Outcome func(ctx context.Context, o Outcome)
	// Session is called when a MariaDB/MySQL session is held for a
	// prepared branch, when phase two finished on it, and when it is
	// released with its branch still prepared.
	Session func(ctx context.Context, s SessionEvent)
}

// OpKind says which operation an Op is.
type OpKind uint8

// The operations hooks see. A named transaction has OpBegin, then OpPrepare
// (its Commit) or OpRollback, then OpCommit or OpRollback by name (phase
// two). A Coordinator global is an OpGlobal around an OpBegin per branch and
// either OpCommit alone (one-phase) or OpPrepare, OpDecide and OpCommit
// (two-phase), or OpRollback.
const (
	// OpGlobal is one Coordinator.Do, from its start to its return.
	OpGlobal OpKind = iota + 1
	// OpBegin begins a named transaction, or a global's branch.
	OpBegin
	// OpPrepare is phase one: a named transaction's prepare, a global's
	// vote (every branch prepared, the decision row written, in parallel).
	OpPrepare
	// OpDecide makes a two-phase global's decision durable.
	OpDecide
	// OpCommit is phase two of a named transaction (CommitDistributed,
	// CommitPrepared), or of a two-phase global (its branches committed
	// after the decision), or a one-phase global's commit.
	OpCommit
	// OpRollback rolls back a named transaction (before its prepare, or by
	// name after it) or a global's branches.
	OpRollback
)

var opKindNames = [...]string{"", "global", "begin", "prepare", "decide", "commit", "rollback"}

// String returns "global", "begin", "prepare", "decide", "commit" or
// "rollback": the stable names logs and the otel module use.
func (k OpKind) String() string {
	if int(k) < len(opKindNames) {
		return opKindNames[k]
	}
	return "unknown"
}

// Mode is how a transaction commits.
type Mode uint8

const (
	// ModeNamed is a named transaction (BeginDistributed, WithName),
	// committed by name.
	ModeNamed Mode = iota + 1
	// ModeOnePhase is a global with at most one branch that writes: no
	// prepare, no decision.
	ModeOnePhase
	// ModeTwoPhase is a global with two or more branches that write.
	ModeTwoPhase
)

var modeNames = [...]string{"", "named", "one-phase", "two-phase"}

// String returns "named", "one-phase", "two-phase", or "" for a global
// whose mode is not known yet (fn had not returned).
func (m Mode) String() string {
	if int(m) < len(modeNames) {
		return modeNames[m]
	}
	return "unknown"
}

// Op is one operation hooks see.
type Op struct {
	Kind OpKind
	// Mode is ModeNamed for a named transaction; for a global's
	// operations its mode once known (from its vote on), zero before.
	Mode Mode
	// Global is the global's id; "" for a named transaction.
	Global string
	// Name is the named transaction's name, or the branch's for a
	// global's OpBegin; "" for a global's own phases.
	Name string
	// Resource is the branch's resource for a global's OpBegin.
	Resource string
	// System is the database: "postgresql" or "mysql" (MariaDB too: the
	// dialect serves both), as OpenTelemetry's db.system.name; "" for a
	// global's own phases, which span several.
	System string
	// Branches is how many branches a global has begun, once fn returned.
	Branches int
}

// Result is how an operation ended.
type Result struct {
	Duration time.Duration
	// Err is nil on success. Retryable tells an error worth retrying.
	Err error
}

// RecoveryKind says what a recovery action did.
type RecoveryKind uint8

const (
	// RecoverCommit committed a branch of a decided global.
	RecoverCommit RecoveryKind = iota + 1
	// RecoverRollback rolled back a branch of an aborted global.
	RecoverRollback
	// RecoverAbort fenced an undecided global with an abort.
	RecoverAbort
)

var recoveryNames = [...]string{"", "commit", "rollback", "abort"}

// String returns "commit", "rollback" or "abort".
func (k RecoveryKind) String() string {
	if int(k) < len(recoveryNames) {
		return recoveryNames[k]
	}
	return "unknown"
}

// RecoveryAction is one action of a recovery pass.
type RecoveryAction struct {
	Kind     RecoveryKind
	Global   string // the global's id
	Node     string // the node that began the global
	Name     string // the branch; "" for RecoverAbort
	Resource string // the branch's resource; "" for RecoverAbort
	Err      error  // nil when done; else the branch stays for the next pass
}

// OutcomeKind says what an Outcome reports.
type OutcomeKind uint8

const (
	// OutcomePending: a global is decided to commit but some branches are
	// not committed yet; recovery commits them.
	OutcomePending OutcomeKind = iota + 1
	// OutcomeHeuristic: a decided global's branch was found rolled back
	// or gone (finished by hand the other way).
	OutcomeHeuristic
	// OutcomeUnknown: whether a prepare, a phase two or a global's
	// decision took effect is unknown (ErrOutcomeUnknown).
	OutcomeUnknown
)

var outcomeNames = [...]string{"", "pending", "heuristic", "unknown"}

// String returns "pending", "heuristic" or "unknown".
func (k OutcomeKind) String() string {
	if int(k) < len(outcomeNames) {
		return outcomeNames[k]
	}
	return "unknown"
}

// Outcome reports a transaction that did not simply commit or roll back.
type Outcome struct {
	Kind OutcomeKind
	// Global is the global's id, "" for a named transaction.
	Global string
	// Name is the named transaction, "" for a global.
	Name string
	// Branches are a global's branches pending or, for a heuristic
	// outcome, gone.
	Branches []string
	// Err is the error the caller got; Retryable(Err) tells whether a
	// retry (recovery's, for a pending global) may settle it.
	Err error
}

// SessionKind says what happened to a held MariaDB/MySQL session.
type SessionKind uint8

const (
	// SessionHeld: a prepared branch's session was taken out of the pool
	// and is held for phase two.
	SessionHeld SessionKind = iota + 1
	// SessionFinished: phase two ran on the held session, which is free.
	SessionFinished
	// SessionReleased: the held session was closed with its branch still
	// prepared (Reason says why); phase two runs from another session
	// after the detach grace.
	SessionReleased
)

var sessionNames = [...]string{"", "held", "finished", "released"}

// String returns "held", "finished" or "released".
func (k SessionKind) String() string {
	if int(k) < len(sessionNames) {
		return sessionNames[k]
	}
	return "unknown"
}

// Why a held session was released; SessionEvent.Reason.
const (
	ReleaseTimeout = "timeout" // held longer than WithHoldTimeout
	ReleaseLimit   = "limit"   // over WithHoldLimit: the one held longest
	ReleaseClosed  = "closed"  // its *sql.DB was closed
	ReleaseForget  = "forget"  // Forget was called for its name
	ReleaseUnknown = "unknown" // phase two on it lost its answer
)

// SessionEvent is a change of a held MariaDB/MySQL session.
type SessionEvent struct {
	Kind SessionKind
	Name string // the prepared branch's name
	// Reason is why a session was released: ReleaseTimeout,
	// ReleaseLimit, ReleaseClosed, ReleaseForget or ReleaseUnknown.
	Reason string
	// HeldFor is how long it was held (SessionFinished, SessionReleased).
	HeldFor time.Duration
}
