package dtx

// Parity tests: the wrapper over fake parent drivers, with no database
// server. They prove that a dtx connection looks and behaves like its parent
// to database/sql: it implements an optional interface exactly when
// database/sql would behave differently without it, forwards every call with
// its arguments, and returns the parent's values and errors as they are.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// Recording

// call is one call a fake parent received.
type call struct {
	conn   int // the fake connection's number; 0 for driver and connector calls
	method string
	ctx    context.Context // the context it got, nil for methods without one
	args   []any
}

// String renders c for transcripts: which connection, which method, which
// arguments (contexts left out: they differ between two *sql.DB).
func (c call) String() string {
	var b strings.Builder
	if c.conn != 0 {
		fmt.Fprintf(&b, "c%d.", c.conn)
	}
	b.WriteString(c.method)
	if len(c.args) > 0 {
		b.WriteString("(")
		for i, a := range c.args {
			if i > 0 {
				b.WriteString(", ")
			}
			if nv, ok := a.(*driver.NamedValue); ok {
				a = *nv
			}
			fmt.Fprintf(&b, "%v", a)
		}
		b.WriteString(")")
	}
	return b.String()
}

// recorder keeps the calls of one fake parent, in order.
type recorder struct {
	mu    sync.Mutex
	calls []call
}

func (r *recorder) add(c call) {
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.calls = nil
	r.mu.Unlock()
}

func (r *recorder) all() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

func (r *recorder) count(method string) int {
	n := 0
	for _, c := range r.all() {
		if c.method == method {
			n++
		}
	}
	return n
}

func (r *recorder) transcript() []string {
	var out []string
	for _, c := range r.all() {
		out = append(out, c.String())
	}
	return out
}

// ---------------------------------------------------------------------------
// Fake parent connections

// fakeConn is the core of every fake parent connection: the methods of
// driver.Conn, a record of every call, and the values and errors to answer
// with. The optional interfaces are mixins (below) that shapes combine.
type fakeConn struct {
	id  int
	rec *recorder

	stmt *fakeStmt
	rows *fakeRows
	res  *fakeResult
	tx   *fakeTx

	mu      sync.Mutex
	errs    map[string]error // method -> the error it returns
	invalid bool             // IsValid answers false
}

func newFakeConn(id int, rec *recorder) *fakeConn {
	f := &fakeConn{id: id, rec: rec, errs: map[string]error{}}
	f.stmt, f.rows, f.res, f.tx = &fakeStmt{f}, &fakeRows{f}, &fakeResult{f}, &fakeTx{f}
	return f
}

// called records a call of method and returns the error set for it.
func (f *fakeConn) called(method string, ctx context.Context, args ...any) error {
	f.rec.add(call{conn: f.id, method: method, ctx: ctx, args: args})
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.errs[method]
}

// failWith makes method return err from now on (nil: succeed again).
func (f *fakeConn) failWith(method string, err error) {
	f.mu.Lock()
	f.errs[method] = err
	f.mu.Unlock()
}

func (f *fakeConn) setInvalid(v bool) {
	f.mu.Lock()
	f.invalid = v
	f.mu.Unlock()
}

// fake gives the core of any shape back, for tests that hold a driver.Conn.
func (f *fakeConn) fake() *fakeConn { return f }

func (f *fakeConn) Prepare(query string) (driver.Stmt, error) {
	if err := f.called("Prepare", nil, query); err != nil {
		return nil, err
	}
	return f.stmt, nil
}

func (f *fakeConn) Close() error { return f.called("Close", nil) }

func (f *fakeConn) Begin() (driver.Tx, error) {
	if err := f.called("Begin", nil); err != nil {
		return nil, err
	}
	return f.tx, nil
}

type fakeStmt struct{ f *fakeConn }

func (s *fakeStmt) Close() error  { return s.f.called("Stmt.Close", nil) }
func (s *fakeStmt) NumInput() int { return -1 }
func (s *fakeStmt) Exec(args []driver.Value) (driver.Result, error) {
	if err := s.f.called("Stmt.Exec", nil, args); err != nil {
		return nil, err
	}
	return s.f.res, nil
}
func (s *fakeStmt) Query(args []driver.Value) (driver.Rows, error) {
	if err := s.f.called("Stmt.Query", nil, args); err != nil {
		return nil, err
	}
	return s.f.rows, nil
}

// fakeRows, fakeResult and fakeTx carry a field so that two of them are never
// the same pointer (pointers to zero-size values may all be equal).
type fakeRows struct{ f *fakeConn }

func (r *fakeRows) Columns() []string              { return []string{"a"} }
func (r *fakeRows) Close() error                   { return r.f.called("Rows.Close", nil) }
func (r *fakeRows) Next(dest []driver.Value) error { return io.EOF }

type fakeResult struct{ f *fakeConn }

func (r *fakeResult) LastInsertId() (int64, error) { return 0, nil }
func (r *fakeResult) RowsAffected() (int64, error) { return 1, nil }

type fakeTx struct{ f *fakeConn }

func (t *fakeTx) Commit() error   { return t.f.called("Tx.Commit", nil) }
func (t *fakeTx) Rollback() error { return t.f.called("Tx.Rollback", nil) }

// The optional interfaces, one mixin each.
type (
	pinger       struct{ f *fakeConn } // driver.Pinger
	resetter     struct{ f *fakeConn } // driver.SessionResetter
	validator    struct{ f *fakeConn } // driver.Validator
	txBeginner   struct{ f *fakeConn } // driver.ConnBeginTx
	ctxPreparer  struct{ f *fakeConn } // driver.ConnPrepareContext
	ctxExecer    struct{ f *fakeConn } // driver.ExecerContext
	ctxQueryer   struct{ f *fakeConn } // driver.QueryerContext
	valueChecker struct{ f *fakeConn } // driver.NamedValueChecker
	execer       struct{ f *fakeConn } // driver.Execer (deprecated)
	queryer      struct{ f *fakeConn } // driver.Queryer (deprecated)
)

func (m pinger) Ping(ctx context.Context) error { return m.f.called("Ping", ctx) }

func (m resetter) ResetSession(ctx context.Context) error { return m.f.called("ResetSession", ctx) }

func (m validator) IsValid() bool {
	m.f.called("IsValid", nil)
	m.f.mu.Lock()
	defer m.f.mu.Unlock()
	return !m.f.invalid
}

func (m txBeginner) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := m.f.called("BeginTx", ctx, opts); err != nil {
		return nil, err
	}
	return m.f.tx, nil
}

func (m ctxPreparer) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if err := m.f.called("PrepareContext", ctx, query); err != nil {
		return nil, err
	}
	return m.f.stmt, nil
}

func (m ctxExecer) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := m.f.called("ExecContext", ctx, query, args); err != nil {
		return nil, err
	}
	return m.f.res, nil
}

func (m ctxQueryer) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if err := m.f.called("QueryContext", ctx, query, args); err != nil {
		return nil, err
	}
	return m.f.rows, nil
}

func (m valueChecker) CheckNamedValue(nv *driver.NamedValue) error {
	return m.f.called("CheckNamedValue", nil, nv)
}

func (m execer) Exec(query string, args []driver.Value) (driver.Result, error) {
	if err := m.f.called("Exec", nil, query, args); err != nil {
		return nil, err
	}
	return m.f.res, nil
}

func (m queryer) Query(query string, args []driver.Value) (driver.Rows, error) {
	if err := m.f.called("Query", nil, query, args); err != nil {
		return nil, err
	}
	return m.f.rows, nil
}

// modern is the five interfaces the wrapper always has: BeginTx,
// PrepareContext, ExecContext, QueryContext, CheckNamedValue.
type modern struct {
	txBeginner
	ctxPreparer
	ctxExecer
	ctxQueryer
	valueChecker
}

func modernOf(f *fakeConn) modern {
	return modern{txBeginner{f}, ctxPreparer{f}, ctxExecer{f}, ctxQueryer{f}, valueChecker{f}}
}

