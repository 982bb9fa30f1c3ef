package dtx_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
)

// TestNamedPrepareDeadline: phase one gets a bound of its own only when the
// caller's context can end. The server goes silent (a black hole in a
// proxy) between the transaction's statements and tx.Commit, for longer
// than that bound, then answers again. Under context.Background() the
// prepare waits and succeeds, as the caller's own statements on that
// context would; under a context with a distant deadline it gives up at
// the bound (go-sql-driver/mysql and pgx drop the connection), reports that
// nothing is known to be prepared, and leaves nothing committed or prepared
// behind. lib/pq can only cancel through the server, so a silent network
// holds it whatever the context; it must still leave nothing behind.
func TestNamedPrepareDeadline(t *testing.T) {
	const bound, silence = 300 * time.Millisecond, 1500 * time.Millisecond
	t.Cleanup(dtx.SetPrepareTimeout(bound))
	eachServer(t, func(t *testing.T, s server) {
		raw := open(t, s, s.raw)
		tbl := table(t, s, raw, "id INT PRIMARY KEY")
		prefix := names(t, s)
		p := newProxy(t, coServerAddr(t, s))
		db := coViaProxy(t, s, p)
		direct := open(t, s, s.wrapped)

		// silent runs one named transaction of one INSERT under ctx, with
		// the server silent from the end of the INSERT for the silence.
		silent := func(ctx context.Context, name string, id int) (time.Duration, error) {
			var wg sync.WaitGroup
			defer wg.Wait()
			var start time.Time
			err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
				if err := ntInsertFn(ctx, tbl, id)(tx); err != nil {
					return err
				}
				p.BlackHole()
				start = time.Now()
				wg.Go(func() {
					time.Sleep(silence)
					p.Heal(false)
				})
				return nil
			})
			return time.Since(start), err
		}

		t.Run("Background", func(t *testing.T) {
			took, err := silent(context.Background(), prefix+"bg", 1)
			ntOK(t, "BeginDistributed across the silence", err)
			if took < silence-50*time.Millisecond {
				t.Fatalf("the prepare returned after %v, before the server answered again", took)
			}
			ntMustRow(t, raw, tbl, 1, false)
			ntOK(t, "CommitDistributed", dtx.CommitDistributed(context.Background(), prefix+"bg"))
			ntMustRow(t, raw, tbl, 1, true)
		})

		t.Run("Deadline", func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			took, err := silent(ctx, prefix+"dl", 2)
			libpq := s.label == "postgres"
			switch {
			case err == nil && libpq:
				// lib/pq cannot abandon a statement: at the bound it sends
				// a cancel request, over the same silent network, which
				// reached the server after the PREPARE it was to cancel.
				t.Logf("lib/pq: prepared after %v; its cancel request came too late", took)
				ntOK(t, "RollbackDistributed", dtx.RollbackDistributed(ntCtx(t), prefix+"dl"))
			case !errors.Is(err, dtx.ErrNotPrepared) && !errors.Is(err, dtx.ErrOutcomeUnknown):
				t.Fatalf("BeginDistributed across the silence: %v, want ErrNotPrepared or ErrOutcomeUnknown", err)
			case !libpq && (took < bound || took > silence-100*time.Millisecond):
				t.Fatalf("the prepare gave up after %v, want the bound %v", took, bound)
			case errors.Is(err, dtx.ErrOutcomeUnknown):
				// The server may have prepared it: finishing by name settles it.
				if rerr := dtx.RollbackDistributed(ntCtx(t), prefix+"dl"); rerr != nil && !errors.Is(rerr, dtx.ErrUnknownName) {
					t.Fatalf("RollbackDistributed after the unknown outcome: %v", rerr)
				}
			}
			ntEventually(t, 10*time.Second, "the cut-off branch is still prepared", func() bool {
				return len(ntWithPrefix(t, direct, prefix+"dl")) == 0
			})
			ntMustRow(t, raw, tbl, 2, false)
		})
	})
}
