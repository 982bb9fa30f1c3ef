package dtx_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/go-sql-driver/mysql"
	"go.uber.org/goleak"
)

// 64 goroutines at once, under -race, on both servers: named transactions
// through BeginDistributed (committed or rolled back by name) and through
// WithName + Commit on PostgreSQL and MariaDB, and Coordinator globals
// across both (decisions in a PostgreSQL resource table). When the pools,
// the Coordinator and its store are closed, nothing may be left: no
// goroutine (goleak), no open connection in db.Stats, no session of the
// test's own login on either server (pg_stat_activity by application_name,
// the processlist by user), no held MariaDB session, no connector, nothing
// prepared under the test's names, no pending decision, and every
// committed row is there and no rolled-back one.
func TestStressNoLeftovers(t *testing.T) {
	if testing.Short() {
		t.Skip("stress")
	}
	pgs, mys := coPG(), coMy()
	pgAdmin, myAdmin := open(t, pgs, pgs.raw), open(t, mys, mys.raw)
	pgTbl := table(t, pgs, pgAdmin, "k VARCHAR(64) PRIMARY KEY")
	myTbl := table(t, mys, myAdmin, "k VARCHAR(64) PRIMARY KEY")
	app := "dtx_stress_" + token()
	u, err := url.Parse(pgs.dsn)
	if err != nil {
		t.Fatal(err)
	}
	qv := u.Query()
	qv.Set("application_name", app)
	u.RawQuery = qv.Encode()
	cfg, err := mysql.ParseDSN(mys.dsn)
	if err != nil {
		t.Fatal(err)
	}
	myUser, myDSN := restrictedUser(t, mys, myAdmin, "GRANT ALL ON `"+cfg.DBName+"`.* TO USER_")
	myUser = strings.Split(strings.Trim(myUser, "'"), "'@'")[0]
	decisions := "dtx_dec_" + token()
	t.Cleanup(func() { drop(t, pgs, decisions) })
	prefix := names(t, pgs)
	coCleanupPrefix(t, prefix)
	node := "s" + token()
	coCleanupPrefix(t, "g."+node+".")

	leaks := goleak.IgnoreCurrent()
	connectors := dtx.Connectors()
	pg, err := sql.Open("dtx+postgres", u.String())
	if err != nil {
		t.Fatal(err)
	}
	my, err := sql.Open("dtx+mysql", myDSN)
	if err != nil {
		t.Fatal(err)
	}
	pg.SetMaxOpenConns(16)
	my.SetMaxOpenConns(16)
	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
		Resources: map[string]*sql.DB{"pg": pg, "my": my}, DecisionTable: decisions,
		Node: node, RecoverInterval: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	pgInsert, myInsert := "INSERT INTO "+pgTbl+" VALUES ($1)", "INSERT INTO "+myTbl+" VALUES (?)"
	var committed sync.Map // key → "pg", "my" or "both"
	var n atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	for w := range 64 {
		wg.Go(func() {
			for i := range 16 {
				key := fmt.Sprintf("%sw%di%d", prefix, w, i)
				var err error
				switch w % 5 {
				case 0, 1: // BeginDistributed, then by name
					db, q, where := pg, pgInsert, "pg"
					if w%5 == 1 {
						db, q, where = my, myInsert, "my"
					}
					err = stressNamed(ctx, db, q, key, i%2 == 0)
					if err == nil && i%2 == 0 {
						committed.Store(key, where)
					}
				case 2, 3: // WithName, Commit prepares
					db, q, where := pg, pgInsert, "pg"
					if w%5 == 3 {
						db, q, where = my, myInsert, "my"
					}
					err = stressWithName(ctx, db, q, key)
					if err == nil {
						committed.Store(key, where)
					}
				default: // a global across both
					err = c.Do(ctx, func(ctx context.Context, g *dtx.Global) error {
						for _, r := range []struct{ res, q string }{{"pg", pgInsert}, {"my", myInsert}} {
							tx, err := g.Begin(ctx, r.res, nil)
							if err != nil {
								return err
							}
							if _, err := tx.ExecContext(ctx, r.q, key); err != nil {
								return err
							}
						}
						return nil
					})
					if err == nil {
						committed.Store(key, "both")
					}
				}
				if err != nil {
					t.Errorf("worker %d, %s: %v", w, key, err)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Error(err)
	}
	for _, db := range []*sql.DB{pg, my} {
		if err := db.Close(); err != nil {
			t.Error(err)
		}
		if st := db.Stats(); st.OpenConnections != 0 {
			t.Errorf("%d connections open after Close", st.OpenConnections)
		}
	}
	t.Logf("64 goroutines: %d transactions and globals", n.Load())
	if got := dtx.HeldSessions(prefix) + dtx.HeldSessions("g."+node+"."); got != 0 {
		t.Errorf("%d MariaDB sessions still held", got)
	}
	if got := dtx.Connectors(); got != connectors {
		t.Errorf("%d connectors open, %d before", got, connectors)
	}
	stressNoSessions(t, pgAdmin, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app)
	stressNoSessions(t, myAdmin, "SELECT count(*) FROM information_schema.processlist WHERE user = ?", myUser)
	stressCheckRows(t, pgs, mys, pgAdmin, myAdmin, pgTbl, myTbl, prefix, &committed)
	stressNothingPrepared(t, []string{prefix, "g." + node + "."})
	if l, err := dtx.OpenSQLLog(ctx, pgAdmin, decisions); err != nil {
		t.Error(err)
	} else if ps, err := l.Pending(ctx, node); err != nil || len(ps) != 0 {
		t.Errorf("pending decisions left: %v %v", ps, err)
	}
	// The admin pools' own connections are the test's, not leaks: closed
	// before the check (their cleanup then finds them closed).
	pgAdmin.Close()
	myAdmin.Close()
	goleak.VerifyNone(t, leaks)
}

func stressNamed(ctx context.Context, db *sql.DB, q, key string, commit bool) error {
	err := dtx.BeginDistributed(ctx, db, key, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, q, key)
		return err
	})
	if err != nil {
		return err
	}
	if commit {
		return dtx.CommitDistributed(ctx, key)
	}
	return dtx.RollbackDistributed(ctx, key)
}

func stressWithName(ctx context.Context, db *sql.DB, q, key string) error {
	tx, err := db.BeginTx(dtx.WithName(ctx, key), nil)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, q, key); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	return dtx.CommitDistributed(ctx, key)
}

// stressNoSessions waits up to 10 s for query (a count of sessions) to
// answer 0: a closed connection's session ends on the server a moment later.
func stressNoSessions(t *testing.T, admin *sql.DB, query string, arg any) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		if err := admin.QueryRow(query, arg).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d sessions of the test's login left on the server: %s", n, query)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stressCheckRows compares the rows under prefix with what was committed.
func stressCheckRows(t *testing.T, pgs, mys server, pgAdmin, myAdmin *sql.DB, pgTbl, myTbl, prefix string, committed *sync.Map) {
	t.Helper()
	want := map[string]map[string]bool{"pg": {}, "my": {}}
	committed.Range(func(k, v any) bool {
		switch v {
		case "both":
			want["pg"][k.(string)], want["my"][k.(string)] = true, true
		default:
			want[v.(string)][k.(string)] = true
		}
		return true
	})
	for _, x := range []struct {
		where, q string
		db       *sql.DB
	}{{"pg", "SELECT k FROM " + pgTbl, pgAdmin}, {"my", "SELECT k FROM " + myTbl, myAdmin}} {
		rows, err := x.db.Query(x.q)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				t.Fatal(err)
			}
			got[k] = true
		}
		rows.Close()
		for k := range want[x.where] {
			if !got[k] {
				t.Errorf("%s: committed %s is missing", x.where, k)
			}
		}
		for k := range got {
			if !want[x.where][k] {
				t.Errorf("%s: %s is there but was not committed", x.where, k)
			}
		}
	}
}

// stressNothingPrepared fails t if anything is prepared under the prefixes
// on either server.
func stressNothingPrepared(t *testing.T, prefixes []string) {
	t.Helper()
	for _, s := range servers()[:2] {
		db, err := sql.Open(s.wrapped, s.dsn)
		if err != nil {
			t.Fatal(err)
		}
		ps, err := dtx.ListPrepared(context.Background(), db)
		db.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			for _, pre := range prefixes {
				if strings.HasPrefix(p.Name, pre) {
					t.Errorf("%s: %s left prepared", s.kind, p.Name)
				}
			}
		}
	}
}
