package dtx_test

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/internal/netproxy"
)

// viaProxy sets up a named-transaction test across a proxy to s: the raw
// pool, a table of it, a name prefix, the proxy, the dtx pool through it,
// and a dtx pool straight to s.
func viaProxy(t *testing.T, s server) (raw *sql.DB, tbl, prefix string, p *netproxy.Proxy, db, direct *sql.DB) {
	t.Helper()
	raw = open(t, s, s.raw)
	tbl = table(t, s, raw, "id INT PRIMARY KEY")
	prefix = names(t, s)
	p = newProxy(t, coServerAddr(t, s))
	return raw, tbl, prefix, p, coViaProxy(t, s, p), open(t, s, s.wrapped)
}

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
		raw, tbl, prefix, p, db, direct := viaProxy(t, s)

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

// TestNamedHeldPrepare: a network that holds the prepare (XA PREPARE,
// PREPARE TRANSACTION), neither losing nor delivering it, past the
// prepare's bound. The driver gives up (ErrOutcomeUnknown; go-sql-driver/mysql
// and pgx close their socket), but the server has not seen the close and
// would run the prepare when it arrives. Phase two by name first ends that
// session on the server (Dialect.fence), so its answer that the name is
// unknown stays true: once the network delivers what it held, nothing is
// prepared. Without the fence the held prepare lands after phase two found
// nothing, and the transaction stays prepared. lib/pq never gives up on a
// prepare, so it is left out.
func TestNamedHeldPrepare(t *testing.T) {
	const bound = 300 * time.Millisecond
	t.Cleanup(dtx.SetPrepareTimeout(bound))
	eachServer(t, func(t *testing.T, s server) {
		if s.label == "postgres" {
			t.Skip("lib/pq waits for the prepare's answer whatever the context")
		}
		testHeldPrepare(t, s, false)
		if s.kind == "mysql" {
			// A compressed (or TLS) session cannot be reset by dtx, but
			// its greeting comes before either starts: dtx still knows
			// its thread and fences it.
			t.Run("compress", func(t *testing.T) {
				c := s
				c.dsn = withParams(s.dsn, "compress=true")
				testHeldPrepare(t, c, false)
			})
			// Sessions of a connector given to NewConnector: dtx does not
			// dial them, and asks the server for the thread instead.
			t.Run("NewConnector", func(t *testing.T) { testHeldPrepare(t, s, true) })
		}
	})
}

func testHeldPrepare(t *testing.T, s server, viaConnector bool) {
	raw, tbl, prefix, p, db, direct := viaProxy(t, s)
	if viaConnector {
		db = connectorDB(t, s, p.Addr())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	prepare := "XA PREPARE"
	if s.kind == "postgres" {
		prepare = "PREPARE TRANSACTION"
	}
	for i, commit := range []bool{false, true} {
		name := prefix + strconv.Itoa(i)
		p.HoldFrom(prepare)
		err := dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, i+1))
		ntIs(t, "BeginDistributed with the prepare held", err, dtx.ErrOutcomeUnknown)
		finish := dtx.RollbackDistributed
		if commit {
			finish = dtx.CommitDistributed
		}
		ntIs(t, "phase two while the prepare is held", finish(ntCtx(t), name), dtx.ErrUnknownName)
		p.Heal(false)
		time.Sleep(500 * time.Millisecond) // what was held is delivered, if anything takes it
		if got := ntWithPrefix(t, direct, name); len(got) != 0 {
			t.Fatalf("the held %s prepared %v after phase two found nothing", prepare, got)
		}
		ntMustRow(t, raw, tbl, i+1, false)
	}

	// The network delivers what it held before phase two: the transaction
	// is prepared (on MariaDB detached when the server reads the close),
	// and phase two, fence first, finishes it as asked.
	for i, commit := range []bool{false, true} {
		name := prefix + "d" + strconv.Itoa(i)
		id := 10 + i
		p.HoldFrom(prepare)
		err := dtx.BeginDistributed(ctx, db, name, ntInsertFn(ctx, tbl, id))
		ntIs(t, "BeginDistributed with the prepare held", err, dtx.ErrOutcomeUnknown)
		p.Heal(false)
		ntEventually(t, 10*time.Second, "the delivered prepare is not listed", func() bool {
			return len(ntWithPrefix(t, direct, name)) == 1
		})
		if commit {
			ntOK(t, "CommitDistributed after the delivery", dtx.CommitDistributed(ntCtx(t), name))
		} else {
			ntOK(t, "RollbackDistributed after the delivery", dtx.RollbackDistributed(ntCtx(t), name))
		}
		ntMustRow(t, raw, tbl, id, commit)
		if got := ntWithPrefix(t, direct, name); len(got) != 0 {
			t.Fatalf("still prepared after phase two: %v", got)
		}
	}
}

// The fence ends a session of its own user and waits until it is gone; an
// id that names another user's session (behind a proxy that greets with ids
// of its own) is left alone, and one already gone is a fence done.
func TestFence(t *testing.T) {
	eachServerOnce(t, func(t *testing.T, s server) {
		d, idQuery, grants := dtx.MySQL, "SELECT CONNECTION_ID()", []string{"GRANT SELECT ON test.* TO USER_"}
		activity := "SELECT COUNT(*) FROM information_schema.processlist WHERE id = ?"
		if s.kind == "postgres" {
			d, idQuery, grants = dtx.Postgres, "SELECT pg_backend_pid()", nil
			activity = "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = $1"
		}
		fence := dtx.Fence(d)
		admin := open(t, s, s.raw)
		ctx := ntCtx(t)
		session := func(t *testing.T, dsn string) (*sql.Conn, uint32) {
			db, err := sql.Open(s.raw, dsn)
			ntOK(t, "open", err)
			t.Cleanup(func() { db.Close() })
			cn, err := db.Conn(ctx)
			ntOK(t, "conn", err)
			t.Cleanup(func() { cn.Close() })
			var id uint32
			ntOK(t, "session id", cn.QueryRowContext(ctx, idQuery).Scan(&id))
			return cn, id
		}
		alive := func(id uint32) bool { return count(t, admin, activity, id) == 1 }

		own, id := session(t, s.dsn)
		gone, err := fence(ctx, admin, id)
		ntOK(t, "fence of an own session", err)
		if gone.IsZero() || alive(id) {
			t.Fatalf("fence returned %v with session %d alive: %v", gone, id, alive(id))
		}
		if err := own.PingContext(ctx); err == nil {
			t.Fatal("the fenced session still answers")
		}
		if again, err := fence(ctx, admin, id); err != nil || again.IsZero() {
			t.Fatalf("fence of a session already gone: %v, %v", again, err)
		}

		_, dsn := restrictedUser(t, s, admin, grants...)
		other, oid := session(t, dsn)
		skipped, err := fence(ctx, admin, oid)
		ntOK(t, "fence of another user's session", err)
		if !skipped.IsZero() || !alive(oid) {
			t.Fatalf("another user's session %d: fence returned %v, alive %v; want it left alone", oid, skipped, alive(oid))
		}
		ntOK(t, "the other user's session still answers", other.PingContext(ctx))
	})
}
