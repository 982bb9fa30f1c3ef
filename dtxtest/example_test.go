package dtxtest_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/dtxtest"
)

// activate is the code under test: it stages a change as a prepared
// transaction, and commits it.
func activate(ctx context.Context, db *sql.DB, user string) error {
	name := "activate_" + user
	if err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "UPDATE users SET active = true WHERE name = $1", user)
		return err
	}); err != nil {
		return err
	}
	return dtx.CommitDistributed(ctx, name)
}

// testActivate is a unit test of activate; in a package's _test.go file it
// is func TestActivate(t *testing.T). The Mock checks its expectations and
// frees the names it saw when the test ends.
func testActivate(t *testing.T) {
	t.Parallel()
	m := dtxtest.New(t, dtx.Postgres)
	m.ExpectBegin("activate_ann")
	m.Mock.ExpectExec("UPDATE users").WithArgs("ann").WillReturnResult(sqlmock.NewResult(0, 1))
	m.ExpectPrepare("activate_ann")
	m.ExpectCommitPrepared("activate_ann")
	if err := activate(m.Context(), m.DB, "ann"); err != nil {
		t.Fatal(err)
	}
}

// This file is the example: the code under test (activate) and its unit
// test (testActivate), which TestExampleNew runs.
func ExampleNew() {}
