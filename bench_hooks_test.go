package dtx_test

import (
	"context"
	"log/slog"
	"os"

	"github.com/dtx-go/dtx"
)

// DTX_BENCH_OBSERVE runs the benchmarks observed, to measure what hooks and
// logs cost when set (docs/performance.md): "hooks" sets Hooks whose
// functions do nothing, "debug" a Debug logger writing to a discarding
// handler that says it is enabled. Unset, nothing is observed.
func init() {
	switch os.Getenv("DTX_BENCH_OBSERVE") {
	case "hooks":
		dtx.SetHooks(&dtx.Hooks{
			Start: func(ctx context.Context, _ dtx.Op) context.Context { return ctx },
			End:   func(context.Context, dtx.Op, dtx.Result) {},
		})
	case "debug":
		dtx.SetLogger(slog.New(enabledDiscard{}))
	}
}

// enabledDiscard is slog.DiscardHandler enabled at every level, so that
// dtx builds each line.
type enabledDiscard struct{ slog.Handler }

func (enabledDiscard) Enabled(context.Context, slog.Level) bool  { return true }
func (enabledDiscard) Handle(context.Context, slog.Record) error { return nil }
func (h enabledDiscard) WithAttrs([]slog.Attr) slog.Handler      { return h }
func (h enabledDiscard) WithGroup(string) slog.Handler           { return h }
