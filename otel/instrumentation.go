package dtxotel

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/dtx-go/dtx"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// scope is the instrumentation scope of dtx's tracer and meter.
const scope = "github.com/dtx-go/dtx/otel"

// Option configures New.
type Option func(*config)

type config struct {
	tp     trace.TracerProvider
	mp     metric.MeterProvider
	coords []*dtx.Coordinator
}

// WithTracerProvider sets where spans go (default: otel.GetTracerProvider()).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(c *config) { c.tp = tp } }

// WithMeterProvider sets where metrics go (default: otel.GetMeterProvider()).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(c *config) { c.mp = mp } }

// WithCoordinators adds the dtx.recovery.waiting gauge for cs, read from
// their Stats.
func WithCoordinators(cs ...*dtx.Coordinator) Option {
	return func(c *config) { c.coords = append(c.coords, cs...) }
}

// Instrumentation records dtx's operations with OpenTelemetry; its Hooks
// go to dtx.SetHooks, dtx.WithHooks or CoordinatorOptions.Hooks.
type Instrumentation struct {
	tracer trace.Tracer
	hooks  *dtx.Hooks
	reg    metric.Registration

	commitDur, opDur                   metric.Float64Histogram
	released, recovery                 metric.Int64Counter
	pending, heuristic, unknownOutcome metric.Int64Counter
}

// New makes an Instrumentation and registers its gauges with the meter.
func New(opts ...Option) (*Instrumentation, error) {
	cfg := config{tp: otel.GetTracerProvider(), mp: otel.GetMeterProvider()}
	for _, o := range opts {
		o(&cfg)
	}
	in := &Instrumentation{tracer: cfg.tp.Tracer(scope, trace.WithSchemaURL(semconv.SchemaURL))}
	m := cfg.mp.Meter(scope, metric.WithSchemaURL(semconv.SchemaURL))
	if err := in.instruments(m, cfg.coords); err != nil {
		return nil, err
	}
	in.hooks = &dtx.Hooks{Start: in.start, End: in.end, Recovery: in.recovered, Outcome: in.outcome, Session: in.session}
	return in, nil
}

// durationBuckets suit operations from a millisecond to a minute.
var durationBuckets = []float64{0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60}

func (in *Instrumentation) instruments(m metric.Meter, coords []*dtx.Coordinator) error {
	var errs [11]error
	in.commitDur, errs[0] = m.Float64Histogram("dtx.commit.duration", metric.WithUnit("s"),
		metric.WithDescription("Time dtx took to commit a named transaction's phase two or a global once fn returned."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	in.opDur, errs[1] = m.Float64Histogram("db.client.operation.duration", metric.WithUnit("s"),
		metric.WithDescription("Duration of database client operations."),
		metric.WithExplicitBucketBoundaries(durationBuckets...))
	in.released, errs[2] = m.Int64Counter("dtx.sessions.released",
		metric.WithDescription("Held MariaDB/MySQL sessions closed with their branch still prepared."))
	in.recovery, errs[3] = m.Int64Counter("dtx.recovery.actions",
		metric.WithDescription("Branches committed or rolled back and globals aborted by recovery."))
	in.pending, errs[4] = m.Int64Counter("dtx.pending",
		metric.WithDescription("Globals decided to commit with branches left to recovery."))
	in.heuristic, errs[5] = m.Int64Counter("dtx.heuristic",
		metric.WithDescription("Globals with a branch found finished the other way."))
	in.unknownOutcome, errs[6] = m.Int64Counter("dtx.outcome.unknown",
		metric.WithDescription("Prepares, phase twos and decisions whose outcome is unknown."))
	inDoubt, err := m.Int64ObservableGauge("dtx.in_doubt",
		metric.WithDescription("Names this process prepared and has not finished."))
	errs[7] = err
	held, err := m.Int64ObservableGauge("dtx.sessions.held",
		metric.WithDescription("MariaDB/MySQL sessions held for prepared branches."))
	errs[8] = err
	waiting, err := m.Int64ObservableGauge("dtx.recovery.waiting",
		metric.WithDescription("Branches the last recovery pass left prepared."))
	errs[9] = err
	if err := errors.Join(errs[:]...); err != nil {
		return err
	}
	prepared := metric.WithAttributes(keyState.String("prepared"))
	unknown := metric.WithAttributes(keyState.String("unknown"))
	in.reg, errs[10] = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		st := dtx.ProcessStats()
		o.ObserveInt64(inDoubt, st.Prepared, prepared)
		o.ObserveInt64(inDoubt, st.Unknown, unknown)
		o.ObserveInt64(held, st.HeldSessions)
		for _, c := range coords {
			o.ObserveInt64(waiting, c.Stats().Waiting, metric.WithAttributes(keyNode.String(c.Node())))
		}
		return nil
	}, inDoubt, held, waiting)
	return errs[10]
}

