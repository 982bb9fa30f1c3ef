// Package bank is the workload of dtx's crash trials (crash_test.go,
// crash_multi_test.go) and of the fault harness (tests/faults): globals that
// move money between accounts in PostgreSQL and in MariaDB and write a
// marker row per global into both, and the checks that judge what is left.
// It is internal: test code of this repository, not an API.
package bank

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/dtx-go/dtx"
)

const (
	// Accounts is how many accounts each database holds.
	Accounts = 4
	// Initial is each account's opening balance.
	Initial = 1000
)

// Tables names the four tables of a world. The MariaDB names may be
// qualified with their database (db.acct) where the session's database is
// another one.
type Tables struct {
	PgAcct, PgMark string
	MyAcct, MyMark string
}

// Setup creates the tables and opens the accounts, through the plain
// drivers.
func Setup(ctx context.Context, pg, my *sql.DB, t Tables) error {
	type stmt struct {
		db *sql.DB
		q  string
	}
	stmts := []stmt{
		{pg, "CREATE TABLE " + t.PgAcct + " (id INT PRIMARY KEY, bal BIGINT NOT NULL)"},
		{pg, "CREATE TABLE " + t.PgMark + " (gid VARCHAR(64) PRIMARY KEY)"},
		{my, "CREATE TABLE " + t.MyAcct + " (id INT PRIMARY KEY, bal BIGINT NOT NULL)"},
		{my, "CREATE TABLE " + t.MyMark + " (gid VARCHAR(64) PRIMARY KEY)"},
	}
	for i := 1; i <= Accounts; i++ {
		stmts = append(stmts,
			stmt{pg, fmt.Sprintf("INSERT INTO %s VALUES (%d, %d)", t.PgAcct, i, Initial)},
			stmt{my, fmt.Sprintf("INSERT INTO %s VALUES (%d, %d)", t.MyAcct, i, Initial)})
	}
	for _, s := range stmts {
		if _, err := s.db.ExecContext(ctx, s.q); err != nil {
			return fmt.Errorf("setup: %s: %w", s.q, err)
		}
	}
	return nil
}

// Transfer moves a random amount between a random PostgreSQL account and
// a random MariaDB account, either way, and writes the global's marker into
// both. The branches begin in random order (so branch 0 is either), but the
// statements always run PostgreSQL first: globals never wait for each
// other's locks in a cycle across the two databases.
func Transfer(t Tables, rng *mrand.Rand) func(context.Context, *dtx.Global) error {
	amount := int64(rng.IntN(100) + 1)
	if rng.IntN(2) == 0 {
		amount = -amount
	}
	pgID, myID := rng.IntN(Accounts)+1, rng.IntN(Accounts)+1
	order := []string{"pg", "my"}
	if rng.IntN(2) == 0 {
		order = []string{"my", "pg"}
	}
	return func(ctx context.Context, g *dtx.Global) error {
		txs := map[string]*sql.Tx{}
		for _, r := range order {
			tx, err := g.Begin(ctx, r, nil)
			if err != nil {
				return err
			}
			txs[r] = tx
		}
		for _, s := range []struct {
			tx   *sql.Tx
			q    string
			args []any
		}{
			{txs["pg"], "UPDATE " + t.PgAcct + " SET bal = bal - $1 WHERE id = $2", []any{amount, pgID}},
			{txs["pg"], "INSERT INTO " + t.PgMark + " VALUES ($1)", []any{g.ID()}},
			{txs["my"], "UPDATE " + t.MyAcct + " SET bal = bal + ? WHERE id = ?", []any{amount, myID}},
			{txs["my"], "INSERT INTO " + t.MyMark + " VALUES (?)", []any{g.ID()}},
		} {
			if _, err := s.tx.ExecContext(ctx, s.q, s.args...); err != nil {
				return err
			}
		}
		return nil
	}
}

// OnePhase moves money between two accounts of one database: a global of
// one branch, committed in one phase; no marker.
func OnePhase(t Tables, rng *mrand.Rand) func(context.Context, *dtx.Global) error {
	amount := int64(rng.IntN(100) + 1)
	a := rng.IntN(Accounts) + 1
	b := a%Accounts + 1
	lo, hi := min(a, b), max(a, b) // lock in id order
	dlo, dhi := -amount, amount
	if a != lo {
		dlo, dhi = amount, -amount
	}
	onPG := rng.IntN(2) == 0
	return func(ctx context.Context, g *dtx.Global) error {
		res, q := "my", "UPDATE "+t.MyAcct+" SET bal = bal + ? WHERE id = ?"
		if onPG {
			res, q = "pg", "UPDATE "+t.PgAcct+" SET bal = bal + $1 WHERE id = $2"
		}
		tx, err := g.Begin(ctx, res, nil)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, q, dlo, lo); err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, q, dhi, hi)
		return err
	}
}

