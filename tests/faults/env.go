package faults

import (
	"context"
	"database/sql"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os/exec"
	"strings"
	"sync"

	"github.com/dtx-go/dtx/internal/netproxy"
)

// Env is what every segment of a run shares: the servers, the slots
// (namespaces and proxies), the harness's own pools.
type Env struct {
	Srv          *Servers
	Slots        []*Slot
	Binary       string // the test binary, re-executed as a coordinator
	Kinds        []Kind
	Workers      int
	PgRaw, MyRaw *sql.DB // plain drivers, as the harness users
	PgDTX, MyDTX *sql.DB // dtx drivers, for recovery
	Logf         func(string, ...any)
}

// NewEnv starts the servers and builds the slots: with namespaces when
// useNetns, each slot's proxies on its pairs' host addresses; otherwise on
// loopback, and the kinds lose Partition. It returns a cleanup function
// that is safe to call twice (the test's and the signal handler's).
func NewEnv(ctx context.Context, binary, tmp string, nodes, workers int, useNetns bool, logf func(string, ...any)) (*Env, func(), error) {
	e := &Env{Binary: binary, Workers: workers, Logf: logf, Kinds: AllKinds}
	var nets []*NodeNet
	var once sync.Once
	cleanup := func() {
		once.Do(func() {
			for _, s := range e.Slots {
				for _, p := range s.Proxy {
					p.Close()
				}
			}
			for _, n := range nets {
				n.Close()
			}
			for _, db := range []*sql.DB{e.PgRaw, e.MyRaw, e.PgDTX, e.MyDTX} {
				if db != nil {
					db.Close()
				}
			}
			if e.Srv != nil {
				e.Srv.Close()
			}
		})
	}
	fail := func(err error) (*Env, func(), error) { cleanup(); return nil, nil, err }
	srv, err := StartServers(ctx, tmp)
	if err != nil {
		return fail(err)
	}
	e.Srv = srv
	logf("servers: PostgreSQL on 127.0.0.1:%d, MariaDB on 127.0.0.1:%d, in %s; created and started in %v",
		srv.PGPort, srv.MyPort, srv.Dir, srv.Startup.Round(1e6))
	run, subnet := Token()[:4], 0
	if useNetns {
		subnet = freeSubnet()
	}
	for k := 0; k < nodes; k++ {
		s := &Slot{K: k, Proxy: map[string]*netproxy.Proxy{}}
		e.Slots = append(e.Slots, s)
		listen := map[string]string{"pg": "127.0.0.1:0", "my": "127.0.0.1:0"}
		if useNetns {
			if s.Net, err = NewNodeNet(run, subnet, k); err != nil {
				return fail(err)
			}
			nets = append(nets, s.Net)
			for db, a := range s.Net.Host {
				listen[db] = net.JoinHostPort(a, "0")
			}
		}
		target := map[string]string{"pg": fmt.Sprintf("127.0.0.1:%d", srv.PGPort), "my": fmt.Sprintf("127.0.0.1:%d", srv.MyPort)}
		for _, db := range []string{"pg", "my"} {
			if s.Proxy[db], err = netproxy.NewProxy(listen[db], target[db]); err != nil {
				return fail(err)
			}
		}
	}
	if !useNetns {
		e.Kinds = nil
		for _, k := range AllKinds {
			if k != Partition {
				e.Kinds = append(e.Kinds, k)
			}
		}
	}
	for _, o := range []struct {
		db     **sql.DB
		driver string
		dsn    string
	}{
		{&e.PgRaw, "postgres", srv.PGDSN()}, {&e.MyRaw, "mysql", srv.MyDSN("root")},
		{&e.PgDTX, "dtx+postgres", srv.PGDSN()}, {&e.MyDTX, "dtx+mysql", srv.MyDSN("root")},
	} {
		if *o.db, err = sql.Open(o.driver, o.dsn); err != nil {
			return fail(err)
		}
	}
	return e, cleanup, nil
}

// freeSubnet picks the second byte of a 10.x.0.0/16 no interface uses.
func freeSubnet() int {
	out, _ := exec.Command("ip", "-o", "addr").Output()
	for {
		x := 100 + mrand.IntN(150)
		if !strings.Contains(string(out), fmt.Sprintf(" 10.%d.", x)) {
			return x
		}
	}
}
