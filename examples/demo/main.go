// Command demo shows dtx's two-phase flow on the local PostgreSQL and MariaDB:
// stage a change, check an outside system, then commit or roll back by name;
// decide, in a restarted process, about a transaction that a crashed process
// left prepared; and move money between PostgreSQL and MariaDB in one global
// transaction, with a crash after the commit decision that recovery completes.
//
//	go run ./examples/demo      (or: make demo)
//
// It connects to postgres://postgres@127.0.0.1:5432/test?sslmode=disable and
// root@tcp(127.0.0.1:3306)/test; DTX_PG_DSN and DTX_MYSQL_DSN override them.
// Every run uses tables and names of its own and drops them at the end. It
// exits with status 1 when anything does not behave as described.
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/dtx-go/dtx"
)

// server is one database the demo runs against.
type server struct {
	title  string // what the narration calls it
	kind   string // "postgres" or "mysql"
	driver string // the dtx driver name
	dsn    string
}

func servers() []server {
	return []server{
		{"PostgreSQL", "postgres", "dtx+postgres", env("DTX_PG_DSN", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")},
		{"MariaDB", "mysql", "dtx+mysql", env("DTX_MYSQL_DSN", "root@tcp(127.0.0.1:3306)/test")},
	}
}

func env(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// The child process (part c) is this same program, started with these
// variables set.
const (
	childServer = "DTX_DEMO_CHILD_SERVER"
	childTable  = "DTX_DEMO_CHILD_TABLE"
	childName   = "DTX_DEMO_CHILD_NAME"
)

func main() {
	if kind := os.Getenv(childServer); kind != "" {
		child(kind, os.Getenv(childTable), os.Getenv(childName))
		return
	}
	if dir := os.Getenv(transferChildDir); dir != "" {
		transferChild(dir, os.Getenv(transferChildNode), os.Getenv(transferChildTable))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
	fmt.Println("Done: every step behaved as expected.")
}

// demo is one server's database, table and transaction names for this run.
type demo struct {
	server
	db     *sql.DB
	table  string
	prefix string // of every global name this run uses on this server
}

func run(ctx context.Context) error {
	run := strings.ToLower(rand.Text()[:6])
	var demos []*demo
	defer func() {
		for _, d := range demos {
			d.cleanup()
		}
	}()
	for _, s := range servers() {
		db, err := sql.Open(s.driver, s.dsn)
		if err != nil {
			return err
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = db.PingContext(pctx)
		cancel()
		if err != nil {
			db.Close()
			return fmt.Errorf("cannot reach %s at %s (run scripts/devdb.sh, or set DTX_PG_DSN / DTX_MYSQL_DSN): %w", s.title, s.dsn, err)
		}
		// Names differ per server: dtx's registry is per process, and a name
		// it has finished once it answers from memory.
		d := &demo{server: s, db: db, table: "dtx_demo_" + run, prefix: "demo_" + run + "_" + s.kind[:2] + "_"}
		demos = append(demos, d)
		if _, err := db.ExecContext(ctx, "CREATE TABLE "+d.table+" (id INT PRIMARY KEY, name VARCHAR(64), status VARCHAR(16))"); err != nil {
			return fmt.Errorf("%s: creating table: %w", s.title, err)
		}
	}

	for _, d := range demos {
		fmt.Printf("\n=== %s ===\n", d.title)
		if err := d.commitAfterCheck(ctx); err != nil {
			return fmt.Errorf("%s, stage/verify/commit: %w", d.title, err)
		}
		if err := d.rollbackAfterFailedCheck(ctx); err != nil {
			return fmt.Errorf("%s, rollback on failure: %w", d.title, err)
		}
		if err := d.decideAfterCrash(ctx); err != nil {
			return fmt.Errorf("%s, crash and restart: %w", d.title, err)
		}
	}
	if err := runTransfer(ctx, run); err != nil {
		return fmt.Errorf("coordinator transfer: %w", err)
	}
	return nil
}

// (a) Stage a change, check the outside system, commit.
func (d *demo) commitAfterCheck(ctx context.Context) error {
	name := d.prefix + "signup_ann"
	fmt.Println("\n(a) Stage, verify, commit")
	err := dtx.BeginDistributed(ctx, d.db, name, func(tx *sql.Tx) error {
		return d.insertUser(ctx, tx, 1, "ann")
	})
	if err != nil {
		return err
	}
	fmt.Printf("BeginDistributed inserted user ann (status pending) and prepared it as %q.\n", name)
	if err := d.expectRows(ctx, 1, 0, "while prepared"); err != nil {
		return err
	}
	fmt.Println("Other sessions do not see ann yet: the insert is prepared, not committed.")
	if err := externalCheck("ann", true); err != nil {
		return err
	}
	fmt.Println("The outside system accepted ann.")
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		return err
	}
	fmt.Println("CommitDistributed committed it.")
	if err := d.expectRows(ctx, 1, 1, "after the commit"); err != nil {
		return err
	}
	fmt.Println("Now every session sees ann.")
	return nil
}

// (b) Stage a change, the outside system refuses it, roll back.
func (d *demo) rollbackAfterFailedCheck(ctx context.Context) error {
	name := d.prefix + "signup_bob"
	fmt.Println("\n(b) Roll back when the check fails")
	err := dtx.BeginDistributed(ctx, d.db, name, func(tx *sql.Tx) error {
		return d.insertUser(ctx, tx, 2, "bob")
	})
	if err != nil {
		return err
	}
	fmt.Printf("BeginDistributed inserted user bob (status pending) and prepared it as %q.\n", name)
	checkErr := externalCheck("bob", false)
	if checkErr == nil {
		return errors.New("the outside check was meant to fail")
	}
	fmt.Printf("The outside system refused bob: %v.\n", checkErr)
	if err := dtx.RollbackDistributed(ctx, name); err != nil {
		return err
	}
	fmt.Println("RollbackDistributed rolled it back.")
	if err := d.expectRows(ctx, 2, 0, "after the rollback"); err != nil {
		return err
	}
	fmt.Println("bob is not in the table: nothing of that transaction remains.")
	return nil
}

// (c) A child process prepares and crashes; this process, playing the
// restarted one, finds the name and commits it.
func (d *demo) decideAfterCrash(ctx context.Context) error {
	name := d.prefix + "signup_cy"
	fmt.Println("\n(c) Crash, restart, decide")
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), childServer+"="+d.kind, childTable+"="+d.table, childName+"="+name)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	fmt.Println("Starting a second process that prepares a transaction and then crashes.")
	err = cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		return fmt.Errorf("the child process should have crashed with exit status 1 after preparing; got %v", err)
	}
	fmt.Println("The second process is gone; its transaction was neither committed nor rolled back.")

	fmt.Println("This process now plays the restarted one. It lists what is prepared:")
	ps, err := dtx.ListPrepared(ctx, d.db)
	if err != nil {
		return err
	}
	found := false
	for _, p := range ps {
		if strings.HasPrefix(p.Name, d.prefix) {
			fmt.Printf("  in doubt: %q\n", p.Name)
			found = found || p.Name == name
		}
	}
	if !found {
		return fmt.Errorf("ListPrepared does not show %q", name)
	}
	if err := d.expectRows(ctx, 3, 0, "while in doubt"); err != nil {
		return err
	}
	fmt.Println("cy is not visible yet. The outside system says cy was accepted, so the decision is: commit.")
	start := time.Now()
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		return err
	}
	fmt.Printf("CommitDistributed found %q in a database this process opened through dtx and committed it", name)
	if d.kind == "mysql" {
		fmt.Printf(" (in %.1fs: MariaDB is finished from another session only after a grace period)", time.Since(start).Seconds())
	}
	fmt.Println(".")
	if err := d.expectRows(ctx, 3, 1, "after the commit"); err != nil {
		return err
	}
	fmt.Println("Every session now sees cy.")
	return nil
}

