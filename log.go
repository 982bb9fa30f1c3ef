package dtx

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"
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

// validDecision refuses a decision that a store could not keep exactly: a
// Global, Node, Resource or Name that is not valid UTF-8. The FileLog's JSON
// and the SQL table's text columns would store such a string as another
// (JSON replaces each bad byte with U+FFFD), so recovery would look for a
// global, node or branch that does not exist. The error wraps ErrNotDecided
// (nothing was recorded) and ErrInvalidName.
func validDecision(d Decision) error {
	if err := checkID("global", d.Global); err != nil {
		return fmt.Errorf("%w: %w", ErrNotDecided, err)
	}
	if err := checkID("node", d.Node); err != nil {
		return fmt.Errorf("%w: global %s: %w", ErrNotDecided, d.Global, err)
	}
	for _, b := range d.Branches {
		if err := checkID("resource", b.Resource); err != nil {
			return fmt.Errorf("%w: global %s: %w", ErrNotDecided, d.Global, err)
		}
		if err := checkID("branch", b.Name); err != nil {
			return fmt.Errorf("%w: global %s: %w", ErrNotDecided, d.Global, err)
		}
	}
	return nil
}

// checkID refuses an identifier a store cannot keep exactly: one that is
// not valid UTF-8. The error wraps ErrInvalidName.
func checkID(what, s string) error {
	if utf8.ValidString(s) {
		return nil
	}
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 {
			break
		}
		i += n
	}
	return fmt.Errorf("%w: %s %q is not UTF-8 (byte %d is %s), and a decision store would keep it as another", ErrInvalidName, what, s, i, describeByte(s, i))
}