// The shapes of fake parent connections. Names: P Pinger, R SessionResetter,
// V Validator; M the five of modern.
type (
	fakeNone struct{ *fakeConn }
	fakeP    struct {
		*fakeConn
		pinger
	}
	fakeR struct {
		*fakeConn
		resetter
	}
	fakeV struct {
		*fakeConn
		validator
	}
	fakePR struct {
		*fakeConn
		pinger
		resetter
	}
	fakePV struct {
		*fakeConn
		pinger
		validator
	}
	fakeRV struct {
		*fakeConn
		resetter
		validator
	}
	fakePRV struct {
		*fakeConn
		pinger
		resetter
		validator
	}
	fakeM struct {
		*fakeConn
		modern
	}
	fakeMP struct {
		*fakeConn
		modern
		pinger
	}
	fakeMR struct {
		*fakeConn
		modern
		resetter
	}
	fakeMV struct {
		*fakeConn
		modern
		validator
	}
	fakeMPR struct {
		*fakeConn
		modern
		pinger
		resetter
	}
	fakeMPV struct {
		*fakeConn
		modern
		pinger
		validator
	}
	fakeMRV struct {
		*fakeConn
		modern
		resetter
		validator
	}
	fakeMPRV struct {
		*fakeConn
		modern
		pinger
		resetter
		validator
	}

	// One of the five alone.
	fakeOnlyB struct {
		*fakeConn
		txBeginner
	}
	fakeOnlyC struct {
		*fakeConn
		ctxPreparer
	}
	fakeOnlyE struct {
		*fakeConn
		ctxExecer
	}
	fakeOnlyQ struct {
		*fakeConn
		ctxQueryer
	}
	fakeOnlyN struct {
		*fakeConn
		valueChecker
	}

	// Pinger, SessionResetter, Validator and four of the five.
	fakeNoB struct {
		*fakeConn
		pinger
		resetter
		validator
		ctxPreparer
		ctxExecer
		ctxQueryer
		valueChecker
	}
	fakeNoC struct {
		*fakeConn
		pinger
		resetter
		validator
		txBeginner
		ctxExecer
		ctxQueryer
		valueChecker
	}
	fakeNoE struct {
		*fakeConn
		pinger
		resetter
		validator
		txBeginner
		ctxPreparer
		ctxQueryer
		valueChecker
	}
	fakeNoQ struct {
		*fakeConn
		pinger
		resetter
		validator
		txBeginner
		ctxPreparer
		ctxExecer
		valueChecker
	}
	fakeNoN struct {
		*fakeConn
		pinger
		resetter
		validator
		txBeginner
		ctxPreparer
		ctxExecer
		ctxQueryer
	}

	// lib/pq v1.12.3's *conn (conn.go, conn_go18.go): Begin, Prepare, Close,
	// Exec, Query, CheckNamedValue, ResetSession, IsValid, QueryContext,
	// ExecContext, PrepareContext, BeginTx, Ping (and Commit/Rollback, which
	// database/sql never asks a Conn for).
	fakePqConn struct {
		*fakeConn
		modern
		pinger
		resetter
		validator
		execer
		queryer
	}
	// go-sql-driver/mysql v1.10.1's *mysqlConn (connection.go): Begin, Close,
	// Prepare, Exec, Query, Ping, BeginTx, QueryContext, ExecContext,
	// PrepareContext, CheckNamedValue, ResetSession, IsValid.
	fakeMysqlConn struct {
		*fakeConn
		modern
		pinger
		resetter
		validator
		execer
		queryer
	}
	// jackc/pgx v5.10.0 stdlib's *Conn (stdlib/sql.go): Prepare,
	// PrepareContext, Close, Begin, BeginTx, ExecContext, QueryContext, Ping,
	// CheckNamedValue, ResetSession (and Conn() *pgx.Conn). No Validator, no
	// deprecated Exec/Query.
	fakePgxConn struct {
		*fakeConn
		modern
		pinger
		resetter
	}
	// A pre-Go 1.8 driver: only the deprecated Execer and Queryer.
	fakeLegacyConn struct {
		*fakeConn
		execer
		queryer
	}
)

// shape is one kind of fake parent connection.
type shape struct {
	name string
	has  string // letters of the optional interfaces it implements, see optionals
	make func(f *fakeConn) driver.Conn
}

func shapes() []shape {
	pr := func(f *fakeConn) pinger { return pinger{f} }
	rs := func(f *fakeConn) resetter { return resetter{f} }
	vl := func(f *fakeConn) validator { return validator{f} }
	return []shape{
		{"none", "", func(f *fakeConn) driver.Conn { return fakeNone{f} }},
		{"P", "P", func(f *fakeConn) driver.Conn { return fakeP{f, pr(f)} }},
		{"R", "R", func(f *fakeConn) driver.Conn { return fakeR{f, rs(f)} }},
		{"V", "V", func(f *fakeConn) driver.Conn { return fakeV{f, vl(f)} }},
		{"PR", "PR", func(f *fakeConn) driver.Conn { return fakePR{f, pr(f), rs(f)} }},
		{"PV", "PV", func(f *fakeConn) driver.Conn { return fakePV{f, pr(f), vl(f)} }},
		{"RV", "RV", func(f *fakeConn) driver.Conn { return fakeRV{f, rs(f), vl(f)} }},
		{"PRV", "PRV", func(f *fakeConn) driver.Conn { return fakePRV{f, pr(f), rs(f), vl(f)} }},
		{"M", "BCEQN", func(f *fakeConn) driver.Conn { return fakeM{f, modernOf(f)} }},
		{"M+P", "BCEQNP", func(f *fakeConn) driver.Conn { return fakeMP{f, modernOf(f), pr(f)} }},
		{"M+R", "BCEQNR", func(f *fakeConn) driver.Conn { return fakeMR{f, modernOf(f), rs(f)} }},
		{"M+V", "BCEQNV", func(f *fakeConn) driver.Conn { return fakeMV{f, modernOf(f), vl(f)} }},
		{"M+PR", "BCEQNPR", func(f *fakeConn) driver.Conn { return fakeMPR{f, modernOf(f), pr(f), rs(f)} }},
		{"M+PV", "BCEQNPV", func(f *fakeConn) driver.Conn { return fakeMPV{f, modernOf(f), pr(f), vl(f)} }},
		{"M+RV", "BCEQNRV", func(f *fakeConn) driver.Conn { return fakeMRV{f, modernOf(f), rs(f), vl(f)} }},
		{"M+PRV", "BCEQNPRV", func(f *fakeConn) driver.Conn { return fakeMPRV{f, modernOf(f), pr(f), rs(f), vl(f)} }},
		{"only BeginTx", "B", func(f *fakeConn) driver.Conn { return fakeOnlyB{f, txBeginner{f}} }},
		{"only PrepareContext", "C", func(f *fakeConn) driver.Conn { return fakeOnlyC{f, ctxPreparer{f}} }},
		{"only ExecContext", "E", func(f *fakeConn) driver.Conn { return fakeOnlyE{f, ctxExecer{f}} }},
		{"only QueryContext", "Q", func(f *fakeConn) driver.Conn { return fakeOnlyQ{f, ctxQueryer{f}} }},
		{"only CheckNamedValue", "N", func(f *fakeConn) driver.Conn { return fakeOnlyN{f, valueChecker{f}} }},
		{"PRV without BeginTx", "PRVCEQN", func(f *fakeConn) driver.Conn {
			return fakeNoB{f, pr(f), rs(f), vl(f), ctxPreparer{f}, ctxExecer{f}, ctxQueryer{f}, valueChecker{f}}
		}},
		{"PRV without PrepareContext", "PRVBEQN", func(f *fakeConn) driver.Conn {
			return fakeNoC{f, pr(f), rs(f), vl(f), txBeginner{f}, ctxExecer{f}, ctxQueryer{f}, valueChecker{f}}
		}},
		{"PRV without ExecContext", "PRVBCQN", func(f *fakeConn) driver.Conn {
			return fakeNoE{f, pr(f), rs(f), vl(f), txBeginner{f}, ctxPreparer{f}, ctxQueryer{f}, valueChecker{f}}
		}},
		{"PRV without QueryContext", "PRVBCEN", func(f *fakeConn) driver.Conn {
			return fakeNoQ{f, pr(f), rs(f), vl(f), txBeginner{f}, ctxPreparer{f}, ctxExecer{f}, valueChecker{f}}
		}},
		{"PRV without CheckNamedValue", "PRVBCEQ", func(f *fakeConn) driver.Conn {
			return fakeNoN{f, pr(f), rs(f), vl(f), txBeginner{f}, ctxPreparer{f}, ctxExecer{f}, ctxQueryer{f}}
		}},
		pqShape,
		mysqlShape,
		pgxShape,
		{"legacy Exec/Query only", "eq", func(f *fakeConn) driver.Conn { return fakeLegacyConn{f, execer{f}, queryer{f}} }},
	}
}