// child runs in the second process: prepare, then exit without deciding.
func child(kind, table, name string) {
	for _, s := range servers() {
		if s.kind != kind {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db, err := sql.Open(s.driver, s.dsn)
		if err == nil {
			d := &demo{server: s, db: db, table: table}
			err = dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
				return d.insertUser(ctx, tx, 3, "cy")
			})
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "  [second process] failed:", err)
			os.Exit(2)
		}
		fmt.Printf("  [second process] prepared %q (inserts user cy) and crashes before deciding.\n", name)
		os.Exit(1) // no commit, no rollback, no db.Close: as if the process died
	}
	os.Exit(2)
}

// externalCheck stands for a call to another system: a payment provider, a
// mail service, another team's API.
func externalCheck(user string, accept bool) error {
	if !accept {
		return fmt.Errorf("%s's card was declined", user)
	}
	return nil
}

func (d *demo) insertUser(ctx context.Context, tx *sql.Tx, id int, name string) error {
	_, err := tx.ExecContext(ctx, d.sql("INSERT INTO "+d.table+" (id, name, status) VALUES (?, ?, 'pending')"), id, name)
	return err
}

// expectRows checks how many rows with id other sessions of the pool see.
func (d *demo) expectRows(ctx context.Context, id, want int, when string) error {
	var n int
	if err := d.db.QueryRowContext(ctx, d.sql("SELECT COUNT(*) FROM "+d.table+" WHERE id = ?"), id).Scan(&n); err != nil {
		return err
	}
	if n != want {
		return fmt.Errorf("%s: %d rows with id %d, want %d", when, n, id, want)
	}
	return nil
}

// sql turns ? placeholders into PostgreSQL's $1, $2, ...
func (d *demo) sql(q string) string {
	if d.kind != "postgres" {
		return q
	}
	var b strings.Builder
	n := 0
	for _, r := range q {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// cleanup rolls back whatever this run left prepared, then drops its table.
// The drop has a lock timeout, so a transaction left holding the table cannot
// hang it.
func (d *demo) cleanup() {
	defer d.db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if ps, err := dtx.ListPrepared(ctx, d.db); err == nil {
		for _, p := range ps {
			if strings.HasPrefix(p.Name, d.prefix) {
				if err := dtx.RollbackDistributed(ctx, p.Name); err != nil {
					fmt.Fprintf(os.Stderr, "cleanup: rolling back %q: %v\n", p.Name, err)
				}
			}
		}
	}
	c, err := d.db.Conn(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cleanup: %s: %v\n", d.title, err)
		return
	}
	defer c.Close()
	if d.kind == "postgres" {
		c.ExecContext(ctx, "SET lock_timeout = '5s'")
	} else {
		c.ExecContext(ctx, "SET SESSION lock_wait_timeout = 5, innodb_lock_wait_timeout = 5")
	}
	if _, err := c.ExecContext(ctx, "DROP TABLE IF EXISTS "+d.table); err != nil {
		fmt.Fprintf(os.Stderr, "cleanup: dropping %s on %s: %v\n", d.table, d.title, err)
	}
}
