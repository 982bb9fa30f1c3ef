package dtx_test

// Unit tests that pin, verbatim, the SQL dtx sends to its parent driver,
// per dialect, with go-sqlmock standing in for the server. The *sql.DB is
// sql.OpenDB(dtx.NewConnector(<sqlmock connector>, dialect)); every test
// ends with all expectations met.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// mockConnector opens the sqlmock connection registered under dsn. sqlmock
// hands the same driver.Conn to every Open of a DSN, so all sessions share
// one expectation list; connects counts how many dtx opened.
type mockConnector struct {
	drv      driver.Driver
	dsn      string
	connects *atomic.Int32
}

func (m mockConnector) Connect(context.Context) (driver.Conn, error) {
	m.connects.Add(1)
	return m.drv.Open(m.dsn)
}

func (m mockConnector) Driver() driver.Driver { return m.drv }

type mocked struct {
	db       *sql.DB
	mock     sqlmock.Sqlmock
	connects *atomic.Int32
}

// newMock returns a dtx database of dialect d over a fresh sqlmock whose
// queries must match exactly, made with opts.
func newMock(t *testing.T, d dtx.Dialect, opts ...dtx.Option) mocked {
	t.Helper()
	dsn := "dtx_sqlmock_" + token()
	mdb, mock, err := sqlmock.NewWithDSN(dsn, sqlmock.QueryMatcherOption(sqlmock.QueryMatcherEqual))
	if err != nil {
		t.Fatal(err)
	}
	n := new(atomic.Int32)
	db := sql.OpenDB(dtx.NewConnector(mockConnector{drv: mdb.Driver(), dsn: dsn, connects: n}, d, opts...))
	t.Cleanup(func() {
		db.Close()  // closing the mock session is not an expectation
		mdb.Close() // keeps the DSN open until the dtx pool is closed
	})
	return mocked{db: db, mock: mock, connects: n}
}

// met fails t unless every expectation was met in order.
func (m mocked) met(t *testing.T) {
	t.Helper()
	if err := m.mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// exec expects the statement q, without arguments, answering OK.
func (m mocked) exec(q string) *sqlmock.ExpectedExec {
	return m.mock.ExpectExec(q).WillReturnResult(sqlmock.NewResult(0, 0))
}

// pgPrepared expects, since sqlmock rows carry no command tag, the check
// that the transaction is not aborted (SELECT 1) and then PREPARE
// TRANSACTION for name; with aborted, SELECT 1 fails as in an aborted
// transaction (25P02) and dtx rolls back instead.
func (m mocked) pgPrepared(name string, aborted bool) {
	if aborted {
		m.mock.ExpectExec("SELECT 1").WillReturnError(&pq.Error{Code: "25P02", Message: "current transaction is aborted, commands ignored until end of transaction block"})
		m.exec("ROLLBACK")
		return
	}
	m.exec("SELECT 1")
	m.mock.ExpectQuery("PREPARE TRANSACTION '" + name + "'").WillReturnRows(sqlmock.NewRows(nil))
}

// mockName is a name unique in this process (names are process-global).
func mockName(kind string) string { return "sqlmock-" + kind + "-" + token() }

func myXid(name string) string { return "X'" + hex.EncodeToString([]byte(name)) + "'" }

// insert runs the user's statement in tx.
func insert(t *testing.T, tx *sql.Tx) {
	t.Helper()
	if _, err := tx.Exec("INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
}

func beginNamed(t *testing.T, db *sql.DB, name string, opts *sql.TxOptions) *sql.Tx {
	t.Helper()
	tx, err := db.BeginTx(dtx.WithName(context.Background(), name), opts)
	if err != nil {
		t.Fatal(err)
	}
	return tx
}

func wantIs(t *testing.T, err, target error, contains ...string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("err = %v, want errors.Is %v", err, target)
	}
	for _, s := range contains {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("err = %v, want it to mention %q", err, s)
		}
	}
}

func dialects() []struct {
	name string
	d    dtx.Dialect
} {
	return []struct {
		name string
		d    dtx.Dialect
	}{{"postgres", dtx.Postgres}, {"mysql", dtx.MySQL}}
}