var (
	pqShape = shape{"lib/pq", "PRVBCEQNeq", func(f *fakeConn) driver.Conn {
		return fakePqConn{f, modernOf(f), pinger{f}, resetter{f}, validator{f}, execer{f}, queryer{f}}
	}}
	mysqlShape = shape{"go-sql-driver/mysql", "PRVBCEQNeq", func(f *fakeConn) driver.Conn {
		return fakeMysqlConn{f, modernOf(f), pinger{f}, resetter{f}, validator{f}, execer{f}, queryer{f}}
	}}
	pgxShape = shape{"pgx/stdlib", "PRBCEQN", func(f *fakeConn) driver.Conn {
		return fakePgxConn{f, modernOf(f), pinger{f}, resetter{f}}
	}}
)

// How the wrapper must treat each optional interface of driver.Conn.
type ifaceKind int

const (
	variant ifaceKind = iota // the wrapper has it exactly when the parent has it
	always                   // the wrapper always has it, with database/sql's fallback
	hidden                   // the wrapper never has it: database/sql prefers the *Context form
)

// optionals is every optional interface database/sql looks for on a
// driver.Conn (see its sql.go and ctxutil.go).
var optionals = []struct {
	letter byte
	name   string
	is     func(driver.Conn) bool
	kind   ifaceKind
}{
	{'P', "Pinger", is[driver.Pinger], variant},
	{'R', "SessionResetter", is[driver.SessionResetter], variant},
	{'V', "Validator", is[driver.Validator], variant},
	{'B', "ConnBeginTx", is[driver.ConnBeginTx], always},
	{'C', "ConnPrepareContext", is[driver.ConnPrepareContext], always},
	{'E', "ExecerContext", is[driver.ExecerContext], always},
	{'Q', "QueryerContext", is[driver.QueryerContext], always},
	{'N', "NamedValueChecker", is[driver.NamedValueChecker], always},
	{'e', "Execer", is[driver.Execer], hidden},   //nolint:staticcheck // what old drivers have
	{'q', "Queryer", is[driver.Queryer], hidden}, //nolint:staticcheck // what old drivers have
}

func is[I any](c driver.Conn) bool {
	_, ok := c.(I)
	return ok
}

// implements reports whether c implements the optional interface with
// letter l; l == 0 stands for driver.Conn itself.
func implements(c driver.Conn, l byte) bool {
	if l == 0 {
		return true
	}
	for _, o := range optionals {
		if o.letter == l {
			return o.is(c)
		}
	}
	panic(fmt.Sprintf("no optional interface %q", l))
}

// ---------------------------------------------------------------------------
// Fake parent drivers and connectors

// fakeDB is the parent side of one test: it makes connections of one shape,
// numbers them, and records every call they get.
type fakeDB struct {
	rec   *recorder
	shape shape

	mu      sync.Mutex
	conns   []*fakeConn
	parents []driver.Conn
	errs    map[string]error // set on every new connection; "Connect" fails connecting
	invalid bool
}

func newFakeDB(s shape) *fakeDB {
	return &fakeDB{rec: &recorder{}, shape: s, errs: map[string]error{}}
}

// open records event and makes a new connection.
func (db *fakeDB) open(event string, args ...any) (driver.Conn, error) {
	db.rec.add(call{method: event, args: args})
	db.mu.Lock()
	defer db.mu.Unlock()
	if err := db.errs["Connect"]; err != nil {
		return nil, err
	}
	f := newFakeConn(len(db.conns)+1, db.rec)
	for m, err := range db.errs {
		f.errs[m] = err
	}
	f.invalid = db.invalid
	p := db.shape.make(f)
	db.conns = append(db.conns, f)
	db.parents = append(db.parents, p)
	return p, nil
}

func (db *fakeDB) parent(i int) driver.Conn {
	db.mu.Lock()
	defer db.mu.Unlock()
	return db.parents[i]
}

// fakeConnector is a parent connector without io.Closer, like those of
// lib/pq, mysql and pgx.
type fakeConnector struct {
	db  *fakeDB
	drv driver.Driver
}

func (c *fakeConnector) Connect(ctx context.Context) (driver.Conn, error) {
	return c.db.open("Connect")
}
func (c *fakeConnector) Driver() driver.Driver { return c.drv }

// closingConnector is a parent connector with io.Closer.
type closingConnector struct{ *fakeConnector }

func (c closingConnector) Close() error {
	c.db.rec.add(call{method: "Connector.Close"})
	c.db.mu.Lock()
	defer c.db.mu.Unlock()
	return c.db.errs["Connector.Close"]
}

// fakeDriver is a parent driver with only Open, like lib/pq's. Its fakeDB can
// be swapped, so that one value can stay registered with database/sql.
type fakeDriver struct{ db atomic.Pointer[fakeDB] }

func (d *fakeDriver) Open(dsn string) (driver.Conn, error) {
	return d.db.Load().open("Driver.Open", dsn)
}

// fakeDriverCtx is a parent driver with DriverContext, like mysql's and pgx's.
type fakeDriverCtx struct{ fakeDriver }

func (d *fakeDriverCtx) OpenConnector(dsn string) (driver.Connector, error) {
	db := d.db.Load()
	db.rec.add(call{method: "Driver.OpenConnector", args: []any{dsn}})
	db.mu.Lock()
	defer db.mu.Unlock()
	if err := db.errs["OpenConnector"]; err != nil {
		return nil, err
	}
	return &fakeConnector{db: db, drv: d}, nil
}

// newFakeConnector returns a parent connector (an io.Closer if closing) over
// a new fakeDB of shape s.
func newFakeConnector(s shape, closing bool) (driver.Connector, *fakeDB) {
	db := newFakeDB(s)
	drv := &fakeDriverCtx{}
	drv.db.Store(db)
	fc := &fakeConnector{db: db, drv: drv}
	if closing {
		return closingConnector{fc}, db
	}
	return fc, db
}

// wrapped connects once through a dtx connector over a fake parent of shape
// s. It returns the wrapper, the parent connection inside it, and the
// parent's core with its record emptied.
func wrapped(t *testing.T, s shape) (w, parent driver.Conn, f *fakeConn) {
	t.Helper()
	pc, db := newFakeConnector(s, false)
	c := newConnector(pc, &Driver{parent: pc.Driver(), dialect: Postgres}, nil)
	w, err := c.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	db.rec.reset()
	return w, db.parent(0), db.conns[0]
}

// openPair opens the same fake parent twice, bare and through dtx.
func openPair(t *testing.T, s shape, setup func(*fakeDB)) (bare, wrap *sql.DB, bareDB, wrapDB *fakeDB) {
	t.Helper()
	bc, bareDB := newFakeConnector(s, true)
	wc, wrapDB := newFakeConnector(s, true)
	if setup != nil {
		setup(bareDB)
		setup(wrapDB)
	}
	bare = sql.OpenDB(bc)
	wrap = sql.OpenDB(dtxConnector(t, wc))
	t.Cleanup(func() { bare.Close(); wrap.Close() })
	return bare, wrap, bareDB, wrapDB
}

