package dtx_test

// The registry's scoping and dropping, with go-sqlmock: WithDatabases,
// WithoutSearch, Forget, and how a search reports databases it could not
// list.

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/dtx-go/dtx"
)

const pgList = "SELECT gid, prepared, owner, database FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared, gid"

// pgListed expects one listing of pg_prepared_xacts that shows names.
func (m mocked) pgListed(names ...string) {
	rows := sqlmock.NewRows([]string{"gid", "prepared", "owner", "database"})
	for _, n := range names {
		rows.AddRow(n, time.Now(), "postgres", "test")
	}
	m.mock.ExpectQuery(pgList).WillReturnRows(rows)
}

// xaRecovered expects one XA RECOVER that shows names.
func (m mocked) xaRecovered(names ...string) {
	rows := sqlmock.NewRows([]string{"formatID", "gtrid_length", "bqual_length", "data"})
	for _, n := range names {
		rows.AddRow(1, len(n), 0, []byte(n))
	}
	m.mock.ExpectQuery("XA RECOVER").WillReturnRows(rows)
}

// committed expects, then runs, name begun, prepared and committed on m
// (PostgreSQL).
func (m mocked) committed(t *testing.T, name string) {
	t.Helper()
	m.exec("BEGIN")
	m.pgPrepared(name, false)
	m.exec("COMMIT PREPARED '" + name + "'")
	ctx := context.Background()
	if err := dtx.BeginDistributed(ctx, m.db, name, func(*sql.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatal(err)
	}
}

// untouched fails t if m's database was ever connected to.
func (m mocked) untouched(t *testing.T) {
	t.Helper()
	if n := m.connects.Load(); n != 0 {
		t.Errorf("a database outside the search was connected to %d times", n)
	}
}

// prepareUncertain leaves name in doubt: PREPARE TRANSACTION gets no answer.
func (m mocked) prepareUncertain(t *testing.T, name string) {
	t.Helper()
	m.exec("BEGIN")
	m.exec("SELECT 1")
	m.mock.ExpectQuery("PREPARE TRANSACTION '" + name + "'").WillReturnError(errors.New("read: connection reset by peer"))
	err := dtx.BeginDistributed(context.Background(), m.db, name, func(*sql.Tx) error { return nil })
	wantIs(t, err, dtx.ErrOutcomeUnknown)
}

func TestForgetInDoubtName(t *testing.T) {
	m := newMock(t, dtx.Postgres)
	name := mockName("pg")
	m.prepareUncertain(t, name)

	ctx := context.Background()
	err := dtx.BeginDistributed(ctx, m.db, name, func(*sql.Tx) error { return nil })
	wantIs(t, err, dtx.ErrNameInUse, "in doubt", "dtx.Forget")
	if err := dtx.Forget(name); err != nil {
		t.Fatal(err)
	}
	// Nothing was sent for Forget; the name begins again.
	m.exec("BEGIN")
	m.pgPrepared(name, false)
	m.exec("COMMIT PREPARED '" + name + "'")
	if err := dtx.BeginDistributed(ctx, m.db, name, func(*sql.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatal(err)
	}
	m.met(t)
}

// ErrNameInUse says whether the name is active or prepared (in doubt: see
// TestForgetInDoubtName).
func TestNameInUseSaysWhich(t *testing.T) {
	m := newMock(t, dtx.Postgres)
	name := mockName("pg")
	m.exec("BEGIN")
	m.pgPrepared(name, false)
	m.exec("ROLLBACK PREPARED '" + name + "'")

	ctx := context.Background()
	tx := beginNamed(t, m.db, name, nil)
	wantIs(t, dtx.BeginDistributed(ctx, m.db, name, func(*sql.Tx) error { return nil }), dtx.ErrNameInUse, "is active")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	wantIs(t, dtx.BeginDistributed(ctx, m.db, name, func(*sql.Tx) error { return nil }), dtx.ErrNameInUse, "is prepared", "finish it first")
	if err := dtx.RollbackDistributed(ctx, name); err != nil {
		t.Fatal(err)
	}
	m.met(t)
}

func TestForgetRefusals(t *testing.T) {
	m := newMock(t, dtx.Postgres)
	name := mockName("pg")
	m.exec("BEGIN")
	m.exec("ROLLBACK")

	if err := dtx.Forget(mockName("unknown")); err != nil {
		t.Errorf("Forget(unknown name) = %v, want nil", err)
	}
	wantIs(t, dtx.Forget("a b"), dtx.ErrInvalidName)
	tx := beginNamed(t, m.db, name, nil)
	wantIs(t, dtx.Forget(name), dtx.ErrNameInUse, "active")
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	m.met(t)
}

// A finished name, forgotten, is no longer answered from memory: a retry
// searches, and under WithDatabases only the databases named.
func TestForgetFinishedName(t *testing.T) {
	m := newMock(t, dtx.Postgres)
	other := newMock(t, dtx.Postgres)
	name := mockName("pg")
	m.committed(t, name)
	m.pgListed()

	ctx := context.Background()
	if err := dtx.Forget(name); err != nil {
		t.Fatal(err)
	}
	wantIs(t, dtx.CommitDistributed(dtx.WithDatabases(ctx, m.db), name), dtx.ErrUnknownName, "WithDatabases", "1 searched")
	m.met(t)
	other.untouched(t)
}

// Forgetting a held MariaDB branch closes its session; the branch stays
// prepared and is found and finished from another session.
func TestForgetHeldBranch(t *testing.T) {
	m := newMock(t, dtx.MySQL, dtx.WithDetachGrace(0))
	name := mockName("my")
	x := myXid(name)
	m.exec("XA START " + x)
	m.exec("XA END " + x)
	m.exec("XA PREPARE " + x)
	m.mock.ExpectClose()
	m.xaRecovered(name) // the search
	m.xaRecovered(name) // phase two's own look
	m.exec("XA COMMIT " + x)

	ctx := context.Background()
	if err := dtx.BeginDistributed(ctx, m.db, name, func(*sql.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if err := dtx.Forget(name); err != nil {
		t.Fatal(err)
	}
	if err := dtx.CommitDistributed(dtx.WithDatabases(ctx, m.db), name); err != nil {
		t.Fatal(err)
	}
	m.met(t)
}

// An unknown name under WithDatabases lists only the databases named.
func TestWithDatabasesBoundsSearch(t *testing.T) {
	a, b := newMock(t, dtx.Postgres), newMock(t, dtx.Postgres)
	name := mockName("pg")
	a.pgListed("someone_else")
	a.pgListed(name)
	a.exec("ROLLBACK PREPARED '" + name + "'")

	ctx := dtx.WithDatabases(context.Background(), a.db)
	wantIs(t, dtx.CommitDistributed(ctx, name), dtx.ErrUnknownName)
	if err := dtx.RollbackDistributed(ctx, name); err != nil {
		t.Fatal(err)
	}
	a.met(t)
	b.untouched(t)

	wantIs(t, dtx.CommitDistributed(dtx.WithDatabases(context.Background()), mockName("pg")), dtx.ErrUnknownName, "0 searched")
	raw, _, err := sqlmock.New()
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	wantIs(t, dtx.CommitDistributed(dtx.WithDatabases(context.Background(), raw), name), dtx.ErrNotDTX)
}

// A database made WithoutSearch is left out of a search without
// WithDatabases, and reached with it.
func TestWithoutSearch(t *testing.T) {
	hidden := newMock(t, dtx.Postgres, dtx.WithoutSearch())
	name := mockName("pg")
	wantIs(t, dtx.CommitDistributed(context.Background(), name), dtx.ErrUnknownName)
	hidden.untouched(t)

	hidden.pgListed()
	wantIs(t, dtx.CommitDistributed(dtx.WithDatabases(context.Background(), hidden.db), name), dtx.ErrUnknownName)
	hidden.met(t)
}

// A database that cannot be listed does not hide another's answer, and
// when none has the name the error is not ErrUnknownName.
func TestSearchListingError(t *testing.T) {
	broken, ok := newMock(t, dtx.Postgres), newMock(t, dtx.MySQL, dtx.WithDetachGrace(0))
	name := mockName("my")
	down := errors.New("dial tcp: connection refused")
	broken.mock.ExpectQuery(pgList).WillReturnError(down)
	ok.xaRecovered(name)
	ok.xaRecovered(name)
	ok.exec("XA COMMIT " + myXid(name))

	ctx := dtx.WithDatabases(context.Background(), broken.db, ok.db)
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatalf("CommitDistributed with one database down: %v", err)
	}

	other := mockName("my")
	broken.mock.ExpectQuery(pgList).WillReturnError(down)
	ok.xaRecovered()
	err := dtx.CommitDistributed(ctx, other)
	if err == nil || errors.Is(err, dtx.ErrUnknownName) || !errors.Is(err, down) {
		t.Fatalf("err = %v, want the listing error and not ErrUnknownName", err)
	}
	for _, s := range []string{"dtx:", other, "1 of 2", "1 could not be listed"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("err = %v, want it to mention %q", err, s)
		}
	}
	broken.met(t)
	ok.met(t)
}

// A retry of a finished name looks for it prepared again only in the
// database where it finished.
func TestRetryListsOnlyWhereFinished(t *testing.T) {
	m, bystander := newMock(t, dtx.Postgres), newMock(t, dtx.Postgres)
	name := mockName("pg")
	m.committed(t, name)
	m.pgListed()

	if err := dtx.CommitDistributed(context.Background(), name); err != nil { // a retry
		t.Fatal(err)
	}
	m.met(t)
	bystander.untouched(t)
}

// Once the database where a name finished is closed, a retry is answered
// from memory after the search of the databases still open.
func TestRetryAfterClose(t *testing.T) {
	m, other := newMock(t, dtx.Postgres), newMock(t, dtx.Postgres, dtx.WithoutSearch())
	name := mockName("pg")
	m.committed(t, name)
	m.met(t)
	m.db.Close()
	if err := dtx.CommitDistributed(context.Background(), name); err != nil {
		t.Fatalf("retry after Close: %v", err)
	}
	other.untouched(t)
}

// BeginDistributed refuses a nil fn and an ended context before any SQL,
// and says "dtx:" and the name.
func TestBeginDistributedRefusals(t *testing.T) {
	m := newMock(t, dtx.Postgres)
	name := mockName("pg")
	err := dtx.BeginDistributed(context.Background(), m.db, name, nil)
	if err == nil || !strings.HasPrefix(err.Error(), "dtx:") || !strings.Contains(err.Error(), name) {
		t.Fatalf("nil fn: err = %v, want a dtx error naming %s", err, name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = dtx.BeginDistributed(ctx, m.db, name, func(*sql.Tx) error { return nil })
	wantIs(t, err, context.Canceled, "dtx:", name)
	wantIs(t, err, dtx.ErrNotPrepared)
	err = dtx.CommitDistributed(ctx, name)
	wantIs(t, err, context.Canceled, "dtx:", name, "nothing was sent")
	if errors.Is(err, dtx.ErrOutcomeUnknown) {
		t.Errorf("err = %v: nothing was sent, so the outcome is known", err)
	}
	m.untouched(t)
}

// A context that ends inside fn: database/sql rolls back and its error
// comes back with "dtx:" and the name.
func TestBeginDistributedCancelledInside(t *testing.T) {
	for _, dl := range dialects() {
		t.Run(dl.name, func(t *testing.T) {
			m := newMock(t, dl.d)
			name := mockName(dl.name)
			m.cancelled(dl.d, name)
			ctx, cancel := context.WithCancel(context.Background())
			err := dtx.BeginDistributed(ctx, m.db, name, func(*sql.Tx) error {
				cancel()
				m.awaitMet()
				return nil
			})
			wantIs(t, err, dtx.ErrNotPrepared, "dtx:", name)
			if !errors.Is(err, context.Canceled) && !errors.Is(err, sql.ErrTxDone) {
				t.Errorf("err = %v, want context.Canceled or sql.ErrTxDone", err)
			}
			m.met(t)
		})
	}
}

func TestValidateNameNonASCII(t *testing.T) {
	err := dtx.ValidateName("café")
	wantIs(t, err, dtx.ErrInvalidName, "byte 3", "0xc3", "'é'", "U+00E9")
	if strings.Contains(err.Error(), "Ã") {
		t.Errorf("err = %v: the byte printed as another character", err)
	}
	wantIs(t, dtx.ValidateName("a\xffb"), dtx.ErrInvalidName, "0xff (not UTF-8)")
	wantIs(t, dtx.ValidateName("a b"), dtx.ErrInvalidName, "' '")
}
