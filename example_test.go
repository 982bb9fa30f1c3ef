package dtx_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// The examples run against the servers the tests use: pgDSN and myDSN are
// postgres://postgres@127.0.0.1:5432/test?sslmode=disable and
// root@tcp(127.0.0.1:3306)/test unless DTX_PG_DSN or DTX_MYSQL_DSN is set.
// Each makes its own table and transaction names, so runs never collide.

// unique returns prefix followed by a short random suffix.
func unique(prefix string) string { return prefix + strings.ToLower(rand.Text()[:8]) }

// The seed flow: stage a change, check an outside system, then commit or
// roll back by name.
func Example() {
	ctx := context.Background()
	db, err := sql.Open("dtx+postgres", pgDSN()) // was: sql.Open("postgres", ...)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	users := unique("users_")
	if _, err := db.Exec("CREATE TABLE " + users + " (id int PRIMARY KEY, status text)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + users)

	name := unique("signup_42_")
	err = dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+users+" VALUES (42, 'pending')")
		return err
	})
	if err != nil {
		log.Fatal(err) // nothing was prepared
	}

	if paymentAccepted() {
		err = dtx.CommitDistributed(ctx, name)
	} else {
		err = dtx.RollbackDistributed(ctx, name)
	}
	if err != nil {
		log.Fatal(err)
	}
	var status string
	db.QueryRow("SELECT status FROM " + users + " WHERE id = 42").Scan(&status)
	fmt.Println("user 42:", status)
	// Output: user 42: pending
}

func paymentAccepted() bool { return true }