// Without a name a transaction is the parent's: its Begin and Commit or
// Rollback, and nothing else.
func TestSqlmockUnnamed(t *testing.T) {
	for _, dl := range dialects() {
		t.Run(dl.name, func(t *testing.T) {
			m := newMock(t, dl.d)
			m.mock.ExpectBegin()
			m.exec("INSERT INTO t VALUES (1)")
			m.mock.ExpectCommit()
			m.mock.ExpectBegin()
			m.mock.ExpectRollback()
			m.mock.ExpectBegin()
			m.mock.ExpectCommit()

			tx, err := m.db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			insert(t, tx)
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			tx, err = m.db.Begin()
			if err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			// Options go to the parent's BeginTx as they are.
			tx, err = m.db.BeginTx(context.Background(), &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			m.met(t)
		})
	}
}

func TestSqlmockPostgresNamedCommit(t *testing.T) {
	m := newMock(t, dtx.Postgres)
	const name = "sqlmock-pg-commit"
	m.exec("BEGIN")
	m.exec("INSERT INTO t VALUES (1)")
	m.exec("SELECT 1")
	m.mock.ExpectQuery("PREPARE TRANSACTION 'sqlmock-pg-commit'").WillReturnRows(sqlmock.NewRows(nil))
	m.exec("COMMIT PREPARED 'sqlmock-pg-commit'")
	// Each later finish of the finished name first looks whether a
	// database has it prepared again; none has.
	for range 2 {
		m.mock.ExpectQuery("SELECT gid, prepared, owner, database FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared, gid").
			WillReturnRows(sqlmock.NewRows([]string{"gid", "prepared", "owner", "database"}))
	}

	tx := beginNamed(t, m.db, name, nil)
	insert(t, tx)
	if err := tx.Commit(); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	ctx := context.Background()
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatalf("CommitDistributed: %v", err)
	}
	// A retry answers nil from the registry, once no database has the name.
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatalf("CommitDistributed again: %v", err)
	}
	wantIs(t, dtx.RollbackDistributed(ctx, name), dtx.ErrAlreadyFinished)
	m.met(t)
}

