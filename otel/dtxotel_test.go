package dtxotel_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	dtxotel "github.com/dtx-go/dtx/otel"
	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// Against the real servers (DTX_PG_DSN, DTX_MYSQL_DSN, as dtx's tests): a
// named transaction on MariaDB, and a committed, a rolled-back and a
// recovered Coordinator global, recorded through the SDK's in-memory span
// recorder and manual metric reader.

func env(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// openDB opens drv on dsn and checks it answers: skips t when it does not,
// fails it when DTX_REQUIRE_DB=1.
func openDB(t *testing.T, drv, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open(drv, dsn)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = db.PingContext(ctx)
		cancel()
	}
	if err != nil {
		if os.Getenv("DTX_REQUIRE_DB") == "1" {
			t.Fatalf("%s not reachable: %v", drv, err)
		}
		t.Skipf("%s not reachable (set DTX_PG_DSN / DTX_MYSQL_DSN): %v", drv, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func token() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// table creates a table of one int column, dropped when t ends.
func table(t *testing.T, db *sql.DB) string {
	t.Helper()
	name := "t_" + token()
	if _, err := db.Exec("CREATE TABLE " + name + " (id INT)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Exec("DROP TABLE " + name) })
	return name
}

// cleanupPrepared rolls back what is still prepared under prefix when t ends.
func cleanupPrepared(t *testing.T, prefix string, dbs ...*sql.DB) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		for _, db := range dbs {
			ps, _ := dtx.ListPrepared(ctx, db)
			for _, p := range ps {
				if strings.HasPrefix(p.Name, prefix) {
					t.Logf("cleanup: %s: %v", p.Name, dtx.RollbackPrepared(ctx, db, p.Name))
				}
			}
		}
	})
}

type recorders struct {
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
}

func (r recorders) metrics(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// gauge is the value of metric name's point with attribute key=val ("" for
// a point without attributes).
func gauge(t *testing.T, ms map[string]metricdata.Metrics, name string, kv ...attribute.KeyValue) int64 {
	t.Helper()
	g, ok := ms[name].Data.(metricdata.Gauge[int64])
	if !ok {
		t.Fatalf("%s: no int64 gauge in %+v", name, ms[name])
	}
	for _, p := range g.DataPoints {
		if p.Attributes.Equals(ptr(attribute.NewSet(kv...))) {
			return p.Value
		}
	}
	t.Fatalf("%s: no point with %v in %+v", name, kv, g.DataPoints)
	return 0
}

func ptr[T any](v T) *T { return &v }

// sum is the value of counter name's point with exactly the attributes kv.
func sum(t *testing.T, ms map[string]metricdata.Metrics, name string, kv ...attribute.KeyValue) int64 {
	t.Helper()
	s, ok := ms[name].Data.(metricdata.Sum[int64])
	if !ok {
		return 0
	}
	for _, p := range s.DataPoints {
		if p.Attributes.Equals(ptr(attribute.NewSet(kv...))) {
			return p.Value
		}
	}
	return 0
}

// histCount is how many values histogram name recorded with exactly kv.
func histCount(t *testing.T, ms map[string]metricdata.Metrics, name string, kv ...attribute.KeyValue) uint64 {
	t.Helper()
	h, ok := ms[name].Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s: no histogram in %+v", name, ms[name])
	}
	for _, p := range h.DataPoints {
		if p.Attributes.Equals(ptr(attribute.NewSet(kv...))) {
			if p.Count > 0 && p.Sum <= 0 {
				t.Errorf("%s %v: sum %v", name, kv, p.Sum)
			}
			return p.Count
		}
	}
	return 0
}

func attr(s sdktrace.ReadOnlySpan, key string) string {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value.Emit()
		}
	}
	return ""
}

// spansOf are the ended spans whose attribute key is val.
func spansOf(r recorders, key, val string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range r.spans.Ended() {
		if attr(s, key) == val {
			out = append(out, s)
		}
	}
	return out
}

func names(ss []sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name())
	}
	return out
}

