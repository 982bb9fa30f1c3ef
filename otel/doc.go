// Package dtxotel records what dtx does as OpenTelemetry traces and metrics.
// It implements dtx.Hooks; dtx itself does not depend on OpenTelemetry.
//
//	inst, err := dtxotel.New() // the global TracerProvider and MeterProvider
//	if err != nil {
//		return err
//	}
//	defer inst.Close()
//	dtx.SetHooks(inst.Hooks()) // every dtx database and Coordinator of the process
//
// or per database or Coordinator: dtx.WithHooks(inst.Hooks()) for
// dtx.Register or dtx.NewConnector, CoordinatorOptions.Hooks.
//
// # Traces
//
// Spans follow the OpenTelemetry semantic conventions for database clients
// (semconv v1.43.0, go.opentelemetry.io/otel/semconv/v1.43.0). A named
// transaction's operations and a global's branch begins are CLIENT spans
// named after db.operation.name, the statement dtx sends: BEGIN, PREPARE
// TRANSACTION, COMMIT PREPARED and ROLLBACK (PostgreSQL; ROLLBACK stands for
// ROLLBACK PREPARED too) or XA START, XA PREPARE, XA COMMIT and XA ROLLBACK
// (MariaDB/MySQL), with db.system.name ("postgresql", or "mysql" for MariaDB
// too: one dialect serves both), dtx.name and dtx.operation. A Coordinator
// global is an INTERNAL span dtx.global, parent of its branches' begins, of
// the spans fn makes with the context it gets, and of the INTERNAL spans
// of its phases: dtx.prepare, dtx.decide, dtx.commit, dtx.rollback. Global
// spans carry dtx.global.id, dtx.mode and dtx.branches. A failed operation's
// span has status Error, error.type and dtx.retryable (dtx.Retryable).
//
// # Metrics
//
//	dtx.commit.duration          histogram, s: a named transaction's phase-two
//	                             commit; a global's commit from fn's return to
//	                             Do's return. dtx.mode (named, one-phase,
//	                             two-phase), dtx.branches (globals), error.type
//	                             and dtx.retryable when it failed.
//	db.client.operation.duration histogram, s: every CLIENT span's operation;
//	                             db.system.name, db.operation.name, error.type.
//	dtx.in_doubt                 gauge: names this process prepared and has not
//	                             finished; dtx.state "prepared" or "unknown"
//	                             (prepare's outcome unknown).
//	dtx.sessions.held            gauge: MariaDB/MySQL sessions held for
//	                             prepared branches.
//	dtx.sessions.released        counter: held sessions closed with their
//	                             branch still prepared; dtx.reason.
//	dtx.recovery.actions         counter: dtx.recovery.action (commit,
//	                             rollback, abort), dtx.result (done, failed).
//	dtx.recovery.waiting         gauge (WithCoordinators): branches the last
//	                             recovery pass left prepared; dtx.node.
//	dtx.pending                  counter: globals decided with branches left to
//	                             recovery; dtx.retryable.
//	dtx.heuristic                counter: heuristic outcomes; dtx.retryable
//	                             (always false).
//	dtx.outcome.unknown          counter: prepares, phase twos or decisions
//	                             whose outcome is unknown; dtx.retryable.
//
// The gauges read dtx.ProcessStats and Coordinator.Stats when the meter
// collects; the rest comes from the hooks.
package dtxotel