// dtxConnector wraps pc with NewConnector, and closes the wrapper when t
// ends: every dtx connector is in the package registry until closed, and
// CommitDistributed/RollbackDistributed search all of them.
func dtxConnector(t *testing.T, pc driver.Connector) driver.Connector {
	t.Helper()
	c := NewConnector(pc, Postgres)
	t.Cleanup(func() {
		c.(io.Closer).Close()
		reg.mu.Lock()
		_, left := reg.connectors[c.(*connector)]
		reg.mu.Unlock()
		if left {
			t.Error("a closed connector stayed in the registry")
		}
	})
	return c
}

// waitReleased waits until db has no connection in use: database/sql rolls
// a transaction whose context ended back, and releases its connection, in a
// goroutine of its own.
func waitReleased(t *testing.T, db *sql.DB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for db.Stats().InUse != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the connection of a cancelled transaction was never released")
		}
		time.Sleep(time.Millisecond)
	}
}

// unwrapped is what sql.Conn.Raw hands over, with dtx's wrapper removed.
func unwrapped(dc any) any {
	if u, ok := dc.(interface{ Unwrap() driver.Conn }); ok {
		return u.Unwrap()
	}
	return dc
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

// sameArgs compares recorded arguments: pointers by identity, the rest deeply.
func sameArgs(got, want []any) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != nil && reflect.TypeOf(got[i]).Kind() == reflect.Pointer {
			if got[i] != want[i] {
				return false
			}
		} else if !reflect.DeepEqual(got[i], want[i]) {
			return false
		}
	}
	return true
}

func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	return rv.Kind() == reflect.Pointer && rv.IsNil()
}

// shapeWith returns the shape with exactly the optional interfaces has.
func shapeWith(t *testing.T, has string) shape {
	t.Helper()
	for _, s := range shapes() {
		if s.has == has {
			return s
		}
	}
	t.Fatalf("no shape with %q", has)
	return shape{}
}

// ---------------------------------------------------------------------------
// Tests

// TestParityFakeShapes checks the fakes themselves: each shape implements
// exactly the optional interfaces its letters say, so that the tests below
// cover what they claim (pgx without Validator, lib/pq and mysql with the
// deprecated Exec/Query, ...).
func TestParityFakeShapes(t *testing.T) {
	for _, s := range shapes() {
		t.Run(s.name, func(t *testing.T) {
			p := s.make(newFakeConn(1, &recorder{}))
			for _, o := range optionals {
				if got, want := o.is(p), strings.IndexByte(s.has, o.letter) >= 0; got != want {
					t.Errorf("fake implements %s: %v, want %v", o.name, got, want)
				}
			}
		})
	}
}

// TestParityOptionalInterfaces: for every shape, the wrapper implements
// Pinger, SessionResetter and Validator exactly when the parent does; always
// implements ConnBeginTx, ConnPrepareContext, ExecerContext, QueryerContext
// and NamedValueChecker; never the deprecated Execer and Queryer; and gives
// the parent back through Unwrap.
func TestParityOptionalInterfaces(t *testing.T) {
	for _, s := range shapes() {
		t.Run(s.name, func(t *testing.T) {
			w, parent, _ := wrapped(t, s)
			for _, o := range optionals {
				var want bool
				switch o.kind {
				case variant:
					want = o.is(parent)
				case always:
					want = true
				case hidden:
					want = false
				}
				if got := o.is(w); got != want {
					t.Errorf("wrapper implements %s: %v, want %v (parent: %v)", o.name, got, want, o.is(parent))
				}
			}
			u, ok := w.(interface{ Unwrap() driver.Conn })
			if !ok {
				t.Fatalf("wrapper %T has no Unwrap", w)
			}
			if u.Unwrap() != parent {
				t.Errorf("Unwrap() = %v, want the parent %v", u.Unwrap(), parent)
			}
		})
	}
}

type probeKey struct{}

// expect is what the parent must see of one call on the wrapper, and what
// the wrapper must return.
type expect struct {
	method string              // the parent method called exactly once; "" for none
	ctx    context.Context     // the context it gets
	args   []any               // the arguments it gets after the context
	result func(*fakeConn) any // the very value the wrapper returns; nil for none
	err    error               // without a parent call: the error returned, by identity
	errMsg string              // without a parent call: the text of the error returned
}

// fallback is what happens when the parent lacks the interface that serves
// a call but has the one with letter has (0: driver.Conn itself).
type fallback struct {
	has byte
	expect
}

// probe is one call on the wrapper.
type probe struct {
	name      string
	serves    byte // the parent's interface that serves it (0: driver.Conn)
	kind      ifaceKind
	call      func(ctx context.Context, w driver.Conn) (any, error)
	served    expect                // when the parent has serves
	fallbacks []fallback            // else the first that applies
	otherwise expect                // else this
	alt       func(f *fakeConn) any // for a call without error: makes the parent answer otherwise, returns the new answer
}

// probes lists every method of the wrapper, called with ctx.
func probes(ctx context.Context) []probe {
	bg := context.Background()
	const query = "UPDATE t SET a = $1 WHERE b = $2"
	named := []driver.NamedValue{{Ordinal: 1, Value: int64(42)}, {Ordinal: 2, Value: "x"}}
	values := []driver.Value{int64(42), "x"}
	nv := &driver.NamedValue{Ordinal: 1, Value: uint64(1) << 63}
	serializable := driver.TxOptions{Isolation: driver.IsolationLevel(sql.LevelSerializable), ReadOnly: true}
	tx := func(f *fakeConn) any { return f.tx }
	stmt := func(f *fakeConn) any { return f.stmt }
	res := func(f *fakeConn) any { return f.res }
	rows := func(f *fakeConn) any { return f.rows }
	return []probe{
		{
			name: "Ping", serves: 'P', kind: variant,
			call:   func(ctx context.Context, w driver.Conn) (any, error) { return nil, w.(driver.Pinger).Ping(ctx) },
			served: expect{method: "Ping", ctx: ctx},
		},
		{
			name: "ResetSession", serves: 'R', kind: variant,
			call: func(ctx context.Context, w driver.Conn) (any, error) {
				return nil, w.(driver.SessionResetter).ResetSession(ctx)
			},
			served: expect{method: "ResetSession", ctx: ctx},
		},
		{
			name: "IsValid", serves: 'V', kind: variant,
			call:   func(_ context.Context, w driver.Conn) (any, error) { return w.(driver.Validator).IsValid(), nil },
			served: expect{method: "IsValid", result: func(*fakeConn) any { return true }},
			alt:    func(f *fakeConn) any { f.setInvalid(true); return false },
		},
		{
			name: "BeginTx", serves: 'B', kind: always,
			call: func(ctx context.Context, w driver.Conn) (any, error) {
				return w.(driver.ConnBeginTx).BeginTx(ctx, serializable)
			},
			served: expect{method: "BeginTx", ctx: ctx, args: []any{serializable}, result: tx},
			// database/sql's own refusal for a driver without BeginTx.
			otherwise: expect{errMsg: "sql: driver does not support non-default isolation level"},
		},
		{
			name: "BeginTx with default options", serves: 'B', kind: always,
			call: func(ctx context.Context, w driver.Conn) (any, error) {
				return w.(driver.ConnBeginTx).BeginTx(ctx, driver.TxOptions{})
			},
			served:    expect{method: "BeginTx", ctx: ctx, args: []any{driver.TxOptions{}}, result: tx},
			fallbacks: []fallback{{0, expect{method: "Begin", result: tx}}},
		},
		{
			name: "Begin", serves: 'B', kind: always,
			call: func(_ context.Context, w driver.Conn) (any, error) {
				return w.Begin() //nolint:staticcheck // the wrapper must never pass it on
			},
			served:    expect{method: "BeginTx", ctx: bg, args: []any{driver.TxOptions{}}, result: tx},
			fallbacks: []fallback{{0, expect{method: "Begin", result: tx}}},
		},
		{
			name: "PrepareContext", serves: 'C', kind: always,
			call: func(ctx context.Context, w driver.Conn) (any, error) {
				return w.(driver.ConnPrepareContext).PrepareContext(ctx, query)
			},
			served:    expect{method: "PrepareContext", ctx: ctx, args: []any{query}, result: stmt},
			fallbacks: []fallback{{0, expect{method: "Prepare", args: []any{query}, result: stmt}}},
		},
		{
			name: "Prepare", serves: 'C', kind: always,
			call:      func(_ context.Context, w driver.Conn) (any, error) { return w.Prepare(query) },
			served:    expect{method: "PrepareContext", ctx: bg, args: []any{query}, result: stmt},
			fallbacks: []fallback{{0, expect{method: "Prepare", args: []any{query}, result: stmt}}},
		},
		{
			name: "ExecContext", serves: 'E', kind: always,
			call: func(ctx context.Context, w driver.Conn) (any, error) {
				return w.(driver.ExecerContext).ExecContext(ctx, query, named)
			},
			served:    expect{method: "ExecContext", ctx: ctx, args: []any{query, named}, result: res},
			fallbacks: []fallback{{'e', expect{method: "Exec", args: []any{query, values}, result: res}}},
			otherwise: expect{err: driver.ErrSkip},
		},
		{
			name: "QueryContext", serves: 'Q', kind: always,
			call: func(ctx context.Context, w driver.Conn) (any, error) {
				return w.(driver.QueryerContext).QueryContext(ctx, query, named)
			},
			served:    expect{method: "QueryContext", ctx: ctx, args: []any{query, named}, result: rows},
			fallbacks: []fallback{{'q', expect{method: "Query", args: []any{query, values}, result: rows}}},
			otherwise: expect{err: driver.ErrSkip},
		},
		{
			name: "CheckNamedValue", serves: 'N', kind: always,
			call: func(_ context.Context, w driver.Conn) (any, error) {
				return nil, w.(driver.NamedValueChecker).CheckNamedValue(nv)
			},
			served:    expect{method: "CheckNamedValue", args: []any{nv}},
			otherwise: expect{err: driver.ErrSkip},
		},
		{
			name: "Close", serves: 0, kind: always,
			call:   func(_ context.Context, w driver.Conn) (any, error) { return nil, w.Close() },
			served: expect{method: "Close"},
		},
	}
}

