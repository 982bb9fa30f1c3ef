package dtxtest_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/dtxtest"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

var dialects = []struct {
	name string
	d    dtx.Dialect
}{{"postgres", dtx.Postgres}, {"mysql", dtx.MySQL}}

// name is a global name unique to the test that asks.
func name(t *testing.T, what string) string {
	return fmt.Sprintf("dtxtest_%s_%p", what, t)
}

func insert(tx *sql.Tx) error {
	_, err := tx.Exec("INSERT INTO t VALUES (1)")
	return err
}

func expectInsert(m *dtxtest.Mock) {
	m.Mock.ExpectExec("INSERT INTO t").WillReturnResult(sqlmock.NewResult(0, 1))
}

// Each verb of a named transaction, on each dialect: every expectation is
// met (the Mock fails the test at cleanup otherwise).
func TestVerbs(t *testing.T) {
	t.Parallel()
	for _, dl := range dialects {
		t.Run(dl.name, func(t *testing.T) {
			t.Parallel()
			t.Run("commit", func(t *testing.T) { commitTwice(t, dl.d) })
			t.Run("rollback prepared", func(t *testing.T) {
				t.Parallel()
				m := dtxtest.New(t, dl.d)
				n := name(t, "rbp")
				m.ExpectBegin(n)
				m.ExpectPrepare(n)
				m.ExpectRollbackPrepared(n)
				ctx := m.Context()
				if err := dtx.BeginDistributed(ctx, m.DB, n, func(*sql.Tx) error { return nil }); err != nil {
					t.Fatal(err)
				}
				if err := dtx.RollbackDistributed(ctx, n); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("fn fails", func(t *testing.T) {
				t.Parallel()
				m := dtxtest.New(t, dl.d)
				n := name(t, "fnfails")
				failed := errors.New("duplicate key")
				m.ExpectBegin(n)
				m.Mock.ExpectExec("INSERT INTO t").WillReturnError(failed)
				m.ExpectRollback(n)
				err := dtx.BeginDistributed(m.Context(), m.DB, n, insert)
				if !errors.Is(err, failed) {
					t.Fatalf("err = %v, want the insert's error", err)
				}
			})
			t.Run("options", func(t *testing.T) {
				t.Parallel()
				m := dtxtest.New(t, dl.d)
				n := name(t, "opts")
				opts := &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true}
				m.ExpectBeginTx(n, opts)
				m.ExpectPrepare(n)
				m.ExpectCommitPrepared(n)
				tx, err := m.DB.BeginTx(dtx.WithName(m.Context(), n), opts)
				if err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				if err := dtx.CommitDistributed(m.Context(), n); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("commit fails", func(t *testing.T) {
				t.Parallel()
				m := dtxtest.New(t, dl.d)
				n := name(t, "commitfails")
				m.ExpectBegin(n)
				m.ExpectPrepare(n)
				m.ExpectCommitPrepared(n).WillReturnError(errors.New("read: connection reset by peer"))
				ctx := m.Context()
				if err := dtx.BeginDistributed(ctx, m.DB, n, func(*sql.Tx) error { return nil }); err != nil {
					t.Fatal(err)
				}
				if err := dtx.CommitDistributed(ctx, n); !errors.Is(err, dtx.ErrOutcomeUnknown) {
					t.Fatalf("err = %v, want ErrOutcomeUnknown", err)
				}
			})
			t.Run("found by search", func(t *testing.T) {
				t.Parallel()
				m := dtxtest.New(t, dl.d)
				n := name(t, "found")
				m.ExpectListPrepared("someone_else", n)
				if dl.d == dtx.MySQL {
					m.ExpectListPrepared(n)
				}
				m.ExpectCommitPrepared(n)
				if err := dtx.CommitDistributed(m.Context(), n); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("unknown name", func(t *testing.T) {
				t.Parallel()
				m := dtxtest.New(t, dl.d)
				m.ExpectListPrepared()
				if err := dtx.CommitDistributed(m.Context(), name(t, "unknown")); !errors.Is(err, dtx.ErrUnknownName) {
					t.Fatalf("err = %v, want ErrUnknownName", err)
				}
			})
			t.Run("list", func(t *testing.T) {
				t.Parallel()
				m := dtxtest.New(t, dl.d)
				m.ExpectListPrepared("a", "b")
				ps, err := dtx.ListPrepared(m.Context(), m.DB)
				if err != nil || len(ps) != 2 || ps[0].Name != "a" || ps[1].Name != "b" {
					t.Fatalf("ListPrepared = %v, %v; want a and b", ps, err)
				}
			})
		})
	}
}

func TestPrepareErrors(t *testing.T) {
	t.Parallel()
	lost := errors.New("read: connection reset by peer")
	for _, c := range []struct {
		dialect string
		d       dtx.Dialect
		err     error
		want    error
	}{
		{"postgres", dtx.Postgres, &pq.Error{Code: "40001", Message: "could not serialize access"}, dtx.ErrNotPrepared},
		{"postgres", dtx.Postgres, &pq.Error{Code: "42710", Message: "already in use"}, dtx.ErrNameInUse},
		{"postgres", dtx.Postgres, lost, dtx.ErrOutcomeUnknown},
		{"mysql", dtx.MySQL, &mysql.MySQLError{Number: 1614, Message: "XA_RBDEADLOCK"}, dtx.ErrNotPrepared},
		{"mysql", dtx.MySQL, lost, dtx.ErrOutcomeUnknown},
	} {
		t.Run(c.dialect+"/"+c.err.Error(), func(t *testing.T) {
			t.Parallel()
			m := dtxtest.New(t, c.d)
			n := name(t, "preperr")
			m.ExpectBegin(n)
			m.ExpectPrepareError(n, c.err)
			err := dtx.BeginDistributed(m.Context(), m.DB, n, func(*sql.Tx) error { return nil })
			if !errors.Is(err, c.want) || !errors.Is(err, c.err) {
				t.Fatalf("err = %v, want %v wrapping the driver's error", err, c.want)
			}
		})
	}
}

func TestBeginError(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		d    dtx.Dialect
		err  error
		want error
	}{
		{dtx.Postgres, &pq.Error{Code: "53300", Message: "too many connections"}, nil},
		{dtx.MySQL, &mysql.MySQLError{Number: 1440, Message: "XAER_DUPID"}, dtx.ErrNameInUse},
		{dtx.MySQL, errors.New("invalid connection"), nil},
	} {
		t.Run(c.d.String()+"/"+c.err.Error(), func(t *testing.T) {
			t.Parallel()
			m := dtxtest.New(t, c.d)
			n := name(t, "beginerr")
			m.ExpectBeginError(n, c.err)
			err := dtx.BeginDistributed(m.Context(), m.DB, n, func(*sql.Tx) error { return nil })
			if !errors.Is(err, c.err) || c.want != nil && !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want it to wrap %v and %v", err, c.err, c.want)
			}
		})
	}
}

// The code goes past a failed statement: PostgreSQL rolls back at PREPARE.
func TestPrepareAborted(t *testing.T) {
	t.Parallel()
	m := dtxtest.New(t, dtx.Postgres)
	n := name(t, "aborted")
	m.ExpectBegin(n)
	m.Mock.ExpectExec("INSERT INTO t").WillReturnError(&pq.Error{Code: "23505", Message: "duplicate key"})
	m.ExpectPrepareAborted(n)
	err := dtx.BeginDistributed(m.Context(), m.DB, n, func(tx *sql.Tx) error {
		insert(tx) // the error is ignored
		return nil
	})
	if !errors.Is(err, dtx.ErrNotPrepared) {
		t.Fatalf("err = %v, want ErrNotPrepared", err)
	}
}

// fakeTB stands in for a test that may fail: it records errors instead of
// failing, and runs cleanups when told.
type fakeTB struct {
	testing.TB
	mu       sync.Mutex
	errs     []string
	cleanups []func()
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Errorf(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs = append(f.errs, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Fatalf(format string, args ...any) { f.Errorf(format, args...); panic("fatal") }
func (f *fakeTB) Cleanup(fn func())                 { f.cleanups = append(f.cleanups, fn) }
func (f *fakeTB) end() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// A test whose code prepares another name than expected leaves that name in
// doubt; when it ends, it fails and the name is free for the next test.
func TestFailedTestLeavesNothing(t *testing.T) {
	t.Parallel()
	for _, dl := range dialects {
		t.Run(dl.name, func(t *testing.T) {
			t.Parallel()
			n := name(t, "left")
			f := &fakeTB{TB: t}
			m := dtxtest.New(f, dl.d)
			m.ExpectBegin(n)
			if dl.d == dtx.Postgres {
				m.ExpectPrepare(n + "_typo")
			} else {
				// XA PREPARE finds no expectation: to dtx, a lost connection.
				m.Mock.ExpectExec("XA END").WillReturnResult(sqlmock.NewResult(0, 0))
				m.ExpectCommitPrepared(n)
			}
			err := dtx.BeginDistributed(m.Context(), m.DB, n, func(*sql.Tx) error { return nil })
			if !errors.Is(err, dtx.ErrOutcomeUnknown) {
				t.Fatalf("err = %v, want ErrOutcomeUnknown (the name left in doubt)", err)
			}
			if got := m.Names(); len(got) != 1 || got[0] != n {
				t.Errorf("Names() = %v, want [%s]", got, n)
			}
			f.end()
			if len(f.errs) == 0 || !strings.Contains(strings.Join(f.errs, "\n"), "remaining expectation") {
				t.Errorf("the failed test's errors: %q, want the unmet expectation", f.errs)
			}

			next := dtxtest.New(t, dl.d)
			next.ExpectBegin(n)
			next.ExpectPrepare(n)
			next.ExpectCommitPrepared(n)
			if err := dtx.BeginDistributed(next.Context(), next.DB, n, func(*sql.Tx) error { return nil }); err != nil {
				t.Fatalf("the next test: %v", err)
			}
			if err := dtx.CommitDistributed(next.Context(), n); err != nil {
				t.Fatalf("the next test: %v", err)
			}
		})
	}
}

// The Expect methods' statements match exactly even under the regexp
// matcher: a name with '.' does not match another name.
func TestExpectationsExact(t *testing.T) {
	t.Parallel()
	f := &fakeTB{TB: t}
	m := dtxtest.New(f, dtx.Postgres)
	n := name(t, "a.b")
	m.ExpectBegin(n)
	m.ExpectPrepare(strings.Replace(n, ".", "X", 1))
	err := dtx.BeginDistributed(m.Context(), m.DB, n, func(*sql.Tx) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "want dtx's statement") {
		t.Fatalf("err = %v, want a mismatch with dtx's statement", err)
	}
	f.end()
	// The test's own expectations use its matcher: here exact, so a
	// regexp-looking statement matches only itself.
	m = dtxtest.New(t, dtx.Postgres, dtxtest.QueryMatcher(sqlmock.QueryMatcherEqual))
	m.Mock.ExpectExec("SELECT (1)").WillReturnResult(sqlmock.NewResult(0, 0))
	if _, err := m.DB.Exec("SELECT (1)"); err != nil {
		t.Fatal(err)
	}
}

// A Mock's database is searched only under a context that names it: an
// unknown name finished elsewhere does not consume its expectations.
func TestMockOutsideOtherSearches(t *testing.T) {
	t.Parallel()
	m := dtxtest.New(t, dtx.Postgres)
	m.ExpectListPrepared("mine")
	err := dtx.CommitDistributed(context.Background(), name(t, "elsewhere"))
	if !errors.Is(err, dtx.ErrUnknownName) {
		t.Fatalf("err = %v, want ErrUnknownName", err)
	}
	// The listing is still expected: the search above did not reach m.
	if ps, err := dtx.ListPrepared(m.Context(), m.DB); err != nil || len(ps) != 1 {
		t.Fatalf("ListPrepared = %v, %v", ps, err)
	}
}

// Many tests at once, each with its own Mock and names.
func TestParallel(t *testing.T) {
	t.Parallel()
	for i := range 20 {
		t.Run(fmt.Sprint(i), func(t *testing.T) { commitTwice(t, dialects[i%2].d) })
	}
}

// commitTwice runs a named transaction through prepare and commit, and
// commits it again as a retry would.
func commitTwice(t *testing.T, d dtx.Dialect) {
	t.Parallel()
	m := dtxtest.New(t, d)
	n := name(t, "commit")
	m.ExpectBegin(n)
	expectInsert(m)
	m.ExpectPrepare(n)
	m.ExpectCommitPrepared(n)
	m.ExpectListPrepared() // the retry looks for the name prepared again
	ctx := m.Context()
	if err := dtx.BeginDistributed(ctx, m.DB, n, insert); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := dtx.CommitDistributed(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
}

// TestExampleNew runs the example's test.
func TestExampleNew(t *testing.T) { testActivate(t) }