func setup(t *testing.T, opts ...dtxotel.Option) recorders {
	r := recorders{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(r.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r.reader))
	inst, err := dtxotel.New(append([]dtxotel.Option{dtxotel.WithTracerProvider(tp), dtxotel.WithMeterProvider(mp)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	dtx.SetHooks(inst.Hooks())
	t.Cleanup(func() {
		dtx.SetHooks(nil)
		inst.Close()
	})
	return r
}

// TestNamed: a named transaction on MariaDB: its three CLIENT spans, the
// in-doubt and held-session gauges while it is prepared and after, and
// the named commit's duration.
func TestNamed(t *testing.T) {
	my := openDB(t, "dtx+mysql", env("DTX_MYSQL_DSN", "root@tcp(127.0.0.1:3306)/test"))
	r := setup(t)
	tbl := table(t, my)
	name := "o" + token()
	cleanupPrepared(t, name, my)
	ctx := context.Background()
	if err := dtx.BeginDistributed(ctx, my, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, "INSERT INTO "+tbl+" VALUES (1)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ms := r.metrics(t)
	if v := gauge(t, ms, "dtx.in_doubt", attribute.String("dtx.state", "prepared")); v != 1 {
		t.Errorf("in doubt while prepared: %d", v)
	}
	if v := gauge(t, ms, "dtx.sessions.held"); v != 1 {
		t.Errorf("held sessions while prepared: %d", v)
	}
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatal(err)
	}
	ms = r.metrics(t)
	if v := gauge(t, ms, "dtx.in_doubt", attribute.String("dtx.state", "prepared")); v != 0 {
		t.Errorf("in doubt after commit: %d", v)
	}
	if v := gauge(t, ms, "dtx.sessions.held"); v != 0 {
		t.Errorf("held sessions after commit: %d", v)
	}
	if n := histCount(t, ms, "dtx.commit.duration", attribute.String("dtx.mode", "named")); n != 1 {
		t.Errorf("named commits recorded: %d", n)
	}
	for _, op := range []string{"XA START", "XA PREPARE", "XA COMMIT"} {
		if n := histCount(t, ms, "db.client.operation.duration",
			attribute.String("db.system.name", "mysql"), attribute.String("db.operation.name", op)); n != 1 {
			t.Errorf("db.client.operation.duration of %s: %d", op, n)
		}
	}
	ss := spansOf(r, "dtx.name", name)
	if got := names(ss); !slices.Equal(got, []string{"XA START", "XA PREPARE", "XA COMMIT"}) {
		t.Fatalf("spans %v", got)
	}
	for _, s := range ss {
		if s.SpanKind() != trace.SpanKindClient || attr(s, "db.system.name") != "mysql" ||
			attr(s, "db.operation.name") != s.Name() || attr(s, "dtx.mode") != "named" || s.Status().Code == codes.Error || s.Parent().IsValid() {
			t.Errorf("span %s: kind %v, attributes %v, status %v", s.Name(), s.SpanKind(), s.Attributes(), s.Status())
		}
	}
}

// TestGlobals: a committed, a rolled-back and a recovered global over
// PostgreSQL and MariaDB.
func TestGlobals(t *testing.T) {
	pg := openDB(t, "dtx+postgres", env("DTX_PG_DSN", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"))
	my := openDB(t, "dtx+mysql", env("DTX_MYSQL_DSN", "root@tcp(127.0.0.1:3306)/test"))
	log, err := dtx.OpenFileLog(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	node := "o" + token()
	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
		Resources: map[string]*sql.DB{"pg": pg, "my": my}, Log: log, Node: node, RecoverInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	cleanupPrepared(t, "g."+node+".", pg, my)
	r := setup(t, dtxotel.WithCoordinators(c))
	pgT, myT := table(t, pg), table(t, my)
	ctx := context.Background()
	write := func(ctx context.Context, g *dtx.Global) error {
		ptx, err := g.Begin(ctx, "pg", nil)
		if err != nil {
			return err
		}
		mtx, err := g.Begin(ctx, "my", nil)
		if err != nil {
			return err
		}
		if _, err := ptx.ExecContext(ctx, "INSERT INTO "+pgT+" VALUES (1)"); err != nil {
			return err
		}
		_, err = mtx.ExecContext(ctx, "INSERT INTO "+myT+" VALUES (1)")
		return err
	}

	// Committed.
	var committed string
	if err := c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
		committed = g.ID()
		return write(ctx, g)
	}); err != nil {
		t.Fatal(err)
	}
	ss := spansOf(r, "dtx.global.id", committed)
	if got, want := names(ss), []string{"BEGIN", "XA START", "dtx.prepare", "dtx.decide", "dtx.commit", "dtx.global"}; !slices.Equal(got, want) {
		t.Fatalf("committed global: spans %v, want %v", got, want)
	}
	root := ss[len(ss)-1]
	if root.SpanKind() != trace.SpanKindInternal || root.Parent().IsValid() || attr(root, "dtx.mode") != "two-phase" || attr(root, "dtx.branches") != "2" || root.Status().Code == codes.Error {
		t.Errorf("dtx.global: %v %v %v", root.SpanKind(), root.Attributes(), root.Status())
	}
	for _, s := range ss[:len(ss)-1] {
		if s.Parent().SpanID() != root.SpanContext().SpanID() {
			t.Errorf("%s is not a child of dtx.global", s.Name())
		}
	}
	if s := ss[0]; s.SpanKind() != trace.SpanKindClient || attr(s, "db.system.name") != "postgresql" || attr(s, "dtx.resource") != "pg" {
		t.Errorf("BEGIN: %v %v", s.SpanKind(), s.Attributes())
	}
	if s := ss[1]; attr(s, "db.system.name") != "mysql" || attr(s, "db.operation.name") != "XA START" || attr(s, "dtx.resource") != "my" {
		t.Errorf("XA START: %v", s.Attributes())
	}

	// Rolled back.
	var rolled string
	boom := errors.New("boom")
	if err := c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
		rolled = g.ID()
		if err := write(ctx, g); err != nil {
			return err
		}
		return boom
	}); !errors.Is(err, dtx.ErrRolledBack) {
		t.Fatalf("rolled back: %v", err)
	}
	ss = spansOf(r, "dtx.global.id", rolled)
	if got, want := names(ss), []string{"BEGIN", "XA START", "dtx.rollback", "dtx.global"}; !slices.Equal(got, want) {
		t.Fatalf("rolled-back global: spans %v, want %v", got, want)
	}
	if root := ss[3]; root.Status().Code != codes.Error || attr(root, "error.type") != "rolled_back" || attr(root, "dtx.retryable") != "false" {
		t.Errorf("rolled-back dtx.global: %v %v", root.Status(), root.Attributes())
	}

	// Recovered: both branches prepared by hand, decided, then Recover.
	u := uuid.Must(uuid.NewV7())
	recovered := hex.EncodeToString(u[:])
	var refs []dtx.BranchRef
	for i, b := range []struct {
		res string
		db  *sql.DB
		tbl string
	}{{"pg", pg, pgT}, {"my", my, myT}} {
		name := fmt.Sprintf("g.%s.%s.%d", node, recovered, i)
		if err := dtx.BeginDistributed(ctx, b.db, name, func(tx *sql.Tx) error {
			_, err := tx.ExecContext(ctx, "INSERT INTO "+b.tbl+" VALUES (2)")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		refs = append(refs, dtx.BranchRef{Resource: b.res, Name: name})
	}
	if err := log.Decide(ctx, dtx.Decision{Global: recovered, Node: node, Branches: refs, At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	ms := r.metrics(t)
	if v := gauge(t, ms, "dtx.in_doubt", attribute.String("dtx.state", "prepared")); v != 2 {
		t.Errorf("in doubt before recovery: %d", v)
	}
	if v := gauge(t, ms, "dtx.sessions.held"); v != 1 {
		t.Errorf("held sessions before recovery: %d", v)
	}
	rep, err := c.Recover(ctx)
	if err != nil || len(rep.Committed) != 2 {
		t.Fatalf("recovery: %+v, %v", rep, err)
	}
	ms = r.metrics(t)
	if v := sum(t, ms, "dtx.recovery.actions", attribute.String("dtx.recovery.action", "commit"), attribute.String("dtx.result", "done")); v != 2 {
		t.Errorf("recovery commits counted: %d", v)
	}
	if v := gauge(t, ms, "dtx.in_doubt", attribute.String("dtx.state", "prepared")); v != 0 {
		t.Errorf("in doubt after recovery: %d", v)
	}
	if v := gauge(t, ms, "dtx.recovery.waiting", attribute.String("dtx.node", node)); v != 0 {
		t.Errorf("waiting after recovery: %d", v)
	}
	// The branches prepared by hand are branches: no named spans or
	// named commits for them.
	if ss := spansOf(r, "dtx.name", refs[0].Name); len(ss) != 0 {
		t.Errorf("a branch recorded as a named transaction: %v", names(ss))
	}
	if n := histCount(t, ms, "dtx.commit.duration", attribute.String("dtx.mode", "named")); n != 0 {
		t.Errorf("named commits recorded: %d", n)
	}
	if n := histCount(t, ms, "dtx.commit.duration", attribute.String("dtx.mode", "two-phase"), attribute.Int("dtx.branches", 2)); n != 1 {
		t.Errorf("two-phase commits recorded: %d", n)
	}
	if v := sum(t, ms, "dtx.pending", attribute.Bool("dtx.retryable", true)) + sum(t, ms, "dtx.heuristic", attribute.Bool("dtx.retryable", false)); v != 0 {
		t.Errorf("pending or heuristic counted: %d", v)
	}
	var rows int
	if err := pg.QueryRow("SELECT COUNT(*) FROM " + pgT).Scan(&rows); err != nil || rows != 2 {
		t.Errorf("PostgreSQL rows: %d, %v", rows, err)
	}
}
