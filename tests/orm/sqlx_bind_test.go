package orm

import (
	"context"
	"testing"

	"github.com/dtx-go/dtx"
	"github.com/jmoiron/sqlx"
)

// sqlx picks its bind style from the driver name, and does not know
// "dtx+postgres": sqlx.Open leaves ? unconverted until BindDriver tells it.
func TestSqlxBindDriver(t *testing.T) {
	s := servers()[0]
	need(t, s).Close()
	db, err := sqlx.Open(s.driver, s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if sqlx.BindType(s.driver) == sqlx.UNKNOWN { // not yet bound by an earlier run (-count)
		if got := db.Rebind("?"); got != "?" {
			t.Fatalf("before BindDriver, Rebind(?) = %q; sqlx now knows dtx+postgres, update the README", got)
		}
	}
	sqlx.BindDriver(s.driver, sqlx.DOLLAR)
	db, err = sqlx.Open(s.driver, s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	table, prefix := setup(t, db.DB)
	name := prefix + "bind"
	ctx := context.Background()
	tx, err := db.BeginTxx(dtx.WithName(ctx, name), nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.MustExec(tx.Rebind("INSERT INTO "+table+" (id, note) VALUES (?, ?)"), 1, "bound")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	commit(t, db.DB, table, name, 1)
}