func TestSqlmockPostgresNamedRollbackPrepared(t *testing.T) {
	m := newMock(t, dtx.Postgres)
	name := mockName("pg")
	m.exec("BEGIN")
	m.exec("INSERT INTO t VALUES (1)")
	m.pgPrepared(name, false)
	m.exec("ROLLBACK PREPARED '" + name + "'")

	tx := beginNamed(t, m.db, name, nil)
	insert(t, tx)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := dtx.RollbackDistributed(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	m.met(t)
}

func TestSqlmockPostgresOptions(t *testing.T) {
	for _, c := range []struct {
		opts  sql.TxOptions
		begin string
	}{
		{sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true}, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"},
		{sql.TxOptions{Isolation: sql.LevelSerializable}, "BEGIN ISOLATION LEVEL SERIALIZABLE"},
		{sql.TxOptions{Isolation: sql.LevelRepeatableRead}, "BEGIN ISOLATION LEVEL REPEATABLE READ"},
		{sql.TxOptions{Isolation: sql.LevelReadCommitted}, "BEGIN ISOLATION LEVEL READ COMMITTED"},
		{sql.TxOptions{Isolation: sql.LevelReadUncommitted, ReadOnly: true}, "BEGIN ISOLATION LEVEL READ UNCOMMITTED READ ONLY"},
		{sql.TxOptions{ReadOnly: true}, "BEGIN READ ONLY"},
	} {
		t.Run(c.begin, func(t *testing.T) {
			m := newMock(t, dtx.Postgres)
			name := mockName("pg")
			m.exec(c.begin)
			m.pgPrepared(name, false)
			m.exec("COMMIT PREPARED '" + name + "'")

			tx := beginNamed(t, m.db, name, &c.opts)
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if err := dtx.CommitDistributed(context.Background(), name); err != nil {
				t.Fatal(err)
			}
			m.met(t)
		})
	}
	t.Run("unsupported", func(t *testing.T) {
		m := newMock(t, dtx.Postgres)
		_, err := m.db.BeginTx(dtx.WithName(context.Background(), mockName("pg")), &sql.TxOptions{Isolation: sql.LevelSnapshot})
		if err == nil || !strings.Contains(err.Error(), "not supported") {
			t.Fatalf("err = %v, want isolation level not supported", err)
		}
		m.met(t)
	})
}

// Rolling back before prepare is a plain ROLLBACK, and frees the name.
func TestSqlmockPostgresNamedRollback(t *testing.T) {
	m := newMock(t, dtx.Postgres)
	name := mockName("pg")
	m.exec("BEGIN")
	m.exec("INSERT INTO t VALUES (1)")
	m.exec("ROLLBACK")
	m.exec("BEGIN")
	m.exec("ROLLBACK")

	tx := beginNamed(t, m.db, name, nil)
	insert(t, tx)
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	tx = beginNamed(t, m.db, name, nil) // the name is free again
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	m.met(t)
}

// BeginDistributed rolls back when fn fails and returns fn's error.
func TestSqlmockPostgresBeginDistributed(t *testing.T) {
	m := newMock(t, dtx.Postgres)
	ok, failed := mockName("pg"), mockName("pg")
	m.exec("BEGIN")
	m.exec("INSERT INTO t VALUES (1)")
	m.pgPrepared(ok, false)
	m.exec("COMMIT PREPARED '" + ok + "'")
	m.exec("BEGIN")
	m.exec("ROLLBACK")

	ctx := context.Background()
	if err := dtx.BeginDistributed(ctx, m.db, ok, func(tx *sql.Tx) error {
		_, err := tx.Exec("INSERT INTO t VALUES (1)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := dtx.CommitDistributed(ctx, ok); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := dtx.BeginDistributed(ctx, m.db, failed, func(*sql.Tx) error { return boom })
	wantIs(t, err, boom)
	m.met(t)
}

// How PREPARE TRANSACTION's failures map to dtx's errors. After each the
// server has rolled back, dtx sends nothing more and the name is free.
func TestSqlmockPostgresPrepareErrors(t *testing.T) {
	for _, c := range []struct {
		name     string
		err      error
		want     error
		contains []string
	}{
		{"disabled", &pq.Error{Code: "55000", Message: "prepared transactions are disabled"}, dtx.ErrPreparedTransactionsDisabled, []string{"max_prepared_transactions"}},
		{"in use", &pq.Error{Code: "42710", Message: `transaction identifier "x" is already in use`}, dtx.ErrNameInUse, []string{"already prepared"}},
		{"temporary table", &pq.Error{Code: "0A000", Message: "cannot PREPARE a transaction that has operated on temporary objects"}, dtx.ErrNotPrepared, []string{"temporary table", "rolled back"}},
		{"other server error", &pq.Error{Code: "40001", Message: "could not serialize access"}, dtx.ErrNotPrepared, nil},
		{"no server answer", errors.New("read: connection reset by peer"), dtx.ErrOutcomeUnknown, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMock(t, dtx.Postgres)
			name := mockName("pg")
			m.exec("BEGIN")
			m.exec("INSERT INTO t VALUES (1)")
			m.exec("SELECT 1")
			m.mock.ExpectQuery("PREPARE TRANSACTION '" + name + "'").WillReturnError(c.err)

			tx := beginNamed(t, m.db, name, nil)
			insert(t, tx)
			err := tx.Commit()
			wantIs(t, err, c.want, c.contains...)
			if !errors.Is(err, c.err) {
				t.Errorf("err = %v, want it to wrap the driver's %v", err, c.err)
			}
			if c.want != dtx.ErrOutcomeUnknown {
				m.exec("BEGIN")
				m.exec("ROLLBACK")
				tx = beginNamed(t, m.db, name, nil) // the name is free again
				if err := tx.Rollback(); err != nil {
					t.Fatal(err)
				}
			}
			m.met(t)
		})
	}
	t.Run("aborted", func(t *testing.T) {
		m := newMock(t, dtx.Postgres)
		name := mockName("pg")
		m.exec("BEGIN")
		m.exec("INSERT INTO t VALUES (1)")
		m.pgPrepared(name, true) // a statement had failed: the transaction is aborted
		m.exec("BEGIN")
		m.exec("ROLLBACK")

		tx := beginNamed(t, m.db, name, nil)
		insert(t, tx)
		wantIs(t, tx.Commit(), dtx.ErrNotPrepared, "a statement in it failed")
		tx = beginNamed(t, m.db, name, nil) // the name is free again
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		m.met(t)
	})
	t.Run("check fails", func(t *testing.T) {
		m := newMock(t, dtx.Postgres)
		name := mockName("pg")
		m.exec("BEGIN")
		m.mock.ExpectExec("SELECT 1").WillReturnError(errors.New("read: connection reset by peer"))

		tx := beginNamed(t, m.db, name, nil)
		wantIs(t, tx.Commit(), dtx.ErrNotPrepared) // PREPARE was never sent
		m.met(t)
	})
}

func TestSqlmockPostgresCommitPreparedErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		err  error
		want error
	}{
		{"unknown", &pq.Error{Code: "42704", Message: `prepared transaction with identifier "x" does not exist`}, dtx.ErrUnknownName},
		{"other database", &pq.Error{Code: "0A000", Message: "prepared transaction belongs to another database"}, dtx.ErrUnknownName},
		{"no server answer", errors.New("read: connection reset by peer"), dtx.ErrOutcomeUnknown},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := newMock(t, dtx.Postgres)
			name := mockName("pg")
			m.exec("BEGIN")
			m.pgPrepared(name, false)
			m.mock.ExpectExec("COMMIT PREPARED '" + name + "'").WillReturnError(c.err)

			tx := beginNamed(t, m.db, name, nil)
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			err := dtx.CommitDistributed(context.Background(), name)
			wantIs(t, err, c.want)
			if !errors.Is(err, c.err) {
				t.Errorf("err = %v, want it to wrap the driver's %v", err, c.err)
			}
			m.met(t)
		})
	}
}