// Outcome classes a node reports per global, from Do's error.
const (
	OK        = "OK"   // committed
	Pending   = "PEND" // decided, a branch left to recovery
	Heuristic = "HEUR"
	Unknown   = "UNK" // ErrOutcomeUnknown
	Rolled    = "RB"  // ErrRolledBack
	Failed    = "ERR" // anything else
)

// Class names the outcome Do reported.
func Class(err error) string {
	switch {
	case err == nil:
		return OK
	case errors.Is(err, dtx.ErrHeuristic):
		return Heuristic
	case errors.Is(err, dtx.ErrPending):
		return Pending
	case errors.Is(err, dtx.ErrOutcomeUnknown):
		return Unknown
	case errors.Is(err, dtx.ErrRolledBack):
		return Rolled
	}
	return Failed
}

// Result is what Check found.
type Result struct {
	Violations []string
	Markers    int // globals committed (markers in PostgreSQL)
}

// Check judges a world after recovery, through the plain drivers: the sum
// of balances is unchanged; every global's marker is in both databases or
// in neither; every global reported committed or pending (outcomes: global
// -> class) is in both, every one reported rolled back in neither, and no
// global had a heuristic outcome. Outcomes may be nil.
func Check(ctx context.Context, pg, my *sql.DB, t Tables, outcomes map[string]string) (Result, error) {
	var r Result
	var pgSum, mySum int64
	if err := pg.QueryRowContext(ctx, "SELECT COALESCE(SUM(bal), 0) FROM "+t.PgAcct).Scan(&pgSum); err != nil {
		return r, err
	}
	if err := my.QueryRowContext(ctx, "SELECT COALESCE(SUM(bal), 0) FROM "+t.MyAcct).Scan(&mySum); err != nil {
		return r, err
	}
	if pgSum+mySum != 2*Accounts*Initial {
		r.Violations = append(r.Violations, fmt.Sprintf("sum of balances %d+%d=%d, want %d", pgSum, mySum, pgSum+mySum, 2*Accounts*Initial))
	}
	pm, err := Set(ctx, pg, "SELECT gid FROM "+t.PgMark)
	if err != nil {
		return r, err
	}
	mm, err := Set(ctx, my, "SELECT gid FROM "+t.MyMark)
	if err != nil {
		return r, err
	}
	r.Markers = len(pm)
	for g := range pm {
		if !mm[g] {
			r.Violations = append(r.Violations, "global "+g+" committed in PostgreSQL only")
		}
	}
	for g := range mm {
		if !pm[g] {
			r.Violations = append(r.Violations, "global "+g+" committed in MariaDB only")
		}
	}
	for g, class := range outcomes {
		switch class {
		case OK, Pending:
			if !pm[g] {
				r.Violations = append(r.Violations, fmt.Sprintf("global %s reported %s but not committed", g, class))
			}
		case Rolled:
			if pm[g] {
				r.Violations = append(r.Violations, "global "+g+" reported rolled back but committed")
			}
		case Heuristic:
			r.Violations = append(r.Violations, "global "+g+" reported a heuristic outcome")
		}
	}
	return r, nil
}

// Set reads a one-column query into a set.
func Set(ctx context.Context, db *sql.DB, q string) (map[string]bool, error) {
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out[s] = true
	}
	return out, rows.Err()
}

// Store sets opts up to keep outcomes in the store of kind: "file"
// (FileLog in directory path), "sqlpg" or "sqlmy" (SQLLog table path in
// the PostgreSQL or MariaDB database of the DSN), or "inpg" / "inmy" (the
// decision committed inside that resource's branch, in table path). The
// function it returns closes the log and its pool (a no-op for inpg and
// inmy); call it after the Coordinator's Close.
func Store(ctx context.Context, opts *dtx.CoordinatorOptions, kind, path, pgDSN, myDSN string) (func(), error) {
	switch kind {
	case "inpg", "inmy":
		opts.DecisionResource = map[string]string{"inpg": "pg", "inmy": "my"}[kind]
		opts.DecisionTable = path
		return func() {}, nil
	}
	log, closeLog, err := OpenLog(ctx, kind, path, pgDSN, myDSN)
	if err != nil {
		return nil, err
	}
	opts.Log = log
	return closeLog, nil
}

