package dtx_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
	"github.com/lib/pq"
)

// The seed flow: stage a change, check an outside system, then commit or
// roll back by name. Like every example here it reads its DSN from the
// environment (DTX_PG_DSN, DTX_MYSQL_DSN) with the local default shown, and
// puts a random word in its table and transaction names.
func Example() {
	ctx := context.Background()
	dsn := os.Getenv("DTX_PG_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	run := strings.ToLower(rand.Text()[:8])  // keeps runs sharing a server apart
	db, err := sql.Open("dtx+postgres", dsn) // was: sql.Open("postgres", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	users := "users_" + run
	if _, err := db.Exec("CREATE TABLE " + users + " (id int PRIMARY KEY, status text)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + users)

	name := "signup_42_" + run
	err = dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+users+" VALUES (42, 'pending')")
		return err
	})
	if err != nil {
		log.Fatal(err) // nothing was prepared
	}

	paymentAccepted := true // the outside system's answer
	if paymentAccepted {
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

func ExampleBeginDistributed() {
	ctx := context.Background()
	dsn := os.Getenv("DTX_MYSQL_DSN")
	if dsn == "" {
		dsn = "root@tcp(127.0.0.1:3306)/test"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	db, err := sql.Open("dtx+mysql", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	orders := "orders_" + run
	if _, err := db.Exec("CREATE TABLE " + orders + " (id int PRIMARY KEY)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + orders)

	name := "order_7_" + run
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
	dsn := os.Getenv("DTX_PG_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	db, err := sql.Open("dtx+postgres", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	ledger := "ledger_" + run
	if _, err := db.Exec("CREATE TABLE " + ledger + " (amount int)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + ledger)

	name := "transfer_" + run
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
	dsn := os.Getenv("DTX_PG_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	db, err := sql.Open("dtx+postgres", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	users := "users_" + run
	if _, err := db.Exec("CREATE TABLE " + users + " (id int PRIMARY KEY)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + users)

	name := "signup_9_" + run
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
	dsn := os.Getenv("DTX_MYSQL_DSN")
	if dsn == "" {
		dsn = "root@tcp(127.0.0.1:3306)/test"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	db, err := sql.Open("dtx+mysql", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	stock := "stock_" + run
	if _, err := db.Exec("CREATE TABLE " + stock + " (sku int PRIMARY KEY, qty int)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + stock)

	name := "reserve_" + run
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
	dsn := os.Getenv("DTX_PG_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	db, err := sql.Open("dtx+postgres", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	prefix := "billing_" + run + "_"
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
	dsn := os.Getenv("DTX_PG_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	db, err := sql.Open("dtx+postgres", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	payments := "payments_" + run
	if _, err := db.Exec("CREATE TABLE " + payments + " (id int PRIMARY KEY)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + payments)

	name := "payment_3_" + run
	other, err := sql.Open("postgres", dsn)
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

// RollbackPrepared undoes a branch another process prepared and left: here
// a plain go-sql-driver/mysql session that prepared an XA branch and
// disconnected. dtx finishes a MariaDB branch from another session only a
// detach grace (1 s) after it first saw it listed.
func ExampleRollbackPrepared() {
	ctx := context.Background()
	dsn := os.Getenv("DTX_MYSQL_DSN")
	if dsn == "" {
		dsn = "root@tcp(127.0.0.1:3306)/test"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	db, err := sql.Open("dtx+mysql", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	refunds := "refunds_" + run
	if _, err := db.Exec("CREATE TABLE " + refunds + " (id int PRIMARY KEY)"); err != nil {
		log.Fatal(err)
	}
	defer db.Exec("DROP TABLE " + refunds)

	name := "refund_5_" + run
	other, err := sql.Open("mysql", dsn)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := other.Conn(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, q := range []string{"XA START '" + name + "'", "INSERT INTO " + refunds + " VALUES (5)", "XA END '" + name + "'", "XA PREPARE '" + name + "'"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			log.Fatal(err)
		}
	}
	conn.Close()
	other.Close()

	if err := dtx.RollbackPrepared(ctx, db, name); err != nil {
		log.Fatal(err)
	}
	var n int
	db.QueryRow("SELECT COUNT(*) FROM " + refunds).Scan(&n)
	fmt.Println("rows after RollbackPrepared:", n)
	// Output: rows after RollbackPrepared: 0
}

// ValidateName checks a name before any SQL runs; BeginDistributed and
// WithName's BeginTx call it too.
func ExampleValidateName() {
	fmt.Println(dtx.ValidateName("signup_42"))
	fmt.Println(dtx.ValidateName("order:2026-12-01/7@eu"))
	fmt.Println(dtx.ValidateName("café"))
	err := dtx.ValidateName(strings.Repeat("x", dtx.MaxNameLen+1))
	fmt.Println(errors.Is(err, dtx.ErrInvalidName))
	// Output:
	// <nil>
	// <nil>
	// dtx: invalid transaction name: byte 3 is 0xc3, the first of the 2 bytes of 'é' (U+00E9); allowed are ASCII letters, digits and _-.:+/=@
	// true
}

// Forget drops a name from this process's memory, not from the server: an
// operator who has decided an in-doubt name, or a process giving up a
// prepared one to finish it later. The transaction stays prepared; a later
// CommitDistributed finds it by searching, here only in db.
func ExampleForget() {
	ctx := context.Background()
	dsn := os.Getenv("DTX_PG_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	db, err := sql.Open("dtx+postgres", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	name := "invoice_8_" + run
	if err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "SELECT 1")
		return err
	}); err != nil {
		log.Fatal(err)
	}
	fmt.Println(dtx.Forget(name))
	fmt.Println(dtx.CommitDistributed(dtx.WithDatabases(ctx, db), name))
	// Output:
	// <nil>
	// <nil>
}

// WithDatabases bounds the search for a name this process does not hold to
// the databases given, instead of every database it opened through dtx.
func ExampleWithDatabases() {
	ctx := context.Background()
	dsn := os.Getenv("DTX_PG_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	orders, err := sql.Open("dtx+postgres", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()

	err = dtx.RollbackDistributed(dtx.WithDatabases(ctx, orders), "never_prepared_"+run)
	fmt.Println(errors.Is(err, dtx.ErrUnknownName))
	// Output: true
}

// Register wraps a driver under a name of your choice, with options; here
// go-sql-driver/mysql again, with MariaDB session holding tuned.
func ExampleRegister() {
	dtx.Register("dtx+mariadb-short-hold", &mysql.MySQLDriver{}, dtx.MySQL,
		dtx.WithHoldLimit(16), dtx.WithHoldTimeout(30*time.Second))

	ctx := context.Background()
	dsn := os.Getenv("DTX_MYSQL_DSN")
	if dsn == "" {
		dsn = "root@tcp(127.0.0.1:3306)/test"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	db, err := sql.Open("dtx+mariadb-short-hold", dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	name := "noop_" + run
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
	dsn := os.Getenv("DTX_PG_DSN")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	pc, err := pq.NewConnector(dsn)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(dtx.NewConnector(pc, dtx.Postgres))
	defer db.Close()

	ctx := context.Background()
	name := "job_" + run
	if err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "SELECT 1")
		return err
	}); err != nil {
		log.Fatal(err)
	}
	fmt.Println(dtx.CommitDistributed(ctx, name))
	// Output: <nil>
}