// A MySQL branch: XA START ... XA END; XA PREPARE, then XA COMMIT on the
// session that prepared it, which dtx held.
func TestSqlmockMySQLNamedCommit(t *testing.T) {
	m := newMock(t, dtx.MySQL)
	const name = "sqlmock-my-commit"
	m.exec("XA START X'73716c6d6f636b2d6d792d636f6d6d6974'")
	m.exec("INSERT INTO t VALUES (1)")
	m.exec("XA END X'73716c6d6f636b2d6d792d636f6d6d6974'")
	m.exec("XA PREPARE X'73716c6d6f636b2d6d792d636f6d6d6974'")
	m.exec("XA COMMIT X'73716c6d6f636b2d6d792d636f6d6d6974'")
	m.exec("INSERT INTO t VALUES (2)")

	tx := beginNamed(t, m.db, name, nil)
	insert(t, tx)
	if err := tx.Commit(); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	ctx := context.Background()
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatalf("CommitDistributed: %v", err)
	}
	// Phase two came before the pool's connection was used again, so it ran
	// on that connection's own session, which the connection keeps: no
	// other session was opened (see docs/two-phase.md).
	if _, err := m.db.Exec("INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if n := m.connects.Load(); n != 1 {
		t.Errorf("%d sessions opened, want 1", n)
	}
	// A retry looks whether a database has the name prepared again; none
	// has, so the registry answers nil.
	m.mock.ExpectQuery("XA RECOVER").WillReturnRows(sqlmock.NewRows([]string{"formatID", "gtrid_length", "bqual_length", "data"}))
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatalf("CommitDistributed again: %v", err)
	}
	m.met(t)
}

// The pool's connection is used again before phase two: the prepared
// branch keeps the session, held, and the connection opens a new one. dtx
// cannot reset a session of a connector given to NewConnector (it cannot
// reach its socket), so the held one is closed after the commit, not
// reused: no session state passes to another user.
func TestSqlmockMySQLNamedUsedBeforeCommit(t *testing.T) {
	m := newMock(t, dtx.MySQL)
	name := mockName("my")
	x := myXid(name)
	m.exec("XA START " + x)
	m.exec("XA END " + x)
	m.exec("XA PREPARE " + x)
	m.exec("INSERT INTO t VALUES (2)")
	m.exec("XA COMMIT " + x)
	m.exec("INSERT INTO t VALUES (3)")

	tx := beginNamed(t, m.db, name, nil)
	if err := tx.Commit(); err != nil {
		t.Fatalf("prepare: %v", err)
	}
	if _, err := m.db.Exec("INSERT INTO t VALUES (2)"); err != nil {
		t.Fatal(err)
	}
	if err := dtx.CommitDistributed(context.Background(), name); err != nil {
		t.Fatalf("CommitDistributed: %v", err)
	}
	if _, err := m.db.Exec("INSERT INTO t VALUES (3)"); err != nil {
		t.Fatal(err)
	}
	if n := m.connects.Load(); n != 2 {
		t.Errorf("%d sessions opened, want 2", n)
	}
	m.met(t)
}

func TestSqlmockMySQLNamedRollbackPrepared(t *testing.T) {
	m := newMock(t, dtx.MySQL)
	name := mockName("my")
	x := myXid(name)
	m.exec("XA START " + x)
	m.exec("XA END " + x)
	m.exec("XA PREPARE " + x)
	m.exec("XA ROLLBACK " + x)

	tx := beginNamed(t, m.db, name, nil)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := dtx.RollbackDistributed(context.Background(), name); err != nil {
		t.Fatal(err)
	}
	m.met(t)
}

