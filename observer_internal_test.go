package dtx

import (
	"context"
	"testing"
)

// TestObserverUnsetAllocs: with no logger and no hooks, observing a named
// transaction's phase and a global's allocates nothing.
func TestObserverUnsetAllocs(t *testing.T) {
	var o observer
	ctx := context.Background()
	n := testing.AllocsPerRun(1000, func() {
		sp := o.startNamed(ctx, OpCommit, "order_42", Postgres)
		o.endNamed(&sp, nil, OpCommit, "order_42", nil)
		g := o.start(ctx, Op{Kind: OpGlobal, Global: "0123"})
		g.end(nil)
	})
	if n != 0 {
		t.Errorf("%v allocs per unobserved operation, want 0", n)
	}
}