// sentinels are errors a parent returns that must come back by identity:
// database/sql compares ErrSkip and ErrRemoveArgument with ==.
var sentinels = []error{driver.ErrSkip, driver.ErrBadConn, driver.ErrRemoveArgument, io.EOF, errors.New("parent failed")}

// TestForwardCalls calls every method of the wrapper over every shape. When
// the parent has the interface that serves it, the parent gets exactly that
// call, with the caller's context and arguments, and the wrapper returns the
// parent's very Stmt/Rows/Result/Tx and, by identity, its errors
// (driver.ErrSkip and driver.ErrBadConn included). The deprecated Begin and
// Prepare of the wrapper go to the parent's BeginTx and PrepareContext.
// When the parent lacks it, the wrapper does what database/sql would: the
// parent's Begin or Prepare, the deprecated Exec or Query, or driver.ErrSkip
// unwrapped and no call.
func TestForwardCalls(t *testing.T) {
	ctx := context.WithValue(context.Background(), probeKey{}, "caller")
	for _, s := range shapes() {
		t.Run(s.name, func(t *testing.T) {
			for _, p := range probes(ctx) {
				t.Run(p.name, func(t *testing.T) {
					w, parent, f := wrapped(t, s)
					has := implements(parent, p.serves)
					if p.kind == variant && !has {
						if implements(w, p.serves) {
							t.Fatalf("wrapper has %s without the parent having it", p.name)
						}
						return
					}
					if !implements(w, p.serves) {
						t.Fatalf("wrapper lacks the interface of %s (parent has it: %v)", p.name, has)
					}
					e := p.otherwise
					switch {
					case has:
						e = p.served
					default:
						for _, fb := range p.fallbacks {
							if implements(parent, fb.has) {
								e = fb.expect
								break
							}
						}
					}
					checkCall(t, f, p, e, ctx, w)
				})
			}
		})
	}
}

// checkCall makes the call p on w and checks it against e; then, when e has
// the parent answer, checks that each answer of the parent comes back as is.
func checkCall(t *testing.T, f *fakeConn, p probe, e expect, ctx context.Context, w driver.Conn) {
	t.Helper()
	got, err := p.call(ctx, w)
	calls := f.rec.all()
	if e.method == "" {
		if len(calls) != 0 {
			t.Errorf("parent got %v, want no call", f.rec.transcript())
		}
		switch {
		case e.err != nil && err != e.err:
			t.Errorf("error = %#v, want %#v by identity", err, e.err)
		case e.errMsg != "" && errText(err) != e.errMsg:
			t.Errorf("error = %v, want %q", err, e.errMsg)
		case e.err == nil && e.errMsg == "" && err != nil:
			t.Errorf("error = %v, want none", err)
		}
		return
	}
	if len(calls) != 1 || calls[0].method != e.method {
		t.Fatalf("parent got %v, want exactly one %s", f.rec.transcript(), e.method)
	}
	if calls[0].ctx != e.ctx {
		t.Errorf("%s got context %v, want %v", e.method, calls[0].ctx, e.ctx)
	}
	if !sameArgs(calls[0].args, e.args) {
		t.Errorf("%s got arguments %v, want %v", e.method, calls[0].args, e.args)
	}
	if err != nil {
		t.Errorf("error = %v, want none", err)
	}
	if e.result != nil && got != e.result(f) {
		t.Errorf("wrapper returned %#v, want the parent's own %#v", got, e.result(f))
	}
	if p.alt != nil {
		f.rec.reset()
		want := p.alt(f)
		if got, _ := p.call(ctx, w); got != want {
			t.Errorf("with the parent answering %v the wrapper returned %v", want, got)
		}
		return
	}
	for _, sentinel := range sentinels {
		f.failWith(e.method, sentinel)
		f.rec.reset()
		got, err := p.call(ctx, w)
		if err != sentinel {
			t.Errorf("parent's %s returned %#v; wrapper returned %#v, want it by identity", e.method, sentinel, err)
		}
		if !isNil(got) {
			t.Errorf("parent's %s failed; wrapper returned %#v besides the error", e.method, got)
		}
		if n := len(f.rec.all()); n != 1 {
			t.Errorf("parent got %v, want exactly one %s", f.rec.transcript(), e.method)
		}
	}
	f.failWith(e.method, nil)
}

// TestForwardLegacyExecQuery: over a parent with only the deprecated Execer
// and Queryer, the wrapper's ExecContext and QueryContext do what database/sql
// does with such a parent: refuse named arguments with its message, and not
// call the parent once the context has ended.
func TestForwardLegacyExecQuery(t *testing.T) {
	legacy := shapeWith(t, "eq")
	named := []driver.NamedValue{{Name: "a", Ordinal: 1, Value: int64(1)}}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	calls := []struct {
		name string
		call func(ctx context.Context, w driver.Conn, args []driver.NamedValue) error
	}{
		{"ExecContext", func(ctx context.Context, w driver.Conn, args []driver.NamedValue) error {
			x, ok := w.(driver.ExecerContext)
			if !ok {
				return fmt.Errorf("wrapper %T lacks ExecerContext", w)
			}
			_, err := x.ExecContext(ctx, "UPDATE t SET a = :a", args)
			return err
		}},
		{"QueryContext", func(ctx context.Context, w driver.Conn, args []driver.NamedValue) error {
			x, ok := w.(driver.QueryerContext)
			if !ok {
				return fmt.Errorf("wrapper %T lacks QueryerContext", w)
			}
			_, err := x.QueryContext(ctx, "SELECT :a", args)
			return err
		}},
	}
	for _, c := range calls {
		t.Run(c.name+"/named arguments", func(t *testing.T) {
			w, _, f := wrapped(t, legacy)
			err := c.call(context.Background(), w, named)
			if errText(err) != "sql: driver does not support the use of Named Parameters" {
				t.Errorf("error = %v, want database/sql's refusal of named parameters", err)
			}
			if n := len(f.rec.all()); n != 0 {
				t.Errorf("parent got %v, want no call", f.rec.transcript())
			}
		})
		t.Run(c.name+"/cancelled context", func(t *testing.T) {
			w, _, f := wrapped(t, legacy)
			if err := c.call(cancelled, w, nil); err != context.Canceled {
				t.Errorf("error = %v, want context.Canceled", err)
			}
			if n := len(f.rec.all()); n != 0 {
				t.Errorf("parent got %v, want no call", f.rec.transcript())
			}
		})
	}
}

