package dtx

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
)

// Errors dtx returns. Test for them with errors.Is: the returned error wraps
// one of these and, where a server or driver error caused it, that error too.
var (
	// ErrInvalidName: a global name that dtx refuses before any SQL runs
	// (see ValidateName).
	ErrInvalidName = errors.New("dtx: invalid transaction name")
	// ErrNameInUse: the name is active or prepared, in this process or in
	// the database.
	ErrNameInUse = errors.New("dtx: transaction name in use")
	// ErrUnknownName: no prepared transaction has that name, here or in any
	// database this process opened through dtx.
	ErrUnknownName = errors.New("dtx: no prepared transaction with that name")
	// ErrNotPrepared: phase one did not prepare the transaction; the server
	// rolled it back, or it never began (BeginDistributed under a context
	// that ended), and nothing of it remains.
	ErrNotPrepared = errors.New("dtx: transaction not prepared")
	// ErrPreparedTransactionsDisabled: PostgreSQL's max_prepared_transactions
	// is 0. Set it to a nonzero value and restart the server.
	ErrPreparedTransactionsDisabled = errors.New("dtx: prepared transactions are disabled on this server: set max_prepared_transactions to a nonzero value (ALTER SYSTEM SET max_prepared_transactions = 100) and restart PostgreSQL")
	// ErrAlreadyFinished: the name was already committed when asked to roll
	// back, or rolled back when asked to commit.
	ErrAlreadyFinished = errors.New("dtx: transaction already finished the other way")
	// ErrNameHeld: a MariaDB/MySQL prepared branch is still bound to the live
	// session that prepared it, in another process; finish it there, or
	// after that session has ended.
	ErrNameHeld = errors.New("dtx: prepared branch is held by another live session")
	// ErrOutcomeUnknown: the server was asked to prepare or finish but dtx
	// could not learn whether it did (a lost connection; or a name no
	// longer prepared after an earlier attempt whose outcome was unknown).
	// Nothing is reported as done; list the database's prepared
	// transactions to decide.
	ErrOutcomeUnknown = errors.New("dtx: outcome unknown")
	// ErrRolledBack: a Coordinator global was rolled back and nothing of it
	// committed: fn failed, a branch could not vote, ctx ended or the
	// timeout passed before the decision, the decision was refused or
	// fenced off by recovery (ErrAborted), or a one-phase commit was refused.
	ErrRolledBack = errors.New("dtx: transaction rolled back instead of committed")
	// ErrNotDTX: the *sql.DB was not opened through a dtx driver.
	ErrNotDTX = errors.New("dtx: database not opened through a dtx driver")
)

// Retryable reports whether err's cause is transient, so that trying again
// may succeed: the same call for a phase two (ErrOutcomeUnknown, ErrNameHeld)
// or a pending global (ErrPending: recovery retries it), the whole
// transaction for one rolled back by a deadlock, a serialization failure, a
// lost connection or a timeout. It is false for nil, for a heuristic
// outcome (ErrHeuristic: someone must look), for a cancelled context (the
// caller gave up), and for every error a retry would meet again or that dtx
// cannot judge (an invalid name, ErrAlreadyFinished, a constraint violation).
// Hooks and logs report it for every error; see docs/operations.md.
func Retryable(err error) bool {
	switch {
	case err == nil, errors.Is(err, ErrHeuristic), errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, ErrPending), errors.Is(err, ErrOutcomeUnknown), errors.Is(err, ErrNameHeld),
		errors.Is(err, driver.ErrBadConn), errors.Is(err, context.DeadlineExceeded), errors.Is(err, io.ErrUnexpectedEOF):
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	switch st := sqlState(err); {
	case strings.HasPrefix(st, "40"), strings.HasPrefix(st, "08"):
		// transaction rollback (serialization failure, deadlock);
		// connection exception
		return true
	}
	switch myErrno(err) {
	case 1205, 1213: // lock wait timeout; deadlock
		return true
	}
	return false
}
