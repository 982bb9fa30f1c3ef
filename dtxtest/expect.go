package dtxtest

import (
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// The Expect methods add, in order, the statements dtx sends for one step
// of a named transaction, each matched exactly (see the package doc).

// ExpectBegin expects the start of the transaction name with default
// options: BEGIN on PostgreSQL, XA START on MariaDB/MySQL.
func (m *Mock) ExpectBegin(name string) { m.ExpectBeginTx(name, nil) }

// ExpectBeginTx is ExpectBegin for a transaction begun with opts: the
// isolation level and read-only go into BEGIN on PostgreSQL and into SET
// TRANSACTION statements before XA START on MariaDB/MySQL.
func (m *Mock) ExpectBeginTx(name string, opts *sql.TxOptions) {
	m.t.Helper()
	qs, err := m.begin(name, opts)
	if err != nil {
		m.t.Fatalf("dtxtest: ExpectBeginTx: %v", err)
	}
	for _, q := range qs {
		m.exec(q)
	}
}

// ExpectBeginError expects the start of the transaction name, refused with
// err, the wrapped driver's error (a *pq.Error, a *mysql.MySQLError, or
// another error for a broken connection).
func (m *Mock) ExpectBeginError(name string, err error) {
	m.t.Helper()
	qs, _ := m.begin(name, nil)
	m.Mock.ExpectExec(marker + qs[0]).WillReturnError(err)
	if m.mysql() && myErrno(err) == 0 {
		m.Mock.ExpectClose() // dtx discards the session
	}
}

func (m *Mock) begin(name string, opts *sql.TxOptions) ([]string, error) {
	if opts == nil {
		opts = &sql.TxOptions{}
	}
	iso := map[sql.IsolationLevel]string{
		sql.LevelReadUncommitted: "READ UNCOMMITTED",
		sql.LevelReadCommitted:   "READ COMMITTED",
		sql.LevelRepeatableRead:  "REPEATABLE READ",
		sql.LevelSerializable:    "SERIALIZABLE",
	}
	level, ok := iso[opts.Isolation]
	if !ok && opts.Isolation != sql.LevelDefault {
		return nil, fmt.Errorf("isolation level %v: dtx refuses it before any SQL", opts.Isolation)
	}
	if !m.mysql() {
		q := "BEGIN"
		if level != "" {
			q += " ISOLATION LEVEL " + level
		}
		if opts.ReadOnly {
			q += " READ ONLY"
		}
		return []string{q}, nil
	}
	var qs []string
	if level != "" {
		qs = append(qs, "SET TRANSACTION ISOLATION LEVEL "+level)
	}
	if opts.ReadOnly {
		qs = append(qs, "SET TRANSACTION READ ONLY")
	}
	return append(qs, "XA START "+xid(name)), nil
}

// ExpectPrepare expects phase one of name, prepared: on PostgreSQL SELECT 1
// (see the package doc) and PREPARE TRANSACTION; on MariaDB/MySQL XA END
// and XA PREPARE.
func (m *Mock) ExpectPrepare(name string) {
	if m.mysql() {
		m.exec("XA END " + xid(name))
		m.exec("XA PREPARE " + xid(name))
		return
	}
	m.exec("SELECT 1")
	m.Mock.ExpectQuery(marker + "PREPARE TRANSACTION '" + name + "'").WillReturnRows(sqlmock.NewRows(nil))
}

// ExpectPrepareError expects phase one of name, refused by the server with
// err, and what dtx sends after: nothing on PostgreSQL (the server has
// rolled back), XA ROLLBACK on MariaDB/MySQL. An err that is not a
// server's (*pq.Error, *mysql.MySQLError) is a broken connection: the
// outcome is unknown (dtx.ErrOutcomeUnknown) and on MariaDB/MySQL dtx
// closes the session.
func (m *Mock) ExpectPrepareError(name string, err error) {
	if m.mysql() {
		m.exec("XA END " + xid(name))
		m.Mock.ExpectExec(marker + "XA PREPARE " + xid(name)).WillReturnError(err)
		if myErrno(err) == 0 {
			m.Mock.ExpectClose()
		} else {
			m.exec("XA ROLLBACK " + xid(name))
		}
		return
	}
	m.exec("SELECT 1")
	m.Mock.ExpectQuery(marker + "PREPARE TRANSACTION '" + name + "'").WillReturnError(err)
}

// ExpectPrepareAborted expects phase one of a PostgreSQL transaction in
// which a statement failed and the code carried on: the server rolls it
// back instead of preparing, and dtx returns dtx.ErrNotPrepared. (With
// lib/pq, PREPARE TRANSACTION answers with the tag ROLLBACK; here SELECT 1
// fails with 25P02 and dtx sends ROLLBACK.) MariaDB/MySQL keeps such a
// branch alive: use ExpectPrepare there.
func (m *Mock) ExpectPrepareAborted(name string) {
	m.t.Helper()
	if m.mysql() {
		m.t.Fatalf("dtxtest: ExpectPrepareAborted(%q): MariaDB/MySQL does not abort a branch on a failed statement", name)
	}
	m.Mock.ExpectExec(marker + "SELECT 1").WillReturnError(&pq.Error{Code: "25P02", Message: "current transaction is aborted, commands ignored until end of transaction block"})
	m.exec("ROLLBACK")
}

// ExpectRollback expects the rollback of name before it was prepared (its
// function returned an error, or the code called tx.Rollback): ROLLBACK on
// PostgreSQL, XA END and XA ROLLBACK on MariaDB/MySQL.
func (m *Mock) ExpectRollback(name string) {
	if m.mysql() {
		m.exec("XA END " + xid(name))
		m.exec("XA ROLLBACK " + xid(name))
		return
	}
	m.exec("ROLLBACK")
}

// ExpectCommitPrepared expects phase two of name, committed: COMMIT
// PREPARED on PostgreSQL, XA COMMIT on MariaDB/MySQL. Its result is
// returned for WillReturnError. On MariaDB/MySQL this is the branch this
// process prepared and holds; one it found by a search (ExpectListPrepared)
// is listed once more before XA COMMIT: expect ExpectListPrepared(name)
// twice.
func (m *Mock) ExpectCommitPrepared(name string) *sqlmock.ExpectedExec {
	if m.mysql() {
		return m.exec("XA COMMIT " + xid(name))
	}
	return m.exec("COMMIT PREPARED '" + name + "'")
}

// ExpectRollbackPrepared expects phase two of name, rolled back: ROLLBACK
// PREPARED on PostgreSQL, XA ROLLBACK on MariaDB/MySQL; see
// ExpectCommitPrepared.
func (m *Mock) ExpectRollbackPrepared(name string) *sqlmock.ExpectedExec {
	if m.mysql() {
		return m.exec("XA ROLLBACK " + xid(name))
	}
	return m.exec("ROLLBACK PREPARED '" + name + "'")
}

// ExpectListPrepared expects one listing of the prepared transactions,
// answered with names: pg_prepared_xacts on PostgreSQL, XA RECOVER on
// MariaDB/MySQL. dtx lists for dtx.ListPrepared, for a name this process
// does not hold (under Context), and when a name it already finished is
// finished again (a retry: dtx looks whether it was prepared again).
func (m *Mock) ExpectListPrepared(names ...string) {
	if m.mysql() {
		rows := sqlmock.NewRows([]string{"formatID", "gtrid_length", "bqual_length", "data"})
		for _, n := range names {
			rows.AddRow(1, len(n), 0, []byte(n))
		}
		m.Mock.ExpectQuery(marker + "XA RECOVER").WillReturnRows(rows)
		return
	}
	rows := sqlmock.NewRows([]string{"gid", "prepared", "owner", "database"})
	for _, n := range names {
		rows.AddRow(n, time.Now(), "postgres", "test")
	}
	m.Mock.ExpectQuery(marker + "SELECT gid, prepared, owner, database FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared, gid").WillReturnRows(rows)
}

func (m *Mock) exec(q string) *sqlmock.ExpectedExec {
	return m.Mock.ExpectExec(marker + q).WillReturnResult(sqlmock.NewResult(0, 0))
}

func (m *Mock) mysql() bool { return m.d == dtx.MySQL }

// xid is the hex literal dtx names a MariaDB/MySQL branch with.
func xid(name string) string { return "X'" + hex.EncodeToString([]byte(name)) + "'" }

func myErrno(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}