func TestSqlmockMySQLOptions(t *testing.T) {
	for _, c := range []struct {
		opts sql.TxOptions
		sets []string
	}{
		{sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true}, []string{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "SET TRANSACTION READ ONLY"}},
		{sql.TxOptions{Isolation: sql.LevelRepeatableRead}, []string{"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"}},
		{sql.TxOptions{Isolation: sql.LevelReadCommitted}, []string{"SET TRANSACTION ISOLATION LEVEL READ COMMITTED"}},
		{sql.TxOptions{Isolation: sql.LevelReadUncommitted}, []string{"SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED"}},
		{sql.TxOptions{ReadOnly: true}, []string{"SET TRANSACTION READ ONLY"}},
	} {
		t.Run(strings.Join(c.sets, "; "), func(t *testing.T) {
			m := newMock(t, dtx.MySQL)
			name := mockName("my")
			x := myXid(name)
			for _, q := range c.sets {
				m.exec(q)
			}
			m.exec("XA START " + x)
			m.exec("XA END " + x)
			m.exec("XA PREPARE " + x)
			m.exec("XA COMMIT " + x)

			tx := beginNamed(t, m.db, name, &c.opts)
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if err := dtx.CommitDistributed(context.Background(), name); err != nil {
				t.Fatal(err)
			}
			m.met(t)
		})
	}
	t.Run("unsupported", func(t *testing.T) {
		m := newMock(t, dtx.MySQL)
		_, err := m.db.BeginTx(dtx.WithName(context.Background(), mockName("my")), &sql.TxOptions{Isolation: sql.LevelLinearizable})
		if err == nil || !strings.Contains(err.Error(), "not supported") {
			t.Fatalf("err = %v, want isolation level not supported", err)
		}
		m.met(t)
	})
}

// Rolling back before prepare ends the branch and rolls it back, and frees
// the name.
func TestSqlmockMySQLNamedRollback(t *testing.T) {
	m := newMock(t, dtx.MySQL)
	name := mockName("my")
	x := myXid(name)
	m.exec("XA START " + x)
	m.exec("INSERT INTO t VALUES (1)")
	m.exec("XA END " + x)
	m.exec("XA ROLLBACK " + x)
	m.exec("XA START " + x)
	m.exec("XA END " + x)
	m.exec("XA ROLLBACK " + x)

	tx := beginNamed(t, m.db, name, nil)
	insert(t, tx)
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	tx = beginNamed(t, m.db, name, nil)
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	m.met(t)
}

