package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/dtx-go/dtx"
)

// The child of part (d) is this program again, with these set.
const (
	transferChildDir   = "DTX_DEMO_TRANSFER_DIR"
	transferChildNode  = "DTX_DEMO_TRANSFER_NODE"
	transferChildTable = "DTX_DEMO_TRANSFER_TABLE"
)

// transfer is part (d): money moves between an account in PostgreSQL and one
// in MariaDB through a Coordinator; a second process crashes right after
// its commit decision is durable, and this process, restarted, recovers.
type transfer struct {
	pg, my *sql.DB
	table  string
	node   string
	dir    string
}

func runTransfer(ctx context.Context, run string) (err error) {
	fmt.Println("\n=== PostgreSQL + MariaDB: one global transaction ===")
	t := &transfer{table: "dtx_demo_acct_" + run, node: "demo-" + run}
	if t.dir, err = os.MkdirTemp("", "dtx-demo-log-"); err != nil {
		return err
	}
	if t.pg, t.my, err = openBoth(); err != nil {
		return err
	}
	defer t.cleanup()
	for _, db := range []*sql.DB{t.pg, t.my} {
		if _, err := db.ExecContext(ctx, "CREATE TABLE "+t.table+" (id VARCHAR(16) PRIMARY KEY, balance INT NOT NULL)"); err != nil {
			return err
		}
	}
	if _, err := t.pg.ExecContext(ctx, "INSERT INTO "+t.table+" VALUES ('alice', 100)"); err != nil {
		return err
	}
	if _, err := t.my.ExecContext(ctx, "INSERT INTO "+t.table+" VALUES ('alice', 0)"); err != nil {
		return err
	}
	if err := t.show(ctx, 100, 0, "at the start"); err != nil {
		return err
	}

	fmt.Println("\n(d) A transfer across both databases")
	log, err := dtx.OpenFileLog(t.dir)
	if err != nil {
		return err
	}
	c, err := t.coordinator(log)
	if err != nil {
		log.Close()
		return err
	}
	err = c.Do(ctx, t.move(30))
	c.Close()
	log.Close()
	if err != nil {
		return err
	}
	fmt.Println("Coordinator.Do moved 30: both branches prepared, the decision logged, both committed.")
	if err := t.show(ctx, 70, 30, "after the transfer"); err != nil {
		return err
	}

	fmt.Println("\n(e) A crash between the decision and the commits")
	fmt.Println("Starting a second process that moves 20 and crashes right after it has logged its decision to commit.")
	cmd := exec.CommandContext(ctx, os.Args[0])
	cmd.Env = append(os.Environ(), transferChildDir+"="+t.dir, transferChildNode+"="+t.node, transferChildTable+"="+t.table)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err == nil {
		return errors.New("the second process did not crash")
	}
	fmt.Println("The second process is gone. Both branches are prepared, neither committed:")
	var inDoubt []string
	for _, db := range []*sql.DB{t.pg, t.my} {
		ps, err := dtx.ListPrepared(ctx, db)
		if err != nil {
			return err
		}
		for _, p := range ps {
			if strings.HasPrefix(p.Name, "g."+t.node+".") {
				inDoubt = append(inDoubt, p.Name)
				fmt.Printf("  in doubt: %q\n", p.Name)
			}
		}
	}
	if len(inDoubt) != 2 {
		return fmt.Errorf("%d branches in doubt, want 2", len(inDoubt))
	}
	if err := t.show(ctx, 70, 30, "while in doubt"); err != nil {
		return err
	}
	fmt.Println("This process now plays the restarted one: it opens the same log and runs recovery.")
	log, err = dtx.OpenFileLog(t.dir)
	if err != nil {
		return err
	}
	defer log.Close()
	c, err = t.coordinator(log)
	if err != nil {
		return err
	}
	defer c.Close()
	start := time.Now()
	rep, err := c.Recover(ctx)
	if err != nil {
		return err
	}
	fmt.Printf("Recover found the decision in the log and committed %d branches (in %.1fs); it forgot %d finished decision.\n",
		len(rep.Committed), time.Since(start).Seconds(), len(rep.Forgotten))
	if len(rep.Committed) != 2 || len(rep.Forgotten) != 1 {
		return fmt.Errorf("recovery report %+v, want 2 committed and 1 forgotten", rep)
	}
	if err := t.show(ctx, 50, 50, "after recovery"); err != nil {
		return err
	}
	pending, err := log.Pending(ctx, t.node)
	if err != nil || len(pending) != 0 {
		return fmt.Errorf("log still has %d decisions pending (%v)", len(pending), err)
	}
	fmt.Println("Nothing is left in doubt, and the log has no pending decision.")
	return nil
}

