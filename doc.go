// Package dtx brings two-phase commit to database/sql for PostgreSQL and
// MariaDB/MySQL.
//
// It registers two drivers, "dtx+postgres" (wrapping lib/pq) and "dtx+mysql"
// (wrapping go-sql-driver/mysql). They pass every call through to the
// wrapped driver untouched, except a transaction begun under a global name:
// its commit prepares it (PREPARE TRANSACTION, XA PREPARE) instead of
// committing it. The prepared transaction is durable on the server and
// invisible to others until it is committed or rolled back by name, from
// this process, from another one, or after a crash.
//
// A program that stages a change, checks an outside system, then decides:
//
//	package main
//
//	import (
//		"context"
//		"database/sql"
//		"log"
//
//		"github.com/dtx-go/dtx"
//	)
//
//	func main() {
//		ctx := context.Background()
//		db, err := sql.Open("dtx+postgres", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
//		if err != nil {
//			log.Fatal(err)
//		}
//		defer db.Close()
//		if _, err := db.Exec("CREATE TABLE IF NOT EXISTS signups (email text, status text)"); err != nil {
//			log.Fatal(err)
//		}
//
//		// Phase one: the insert is prepared, durable but not yet visible.
//		err = dtx.BeginDistributed(ctx, db, "signup_42", func(tx *sql.Tx) error {
//			_, err := tx.ExecContext(ctx, "INSERT INTO signups VALUES ('ann@example.com', 'pending')")
//			return err
//		})
//		if err != nil {
//			log.Fatal(err) // not prepared (see Errors for ErrOutcomeUnknown)
//		}
//
//		// Phase two, once the outside system has answered.
//		if chargeCard("ann@example.com") == nil {
//			err = dtx.CommitDistributed(ctx, "signup_42")
//		} else {
//			err = dtx.RollbackDistributed(ctx, "signup_42")
//		}
//		if err != nil {
//			log.Fatal(err)
//		}
//	}
//
//	func chargeCard(email string) error { return nil } // the outside system
//
// # Drivers
//
// Switching a program to dtx is one line; the DSN stays the wrapped
// driver's:
//
//	db, err := sql.Open("dtx+postgres", dsn) // was sql.Open("postgres", dsn)
//	db, err := sql.Open("dtx+mysql", dsn)    // was sql.Open("mysql", dsn)
//
// Queries, statements, unnamed transactions, pings and connection resets go
// to lib/pq or go-sql-driver/mysql as they are, and their Stmt, Rows and
// Result come back unwrapped. Inside [database/sql.Conn.Raw] the dtx
// connection has an Unwrap method that returns the wrapped driver's
// connection. A named transaction honors [database/sql.TxOptions]: isolation
// level and read-only.
//
// # Named transactions with database/sql and ORMs
//
// [BeginDistributed] runs a function in a named transaction and prepares it.
// The lower-level form is a context from [WithName]: BeginTx under it, on a
// database opened through dtx, begins the named transaction; its Commit
// prepares, returning nil only when the server really prepared it, and its
// Rollback rolls back and frees the name. This is how sqlx, GORM and other
// code that owns its transactions take part:
//
//	tx, err := db.BeginTx(dtx.WithName(ctx, "reserve_stock_7"), nil)
//	// ... tx.ExecContext ...
//	err = tx.Commit()                                   // phase one: prepare
//	err = dtx.CommitDistributed(ctx, "reserve_stock_7") // phase two
//
// Every BeginTx under that context begins the named transaction, so keep the
// context to that one transaction. On a database not opened through dtx,
// WithName has no effect and the transaction commits normally.
//
// # Recovery after a crash
//
// A prepared transaction outlives the process that prepared it, and a server
// restart. To finish one, open the databases through dtx (sql.Open is
// enough; no connection is needed) and call [CommitDistributed] or
// [RollbackDistributed] with its name: when this process did not prepare the
// name itself, they search every database it opened through dtx and not yet
// closed, and finish the name where it is prepared, or return
// [ErrUnknownName]. A context from [WithDatabases] bounds the search to the
// databases it names, and a database opened with [WithoutSearch] is searched
// only when named so. A database that cannot be listed does not hide the
// others' answers; when none that answered has the name, the error says how
// many could not be listed and is not ErrUnknownName. dtx records no
// decisions: which way to finish is the caller's to know, for example from
// the outside system.
//
// A name left in doubt (ErrOutcomeUnknown at prepare) stays reserved in this
// process; once it is decided, [Forget] drops it. Forget changes nothing on
// the server.
//
// [ListPrepared] lists what waits in one database; [CommitPrepared] and
// [RollbackPrepared] finish a name in the database given:
//
//	ps, err := dtx.ListPrepared(ctx, db)
//	for _, p := range ps {
//		if strings.HasPrefix(p.Name, "signup_") {
//			err = dtx.CommitPrepared(ctx, db, p.Name)
//		}
//	}
//
// On PostgreSQL the list holds the current database's prepared transactions
// with when and by which role they were prepared; on MariaDB/MySQL it is
// what XA RECOVER shows for the whole server, names only.
//
// Finishing is safe to retry: this process remembers the last 10,000 names
// it finished, and finishing one again the same way returns nil, the other
// way [ErrAlreadyFinished]. Before answering from memory it checks that the
// database where the name finished (or those a WithDatabases context names)
// does not have it prepared again; if it has, that new transaction is the
// one finished.
//
// # Names
//
// A name is 1 to [MaxNameLen] (64) bytes of ASCII letters, digits and
// _ - . : + / = @; [ValidateName] checks it before any SQL runs. It is unique
// among the prepared transactions of a PostgreSQL cluster (all its
// databases) or of a MariaDB/MySQL server, and, in this process, among the
// transactions that are active or prepared. Once finished, it can be used
// again. Make names unique per change: a business key, a UUID.
//
// # Errors
//
// Errors that dtx makes start with "dtx:". Where one of these conditions is
// the cause, the error wraps its sentinel (test with errors.Is) and, when a
// server or driver error lies beneath, that error too:
//
//   - [ErrInvalidName]: the name fails [ValidateName]; no SQL ran.
//   - [ErrNameInUse]: the name is active, prepared or in doubt in this
//     process (the message says which), or
//     prepared on the server (MariaDB/MySQL: also active there). PostgreSQL
//     reports it at PREPARE, after the transaction's statements ran, and
//     rolls the transaction back.
//   - [ErrNotPrepared]: phase one did not prepare; the server rolled the
//     transaction back, or BeginDistributed's context ended first. Also: finishing a name whose transaction is still
//     running, and committing a MariaDB branch that was read-only or empty
//     and that the server already discarded.
//   - [ErrPreparedTransactionsDisabled]: PostgreSQL's
//     max_prepared_transactions is 0.
//   - [ErrUnknownName]: no prepared transaction has that name.
//   - [ErrAlreadyFinished]: the name was finished the other way.
//   - [ErrNameHeld]: a MariaDB/MySQL branch is bound to a session another
//     process still has open.
//   - [ErrOutcomeUnknown]: dtx sent PREPARE, COMMIT or ROLLBACK but could not
//     learn whether it took effect (the connection broke). Nothing is
//     reported as done; list the prepared transactions to decide.
//   - [ErrRolledBack]: a [Coordinator] global was rolled back (fn failed, a
//     vote failed, ctx ended before the decision, or it was fenced off).
//   - [ErrNotDTX]: the *sql.DB was not opened through a dtx driver.
//
// The [Coordinator] has sentinels of its own: [ErrPending], [ErrHeuristic],
// [ErrLogCorrupt], [ErrLogClosed], [ErrAborted], [ErrNotDecided].
//
// # MariaDB and MySQL: held sessions
//
// A prepared XA branch stays bound to the session that prepared it, and that
// session can do nothing else until the branch is finished. The session stays
// its connection's until the connection is used again; when phase two comes
// first (BeginDistributed then CommitDistributed, a Coordinator global), XA
// COMMIT or XA ROLLBACK runs on it and the connection goes on with its own
// session, as with the raw driver. On a pool without SetMaxOpenConns,
// BeginDistributed keeps its connection out of the pool until phase two to
// make that certain. A connection used before phase two gives the session
// up: dtx holds it outside the pool, finishes the branch on it, resets it
// (COM_RESET_CONNECTION) and keeps it as a spare, which the next connection
// needing a session takes before dtx dials. Such a *sql.Conn continues on
// another, clean session after the prepare: its session variables, user
// variables, temporary tables and GET_LOCK locks are gone for it, and none of
// them ever reaches another pool user. Spares are bounded by the pool's open
// connections and close as the pool closes its idle ones. Held sessions are
// not counted by SetMaxOpenConns. Three options bound the holding:
//
//   - [WithHoldLimit] (default 64 per *sql.DB): over it, the session held
//     longest is closed.
//   - [WithHoldTimeout] (default 2 minutes): a session held longer is closed.
//   - [WithDetachGrace] (default 1 second): a branch whose session was closed
//     stays prepared and is finished from another session, but no sooner than
//     this long after the later of the close (when dtx closed it) and the
//     moment this process first saw the branch in XA RECOVER: MariaDB can
//     acknowledge a commit sent right after the disconnect and leave the
//     branch prepared.
//
// The built-in drivers use the defaults; to change them, register the driver
// again under a name of your own with [Register], or use [NewConnector].
// docs/two-phase.md in the repository explains the reasons and measurements.
// PostgreSQL holds nothing: COMMIT PREPARED runs on any connection of the
// same database.
//
// # One global transaction over several databases
//
// A [Coordinator] commits one global transaction in every database it spans
// or in none, whatever crashes, pauses or loses a connection when. Each
// [Global.Begin] gives an ordinary *sql.Tx, a branch. When the function
// given to [Coordinator.Do] returns nil, the other branches are prepared in
// parallel while the decision row is inserted into one branch (on
// CoordinatorOptions.DecisionResource); that branch then commits in one
// phase, and its commit is the decision; the others commit after it. With a
// [Log] given ([OpenFileLog], [OpenSQLLog]) the decision is written there
// instead. A decision and an abort race for one key per global, so
// [Coordinator.Recover] (at start-up and periodically, on any node sharing
// the store) aborts an undecided global before it rolls anything back, and
// a paused coordinator can never commit after that.
//
//	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
//		Resources: map[string]*sql.DB{"orders": ordersDB, "billing": billingDB},
//		Node:      "orders-api-1", // stable and unique per process
//	})
//	err = c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
//		otx, err := g.Begin(ctx, "orders", nil)
//		...
//	})
//
// # Testing code that uses dtx
//
// The nested module github.com/dtx-go/dtx/dtxtest gives a unit test a dtx
// database over go-sqlmock, expectations for exactly the statements dtx
// sends per dialect, and a registry kept to the test (see [WithDatabases],
// [WithoutSearch] and [Forget], which it uses).
//
// # Logs, metrics and traces
//
// dtx is silent unless given a *slog.Logger ([SetLogger] for the process,
// [WithLogger] per database, CoordinatorOptions.Logger): recovery actions at
// Info, pending, heuristic and unknown outcomes and released MariaDB
// sessions at Warn, a line per phase at Debug. [Hooks] ([SetHooks],
// [WithHooks], CoordinatorOptions.Hooks) see each operation start and end,
// recovery actions, outcomes and held sessions; the nested module
// github.com/dtx-go/dtx/otel implements them with OpenTelemetry.
// [ProcessStats], [StatsOf] and [Coordinator.Stats] are in-process counters.
// Unset, logs and hooks cost nothing. docs/operations.md lists the lines and
// metrics.
//
// # Other drivers and connectors
//
// [Register] wraps any driver.Driver under a new name, with a dialect,
// [Postgres] or [MySQL], and options; [NewConnector] wraps a
// driver.Connector for [database/sql.OpenDB]:
//
//	db := sql.OpenDB(dtx.NewConnector(connector, dtx.Postgres))
//
// For pgx, the module github.com/dtx-go/dtx/pgx registers "dtx+pgx" with
// the [WithCommandTag] function pgx needs (dtx itself does not depend on
// pgx):
//
//	import _ "github.com/dtx-go/dtx/pgx"
//	db, err := sql.Open("dtx+pgx", dsn)
package dtx
