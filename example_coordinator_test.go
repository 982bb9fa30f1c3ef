package dtx_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"fmt"
	"log"
	"os"
	"strings"

	"github.com/dtx-go/dtx"
)

// A transfer from a PostgreSQL database to a MariaDB one, committed in both
// or in neither. With no Log given, the outcome is kept in a table of the
// PostgreSQL resource, and the PostgreSQL branch's own commit is the
// decision.
func ExampleCoordinator_Do() {
	ctx := context.Background()
	pgDSN := os.Getenv("DTX_PG_DSN")
	if pgDSN == "" {
		pgDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	myDSN := os.Getenv("DTX_MYSQL_DSN")
	if myDSN == "" {
		myDSN = "root@tcp(127.0.0.1:3306)/test"
	}
	run := strings.ToLower(rand.Text()[:8]) // keeps runs sharing a server apart
	orders, err := sql.Open("dtx+postgres", pgDSN)
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	billing, err := sql.Open("dtx+mysql", myDSN)
	if err != nil {
		log.Fatal(err)
	}
	defer billing.Close()
	accounts := "accounts_" + run
	for _, db := range []*sql.DB{orders, billing} {
		if _, err := db.Exec("CREATE TABLE " + accounts + " (id int PRIMARY KEY, balance int)"); err != nil {
			log.Fatal(err)
		}
		defer db.Exec("DROP TABLE " + accounts)
	}
	orders.Exec("INSERT INTO " + accounts + " VALUES (1, 100)")
	billing.Exec("INSERT INTO " + accounts + " VALUES (1, 0)")

	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
		Resources:     map[string]*sql.DB{"orders": orders, "billing": billing},
		Node:          "orders-api-" + run, // e.g. the pod name of a StatefulSet
		DecisionTable: "dtx_decisions_" + run,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Exec("DROP TABLE dtx_decisions_" + run)
	defer c.Close()

	err = c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
		from, err := g.Begin(ctx, "orders", nil)
		if err != nil {
			return err
		}
		to, err := g.Begin(ctx, "billing", nil)
		if err != nil {
			return err
		}
		if _, err := from.ExecContext(ctx, "UPDATE "+accounts+" SET balance = balance - 30 WHERE id = 1"); err != nil {
			return err
		}
		_, err = to.ExecContext(ctx, "UPDATE "+accounts+" SET balance = balance + 30 WHERE id = 1")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	var a, b int
	orders.QueryRow("SELECT balance FROM " + accounts + " WHERE id = 1").Scan(&a)
	billing.QueryRow("SELECT balance FROM " + accounts + " WHERE id = 1").Scan(&b)
	fmt.Println("PostgreSQL:", a, "MariaDB:", b)
	// Output: PostgreSQL: 70 MariaDB: 30
}

// The embedded store: a file of this machine, for one process. Its
// directory also keeps the node id, so no Node is needed.
func ExampleOpenFileLog() {
	pgDSN := os.Getenv("DTX_PG_DSN")
	if pgDSN == "" {
		pgDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	myDSN := os.Getenv("DTX_MYSQL_DSN")
	if myDSN == "" {
		myDSN = "root@tcp(127.0.0.1:3306)/test"
	}
	orders, err := sql.Open("dtx+postgres", pgDSN)
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	billing, err := sql.Open("dtx+mysql", myDSN)
	if err != nil {
		log.Fatal(err)
	}
	defer billing.Close()

	dir, err := os.MkdirTemp("", "dtx-example-") // in production: a directory that survives restarts
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	decisions, err := dtx.OpenFileLog(dir)
	if err != nil {
		log.Fatal(err)
	}
	defer decisions.Close()
	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
		Log:       decisions,
		Resources: map[string]*sql.DB{"orders": orders, "billing": billing},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("node from the log:", c.Node() == decisions.Node())
	// Output: node from the log: true
}

// A store shared by several nodes: an SQL table in any database. Every node
// names itself; any of them finishes what a dead one left, after the
// abandon age.
func ExampleOpenSQLLog() {
	ctx := context.Background()
	pgDSN := os.Getenv("DTX_PG_DSN")
	if pgDSN == "" {
		pgDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	myDSN := os.Getenv("DTX_MYSQL_DSN")
	if myDSN == "" {
		myDSN = "root@tcp(127.0.0.1:3306)/test"
	}
	run := strings.ToLower(rand.Text()[:8])
	orders, err := sql.Open("dtx+postgres", pgDSN)
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	billing, err := sql.Open("dtx+mysql", myDSN)
	if err != nil {
		log.Fatal(err)
	}
	defer billing.Close()
	store, err := sql.Open("postgres", pgDSN) // any database; here the same server
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	decisions, err := dtx.OpenSQLLog(ctx, store, "dtx_shared_"+run)
	if err != nil {
		log.Fatal(err) // the error shows the CREATE TABLE when the user may not create it
	}
	defer store.Exec("DROP TABLE dtx_shared_" + run)
	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
		Log:       decisions,
		Resources: map[string]*sql.DB{"orders": orders, "billing": billing},
		Node:      "billing-" + run,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	fmt.Println("node:", strings.TrimSuffix(c.Node(), run))
	// Output: node: billing-
}

// Recovery runs at start-up and every minute in the background; with
// RecoverInterval negative the application runs it itself, for example
// before it takes traffic.
func ExampleCoordinator_Recover() {
	ctx := context.Background()
	pgDSN := os.Getenv("DTX_PG_DSN")
	if pgDSN == "" {
		pgDSN = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	}
	myDSN := os.Getenv("DTX_MYSQL_DSN")
	if myDSN == "" {
		myDSN = "root@tcp(127.0.0.1:3306)/test"
	}
	run := strings.ToLower(rand.Text()[:8])
	orders, err := sql.Open("dtx+postgres", pgDSN)
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()
	billing, err := sql.Open("dtx+mysql", myDSN)
	if err != nil {
		log.Fatal(err)
	}
	defer billing.Close()
	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
		Resources:       map[string]*sql.DB{"orders": orders, "billing": billing},
		Node:            "orders-api-" + run,
		DecisionTable:   "dtx_decisions_" + run,
		RecoverInterval: -1,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Exec("DROP TABLE dtx_decisions_" + run)
	defer c.Close()

	rep, err := c.Recover(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("committed %d, rolled back %d, waiting %d, unresolved %d\n",
		len(rep.Committed), len(rep.RolledBack), len(rep.Waiting), len(rep.Unresolved))
	// Output: committed 0, rolled back 0, waiting 0, unresolved 0
}