func openBoth() (pg, my *sql.DB, err error) {
	s := servers()
	if pg, err = sql.Open(s[0].driver, s[0].dsn); err != nil {
		return nil, nil, err
	}
	if my, err = sql.Open(s[1].driver, s[1].dsn); err != nil {
		pg.Close()
		return nil, nil, err
	}
	return pg, my, nil
}

func (t *transfer) coordinator(log dtx.Log) (*dtx.Coordinator, error) {
	return dtx.NewCoordinator(dtx.CoordinatorOptions{
		Log:             log,
		Resources:       map[string]*sql.DB{"pg": t.pg, "my": t.my},
		Node:            t.node,
		RecoverInterval: -1, // the demo calls Recover itself
	})
}

// move returns a global that moves amount from PostgreSQL to MariaDB.
func (t *transfer) move(amount int) func(context.Context, *dtx.Global) error {
	return func(ctx context.Context, g *dtx.Global) error {
		from, err := g.Begin(ctx, "pg", nil)
		if err != nil {
			return err
		}
		to, err := g.Begin(ctx, "my", nil)
		if err != nil {
			return err
		}
		if _, err := from.ExecContext(ctx, "UPDATE "+t.table+" SET balance = balance - $1 WHERE id = 'alice'", amount); err != nil {
			return err
		}
		_, err = to.ExecContext(ctx, "UPDATE "+t.table+" SET balance = balance + ? WHERE id = 'alice'", amount)
		return err
	}
}

// show prints both balances and checks them.
func (t *transfer) show(ctx context.Context, wantPG, wantMy int, when string) error {
	var pg, my int
	if err := t.pg.QueryRowContext(ctx, "SELECT balance FROM "+t.table+" WHERE id = 'alice'").Scan(&pg); err != nil {
		return err
	}
	if err := t.my.QueryRowContext(ctx, "SELECT balance FROM "+t.table+" WHERE id = 'alice'").Scan(&my); err != nil {
		return err
	}
	fmt.Printf("Balances %s: PostgreSQL %d, MariaDB %d (sum %d).\n", when, pg, my, pg+my)
	if pg != wantPG || my != wantMy {
		return fmt.Errorf("balances %d and %d, want %d and %d", pg, my, wantPG, wantMy)
	}
	return nil
}

// crashAfterDecide is a decision log that ends the process the moment a
// decision is durable: the worst time to crash, after the point of no
// return and before any branch is committed.
type crashAfterDecide struct{ dtx.Log }

func (l crashAfterDecide) Decide(ctx context.Context, d dtx.Decision) error {
	if err := l.Log.Decide(ctx, d); err != nil {
		return err
	}
	fmt.Println("  [second process] both branches prepared, decision to commit logged; crashing now.")
	os.Exit(1)
	return nil
}

// transferChild is the second process of part (e).
func transferChild(dir, node, table string) {
	t := &transfer{dir: dir, node: node, table: table}
	var err error
	if t.pg, t.my, err = openBoth(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	log, err := dtx.OpenFileLog(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	c, err := t.coordinator(crashAfterDecide{log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	err = c.Do(context.Background(), t.move(20))
	fmt.Fprintln(os.Stderr, "the second process did not crash:", err)
	os.Exit(0)
}

func (t *transfer) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, db := range []*sql.DB{t.pg, t.my} {
		if ps, err := dtx.ListPrepared(ctx, db); err == nil {
			for _, p := range ps {
				if strings.HasPrefix(p.Name, "g."+t.node+".") {
					dtx.RollbackPrepared(ctx, db, p.Name)
				}
			}
		}
		db.ExecContext(ctx, "DROP TABLE IF EXISTS "+t.table)
		db.Close()
	}
	os.RemoveAll(t.dir)
}
