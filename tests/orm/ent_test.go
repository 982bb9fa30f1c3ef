package orm

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"github.com/dtx-go/dtx"
)

// entDialect is ent's name for s's dialect.
func entDialect(s server) string {
	if s.kind == "postgres" {
		return dialect.Postgres
	}
	return dialect.MySQL
}

// TestEnt drives ent's SQL driver, the one a generated client's Tx and
// queries go through: its Tx under WithName prepares, its Rollback frees the
// name, and inside BeginDistributed ent runs on the *sql.Tx through
// entsql.NewDriver(dialect, entsql.Conn{ExecQuerier: tx}).
func TestEnt(t *testing.T) {
	for _, s := range servers() {
		t.Run(s.kind, func(t *testing.T) {
			sqlDB := need(t, s)
			table, prefix := setup(t, sqlDB)
			d := entDialect(s)
			drv := entsql.OpenDB(d, sqlDB)
			ctx := context.Background()
			insert := func(ex interface {
				Exec(context.Context, string, any, any) error
			}, id int, note string) error {
				q, args := entsql.Dialect(d).Insert(table).Columns("id", "note").Values(id, note).Query()
				return ex.Exec(ctx, q, args, nil)
			}

			// ent's own transaction under WithName: Commit prepares.
			name := prefix + "tx"
			tx, err := drv.Tx(dtx.WithName(ctx, name))
			if err != nil {
				t.Fatal(err)
			}
			if err := insert(tx, 1, "ent"); err != nil {
				t.Fatal(err)
			}
			var rs entsql.Rows
			if err := tx.Query(ctx, "SELECT count(*) FROM "+table, []any{}, &rs); err != nil {
				t.Fatal(err)
			}
			n, err := entsql.ScanInt(rs)
			if err != nil || n != 1 {
				t.Fatalf("inside the transaction: %d rows, %v", n, err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatalf("Commit (prepare): %v", err)
			}
			commit(t, sqlDB, table, name, 1)

			// Rolled back: nothing prepared, the name is free.
			name = prefix + "rb"
			tx, err = drv.Tx(dtx.WithName(ctx, name))
			if err != nil {
				t.Fatal(err)
			}
			if err := insert(tx, 2, "rolled back"); err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			if err := dtx.RollbackDistributed(ctx, name); !errors.Is(err, dtx.ErrUnknownName) {
				t.Fatalf("RollbackDistributed after rollback: %v, want ErrUnknownName", err)
			}
			if n := rows(t, sqlDB, table, 2); n != 0 {
				t.Fatalf("rolled-back row visible: %d rows", n)
			}

			// ent inside BeginDistributed, on its *sql.Tx.
			name = prefix + "bd"
			err = dtx.BeginDistributed(ctx, sqlDB, name, func(tx *sql.Tx) error {
				return insert(entsql.NewDriver(d, entsql.Conn{ExecQuerier: tx}), 3, "inside")
			})
			if err != nil {
				t.Fatal(err)
			}
			commit(t, sqlDB, table, name, 3)

			// An error inside rolls back, and the error comes back.
			boom := errors.New("boom")
			err = dtx.BeginDistributed(ctx, sqlDB, prefix+"bderr", func(tx *sql.Tx) error {
				if err := insert(entsql.NewDriver(d, entsql.Conn{ExecQuerier: tx}), 4, "undone"); err != nil {
					return err
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("BeginDistributed: %v, want boom", err)
			}
			if n := rows(t, sqlDB, table, 4); n != 0 {
				t.Fatalf("rolled-back row visible: %d rows", n)
			}
		})
	}
}
