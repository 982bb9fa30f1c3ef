package dtx

import (
	"context"
	"errors"
)

// Log keeps the outcome of each global transaction under one key, the
// global's id: either a commit decision (Decide) or an abort (Abort), never
// both. Whichever is written first wins, and the store makes the two race for
// that key: a coordinator that was paused, slow or cut off can never commit a
// global that recovery has aborted, and recovery can never abort one that was
// decided. Presumed abort: nothing is written before a global's decision, so
// a global without one is rolled back, but only through Abort.
//
// OpenFileLog (one process, one machine) and OpenSQLLog (a table shared by
// several nodes) are the two implementations; with neither, the Coordinator
// keeps its decisions in a table of one of its resources.
type Log interface {
	// Decide records that d's global commits. It returns nil only once the
	// record is durable, and nil again for a global already decided (a
	// retry). When the global was aborted first it records nothing and
	// returns an error wrapping ErrAborted. An error wrapping ErrNotDecided
	// says for certain that nothing was recorded. Any other error leaves
	// the outcome unknown: Abort then tells which way it went.
	Decide(ctx context.Context, d Decision) error
	// Abort records that global never commits, the fence recovery takes
	// before it rolls back a branch of an undecided global. When the global
	// was decided first it records nothing and returns that decision. It
	// returns only once the abort is durable; aborting again is a no-op.
	Abort(ctx context.Context, global string) (*Decision, error)
	// Forget drops the decisions of globals whose every branch is finished.
	// It need not be durable: recovery forgets again what a crash lost.
	// Aborts are dropped by the store itself once no late Decide can meet
	// them (see the implementations).
	Forget(ctx context.Context, globals ...string) error
	// Heuristic records that global's outcome is mixed or unknown, for an
	// operator; detail says what happened.
	Heuristic(ctx context.Context, global, detail string) error
	// Pending returns the decisions not yet forgotten of node, or of every
	// node when node is "".
	Pending(ctx context.Context, node string) ([]Decision, error)
}

var (
	// ErrLogCorrupt: a log record fails its checksum, or its bytes are not
	// a record, anywhere but in a torn tail (a crash mid-write, which is cut
	// off when the log opens).
	ErrLogCorrupt = errors.New("dtx: decision log corrupt")
	// ErrLogClosed: the log was closed, or a write failed in a way that
	// leaves what is on disk unknown.
	ErrLogClosed = errors.New("dtx: decision log closed")
	// ErrAborted: Decide met an abort of the same global (recovery rolled it
	// back first); the global must roll back.
	ErrAborted = errors.New("dtx: global was aborted")
	// ErrNotDecided: Decide failed and certainly recorded nothing (for
	// example the disk was full and the partial record was cut off again).
	ErrNotDecided = errors.New("dtx: decision not recorded")
)
