// Package orm tests, against real servers, that a transaction an ORM owns
// becomes a named two-phase transaction when begun under dtx.WithName:
// sqlx's BeginTxx and GORM's Transaction, on PostgreSQL and MariaDB.
package orm

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/jmoiron/sqlx"
	gmysql "gorm.io/driver/mysql"
	gpostgres "gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

type server struct{ kind, driver, env, dsn string }

func servers() []server {
	s := []server{
		{"postgres", "dtx+postgres", "DTX_PG_DSN", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"},
		{"mysql", "dtx+mysql", "DTX_MYSQL_DSN", "root@tcp(127.0.0.1:3306)/test"},
	}
	for i := range s {
		if v := os.Getenv(s[i].env); v != "" {
			s[i].dsn = v
		}
	}
	return s
}

// need opens s through dtx, closed when t ends; it skips t when s is
// unreachable, or fails it when DTX_REQUIRE_DB=1.
func need(t *testing.T, s server) *sql.DB {
	t.Helper()
	db, err := sql.Open(s.driver, s.dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		if os.Getenv("DTX_REQUIRE_DB") == "1" {
			t.Fatalf("%s not reachable at %s (set %s): %v", s.kind, s.dsn, s.env, err)
		}
		t.Skipf("%s not reachable at %s (set %s): %v", s.kind, s.dsn, s.env, err)
	}
	return db
}

func token() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// setup returns a fresh table (dropped when t ends) and a name prefix whose
// transactions are rolled back when t ends if still prepared.
func setup(t *testing.T, db *sql.DB) (table, prefix string) {
	t.Helper()
	table, prefix = "orm_"+token(), "orm_"+token()+"_"
	if _, err := db.Exec("CREATE TABLE " + table + " (id INT PRIMARY KEY, note VARCHAR(50))"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Exec("DROP TABLE IF EXISTS " + table) })
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ps, _ := dtx.ListPrepared(ctx, db)
		for _, p := range ps {
			if strings.HasPrefix(p.Name, prefix) {
				t.Logf("cleanup: rolling back %s: %v", p.Name, dtx.RollbackDistributed(ctx, p.Name))
			}
		}
	})
	return table, prefix
}

func rows(t *testing.T, db *sql.DB, table string, id int) int {
	t.Helper()
	var n int
	if err := db.QueryRow("SELECT count(*) FROM " + table + " WHERE id = " + strconv.Itoa(id)).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// commit finishes name and checks the row id appears only then.
func commit(t *testing.T, db *sql.DB, table, name string, id int) {
	t.Helper()
	if n := rows(t, db, table, id); n != 0 {
		t.Fatalf("prepared row visible before CommitDistributed: %d rows", n)
	}
	if err := dtx.CommitDistributed(context.Background(), name); err != nil {
		t.Fatalf("CommitDistributed(%s): %v", name, err)
	}
	if n := rows(t, db, table, id); n != 1 {
		t.Fatalf("row not visible after CommitDistributed: %d rows", n)
	}
}

func TestSqlx(t *testing.T) {
	for _, s := range servers() {
		t.Run(s.kind, func(t *testing.T) {
			sqlDB := need(t, s)
			table, prefix := setup(t, sqlDB)
			db := sqlx.NewDb(sqlDB, s.kind) // the parent's name picks the bind style
			ctx := context.Background()
			name := prefix + "ok"

			tx, err := db.BeginTxx(dtx.WithName(ctx, name), nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(tx.Rebind("INSERT INTO "+table+" (id, note) VALUES (?, ?)"), 1, "sqlx"); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := tx.Get(&n, "SELECT count(*) FROM "+table); err != nil || n != 1 {
				t.Fatalf("inside the transaction: %d rows, %v", n, err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatalf("Commit (prepare): %v", err)
			}
			commit(t, sqlDB, table, name, 1)

			// A rolled-back sqlx transaction frees its name.
			name = prefix + "rb"
			tx, err = db.BeginTxx(dtx.WithName(ctx, name), nil)
			if err != nil {
				t.Fatal(err)
			}
			tx.MustExec(tx.Rebind("INSERT INTO "+table+" (id, note) VALUES (?, ?)"), 2, "rolled back")
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			if err := dtx.CommitDistributed(ctx, name); !errors.Is(err, dtx.ErrUnknownName) {
				t.Fatalf("CommitDistributed after rollback: %v, want ErrUnknownName", err)
			}
			if n := rows(t, sqlDB, table, 2); n != 0 {
				t.Fatalf("rolled-back row visible: %d rows", n)
			}
		})
	}
}

type item struct {
	ID   int `gorm:"primaryKey;autoIncrement:false"`
	Note string
}

func openGorm(t *testing.T, s server, sqlDB *sql.DB) *gorm.DB {
	t.Helper()
	var d gorm.Dialector
	if s.kind == "postgres" {
		d = gpostgres.New(gpostgres.Config{Conn: sqlDB})
	} else {
		d = gmysql.New(gmysql.Config{Conn: sqlDB})
	}
	gdb, err := gorm.Open(d, &gorm.Config{Logger: logger.Default.LogMode(logger.Silent)})
	if err != nil {
		t.Fatal(err)
	}
	return gdb
}

func TestGorm(t *testing.T) {
	for _, s := range servers() {
		t.Run(s.kind, func(t *testing.T) {
			sqlDB := need(t, s)
			table, prefix := setup(t, sqlDB)
			gdb := openGorm(t, s, sqlDB)
			ctx := context.Background()

			// fn fails: GORM rolls back, nothing is prepared, the name is free.
			name := prefix + "tx"
			boom := errors.New("boom")
			err := gdb.WithContext(dtx.WithName(ctx, name)).Transaction(func(tx *gorm.DB) error {
				if err := tx.Table(table).Create(&item{ID: 2, Note: "rolled back"}).Error; err != nil {
					return err
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("Transaction: %v, want boom", err)
			}
			if err := dtx.RollbackDistributed(ctx, name); !errors.Is(err, dtx.ErrUnknownName) {
				t.Fatalf("RollbackDistributed after fn error: %v, want ErrUnknownName", err)
			}
			if n := rows(t, sqlDB, table, 2); n != 0 {
				t.Fatalf("rolled-back row visible: %d rows", n)
			}

			// The same name again: fn succeeds, GORM's commit prepares.
			err = gdb.WithContext(dtx.WithName(ctx, name)).Transaction(func(tx *gorm.DB) error {
				if err := tx.Table(table).Create(&item{ID: 1, Note: "gorm"}).Error; err != nil {
					return err
				}
				var n int64
				if err := tx.Table(table).Count(&n).Error; err != nil || n != 1 {
					t.Errorf("inside the transaction: %d rows, %v", n, err)
				}
				return nil
			})
			if err != nil {
				t.Fatalf("Transaction (prepare): %v", err)
			}
			commit(t, sqlDB, table, name, 1)

			// Outside WithName GORM's transactions are plain ones.
			if err := gdb.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
				return tx.Table(table).Create(&item{ID: 3, Note: "plain"}).Error
			}); err != nil {
				t.Fatal(err)
			}
			if n := rows(t, sqlDB, table, 3); n != 1 {
				t.Fatalf("plain transaction's row: %d rows, want 1", n)
			}
		})
	}
}