func TestSqlmockMySQLErrors(t *testing.T) {
	ctx := context.Background()
	t.Run("XA START duplicate", func(t *testing.T) {
		m := newMock(t, dtx.MySQL)
		name := mockName("my")
		dup := &mysql.MySQLError{Number: 1440, Message: "XAER_DUPID: The XID already exists"}
		m.mock.ExpectExec("XA START " + myXid(name)).WillReturnError(dup)

		_, err := m.db.BeginTx(dtx.WithName(ctx, name), nil)
		wantIs(t, err, dtx.ErrNameInUse)
		if !errors.Is(err, dup) {
			t.Errorf("err = %v, want it to wrap %v", err, dup)
		}
		m.met(t)
	})
	t.Run("XA PREPARE server error", func(t *testing.T) {
		m := newMock(t, dtx.MySQL)
		name := mockName("my")
		x := myXid(name)
		rb := &mysql.MySQLError{Number: 1614, Message: "XA_RBDEADLOCK: Transaction branch was rolled back: deadlock was detected"}
		m.exec("XA START " + x)
		m.exec("INSERT INTO t VALUES (1)")
		m.exec("XA END " + x)
		m.mock.ExpectExec("XA PREPARE " + x).WillReturnError(rb)
		m.exec("XA ROLLBACK " + x)
		m.exec("XA START " + x)
		m.exec("XA END " + x)
		m.exec("XA ROLLBACK " + x)

		tx := beginNamed(t, m.db, name, nil)
		insert(t, tx)
		err := tx.Commit()
		wantIs(t, err, dtx.ErrNotPrepared, "rolled back")
		if !errors.Is(err, rb) {
			t.Errorf("err = %v, want it to wrap %v", err, rb)
		}
		tx = beginNamed(t, m.db, name, nil) // the name is free again
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		m.met(t)
	})
	t.Run("XA PREPARE and XA ROLLBACK fail", func(t *testing.T) {
		m := newMock(t, dtx.MySQL)
		name := mockName("my")
		x := myXid(name)
		m.exec("XA START " + x)
		m.exec("XA END " + x)
		m.mock.ExpectExec("XA PREPARE " + x).WillReturnError(&mysql.MySQLError{Number: 1614, Message: "XA_RBDEADLOCK"})
		m.mock.ExpectExec("XA ROLLBACK " + x).WillReturnError(&mysql.MySQLError{Number: 1402, Message: "XA_RBROLLBACK"})
		m.mock.ExpectClose() // the session is discarded

		tx := beginNamed(t, m.db, name, nil)
		wantIs(t, tx.Commit(), dtx.ErrNotPrepared)
		m.met(t)
	})
	t.Run("XA END server error", func(t *testing.T) {
		m := newMock(t, dtx.MySQL)
		name := mockName("my")
		x := myXid(name)
		m.exec("XA START " + x)
		m.mock.ExpectExec("XA END " + x).WillReturnError(&mysql.MySQLError{Number: 1399, Message: "XAER_RMFAIL"})
		m.exec("XA END " + x)
		m.exec("XA ROLLBACK " + x)

		tx := beginNamed(t, m.db, name, nil)
		wantIs(t, tx.Commit(), dtx.ErrNotPrepared)
		m.met(t)
	})
	t.Run("XA PREPARE connection lost", func(t *testing.T) {
		m := newMock(t, dtx.MySQL)
		name := mockName("my")
		x := myXid(name)
		m.exec("XA START " + x)
		m.exec("XA END " + x)
		m.mock.ExpectExec("XA PREPARE " + x).WillReturnError(errors.New("invalid connection"))
		m.mock.ExpectClose() // the session is discarded, not reused

		tx := beginNamed(t, m.db, name, nil)
		wantIs(t, tx.Commit(), dtx.ErrOutcomeUnknown)
		m.met(t)
	})
	t.Run("XA COMMIT server error", func(t *testing.T) {
		m := newMock(t, dtx.MySQL)
		name := mockName("my")
		x := myXid(name)
		m.exec("XA START " + x)
		m.exec("XA END " + x)
		m.exec("XA PREPARE " + x)
		m.mock.ExpectExec("XA COMMIT " + x).WillReturnError(&mysql.MySQLError{Number: 1205, Message: "Lock wait timeout exceeded"})
		m.exec("XA COMMIT " + x)

		tx := beginNamed(t, m.db, name, nil)
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if err := dtx.CommitDistributed(ctx, name); err == nil {
			t.Fatal("CommitDistributed succeeded, want the server's error")
		}
		// The branch is still held: a retry runs on the same session.
		if err := dtx.CommitDistributed(ctx, name); err != nil {
			t.Fatal(err)
		}
		if n := m.connects.Load(); n != 1 {
			t.Errorf("%d sessions opened, want 1", n)
		}
		m.met(t)
	})
}

// cancelled expects a named transaction of dialect d begun and rolled back
// because its context ended: database/sql then discards the session.
func (m mocked) cancelled(d dtx.Dialect, name string) {
	if d == dtx.Postgres {
		m.exec("BEGIN")
		m.exec("ROLLBACK")
	} else {
		x := myXid(name)
		m.exec("XA START " + x)
		m.exec("XA END " + x)
		m.exec("XA ROLLBACK " + x)
	}
	m.mock.ExpectClose()
}

// awaitMet waits until every expectation is met or 5 s have passed:
// database/sql rolls back a cancelled transaction in a goroutine of its own.
func (m mocked) awaitMet() {
	deadline := time.Now().Add(5 * time.Second)
	for m.mock.ExpectationsWereMet() != nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
}

// When the transaction's context ends, database/sql rolls back and discards
// the connection; dtx's rollback still reaches the server.
func TestSqlmockCancelledContext(t *testing.T) {
	for _, dl := range dialects() {
		t.Run(dl.name, func(t *testing.T) {
			m := newMock(t, dl.d)
			name := mockName(dl.name)
			m.cancelled(dl.d, name)

			ctx, cancel := context.WithCancel(dtx.WithName(context.Background(), name))
			tx, err := m.db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			cancel()
			m.awaitMet()
			if err := tx.Commit(); err == nil {
				t.Fatal("Commit after cancel succeeded")
			}
			m.met(t)
		})
	}
}