// TestForwardNeverDeprecated: over parents with BeginTx and PrepareContext,
// the parent's deprecated Begin and Prepare are never called, whether the
// wrapper is called directly or through *sql.DB (Begin, BeginTx, Prepare, a
// transaction's Prepare, a Conn's Prepare, and the prepare+exec fallback
// after the parent's ExecContext and QueryContext answer driver.ErrSkip).
func TestForwardNeverDeprecated(t *testing.T) {
	for _, s := range []shape{pqShape, mysqlShape, pgxShape} {
		t.Run(s.name, func(t *testing.T) {
			t.Run("driver", func(t *testing.T) {
				w, _, f := wrapped(t, s)
				if _, err := w.Begin(); err != nil { //nolint:staticcheck // must not reach the parent's
					t.Fatal(err)
				}
				if _, err := w.Prepare("SELECT 1"); err != nil {
					t.Fatal(err)
				}
				if got := f.rec.transcript(); !slices.Equal(got, []string{
					"c1.BeginTx({0 false})", "c1.PrepareContext(SELECT 1)",
				}) {
					t.Errorf("parent got %v, want BeginTx and PrepareContext only", got)
				}
			})
			t.Run("sql.DB", func(t *testing.T) {
				_, db, _, fdb := openPair(t, s, func(db *fakeDB) {
					db.errs["ExecContext"] = driver.ErrSkip
					db.errs["QueryContext"] = driver.ErrSkip
				})
				ctx := context.Background()
				must := func(err error) {
					t.Helper()
					if err != nil {
						t.Fatal(err)
					}
				}
				tx, err := db.Begin()
				must(err)
				st, err := tx.Prepare("UPDATE t SET a = 1")
				must(err)
				_, err = st.Exec()
				must(err)
				must(tx.Commit())
				tx, err = db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
				must(err)
				_, err = tx.Exec("UPDATE t SET a = $1", 2)
				must(err)
				must(tx.Rollback())
				st, err = db.Prepare("SELECT 3")
				must(err)
				must(st.Close())
				_, err = db.Exec("UPDATE t SET a = $1", 4)
				must(err)
				rows, err := db.Query("SELECT $1", 5)
				must(err)
				must(rows.Close())
				c, err := db.Conn(ctx)
				must(err)
				st, err = c.PrepareContext(ctx, "SELECT 6")
				must(err)
				must(st.Close())
				must(c.Close())

				if n := fdb.rec.count("Begin") + fdb.rec.count("Prepare"); n != 0 {
					t.Errorf("parent's deprecated Begin/Prepare called %d times: %v", n, fdb.rec.transcript())
				}
				if b, p := fdb.rec.count("BeginTx"), fdb.rec.count("PrepareContext"); b != 2 || p != 6 {
					t.Errorf("parent got %d BeginTx and %d PrepareContext, want 2 and 6: %v", b, p, fdb.rec.transcript())
				}
			})
		})
	}
}

