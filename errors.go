package dtx

import "errors"

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