func ExampleBeginDistributed() {
	ctx := context.Background()
	db, err := sql.Open("dtx+mysql", myDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	orders := unique("orders_")
	if _, err := db.Exec("CREATE TABLE " + orders + " (id int PRIMARY KEY)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + orders)

	name := unique("order_7_")
	err = dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+orders+" VALUES (7)")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Prepared: durable on the server, but invisible until committed.
	var n int
	db.QueryRow("SELECT COUNT(*) FROM " + orders).Scan(&n)
	fmt.Println("rows while prepared:", n)

	if err := dtx.CommitDistributed(ctx, name); err != nil {
		log.Fatal(err)
	}
	db.QueryRow("SELECT COUNT(*) FROM " + orders).Scan(&n)
	fmt.Println("rows after commit:", n)
	// Output:
	// rows while prepared: 0
	// rows after commit: 1
}

func ExampleCommitDistributed() {
	ctx := context.Background()
	db, err := sql.Open("dtx+postgres", pgDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ledger := unique("ledger_")
	if _, err := db.Exec("CREATE TABLE " + ledger + " (amount int)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + ledger)

	name := unique("transfer_")
	err = dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+ledger+" VALUES (100)")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}

	fmt.Println(dtx.CommitDistributed(ctx, name))
	// A retry, say after a timeout whose outcome the caller did not see,
	// is safe: this process remembers the commit.
	fmt.Println(dtx.CommitDistributed(ctx, name))
	// Rolling back what was committed is refused.
	err = dtx.RollbackDistributed(ctx, name)
	fmt.Println(errors.Is(err, dtx.ErrAlreadyFinished))
	// Output:
	// <nil>
	// <nil>
	// true
}

func ExampleRollbackDistributed() {
	ctx := context.Background()
	db, err := sql.Open("dtx+postgres", pgDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	users := unique("users_")
	if _, err := db.Exec("CREATE TABLE " + users + " (id int PRIMARY KEY)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + users)

	name := unique("signup_9_")
	err = dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+users+" VALUES (9)")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}

	// The outside system refused: undo the prepared insert.
	if err := dtx.RollbackDistributed(ctx, name); err != nil {
		log.Fatal(err)
	}
	var n int
	db.QueryRow("SELECT COUNT(*) FROM " + users).Scan(&n)
	fmt.Println("rows after rollback:", n)
	// Output: rows after rollback: 0
}

// An ORM, sqlx or plain database/sql transaction becomes a named one when
// it begins under WithName: its Commit prepares instead of committing.
func ExampleWithName() {
	ctx := context.Background()
	db, err := sql.Open("dtx+mysql", myDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	stock := unique("stock_")
	if _, err := db.Exec("CREATE TABLE " + stock + " (sku int PRIMARY KEY, qty int)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + stock)

	name := unique("reserve_")
	tx, err := db.BeginTx(dtx.WithName(ctx, name), &sql.TxOptions{Isolation: sql.LevelSerializable})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO "+stock+" VALUES (1, 5)"); err != nil {
		tx.Rollback()
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil { // phase one: prepare
		log.Fatal(err)
	}
	fmt.Println("prepared")

	if err := dtx.CommitDistributed(ctx, name); err != nil { // phase two
		log.Fatal(err)
	}
	var qty int
	db.QueryRow("SELECT qty FROM " + stock + " WHERE sku = 1").Scan(&qty)
	fmt.Println("committed, qty", qty)
	// Output:
	// prepared
	// committed, qty 5
}

// A recovery tool lists what waits for a decision. Give the names of one
// service a common prefix so that its tool finds its own.
func ExampleListPrepared() {
	ctx := context.Background()
	db, err := sql.Open("dtx+postgres", pgDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	prefix := unique("billing_") + "_"
	for _, invoice := range []string{"invoice_1", "invoice_2"} {
		err := dtx.BeginDistributed(ctx, db, prefix+invoice, func(tx *sql.Tx) error {
			return nil // a real one would change something
		})
		if err != nil {
			log.Fatal(err)
		}
	}

	ps, err := dtx.ListPrepared(ctx, db)
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range ps {
		if strings.HasPrefix(p.Name, prefix) {
			fmt.Println("in doubt:", strings.TrimPrefix(p.Name, prefix))
			if err := dtx.RollbackDistributed(ctx, p.Name); err != nil {
				log.Fatal(err)
			}
		}
	}
	// Output:
	// in doubt: invoice_1
	// in doubt: invoice_2
}

// CommitPrepared finishes a transaction that another process prepared, in
// the database given. Here a plain lib/pq session plays the process that
// prepared and then died.
func ExampleCommitPrepared() {
	ctx := context.Background()
	db, err := sql.Open("dtx+postgres", pgDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	payments := unique("payments_")
	if _, err := db.Exec("CREATE TABLE " + payments + " (id int PRIMARY KEY)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + payments)

	name := unique("payment_3_")
	other, err := sql.Open("postgres", pgDSN())
	if err != nil {
		log.Fatal(err)
	}
	conn, err := other.Conn(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, q := range []string{"BEGIN", "INSERT INTO " + payments + " VALUES (3)", "PREPARE TRANSACTION '" + name + "'"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			log.Fatal(err)
		}
	}
	conn.Close()
	other.Close()

	if err := dtx.CommitPrepared(ctx, db, name); err != nil {
		log.Fatal(err)
	}
	var n int
	db.QueryRow("SELECT COUNT(*) FROM " + payments).Scan(&n)
	fmt.Println("rows after CommitPrepared:", n)
	// Output: rows after CommitPrepared: 1
}

// Register wraps a driver under a name of your choice, with options; here
// go-sql-driver/mysql again, with MariaDB session holding tuned.
func ExampleRegister() {
	dtx.Register("dtx+mariadb-short-hold", &mysql.MySQLDriver{}, dtx.MySQL,
		dtx.WithHoldLimit(16), dtx.WithHoldTimeout(30*time.Second))

	ctx := context.Background()
	db, err := sql.Open("dtx+mariadb-short-hold", myDSN())
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	name := unique("noop_")
	if err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "SELECT 1")
		return err
	}); err != nil {
		log.Fatal(err)
	}
	fmt.Println(dtx.CommitDistributed(ctx, name))
	// Output: <nil>
}

// NewConnector wraps a driver.Connector for sql.OpenDB: here lib/pq's, which
// could carry a custom dialer; pgx's stdlib.GetConnector works the same way.
func ExampleNewConnector() {
	pc, err := pq.NewConnector(pgDSN())
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(dtx.NewConnector(pc, dtx.Postgres))
	defer db.Close()

	ctx := context.Background()
	name := unique("job_")
	if err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "SELECT 1")
		return err
	}); err != nil {
		log.Fatal(err)
	}
	fmt.Println(dtx.CommitDistributed(ctx, name))
	// Output: <nil>
}
