package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
)

// The CLI is built once and run as a subprocess against the local servers,
// as an operator runs it.

func pgDSN() string {
	if v := os.Getenv("DTX_PG_DSN"); v != "" {
		return v
	}
	return "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
}

func myDSN() string {
	if v := os.Getenv("DTX_MYSQL_DSN"); v != "" {
		return v
	}
	return "root@tcp(127.0.0.1:3306)/test"
}

// need skips t when a server cannot be reached, or fails it when
// DTX_REQUIRE_DB=1 (as the root package's tests do).
func need(t *testing.T, driver, dsn string) {
	t.Helper()
	db, err := sql.Open(driver, dsn)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = db.PingContext(ctx)
		cancel()
		db.Close()
	}
	if err != nil {
		msg := fmt.Sprintf("%s server not reachable at %s (set DTX_PG_DSN / DTX_MYSQL_DSN or run scripts/devdb.sh): %v", driver, dsn, err)
		if os.Getenv("DTX_REQUIRE_DB") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
}

var build struct {
	once sync.Once
	path string
	err  error
}

// binary builds cmd/dtx once per test run, into a temporary directory.
func dtxBinary(t *testing.T) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "dtx-cli-test")
		if err != nil {
			build.err = err
			return
		}
		build.path = filepath.Join(dir, "dtx")
		gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(gobin); err != nil {
			gobin = "go"
		}
		out, err := exec.Command(gobin, "build", "-o", build.path, ".").CombinedOutput()
		if err != nil {
			build.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if build.err != nil {
		t.Fatal(build.err)
	}
	return build.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if build.path != "" {
		os.RemoveAll(filepath.Dir(build.path))
	}
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// cli runs the binary with args; env adds to an environment cleared of
// DTX_DB_ variables, so that the caller's never leak in.
func cli(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(dtxBinary(t), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DTX_DB_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var so, se bytes.Buffer
	cmd.Stdout, cmd.Stderr = &so, &se
	err := cmd.Run()
	r := result{stdout: so.String(), stderr: se.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("running dtx %v: %v", args, err)
	}
	t.Logf("dtx %s → %d\n%s%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

func want(t *testing.T, r result, code int) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit status %d, want %d\nstdout: %s\nstderr: %s", r.code, code, r.stdout, r.stderr)
	}
}

func decode[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
		t.Fatalf("stdout is not one JSON document: %v\n%s", err, r.stdout)
	}
	return v
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// uuidv7At is a global id that started at at: Decide refuses a global older
// than half the abort retention (12h), and recovery leaves one younger than
// its grace alone, so the tests' globals are an hour old.
func uuidv7At(at time.Time) string {
	var b [16]byte
	rand.Read(b[:])
	var ms [8]byte
	binary.BigEndian.PutUint64(ms[:], uint64(at.UnixMilli()))
	copy(b[:6], ms[2:])
	b[6] = b[6]&0x0f | 0x70
	b[8] = b[8]&0x3f | 0x80
	return hex.EncodeToString(b[:])
}

// env is one test's databases, store table and node.
type env struct {
	t      *testing.T
	ctx    context.Context
	pg, my *sql.DB
	table  string // the store's table, in pg
	log    *dtx.SQLLog
	node   string
	args   []string // --db and --store flags
	names  []string // everything prepared, rolled back at the end if left
	dataPG string
	dataMy string
}

func newEnv(t *testing.T) *env {
	need(t, "postgres", pgDSN())
	need(t, "mysql", myDSN())
	ctx := context.Background()
	e := &env{t: t, ctx: ctx, node: "t" + randHex(4), table: "dtx_cli_" + randHex(4)}
	var err error
	if e.pg, err = sql.Open("dtx+postgres", pgDSN()); err != nil {
		t.Fatal(err)
	}
	if e.my, err = sql.Open("dtx+mysql", myDSN()); err != nil {
		t.Fatal(err)
	}
	if e.log, err = dtx.OpenSQLLog(ctx, e.pg, e.table); err != nil {
		t.Fatal(err)
	}
	e.dataPG, e.dataMy = "dtx_cli_data_"+randHex(4), "dtx_cli_data_"+randHex(4)
	for _, s := range []struct {
		db *sql.DB
		q  string
	}{{e.pg, "CREATE TABLE " + e.dataPG + " (v TEXT)"}, {e.my, "CREATE TABLE " + e.dataMy + " (v VARCHAR(80)) ENGINE=InnoDB"}} {
		if _, err := s.db.ExecContext(ctx, s.q); err != nil {
			t.Fatal(err)
		}
	}
	e.args = []string{"--db", "pg=postgres:" + pgDSN(), "--db", "my=mysql:" + myDSN(), "--store", "resource:pg:" + e.table}
	t.Cleanup(e.cleanup)
	return e
}

func (e *env) cleanup() {
	ctx := e.ctx
	for _, n := range e.names {
		dtx.RollbackDistributed(dtx.WithDatabases(ctx), n) // a held one
		for _, db := range []*sql.DB{e.pg, e.my} {
			dtx.RollbackPrepared(ctx, db, n)
		}
		dtx.Forget(n)
	}
	e.pg.ExecContext(ctx, "DROP TABLE IF EXISTS "+e.table)
	e.pg.ExecContext(ctx, "DROP TABLE IF EXISTS "+e.dataPG)
	e.my.ExecContext(ctx, "DROP TABLE IF EXISTS "+e.dataMy)
	e.pg.Close()
	e.my.Close()
}

// prepare prepares name on db (a row inserted: an empty MariaDB branch is
// discarded at prepare). held keeps a MariaDB branch bound to this test's
// session; otherwise dtx.Forget closes that session and the branch stays
// prepared, detached, as after a crash.
func (e *env) prepare(db *sql.DB, name string, held bool) {
	e.t.Helper()
	table := e.dataPG
	q := "INSERT INTO " + table + " (v) VALUES ($1)"
	if db == e.my {
		table = e.dataMy
		q = "INSERT INTO " + table + " (v) VALUES (?)"
	}
	err := dtx.BeginDistributed(e.ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(e.ctx, q, name)
		return err
	})
	if err != nil {
		e.t.Fatalf("preparing %s: %v", name, err)
	}
	e.names = append(e.names, name)
	if !held {
		if err := dtx.Forget(name); err != nil {
			e.t.Fatal(err)
		}
	}
}

func (e *env) branch(global string, n int) string {
	return fmt.Sprintf("g.%s.%s.%d", e.node, global, n)
}

func (e *env) run(extra ...string) result {
	e.t.Helper()
	return cli(e.t, nil, append(extra, e.args...)...)
}

// committed reports whether name's row is visible (its branch committed).
func (e *env) committed(db *sql.DB, name string) bool {
	e.t.Helper()
	q := "SELECT COUNT(*) FROM " + e.dataPG + " WHERE v = $1"
	if db == e.my {
		q = "SELECT COUNT(*) FROM " + e.dataMy + " WHERE v = ?"
	}
	var n int
	if err := db.QueryRowContext(e.ctx, q, name).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n == 1
}

func (e *env) stillPrepared(name string) bool {
	e.t.Helper()
	for _, db := range []*sql.DB{e.pg, e.my} {
		ps, err := dtx.ListPrepared(e.ctx, db)
		if err != nil {
			e.t.Fatal(err)
		}
		for _, p := range ps {
			if p.Name == name {
				return true
			}
		}
	}
	return false
}

func TestUsage(t *testing.T) {
	db := []string{"--db", "pg=postgres:" + pgDSN()}
	for _, c := range []struct {
		args []string
		env  []string
	}{
		{args: nil},
		{args: []string{"frobnicate"}},
		{args: []string{"list"}}, // no databases
		{args: append([]string{"list", "--older-than", "soon"}, db...)},
		{args: append([]string{"list", "extra"}, db...)},
		{args: append([]string{"commit"}, db...)}, // no name
		{args: append([]string{"commit", "a", "b"}, db...)},
		{args: append([]string{"commit", "bad name"}, db...)},
		{args: []string{"list", "--db", "pg=oracle:x"}},
		{args: []string{"list", "--db", "nodriver"}},
		{args: append([]string{"list", "--store", "tape:x"}, db...)},
		{args: append([]string{"list", "--store", "resource:nosuch"}, db...)},
		{args: append([]string{"recover"}, db...)},                   // no store
		{args: []string{"list"}, env: []string{"DTX_DB_X=postgres"}}, // no DSN
	} {
		r := cli(t, c.env, c.args...)
		want(t, r, exitUsage)
		if !strings.Contains(r.stderr, "dtx") {
			t.Errorf("dtx %v: stderr says nothing: %q", c.args, r.stderr)
		}
	}
	want(t, cli(t, nil, "help"), exitOK)
}

// TestUnreachable: a database that cannot be listed is exit status 1, in
// text and in JSON.
func TestUnreachable(t *testing.T) {
	args := []string{"list", "--timeout", "10s", "--db", "gone=postgres:postgres://postgres@127.0.0.1:1/test?sslmode=disable&connect_timeout=2"}
	want(t, cli(t, nil, args...), exitError)
	r := cli(t, nil, append(args, "--json")...)
	want(t, r, exitError)
	if res := decode[listResult](t, r); len(res.Errors) != 1 {
		t.Fatalf("errors %v, want one", res.Errors)
	}
}

type jsonPrepared struct {
	Name       string     `json:"name"`
	Database   string     `json:"database"`
	Driver     string     `json:"driver"`
	PreparedAt *time.Time `json:"prepared_at"`
	AgeSeconds *float64   `json:"age_seconds"`
	AgeFrom    string     `json:"age_from"`
	Owner      string     `json:"owner"`
	Holder     string     `json:"holder"`
	Node       string     `json:"node"`
	Global     string     `json:"global"`
	State      string     `json:"state"`
	StoreError string     `json:"store_error"`
	Heuristic  string     `json:"heuristic"`
}

type jsonList struct {
	Prepared []jsonPrepared `json:"prepared"`
	Errors   []string       `json:"errors"`
}

func byName(l jsonList) map[string]jsonPrepared {
	m := map[string]jsonPrepared{}
	for _, p := range l.Prepared {
		m[p.Name] = p
	}
	return m
}

// TestCLI prepares a decided, an aborted, an undecided and a held global and
// a plain name, and drives the CLI through them.
func TestCLI(t *testing.T) {
	e := newEnv(t)
	ctx := e.ctx
	hourAgo := time.Now().Add(-time.Hour)
	gD, gA, gU, gH := uuidv7At(hourAgo), uuidv7At(hourAgo), uuidv7At(hourAgo), uuidv7At(time.Now())
	plain := "cli_plain_" + randHex(4)

	e.prepare(e.pg, e.branch(gD, 0), false)
	e.prepare(e.my, e.branch(gD, 1), false)
	if err := e.log.Decide(ctx, dtx.Decision{Global: gD, Node: e.node, At: time.Now(), Branches: []dtx.BranchRef{
		{Resource: "pg", Name: e.branch(gD, 0)}, {Resource: "my", Name: e.branch(gD, 1)},
	}}); err != nil {
		t.Fatal(err)
	}
	e.prepare(e.pg, e.branch(gA, 0), false)
	if d, err := e.log.Abort(ctx, gA); err != nil || d != nil {
		t.Fatal(d, err)
	}
	e.prepare(e.my, e.branch(gU, 0), false)
	e.prepare(e.pg, e.branch(gU, 1), false)
	e.prepare(e.my, e.branch(gH, 0), true)
	e.prepare(e.pg, plain, false)

	t.Run("list", func(t *testing.T) {
		r := e.run("list", "--node", e.node, "--json")
		want(t, r, exitInDoubt)
		m := byName(decode[jsonList](t, r))
		if len(m) != 6 {
			t.Fatalf("listed %d of node %s, want 6: %v", len(m), e.node, m)
		}
		for name, st := range map[string]string{
			e.branch(gD, 0): stDecided, e.branch(gD, 1): stDecided, e.branch(gA, 0): stAborted,
			e.branch(gU, 0): stUndecided, e.branch(gU, 1): stUndecided, e.branch(gH, 0): stUndecided,
		} {
			p := m[name]
			if p.State != st || p.Node != e.node {
				t.Errorf("%s: state %q node %q, want %q %q", name, p.State, p.Node, st, e.node)
			}
			switch p.Driver {
			case "postgres":
				if p.Database != "pg" || p.PreparedAt == nil || p.AgeFrom != ageServer || p.Owner == "" || p.Holder != "" {
					t.Errorf("%s: %+v", name, p)
				}
			case "mysql":
				if p.Database != "my" || p.PreparedAt != nil || p.AgeFrom != ageGlobal || p.Holder != holderUnknown {
					t.Errorf("%s: %+v", name, p)
				}
			}
		}
		if a := *m[e.branch(gD, 1)].AgeSeconds; a < 3500 || a > 3700 {
			t.Errorf("MariaDB branch's age %vs, want about an hour (its global's start)", a)
		}

		// --older-than: PostgreSQL's ages count from the prepare (just
		// now), MariaDB's from the global's start (an hour ago, but
		// the held global's is fresh).
		r = e.run("list", "--node", e.node, "--older-than", "30m", "--json")
		want(t, r, exitInDoubt)
		m = byName(decode[jsonList](t, r))
		_, d1 := m[e.branch(gD, 1)]
		_, u0 := m[e.branch(gU, 0)]
		if !d1 || !u0 || len(m) != 2 {
			t.Errorf("--older-than 30m listed %v", m)
		}

		// Nothing of another node: exit 0.
		r = e.run("list", "--node", "nobody"+randHex(2))
		want(t, r, exitOK)
		if !strings.Contains(r.stdout, "nothing prepared") {
			t.Errorf("stdout %q", r.stdout)
		}

		// The plain name, in text, with no store: its state is "-".
		r = cli(t, nil, "list", "--db", "pg=postgres:"+pgDSN())
		want(t, r, exitInDoubt)
		var line string
		for _, l := range strings.Split(r.stdout, "\n") {
			if strings.HasPrefix(l, plain+" ") {
				line = l
			}
		}
		if f := strings.Fields(line); len(f) < 6 || f[1] != "pg" || f[len(f)-1] != "-" {
			t.Errorf("plain name's line %q", line)
		}

		// Through the environment, without a store: Coordinator states unknown.
		r = cli(t, []string{"DTX_DB_MY=mysql:" + myDSN()}, "list", "--node", e.node, "--json")
		want(t, r, exitInDoubt)
		for _, p := range decode[jsonList](t, r).Prepared {
			if p.Database != "my" || p.State != stUnknown || p.StoreError == "" {
				t.Errorf("without a store: %+v", p)
			}
		}
	})

	t.Run("show", func(t *testing.T) {
		r := e.run("show", gD, "--json")
		want(t, r, exitOK)
		s := decode[showResult](t, r)
		if s.Global != gD || s.Node != e.node || s.Record == nil || s.Record.State != stDecided || s.Record.DecidedAt == nil || len(s.Prepared) != 2 {
			t.Fatalf("show %s: %+v", gD, s)
		}
		if len(s.Branches) != 2 || !s.Branches[0].Prepared || !s.Branches[1].Prepared {
			t.Errorf("decision's branches %+v", s.Branches)
		}
		r = e.run("show", e.branch(gA, 0))
		want(t, r, exitOK)
		if !strings.Contains(r.stdout, "state     aborted") {
			t.Errorf("show of an aborted global's branch:\n%s", r.stdout)
		}
		r = e.run("show", "nosuch"+randHex(4), "--json")
		want(t, r, exitError)
		decode[showResult](t, r)
	})

	t.Run("refusals", func(t *testing.T) {
		r := e.run("commit", e.branch(gA, 0))
		want(t, r, exitError)
		if !strings.Contains(r.stderr, "refusing to commit") || !strings.Contains(r.stderr, "aborted") {
			t.Errorf("stderr %q", r.stderr)
		}
		r = e.run("rollback", e.branch(gD, 1), "--json")
		want(t, r, exitError)
		if f := decode[finishResult](t, r); f.Action != "refused" || f.StateBefore != stDecided || !strings.Contains(f.Error, "decided") {
			t.Errorf("%+v", f)
		}
		r = e.run("commit", e.branch(gU, 1))
		want(t, r, exitError)
		if !strings.Contains(r.stderr, "undecided") {
			t.Errorf("stderr %q", r.stderr)
		}
		// Without a store a Coordinator branch's outcome is unknown.
		r = cli(t, nil, "commit", e.branch(gD, 0), "--db", "pg=postgres:"+pgDSN())
		want(t, r, exitError)
		for _, n := range []string{e.branch(gA, 0), e.branch(gD, 1), e.branch(gU, 1), e.branch(gD, 0)} {
			if !e.stillPrepared(n) {
				t.Errorf("%s was finished by a refused command", n)
			}
		}
	})

	t.Run("commit", func(t *testing.T) {
		for i, db := range []*sql.DB{e.pg, e.my} {
			r := e.run("commit", e.branch(gD, i), "--json")
			want(t, r, exitOK)
			if f := decode[finishResult](t, r); f.Action != "committed" || f.Global != gD || f.StateBefore != stDecided || f.Forced {
				t.Errorf("%+v", f)
			}
			if !e.committed(db, e.branch(gD, i)) {
				t.Errorf("%s not committed", e.branch(gD, i))
			}
		}
		want(t, e.run("rollback", e.branch(gA, 0)), exitOK)
		want(t, e.run("commit", plain), exitOK)
		if !e.committed(e.pg, plain) {
			t.Error("plain name not committed")
		}
		r := e.run("commit", plain)
		want(t, r, exitError)
		if !strings.Contains(r.stderr, "not prepared") {
			t.Errorf("stderr %q", r.stderr)
		}
	})

	t.Run("rollback fences", func(t *testing.T) {
		r := e.run("rollback", e.branch(gU, 0), "--json")
		want(t, r, exitOK)
		if f := decode[finishResult](t, r); f.Action != "rolled back" || !f.Fenced || f.StateBefore != stUndecided {
			t.Errorf("%+v", f)
		}
		if err := e.log.Decide(ctx, dtx.Decision{Global: gU, Node: e.node, At: time.Now()}); !errors.Is(err, dtx.ErrAborted) {
			t.Errorf("a late Decide after the CLI's rollback: %v, want ErrAborted", err)
		}
	})

	t.Run("force", func(t *testing.T) {
		// gU is aborted now: committing its other branch is refused,
		// and forced it is recorded.
		want(t, e.run("commit", e.branch(gU, 1)), exitError)
		r := e.run("commit", e.branch(gU, 1), "--force", "--json")
		want(t, r, exitOK)
		f := decode[finishResult](t, r)
		if f.Action != "committed" || !f.Forced || f.StateBefore != stAborted || f.Heuristic == "" {
			t.Errorf("%+v", f)
		}
		hs, err := e.log.Heuristics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(hs[gU], e.branch(gU, 1)) || !strings.Contains(hs[gU], "--force") {
			t.Errorf("heuristic recorded: %q", hs[gU])
		}
		r = e.run("show", gU)
		want(t, r, exitOK)
		if !strings.Contains(r.stdout, "heuristic dtx CLI") {
			t.Errorf("show does not tell the heuristic:\n%s", r.stdout)
		}
	})

	t.Run("held", func(t *testing.T) {
		// The test's own session still holds the MariaDB branch: the
		// listing cannot tell (holder unknown), the finish can.
		r := e.run("show", e.branch(gH, 0), "--json")
		want(t, r, exitOK)
		if s := decode[showResult](t, r); len(s.Prepared) != 1 || s.Prepared[0].Holder != holderUnknown {
			t.Errorf("%+v", s.Prepared)
		}
		r = e.run("rollback", e.branch(gH, 0))
		want(t, r, exitError)
		if !strings.Contains(r.stderr, "held by a live session") {
			t.Errorf("stderr %q", r.stderr)
		}
		if !e.stillPrepared(e.branch(gH, 0)) {
			t.Fatal("the held branch is gone")
		}
		if err := dtx.RollbackDistributed(ctx, e.branch(gH, 0)); err != nil {
			t.Fatal(err)
		}
	})
}

// TestForceRollbackDecided: rolling back a branch of a decided global with
// --force records the heuristic on the decision's row.
func TestForceRollbackDecided(t *testing.T) {
	e := newEnv(t)
	g := uuidv7At(time.Now().Add(-time.Hour))
	e.prepare(e.pg, e.branch(g, 0), false)
	if err := e.log.Decide(e.ctx, dtx.Decision{Global: g, Node: e.node, At: time.Now(),
		Branches: []dtx.BranchRef{{Resource: "pg", Name: e.branch(g, 0)}}}); err != nil {
		t.Fatal(err)
	}
	r := e.run("rollback", e.branch(g, 0), "--force")
	want(t, r, exitOK)
	if !strings.Contains(r.stdout, "rolled back") || !strings.Contains(r.stdout, "recorded as a heuristic") {
		t.Errorf("stdout %q", r.stdout)
	}
	hs, _ := e.log.Heuristics(e.ctx)
	if !strings.Contains(hs[g], "decided") {
		t.Errorf("heuristic %q", hs[g])
	}
	if e.committed(e.pg, e.branch(g, 0)) {
		t.Error("committed")
	}
}

// TestRecover: one pass commits a decided global's branches, fences and
// rolls back an undecided one's, and forgets the decision.
func TestRecover(t *testing.T) {
	e := newEnv(t)
	hourAgo := time.Now().Add(-time.Hour)
	gD, gU := uuidv7At(hourAgo), uuidv7At(hourAgo)
	e.prepare(e.pg, e.branch(gD, 0), false)
	e.prepare(e.my, e.branch(gD, 1), false)
	if err := e.log.Decide(e.ctx, dtx.Decision{Global: gD, Node: e.node, At: time.Now(), Branches: []dtx.BranchRef{
		{Resource: "pg", Name: e.branch(gD, 0)}, {Resource: "my", Name: e.branch(gD, 1)},
	}}); err != nil {
		t.Fatal(err)
	}
	e.prepare(e.my, e.branch(gU, 0), false)
	e.prepare(e.pg, e.branch(gU, 1), false)

	// As the nodes' own node: its globals are due at the recovery grace.
	r := e.run("recover", "--node", e.node, "--json")
	want(t, r, exitOK)
	rep := decode[recoverResult](t, r)
	if rep.Node != e.node ||
		!slices.Equal(rep.Committed, sorted(e.branch(gD, 0), e.branch(gD, 1))) ||
		!slices.Equal(rep.RolledBack, sorted(e.branch(gU, 0), e.branch(gU, 1))) ||
		!slices.Equal(rep.Aborted, []string{gU}) || !slices.Equal(rep.Forgotten, []string{gD}) {
		t.Fatalf("report %+v", rep)
	}
	if !e.committed(e.pg, e.branch(gD, 0)) || !e.committed(e.my, e.branch(gD, 1)) || e.committed(e.my, e.branch(gU, 0)) {
		t.Error("wrong outcome")
	}
	r = e.run("recover", "--node", e.node)
	want(t, r, exitOK)
	if !strings.Contains(r.stdout, "recovery pass as node "+e.node) {
		t.Errorf("stdout %q", r.stdout)
	}
	// A random node: none of these globals is its own.
	r = e.run("recover", "--json")
	want(t, r, exitOK)
	if n := decode[recoverResult](t, r).Node; !strings.HasPrefix(n, "cli-") || len(n) != 20 {
		t.Errorf("random node %q", n)
	}
}

func sorted(s ...string) []string { slices.Sort(s); return s }

// TestFileStore: a FileLog a service holds is read (list) but not written
// (a rollback that must fence says the lock is taken).
func TestFileStore(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	l, err := dtx.OpenFileLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	hourAgo := time.Now().Add(-time.Hour)
	gD, gU := uuidv7At(hourAgo), uuidv7At(hourAgo)
	e.prepare(e.pg, e.branch(gD, 0), false)
	e.prepare(e.pg, e.branch(gU, 0), false)
	if err := l.Decide(e.ctx, dtx.Decision{Global: gD, Node: e.node, At: time.Now(),
		Branches: []dtx.BranchRef{{Resource: "pg", Name: e.branch(gD, 0)}}}); err != nil {
		t.Fatal(err)
	}
	args := []string{"--db", "pg=postgres:" + pgDSN(), "--store", "file:" + dir}
	r := cli(t, nil, append([]string{"list", "--node", e.node, "--json"}, args...)...)
	want(t, r, exitInDoubt)
	m := byName(decode[jsonList](t, r))
	if m[e.branch(gD, 0)].State != stDecided || m[e.branch(gU, 0)].State != stUndecided {
		t.Errorf("%+v", m)
	}
	r = cli(t, nil, append([]string{"rollback", e.branch(gU, 0)}, args...)...)
	want(t, r, exitError)
	if !strings.Contains(r.stderr, "in use by another process") {
		t.Errorf("stderr %q", r.stderr)
	}
	// Committing a decided branch writes nothing to the store.
	want(t, cli(t, nil, append([]string{"commit", e.branch(gD, 0)}, args...)...), exitOK)
	l.Close()
	// Released: the rollback fences in the file.
	want(t, cli(t, nil, append([]string{"rollback", e.branch(gU, 0)}, args...)...), exitOK)
	ro, err := dtx.OpenFileLogReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	if d, err := ro.Abort(e.ctx, gU); err != nil || d != nil {
		t.Errorf("gU not aborted in the file: %v %v", d, err)
	}
}

// TestSQLStore: --store sql: reads and writes a table in a database that
// is not one of the --db ones (here MariaDB, through the plain driver).
func TestSQLStore(t *testing.T) {
	e := newEnv(t)
	raw, err := sql.Open("mysql", myDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	table := "dtx_cli_store_" + randHex(4)
	l, err := dtx.OpenSQLLog(e.ctx, raw, table)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.ExecContext(e.ctx, "DROP TABLE IF EXISTS "+table)
	hourAgo := time.Now().Add(-time.Hour)
	gD, gU := uuidv7At(hourAgo), uuidv7At(hourAgo)
	e.prepare(e.pg, e.branch(gD, 0), false)
	e.prepare(e.pg, e.branch(gU, 0), false)
	if err := l.Decide(e.ctx, dtx.Decision{Global: gD, Node: e.node, At: time.Now(),
		Branches: []dtx.BranchRef{{Resource: "pg", Name: e.branch(gD, 0)}}}); err != nil {
		t.Fatal(err)
	}
	args := []string{"--db", "pg=postgres:" + pgDSN(), "--store", "sql:mysql:" + myDSN() + "#" + table}
	r := cli(t, nil, append([]string{"list", "--node", e.node, "--json"}, args...)...)
	want(t, r, exitInDoubt)
	m := byName(decode[jsonList](t, r))
	if m[e.branch(gD, 0)].State != stDecided || m[e.branch(gU, 0)].State != stUndecided {
		t.Errorf("%+v", m)
	}
	want(t, cli(t, nil, append([]string{"rollback", e.branch(gD, 0)}, args...)...), exitError)
	want(t, cli(t, nil, append([]string{"commit", e.branch(gD, 0)}, args...)...), exitOK)
	want(t, cli(t, nil, append([]string{"rollback", e.branch(gU, 0)}, args...)...), exitOK)
	if d, err := l.Abort(e.ctx, gU); err != nil || d != nil {
		t.Errorf("gU not aborted in the table: %v %v", d, err)
	}
}

// TestForceCommitUndecided: a forced commit of an undecided global's branch
// fences the global first, so the heuristic lands on its abort row.
func TestForceCommitUndecided(t *testing.T) {
	e := newEnv(t)
	g := uuidv7At(time.Now().Add(-time.Hour))
	e.prepare(e.my, e.branch(g, 0), false)
	r := e.run("commit", e.branch(g, 0), "--force", "--json")
	want(t, r, exitOK)
	f := decode[finishResult](t, r)
	if f.Action != "committed" || !f.Forced || !f.Fenced || f.StateBefore != stUndecided {
		t.Errorf("%+v", f)
	}
	if !e.committed(e.my, e.branch(g, 0)) {
		t.Error("not committed")
	}
	hs, _ := e.log.Heuristics(e.ctx)
	if !strings.Contains(hs[g], "committed") {
		t.Errorf("heuristic %q", hs[g])
	}
	if err := e.log.Decide(e.ctx, dtx.Decision{Global: g, Node: e.node, At: time.Now()}); !errors.Is(err, dtx.ErrAborted) {
		t.Errorf("Decide after the fence: %v", err)
	}
}

// TestStoreMissing: a store that is not there is never created by a write
// (an empty one would make decided globals look undecided).
func TestStoreMissing(t *testing.T) {
	e := newEnv(t)
	g := uuidv7At(time.Now().Add(-time.Hour))
	e.prepare(e.pg, e.branch(g, 0), false)
	dir := filepath.Join(t.TempDir(), "typo")
	for _, st := range []string{"file:" + dir, "resource:pg:dtx_cli_nosuch_" + randHex(4)} {
		args := []string{"--db", "pg=postgres:" + pgDSN(), "--store", st}
		r := cli(t, nil, append([]string{"list", "--node", e.node, "--json"}, args...)...)
		want(t, r, exitInDoubt)
		if p := decode[jsonList](t, r).Prepared; len(p) != 1 || p[0].State != stUnknown {
			t.Errorf("%+v", p)
		}
		r = cli(t, nil, append([]string{"recover", "--node", e.node}, args...)...)
		want(t, r, exitError)
		if !strings.Contains(r.stderr, "creates none") {
			t.Errorf("stderr %q", r.stderr)
		}
		want(t, cli(t, nil, append([]string{"rollback", e.branch(g, 0)}, args...)...), exitError)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Error("the CLI created the FileLog directory")
	}
	if !e.stillPrepared(e.branch(g, 0)) {
		t.Error("finished")
	}
}
