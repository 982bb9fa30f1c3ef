package orm

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/dtx-go/dtx"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/mysqldialect"
	"github.com/uptrace/bun/dialect/pgdialect"
)

func openBun(s server, sqlDB *sql.DB) *bun.DB {
	if s.kind == "postgres" {
		return bun.NewDB(sqlDB, pgdialect.New())
	}
	return bun.NewDB(sqlDB, mysqldialect.New())
}

// TestBun: bun's RunInTx under WithName prepares, with nested RunInTx as
// savepoints inside the named transaction (an inner failure undoes only its
// savepoint); an error in fn rolls back and frees the name; bun's model
// queries run in it like any other.
func TestBun(t *testing.T) {
	for _, s := range servers() {
		t.Run(s.kind, func(t *testing.T) {
			sqlDB := need(t, s)
			table, prefix := setup(t, sqlDB)
			db := openBun(s, sqlDB)
			ctx := context.Background()
			insert := func(ctx context.Context, tx bun.Tx, id int, note string) error {
				_, err := tx.ExecContext(ctx, "INSERT INTO ? (id, note) VALUES (?, ?)", bun.Ident(table), id, note)
				return err
			}
			boom := errors.New("boom")

			name := prefix + "tx"
			err := db.RunInTx(dtx.WithName(ctx, name), nil, func(ctx context.Context, tx bun.Tx) error {
				if err := insert(ctx, tx, 1, "outer"); err != nil {
					return err
				}
				if err := tx.RunInTx(ctx, nil, func(ctx context.Context, sp bun.Tx) error {
					return insert(ctx, sp, 2, "kept savepoint")
				}); err != nil {
					return err
				}
				if err := tx.RunInTx(ctx, nil, func(ctx context.Context, sp bun.Tx) error {
					if err := insert(ctx, sp, 5, "undone savepoint"); err != nil {
						return err
					}
					return boom
				}); !errors.Is(err, boom) {
					return err
				}
				_, err := tx.NewInsert().Model(&item{ID: 6, Note: "model"}).ModelTableExpr(table).Exec(ctx)
				return err
			})
			if err != nil {
				t.Fatalf("RunInTx (prepare): %v", err)
			}
			commit(t, sqlDB, table, name, 1)
			for id, want := range map[int]int{2: 1, 5: 0, 6: 1} {
				if n := rows(t, sqlDB, table, id); n != want {
					t.Errorf("row %d: %d rows, want %d", id, n, want)
				}
			}

			// fn fails: bun rolls back, nothing is prepared, the name is free.
			name = prefix + "rb"
			err = db.RunInTx(dtx.WithName(ctx, name), nil, func(ctx context.Context, tx bun.Tx) error {
				if err := insert(ctx, tx, 3, "rolled back"); err != nil {
					return err
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("RunInTx: %v, want boom", err)
			}
			if err := dtx.RollbackDistributed(ctx, name); !errors.Is(err, dtx.ErrUnknownName) {
				t.Fatalf("RollbackDistributed after fn error: %v, want ErrUnknownName", err)
			}
			if n := rows(t, sqlDB, table, 3); n != 0 {
				t.Fatalf("rolled-back row visible: %d rows", n)
			}
		})
	}
}
