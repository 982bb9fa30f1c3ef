// Package dtxtest unit-tests code that uses dtx, without a database server:
// a dtx database over go-sqlmock in one call, expectations for the
// statements dtx sends for each verb and dialect, and a registry kept to
// the test.
//
//	func TestRegister(t *testing.T) {
//		t.Parallel()
//		m := dtxtest.New(t, dtx.Postgres) // or dtx.MySQL
//		m.ExpectBegin("signup_ann@example.com")
//		m.Mock.ExpectExec("INSERT INTO accounts").WithArgs("ann@example.com").WillReturnResult(sqlmock.NewResult(0, 1))
//		m.ExpectPrepare("signup_ann@example.com")
//		m.ExpectCommitPrepared("signup_ann@example.com")
//		if err := signup.Register(m.Context(), m.DB, "ann@example.com", charged); err != nil {
//			t.Fatal(err)
//		}
//	}
//
// (examples/signup in the dtx repository holds that package and its tests.)
//
// # What the mock sees
//
// The Expect methods expect exactly the statements dtx sends through the
// wrapped driver, in order, matched as exact strings whatever matcher the
// test's own expectations use: for PostgreSQL BEGIN, PREPARE TRANSACTION
// '<name>' (sent as a query, answered with no rows), COMMIT PREPARED
// '<name>'; for MariaDB/MySQL XA START, XA END, XA PREPARE, XA COMMIT with
// the name as a hex literal (X'7369676e75705f616e6e'). They hide one
// difference from production: sqlmock's rows carry no command tag, so on
// PostgreSQL dtx makes sure the transaction is not aborted with a SELECT 1
// before PREPARE TRANSACTION, as it does for any driver but lib/pq;
// ExpectPrepare expects that SELECT 1 too. Everything else is what
// production sends to lib/pq or go-sql-driver/mysql.
//
// # Isolation
//
// dtx keeps one registry of names per process. A Mock keeps it to the
// test: its database is left out of every search that does not name it
// (dtx.WithoutSearch), Context searches it alone (dtx.WithDatabases), and
// when the test ends every name its database saw is dropped (dtx.Forget),
// so a test that fails halfway (a name left prepared or in doubt) leaves
// nothing for the next. Tests that run in parallel must still use
// different names, as processes sharing a server must.
package dtxtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/dtx-go/dtx"
)

// Mock is a dtx database over go-sqlmock, for one test.
type Mock struct {
	// DB is the dtx database to hand to the code under test.
	DB *sql.DB
	// Mock is the sqlmock behind DB, for the expectations of the code's
	// own statements.
	Mock sqlmock.Sqlmock

	t   testing.TB
	d   dtx.Dialect
	raw *sql.DB

	mu    sync.Mutex
	names []string // every name DB's sessions saw, in order
}

// An Option changes how New makes a Mock.
type Option func(*config)

type config struct{ matcher sqlmock.QueryMatcher }

// QueryMatcher sets how the test's own expectations match statements
// (sqlmock.QueryMatcherRegexp by default, as in sqlmock). The Expect
// methods' statements always match exactly.
func QueryMatcher(m sqlmock.QueryMatcher) Option {
	return func(c *config) { c.matcher = m }
}

// New returns a Mock of dialect d (dtx.Postgres or dtx.MySQL), closed when
// t ends. At that point it fails t unless every expectation was met, and
// drops from dtx's registry every name its database saw.
//
// Its database is made with dtx.WithoutSearch and dtx.WithDetachGrace(0):
// it is searched only under Context (or another dtx.WithDatabases naming
// it), and a MariaDB/MySQL branch finished from another session does not
// wait for a race a mock does not have.
func New(t testing.TB, d dtx.Dialect, opts ...Option) *Mock {
	t.Helper()
	cfg := config{matcher: sqlmock.QueryMatcherRegexp}
	for _, o := range opts {
		o(&cfg)
	}
	dsn := "dtxtest_" + rand.Text()
	raw, mock, err := sqlmock.NewWithDSN(dsn, sqlmock.QueryMatcherOption(matcher{cfg.matcher}))
	if err != nil {
		t.Fatalf("dtxtest: %v", err)
	}
	m := &Mock{Mock: mock, t: t, d: d, raw: raw}
	c := connector{drv: raw.Driver(), dsn: dsn, m: m}
	m.DB = sql.OpenDB(dtx.NewConnector(c, d, dtx.WithoutSearch(), dtx.WithDetachGrace(0)))
	t.Cleanup(m.cleanup)
	return m
}

// Context returns the test's context, under which dtx's by-name finishes
// search m's database and no other (see dtx.WithDatabases).
func (m *Mock) Context() context.Context {
	return dtx.WithDatabases(m.t.Context(), m.DB)
}

// Names returns the global names m's database has seen so far, in order:
// each PREPARE TRANSACTION on PostgreSQL, each XA START on MariaDB/MySQL.
func (m *Mock) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.names)
}

func (m *Mock) saw(name string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !slices.Contains(m.names, name) {
		m.names = append(m.names, name)
	}
}

func (m *Mock) cleanup() {
	if err := m.Mock.ExpectationsWereMet(); err != nil {
		m.t.Errorf("dtxtest: %v", err)
	}
	for _, name := range m.Names() {
		if err := dtx.Forget(name); err != nil {
			if errors.Is(err, dtx.ErrNameInUse) {
				err = fmt.Errorf("%w (a transaction begun under it was neither committed nor rolled back: defer tx.Rollback())", err)
			}
			m.t.Errorf("dtxtest: %v", err)
		}
	}
	m.DB.Close()
	m.raw.Close()
}

// marker starts the SQL of the Expect methods' expectations, which
// matcher compares exactly; it shows in sqlmock's messages.
const marker = "[dtx] "

// matcher matches the Expect methods' statements exactly and hands the
// test's own to its matcher.
type matcher struct{ user sqlmock.QueryMatcher }

// Match implements sqlmock.QueryMatcher.
func (m matcher) Match(expected, actual string) error {
	if want, ok := strings.CutPrefix(expected, marker); ok {
		if want == actual {
			return nil
		}
		return fmt.Errorf("dtxtest: got %q, want dtx's statement %q", actual, want)
	}
	return m.user.Match(expected, actual)
}