// Hooks are the dtx.Hooks that record into OpenTelemetry.
func (in *Instrumentation) Hooks() *dtx.Hooks { return in.hooks }

// Close unregisters the gauges. Hooks still in use go on recording spans
// and counters.
func (in *Instrumentation) Close() error { return in.reg.Unregister() }

// globalKey is the context key of a global's state, put there by the
// Start of its OpGlobal.
type globalKey struct{}

// globalState is what a global's phases tell its end.
type globalState struct {
	mu          sync.Mutex
	commitStart time.Time // when its commit (vote or one-phase commit) began
}

func (in *Instrumentation) start(ctx context.Context, op dtx.Op) context.Context {
	kind, name := trace.SpanKindInternal, "dtx."+op.Kind.String()
	attrs := []attribute.KeyValue{keyOperation.String(op.Kind.String())}
	if isClient(op) {
		kind, name = trace.SpanKindClient, operationName(op)
		attrs = append(attrs, semconv.DBSystemNameKey.String(op.System), semconv.DBOperationName(name), keyName.String(op.Name))
	}
	if op.Global != "" {
		attrs = append(attrs, keyGlobal.String(op.Global))
	}
	if op.Resource != "" {
		attrs = append(attrs, keyResource.String(op.Resource))
	}
	switch {
	case op.Kind == dtx.OpGlobal:
		ctx = context.WithValue(ctx, globalKey{}, &globalState{})
	case op.Global != "" && (op.Kind == dtx.OpPrepare || op.Kind == dtx.OpCommit):
		if gs, ok := ctx.Value(globalKey{}).(*globalState); ok {
			gs.mu.Lock()
			if gs.commitStart.IsZero() {
				gs.commitStart = time.Now()
			}
			gs.mu.Unlock()
		}
	}
	ctx, _ = in.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(attrs...))
	return ctx
}

func (in *Instrumentation) end(ctx context.Context, op dtx.Op, r dtx.Result) {
	span := trace.SpanFromContext(ctx)
	var attrs []attribute.KeyValue
	if op.Mode != 0 {
		attrs = append(attrs, keyMode.String(op.Mode.String()))
	}
	if op.Global != "" && op.Name == "" {
		attrs = append(attrs, keyBranches.Int(op.Branches))
	}
	var errAttrs []attribute.KeyValue
	if r.Err != nil {
		errAttrs = errorAttrs(r.Err)
		span.RecordError(r.Err)
		span.SetStatus(codes.Error, r.Err.Error())
	}
	span.SetAttributes(append(attrs, errAttrs...)...)
	span.End()
	if isClient(op) {
		in.opDur.Record(ctx, r.Duration.Seconds(), metric.WithAttributes(append([]attribute.KeyValue{
			semconv.DBSystemNameKey.String(op.System), semconv.DBOperationName(operationName(op))}, errAttrs...)...))
	}
	switch {
	case op.Kind == dtx.OpCommit && op.Mode == dtx.ModeNamed:
		in.commitDur.Record(ctx, r.Duration.Seconds(), metric.WithAttributes(append(attrs, errAttrs...)...))
	case op.Kind == dtx.OpGlobal:
		gs, _ := ctx.Value(globalKey{}).(*globalState)
		if gs == nil {
			return
		}
		gs.mu.Lock()
		at := gs.commitStart
		gs.mu.Unlock()
		if !at.IsZero() {
			in.commitDur.Record(ctx, time.Since(at).Seconds(), metric.WithAttributes(append(attrs, errAttrs...)...))
		}
	}
}

func (in *Instrumentation) recovered(ctx context.Context, a dtx.RecoveryAction) {
	result := "done"
	if a.Err != nil {
		result = "failed"
	}
	in.recovery.Add(ctx, 1, metric.WithAttributes(keyAction.String(a.Kind.String()), keyResult.String(result)))
}

func (in *Instrumentation) outcome(ctx context.Context, o dtx.Outcome) {
	c := in.unknownOutcome
	switch o.Kind {
	case dtx.OutcomePending:
		c = in.pending
	case dtx.OutcomeHeuristic:
		c = in.heuristic
	}
	c.Add(ctx, 1, metric.WithAttributes(keyRetryable.Bool(dtx.Retryable(o.Err))))
}

func (in *Instrumentation) session(ctx context.Context, s dtx.SessionEvent) {
	if s.Kind == dtx.SessionReleased {
		in.released.Add(ctx, 1, metric.WithAttributes(keyReason.String(s.Reason)))
	}
}