// TestForwardUnnamedBeginTx: a transaction begun without a global name is
// the parent's: one BeginTx with the caller's context and options, the
// parent's own Tx back, and no statement of dtx's (BEGIN, XA START, ...) —
// directly and through *sql.DB.
func TestForwardUnnamedBeginTx(t *testing.T) {
	statements := []string{"Prepare", "PrepareContext", "Exec", "ExecContext", "Query", "QueryContext", "Begin"}
	for _, s := range []shape{pqShape, mysqlShape, pgxShape} {
		t.Run(s.name, func(t *testing.T) {
			t.Run("driver", func(t *testing.T) {
				w, _, f := wrapped(t, s)
				ctx := context.WithValue(context.Background(), probeKey{}, "tx")
				opts := driver.TxOptions{Isolation: driver.IsolationLevel(sql.LevelSerializable), ReadOnly: true}
				b, ok := w.(driver.ConnBeginTx)
				if !ok {
					t.Fatalf("wrapper %T lacks BeginTx", w)
				}
				tx, err := b.BeginTx(ctx, opts)
				if err != nil {
					t.Fatal(err)
				}
				if tx != driver.Tx(f.tx) {
					t.Errorf("BeginTx returned %#v, want the parent's own Tx", tx)
				}
				calls := f.rec.all()
				if len(calls) != 1 || calls[0].method != "BeginTx" || calls[0].ctx != ctx || calls[0].args[0] != opts {
					t.Errorf("parent got %v, want exactly BeginTx(%v) with the caller's context", f.rec.transcript(), opts)
				}
			})
			t.Run("sql.DB", func(t *testing.T) {
				_, db, _, fdb := openPair(t, s, nil)
				tx, err := db.BeginTx(context.Background(), &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				if n := fdb.rec.count("BeginTx"); n != 1 {
					t.Errorf("parent got %d BeginTx, want 1: %v", n, fdb.rec.transcript())
				}
				if n := fdb.rec.count("Tx.Commit"); n != 1 {
					t.Errorf("parent got %d Tx.Commit, want 1: %v", n, fdb.rec.transcript())
				}
				for _, m := range statements {
					if n := fdb.rec.count(m); n != 0 {
						t.Errorf("parent got %d %s, want none: %v", n, m, fdb.rec.transcript())
					}
				}
			})
		})
	}
}

// TestForwardRaw: sql.Conn.Raw hands over the wrapper, whose Unwrap gives the
// very parent connection, for every shape.
func TestForwardRaw(t *testing.T) {
	for _, s := range shapes() {
		t.Run(s.name, func(t *testing.T) {
			pc, fdb := newFakeConnector(s, false)
			db := sql.OpenDB(dtxConnector(t, pc))
			defer db.Close()
			c, err := db.Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			err = c.Raw(func(dc any) error {
				u, ok := dc.(interface{ Unwrap() driver.Conn })
				if !ok {
					return fmt.Errorf("Raw gave %T, without Unwrap() driver.Conn", dc)
				}
				if got := u.Unwrap(); got != fdb.parent(0) {
					return fmt.Errorf("Unwrap() = %#v, want the parent %#v", got, fdb.parent(0))
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
}

// scenario runs the same uses of db over the fake parent fdb, and leaves a
// transcript in fdb's record: each step's outcome after the parent calls it
// made.
func scenario(t *testing.T, db *sql.DB, fdb *fakeDB) {
	ctx := context.Background()
	step := func(name string, err error) { fdb.rec.add(call{method: "== " + name + ": " + errText(err)}) }

	step("Ping", db.PingContext(ctx))

	_, err := db.ExecContext(ctx, "UPDATE t SET a = $1", 1)
	step("Exec", err)

	rows, err := db.QueryContext(ctx, "SELECT a FROM t WHERE b = $1", uint64(2))
	if err == nil {
		err = rows.Close()
	}
	step("Query", err)

	st, err := db.PrepareContext(ctx, "DELETE FROM t WHERE a = $1")
	if err == nil {
		_, err = st.ExecContext(ctx, 3)
		err = errors.Join(err, st.Close())
	}
	step("Prepare, Exec", err)

	tx, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable, ReadOnly: true})
	if err == nil {
		_, err = tx.ExecContext(ctx, "UPDATE t SET a = 4")
		err = errors.Join(err, tx.Commit())
	}
	step("BeginTx serializable, Exec, Commit", err)

	tx, err = db.Begin()
	if err == nil {
		if rows, err = tx.Query("SELECT 5"); err == nil {
			err = rows.Close()
		}
		err = errors.Join(err, tx.Rollback())
	}
	step("Begin, Query, Rollback", err)

	// database/sql rolls back a transaction whose context ends, and keeps its
	// connection only when the driver has SessionResetter and Validator.
	cctx, cancel := context.WithCancel(ctx)
	_, err = db.BeginTx(cctx, nil)
	cancel()
	if err == nil {
		waitReleased(t, db)
	}
	step("BeginTx, cancel", err)

	_, err = db.ExecContext(ctx, "UPDATE t SET a = $1", 6)
	step("Exec after cancel", err)

	c, err := db.Conn(ctx)
	if err == nil {
		err = c.Raw(func(dc any) error {
			f, ok := unwrapped(dc).(interface{ fake() *fakeConn })
			if !ok {
				return fmt.Errorf("Raw gave %T", dc)
			}
			step(fmt.Sprintf("Raw is c%d", f.fake().id), nil)
			return nil
		})
		err = errors.Join(err, c.Close())
	}
	step("Conn, Raw", err)

	step("Close", db.Close())
}

// argsCheckedTwice reports whether database/sql asks the parent's
// CheckNamedValue once more through dtx than over the bare parent: when the
// parent has a NamedValueChecker but neither ExecerContext nor Execer (or
// neither QueryerContext nor Queryer). The wrapper always has ExecerContext
// and QueryerContext (see conn.go), so database/sql checks the arguments for
// them before they answer driver.ErrSkip, and again for the prepared
// statement that follows. A known cost of that design; lib/pq, mysql and pgx
// are not affected.
func argsCheckedTwice(s shape) bool {
	has := func(l byte) bool { return strings.IndexByte(s.has, l) >= 0 }
	return has('N') && (!has('E') && !has('e') || !has('Q') && !has('q'))
}

// withoutExtraChecks drops from a transcript the CheckNamedValue calls made
// right before a prepare: those of argsCheckedTwice.
func withoutExtraChecks(tr []string) []string {
	var out []string
	for i, line := range tr {
		if strings.Contains(line, ".CheckNamedValue(") {
			j := i + 1
			for j < len(tr) && strings.Contains(tr[j], ".CheckNamedValue(") {
				j++
			}
			if j < len(tr) && (strings.Contains(tr[j], ".PrepareContext(") || strings.Contains(tr[j], ".Prepare(")) {
				continue
			}
		}
		out = append(out, line)
	}
	return out
}

// TestParitySQLDB runs the same scenario through *sql.DB over a fake parent
// and over dtx wrapping the same fake, for every shape and for parents that
// fail in the ways database/sql reacts to (driver.ErrSkip, driver.ErrBadConn,
// a failing ResetSession, an invalid connection): the parent must see the
// same calls, with the same arguments, on the same connections, and the
// caller the same outcomes. The one known difference is argsCheckedTwice.
func TestParitySQLDB(t *testing.T) {
	setups := []struct {
		name  string
		setup func(*fakeDB)
	}{
		{"ok", nil},
		{"ErrSkip", func(db *fakeDB) {
			for _, m := range []string{"ExecContext", "QueryContext", "Exec", "Query", "CheckNamedValue"} {
				db.errs[m] = driver.ErrSkip
			}
		}},
		{"ErrBadConn", func(db *fakeDB) {
			for _, m := range []string{"Ping", "BeginTx", "Begin", "ExecContext", "Exec"} {
				db.errs[m] = driver.ErrBadConn
			}
		}},
		{"bad sessions", func(db *fakeDB) {
			db.errs["ResetSession"] = driver.ErrBadConn
			db.invalid = true
		}},
		{"closing fails", func(db *fakeDB) {
			db.errs["Connector.Close"] = errors.New("closing failed")
		}},
	}
	for _, s := range shapes() {
		t.Run(s.name, func(t *testing.T) {
			for _, su := range setups {
				t.Run(su.name, func(t *testing.T) {
					bare, wrap, bareDB, wrapDB := openPair(t, s, su.setup)
					scenario(t, bare, bareDB)
					scenario(t, wrap, wrapDB)
					want, got := bareDB.rec.transcript(), wrapDB.rec.transcript()
					if argsCheckedTwice(s) {
						n := len(got)
						if got = withoutExtraChecks(got); len(got) == n {
							t.Error("no extra CheckNamedValue through dtx: update argsCheckedTwice")
						}
					}
					if !slices.Equal(got, want) {
						t.Errorf("through dtx the parent saw\n\t%s\nbare it saw\n\t%s",
							strings.Join(got, "\n\t"), strings.Join(want, "\n\t"))
					}
				})
			}
		})
	}
}

// TestParityCancelledTx: database/sql keeps the connection of a transaction
// whose context was cancelled only when the driver has both SessionResetter
// and Validator; otherwise it closes it and connects anew. Through dtx it
// must do the same, for each combination of the three and the real shapes.
func TestParityCancelledTx(t *testing.T) {
	var cases []shape
	for _, s := range shapes() {
		if strings.HasPrefix(s.name, "M+") || s.name == "M" {
			cases = append(cases, s)
		}
	}
	cases = append(cases, pqShape, mysqlShape, pgxShape)
	for _, s := range cases {
		t.Run(s.name, func(t *testing.T) {
			keep := strings.Contains(s.has, "R") && strings.Contains(s.has, "V")
			wantConnects := 2
			if keep {
				wantConnects = 1
			}
			bare, wrap, bareDB, wrapDB := openPair(t, s, nil)
			for _, side := range []struct {
				name string
				db   *sql.DB
				fdb  *fakeDB
			}{{"bare", bare, bareDB}, {"dtx", wrap, wrapDB}} {
				ctx, cancel := context.WithCancel(context.Background())
				if _, err := side.db.BeginTx(ctx, nil); err != nil {
					t.Fatal(err)
				}
				cancel()
				waitReleased(t, side.db)
				if _, err := side.db.Exec("UPDATE t SET a = 1"); err != nil {
					t.Fatal(err)
				}
				if n := side.fdb.rec.count("Connect"); n != wantConnects {
					t.Errorf("%s: %d connections opened, want %d (keep after cancel: %v): %v",
						side.name, n, wantConnects, keep, side.fdb.rec.transcript())
				}
				if n := side.fdb.rec.count("Tx.Rollback"); n != 1 {
					t.Errorf("%s: %d rollbacks, want 1", side.name, n)
				}
			}
		})
	}
}

// Drivers that stay registered with database/sql for the whole process; each
// test gives them a fakeDB of its own.
var (
	plainParent   = &fakeDriver{}    // Open only, like lib/pq
	ctxParent     = &fakeDriverCtx{} // DriverContext, like mysql and pgx
	otherParent   = &fakeDriver{}
	registerFakes sync.Once
)

const (
	regPlain     = "dtx-parity-plain"
	regCtx       = "dtx-parity-ctx"
	regBarePlain = "dtx-parity-bare-plain"
	regBareCtx   = "dtx-parity-bare-ctx"
)

func registerParents() {
	registerFakes.Do(func() {
		Register(regPlain, plainParent, Postgres)
		Register(regCtx, ctxParent, MySQL)
		sql.Register(regBarePlain, plainParent)
		sql.Register(regBareCtx, ctxParent)
	})
}

// panicText runs f and returns what it panicked with, "" if it did not.
func panicText(f func()) (msg string) {
	defer func() {
		if r := recover(); r != nil {
			msg = fmt.Sprint(r)
		}
	}()
	f()
	return ""
}

// TestRegister: Register is idempotent for the same name, parent and
// dialect, panics with a "dtx:" message for a conflicting parent or dialect
// or a nil one, and the registered driver opens connections as the parent
// would under database/sql (Open(dsn) for a driver without DriverContext,
// one OpenConnector(dsn) for one with it).
func TestRegister(t *testing.T) {
	registerParents()

	t.Run("same arguments again", func(t *testing.T) {
		for _, f := range []func(){
			func() { Register(regPlain, plainParent, Postgres) },
			func() { Register(regCtx, ctxParent, MySQL) },
		} {
			if msg := panicText(f); msg != "" {
				t.Errorf("Register with the same arguments panicked: %s", msg)
			}
		}
		registered.Lock()
		d := registered.m[regPlain]
		registered.Unlock()
		if d.parent != plainParent || d.dialect != Postgres {
			t.Errorf("registration of %s changed to %v/%v", regPlain, d.parent, d.dialect)
		}
		if n := strings.Count(strings.Join(sql.Drivers(), ","), regPlain+","); n != 1 {
			t.Errorf("%s listed %d times in sql.Drivers()", regPlain, n)
		}
	})

	for _, c := range []struct {
		name string
		f    func()
	}{
		{"another parent", func() { Register(regPlain, otherParent, Postgres) }},
		{"another parent type", func() { Register(regPlain, ctxParent, Postgres) }},
		{"another dialect", func() { Register(regPlain, plainParent, MySQL) }},
		{"nil parent", func() { Register("dtx-parity-nil", nil, Postgres) }},
		{"nil dialect", func() { Register("dtx-parity-nil", plainParent, nil) }},
	} {
		t.Run(c.name+" panics", func(t *testing.T) {
			msg := panicText(c.f)
			if !strings.HasPrefix(msg, "dtx: ") {
				t.Errorf("panic %q, want one starting with \"dtx: \"", msg)
			}
		})
	}
	if slices.Contains(sql.Drivers(), "dtx-parity-nil") {
		t.Error("a refused Register still registered its name")
	}

	t.Run("open", func(t *testing.T) {
		for _, c := range []struct {
			name      string
			drv       *fakeDriver
			bare, dtx string
			want      []string
		}{
			{"without DriverContext", plainParent, regBarePlain, regPlain,
				[]string{"Driver.Open(dsn-1)", "Driver.Open(dsn-1)", "c1.Ping", "c2.Ping"}},
			{"with DriverContext", &ctxParent.fakeDriver, regBareCtx, regCtx,
				[]string{"Driver.OpenConnector(dsn-1)", "Connect", "Connect", "c1.Ping", "c2.Ping"}},
		} {
			t.Run(c.name, func(t *testing.T) {
				var got [2][]string
				for i, name := range []string{c.bare, c.dtx} {
					fdb := newFakeDB(pqShape)
					c.drv.db.Store(fdb)
					db, err := sql.Open(name, "dsn-1")
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { db.Close() })
					// Two connections at once: two opens.
					ctx := context.Background()
					c1, err1 := db.Conn(ctx)
					c2, err2 := db.Conn(ctx)
					if err := errors.Join(err1, err2); err != nil {
						t.Fatal(err)
					}
					c1.PingContext(ctx)
					c2.PingContext(ctx)
					c1.Close()
					c2.Close()
					got[i] = slices.DeleteFunc(fdb.rec.transcript(), func(s string) bool {
						return strings.HasSuffix(s, ".ResetSession") || strings.HasSuffix(s, ".IsValid")
					})
					if name == c.dtx {
						if _, ok := db.Driver().(*Driver); !ok {
							t.Errorf("db.Driver() is %T, want *dtx.Driver", db.Driver())
						}
					}
					db.Close()
				}
				if !slices.Equal(got[0], c.want) || !slices.Equal(got[1], c.want) {
					t.Errorf("parent saw\n\tbare: %v\n\tdtx:  %v\nwant %v", got[0], got[1], c.want)
				}
			})
		}
	})

	t.Run("OpenConnector error", func(t *testing.T) {
		fdb := newFakeDB(pqShape)
		fail := errors.New("bad dsn")
		fdb.errs["OpenConnector"] = fail
		ctxParent.db.Store(fdb)
		if _, err := sql.Open(regCtx, "dsn-2"); err != fail {
			t.Errorf("sql.Open error = %v, want the parent's by identity", err)
		}
	})

	t.Run("Driver.Open", func(t *testing.T) {
		fdb := newFakeDB(pgxShape)
		plainParent.db.Store(fdb)
		d := &Driver{parent: plainParent, dialect: Postgres}
		w, err := d.Open("dsn-3")
		if err != nil {
			t.Fatal(err)
		}
		u, ok := w.(interface{ Unwrap() driver.Conn })
		if !ok {
			t.Fatalf("Open gave %T, without Unwrap", w)
		}
		if got := u.Unwrap(); got != fdb.parent(0) {
			t.Errorf("Open gave a wrapper of %v, want of the parent's connection", got)
		}
		if got := fdb.rec.transcript(); !slices.Equal(got, []string{"Driver.Open(dsn-3)"}) {
			t.Errorf("parent saw %v, want one Open(dsn-3)", got)
		}
	})
}

// TestConnector: NewConnector's Driver is the dtx wrapper over the parent
// connector's driver, and db.Close closes the parent connector when, and
// only as, it is an io.Closer; its Connect errors come back as they are.
func TestConnector(t *testing.T) {
	t.Run("Driver is the wrapper", func(t *testing.T) {
		pc, _ := newFakeConnector(pgxShape, false)
		c := dtxConnector(t, pc)
		d, ok := c.Driver().(*Driver)
		if !ok {
			t.Fatalf("Driver() is %T, want *dtx.Driver", c.Driver())
		}
		if d.parent != pc.Driver() || d.dialect != Postgres {
			t.Errorf("Driver() wraps %v/%v, want %v/%v", d.parent, d.dialect, pc.Driver(), Postgres)
		}
		db := sql.OpenDB(c)
		defer db.Close()
		if db.Driver() != c.Driver() {
			t.Errorf("db.Driver() = %v, want the connector's %v", db.Driver(), c.Driver())
		}
		if got, err := driverOf(db); got != d || err != nil {
			t.Errorf("driverOf(db) = %v, %v", got, err)
		}
	})

	t.Run("Close closes an io.Closer parent", func(t *testing.T) {
		for _, fail := range []error{nil, errors.New("closing failed")} {
			pc, fdb := newFakeConnector(pgxShape, true)
			fdb.errs["Connector.Close"] = fail
			db := sql.OpenDB(dtxConnector(t, pc))
			if err := db.Ping(); err != nil {
				t.Fatal(err)
			}
			err := db.Close()
			if fail == nil && err != nil || fail != nil && (!errors.Is(err, fail) || err.Error() != fail.Error()) {
				t.Errorf("db.Close() = %v, want the parent's %v", err, fail)
			}
			if got, want := fdb.rec.transcript(), []string{"Connect", "c1.Ping", "c1.Close", "Connector.Close"}; !slices.Equal(got, want) {
				t.Errorf("parent saw %v, want %v", got, want)
			}
		}
	})

	t.Run("Close without io.Closer", func(t *testing.T) {
		pc, fdb := newFakeConnector(pgxShape, false)
		db := sql.OpenDB(dtxConnector(t, pc))
		if err := db.Ping(); err != nil {
			t.Fatal(err)
		}
		if err := db.Close(); err != nil {
			t.Errorf("db.Close() = %v", err)
		}
		if got, want := fdb.rec.transcript(), []string{"Connect", "c1.Ping", "c1.Close"}; !slices.Equal(got, want) {
			t.Errorf("parent saw %v, want %v", got, want)
		}
	})

	t.Run("Connect error", func(t *testing.T) {
		for _, sentinel := range sentinels {
			pc, fdb := newFakeConnector(pgxShape, false)
			fdb.errs["Connect"] = sentinel
			_, err := dtxConnector(t, pc).Connect(context.Background())
			if err != sentinel {
				t.Errorf("Connect error = %#v, want the parent's %#v by identity", err, sentinel)
			}
		}
	})
}