// OpenLog opens the log of a store kind (see Store) and returns it with a
// function that closes it and the pool it uses. The decision tables of inpg
// and inmy open as the SQL logs they are, through the plain drivers, for
// reading. The plain drivers must be linked in (lib/pq, go-sql-driver).
func OpenLog(ctx context.Context, kind, path, pgDSN, myDSN string) (dtx.Log, func(), error) {
	var db *sql.DB
	var err error
	switch kind {
	case "file":
		l, err := dtx.OpenFileLog(path)
		if err != nil {
			return nil, nil, err
		}
		return l, func() { l.Close() }, nil
	case "sqlpg", "inpg":
		db, err = sql.Open("postgres", pgDSN)
	case "sqlmy", "inmy":
		db, err = sql.Open("mysql", myDSN)
	default:
		return nil, nil, fmt.Errorf("unknown log kind %q", kind)
	}
	if err != nil {
		return nil, nil, err
	}
	l, err := dtx.OpenSQLLog(ctx, db, path)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return l, func() { db.Close() }, nil
}

// Hidden counts MariaDB's detached transactions that XA RECOVER does not
// list: branches orphaned by the server race described in
// docs/two-phase.md (they show in InnoDB with thread id 0 but no longer in
// XA RECOVER). Negative values (attached branches) count as 0.
func Hidden(ctx context.Context, db *sql.DB) (int, error) {
	rows, err := db.QueryContext(ctx, "XA RECOVER")
	if err != nil {
		return 0, err
	}
	listed := 0
	for rows.Next() {
		listed++
	}
	rows.Close()
	var detached int
	if err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.innodb_trx WHERE trx_mysql_thread_id = 0").Scan(&detached); err != nil {
		return 0, err
	}
	return max(0, detached-listed), nil
}

// Capped keeps the first 4 KiB written to it: a child's stderr.
type Capped struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *Capped) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if room := 4096 - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (c *Capped) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.TrimSpace(c.buf.String())
}

// Open opens the two resources of the workload through dtx's drivers, as
// the Coordinator's "pg" and "my".
func Open(pgDSN, myDSN string) (map[string]*sql.DB, error) {
	pg, err := sql.Open("dtx+postgres", pgDSN)
	if err != nil {
		return nil, err
	}
	my, err := sql.Open("dtx+mysql", myDSN)
	if err != nil {
		pg.Close()
		return nil, err
	}
	return map[string]*sql.DB{"pg": pg, "my": my}, nil
}

// Run runs one transfer as a global of c and returns its id ("" when Do
// failed before the global began) and the class of its outcome.
func Run(ctx context.Context, c *dtx.Coordinator, t Tables, rng *mrand.Rand) (global, class string) {
	fn := Transfer(t, rng)
	err := c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
		global = g.ID()
		return fn(ctx, g)
	})
	return global, Class(err)
}

// Work runs n workers of transfers on c until stop ends (each global under
// ctx) and waits for them; each global's outcome goes to stdout as
// "<class> <global>", for Scan.
func Work(stop, ctx context.Context, c *dtx.Coordinator, t Tables, n int) {
	var out sync.Mutex
	var workers sync.WaitGroup
	for w := 0; w < n; w++ {
		workers.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), uint64(w)))
			for stop.Err() == nil {
				global, class := Run(ctx, c, t, rng)
				if global != "" {
					out.Lock()
					fmt.Println(class, global)
					out.Unlock()
				}
				if class != OK {
					time.Sleep(10 * time.Millisecond)
				}
			}
		})
	}
	workers.Wait()
}

// Scan reads a node's stdout: lines "<class> <global>" go to outcome, any
// other line (READY) to control.
func Scan(r io.Reader, control func(line string), outcome func(global, class string)) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if class, global, ok := strings.Cut(sc.Text(), " "); ok {
			outcome(global, class)
		} else {
			control(sc.Text())
		}
	}
}

// Prepared counts the branches prepared on dbs whose names start with
// prefix.
func Prepared(ctx context.Context, prefix string, dbs ...*sql.DB) (int, error) {
	n := 0
	for _, db := range dbs {
		ps, err := dtx.ListPrepared(ctx, db)
		if err != nil {
			return 0, err
		}
		for _, p := range ps {
			if strings.HasPrefix(p.Name, prefix) {
				n++
			}
		}
	}
	return n, nil
}
