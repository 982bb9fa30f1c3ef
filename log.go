package dtx

import (
	"context"
	"errors"
)

// Log keeps a coordinator's commit decisions durably. Presumed abort:
// nothing is written before a global's decision, so a global without one
// is rolled back by recovery. OpenFileLog and OpenSQLLog are the two
// implementations.
type Log interface {
	// Decide records that d's global commits. It returns only once the
	// record is durable; an error leaves the global in doubt.
	Decide(ctx context.Context, d Decision) error
	// Forget records that every branch of global is finished. It need
	// not be durable: recovery forgets again what a crash lost.
	Forget(ctx context.Context, global string) error
	// Heuristic records that global's outcome is mixed or unknown, for an
	// operator; detail says what happened.
	Heuristic(ctx context.Context, global, detail string) error
	// Pending returns node's decisions not yet forgotten.
	Pending(ctx context.Context, node string) ([]Decision, error)
}

var (
	// ErrLogCorrupt: a log record other than the last fails its checksum.
	// A torn last record (a crash mid-write) is not corruption: it is cut
	// off when the log opens.
	ErrLogCorrupt = errors.New("dtx: decision log corrupt")
	// ErrLogClosed: the log was closed, or an earlier write failed.
	ErrLogClosed = errors.New("dtx: decision log closed")
)
