package dtx_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/internal/bank"
	"github.com/go-sql-driver/mysql"
)

// The multi-node trial. Three coordinator processes (children of this test
// binary, like TestCrash's) share one store and move money between
// PostgreSQL and MariaDB, each with background recovery and a short abandon
// age, so that each takes over the others' globals. A nemesis SIGSTOPs a
// node for longer than the abandon age and resumes it, SIGKILLs a node and
// restarts it under its own node id or under a new one (a recreated pod).
// At the end every node is killed and a fresh node recovers what they left.
// The checks: the balances' sum is unchanged, every global's marker is in
// both databases or in neither, every global a node reported committed
// (or pending) is in both, every one it reported rolled back in neither,
// nothing of any node is left prepared and no decision is pending.
//
// DTX_CRASH_MULTI_TRIALS (default 2) trials of DTX_CRASH_MULTI_SECONDS
// (default 8) each, alternating the store between a decision table in
// PostgreSQL's branch (inpg) and an SQLLog table (sqlpg).

const (
	cmTimeout  = time.Second
	cmAbandon  = 3 * time.Second
	cmInterval = 300 * time.Millisecond
)

// crMultiChild is a node of a multi-node trial: it runs transfers until it
// is killed and prints each global's outcome as "<class> <global>".
func crMultiChild(ctx context.Context, cfg crConfig, opts dtx.CoordinatorOptions) error {
	opts.Timeout = cmTimeout
	opts.RecoverGrace = 2 * cmTimeout
	opts.AbandonAge = cmAbandon
	opts.RecoverInterval = cmInterval
	c, err := dtx.NewCoordinator(opts)
	if err != nil {
		return err
	}
	go bank.Work(ctx, ctx, c, cfg.tables(), cfg.Workers)
	fmt.Println("READY")
	select {}
}

// cmNode is one running child.
type cmNode struct {
	node string
	cmd  *exec.Cmd
	done chan struct{}
}

// cmTrial is one multi-node trial's state.
type cmTrial struct {
	t        *testing.T
	env      *crEnv
	kind     string
	trial    string // the application_name of every child
	cfg      crConfig
	mu       sync.Mutex
	outcomes map[string]string // global -> class
	nodes    []string          // every node id used
	stderr   bank.Capped
	actions  map[string]int
}

func TestCrashMulti(t *testing.T) {
	env := crNewEnv(t)
	trials, _ := strconv.Atoi(os.Getenv("DTX_CRASH_MULTI_TRIALS"))
	if trials <= 0 {
		trials = 2
	}
	secs, _ := strconv.Atoi(os.Getenv("DTX_CRASH_MULTI_SECONDS"))
	if secs <= 0 {
		secs = 8
	}
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 11))
	var globals, violations, left, heur int
	actions := map[string]int{}
	start := time.Now()
	for i := 0; i < trials; i++ {
		kind := []string{"inpg", "sqlpg"}[i%2]
		tr := &cmTrial{t: t, env: env, kind: kind, outcomes: map[string]string{}, actions: map[string]int{}}
		vs, n, err := tr.run(time.Duration(secs)*time.Second, rng)
		if err != nil {
			t.Errorf("trial %d (%s): harness: %v", i+1, kind, err)
			continue
		}
		counts := map[string]int{}
		for _, c := range tr.outcomes {
			counts[c]++
		}
		globals += len(tr.outcomes)
		violations += len(vs)
		left += n
		heur += counts[bank.Heuristic]
		for a, k := range tr.actions {
			actions[a] += k
		}
		t.Logf("trial %d/%d %s: %d globals %v, faults %v, %d violation(s), %d left prepared", i+1, trials, kind, len(tr.outcomes), counts, tr.actions, len(vs), n)
		for _, v := range vs {
			t.Errorf("trial %d (%s): %s", i+1, kind, v)
		}
	}
	summary := fmt.Sprintf("crash-multi: trials=%d globals=%d violations=%d prepared_left=%d heuristic=%d faults=%v duration=%s",
		trials, globals, violations, left, heur, actions, time.Since(start).Round(time.Second))
	t.Log(summary)
	fmt.Println(summary)
}

// run runs the trial for d and returns the violations and the count of
// branches left prepared.
func (tr *cmTrial) run(d time.Duration, rng *mrand.Rand) ([]string, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	id := "m" + token()
	tr.trial = id
	pgAcct, pgMark, pgLog := "cra_"+id, "crm_"+id, "crl_"+id
	myDB := "dtxc_" + id
	if err := crSetup(ctx, tr.env, pgAcct, pgMark, myDB); err != nil {
		return nil, 0, err
	}
	defer func() {
		for _, n := range tr.nodes {
			crTeardown(tr.t, tr.env, "g."+n+".", nil, "")
		}
		crTeardown(tr.t, tr.env, "g.none.", []string{pgAcct, pgMark, pgLog}, myDB)
	}()
	pgDSN, err := crWithAppName(tr.env.pgDSN, id)
	if err != nil {
		return nil, 0, err
	}
	mycfg, err := mysql.ParseDSN(tr.env.myDSN)
	if err != nil {
		return nil, 0, err
	}
	mycfg.DBName = myDB
	tr.cfg = crConfig{Log: tr.kind, LogPath: pgLog, PgDSN: pgDSN, MyDSN: mycfg.FormatDSN(), PgAcct: pgAcct, PgMark: pgMark, Workers: 4, Multi: true}

	nodes := make([]*cmNode, 3)
	for i := range nodes {
		if nodes[i], err = tr.start("m" + token()); err != nil {
			return nil, 0, err
		}
	}
	tr.nemesis(nodes, d, rng)
	for _, n := range nodes {
		n.cmd.Process.Signal(syscall.SIGCONT)
		n.cmd.Process.Kill()
		<-n.done
	}
	if err := crWaitGone(ctx, tr.env, id, myDB, false); err != nil {
		return nil, 0, err
	}
	if err := tr.recoverAll(ctx, myDB); err != nil {
		return nil, 0, err
	}
	if err := crWaitGone(ctx, tr.env, id, myDB, true); err != nil {
		return nil, 0, err
	}
	return tr.check(ctx, myDB)
}

// start runs a child as node.
func (tr *cmTrial) start(node string) (*cmNode, error) {
	cfg := tr.cfg
	cfg.Node = node
	js, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=30m")
	cmd.Env = append(os.Environ(), "DTX_CRASH_CHILD="+string(js))
	cmd.Stderr = &tr.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	tr.mu.Lock()
	tr.nodes = append(tr.nodes, node)
	tr.mu.Unlock()
	n := &cmNode{node: node, cmd: cmd, done: make(chan struct{})}
	ready := make(chan struct{})
	go func() {
		defer close(n.done)
		bank.Scan(stdout, func(line string) {
			if line == "READY" {
				close(ready)
			}
		}, func(gid, class string) {
			tr.mu.Lock()
			tr.outcomes[gid] = class
			tr.mu.Unlock()
		})
		cmd.Wait()
	}()
	select {
	case <-ready:
		return n, nil
	case <-n.done:
		return nil, fmt.Errorf("node %s exited before it was ready: %s", node, tr.stderr.String())
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("node %s not ready after 30s", node)
	}
}

// nemesis applies faults for d: SIGSTOP past the abandon age and SIGCONT,
// SIGKILL and restart under the same node, SIGKILL and restart under a new
// node. One fault at a time, with random pauses between.
func (tr *cmTrial) nemesis(nodes []*cmNode, d time.Duration, rng *mrand.Rand) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		time.Sleep(time.Duration(200+rng.IntN(800)) * time.Millisecond)
		i := rng.IntN(len(nodes))
		n := nodes[i]
		switch rng.IntN(3) {
		case 0:
			n.cmd.Process.Signal(syscall.SIGSTOP)
			time.Sleep(cmAbandon + time.Duration(500+rng.IntN(1500))*time.Millisecond)
			n.cmd.Process.Signal(syscall.SIGCONT)
			tr.actions["sigstop"]++
		case 1, 2:
			n.cmd.Process.Kill()
			<-n.done
			node := n.node
			fault := "kill+restart"
			if rng.IntN(2) == 0 {
				node, fault = "m"+token(), "kill+new-node"
			}
			tr.actions[fault]++
			next, err := tr.start(node)
			if err != nil {
				tr.t.Logf("restart: %v", err)
				continue
			}
			nodes[i] = next
		}
	}
}

// recoverAll finishes what every node left, as a fresh node of the same
// store would after the abandon age.
func (tr *cmTrial) recoverAll(ctx context.Context, myDB string) error {
	myDTX, err := sql.Open("dtx+mysql", tr.cfg.MyDSN)
	if err != nil {
		return err
	}
	defer myDTX.Close()
	opts := dtx.CoordinatorOptions{
		Resources:       map[string]*sql.DB{"pg": tr.env.pg, "my": myDTX},
		Node:            "r" + token(),
		RecoverGrace:    time.Nanosecond,
		AbandonAge:      time.Nanosecond,
		RecoverInterval: -1,
	}
	closeStore, err := bank.Store(ctx, &opts, tr.kind, tr.cfg.LogPath, tr.env.pgDSN, tr.cfg.MyDSN)
	if err != nil {
		return err
	}
	defer closeStore() // after c.Close, deferred below: the log outlives the Coordinator
	c, err := dtx.NewCoordinator(opts)
	if err != nil {
		return err
	}
	defer c.Close()
	for pass := 0; pass < 30; pass++ {
		_, err := c.Recover(ctx)
		n, lerr := tr.left(ctx)
		if err == nil && lerr == nil && n == 0 {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return nil // what is left is counted by check
}

// left counts the branches of the trial's nodes still prepared.
func (tr *cmTrial) left(ctx context.Context) (int, error) {
	n := 0
	for _, node := range tr.nodes {
		k, err := bank.Prepared(ctx, "g."+node+".", tr.env.pg, tr.env.my)
		if err != nil {
			return 0, err
		}
		n += k
	}
	return n, nil
}

func (tr *cmTrial) check(ctx context.Context, myDB string) ([]string, int, error) {
	var vs []string
	myRaw, err := sql.Open("mysql", tr.cfg.MyDSN)
	if err != nil {
		return nil, 0, err
	}
	defer myRaw.Close()
	tr.mu.Lock()
	res, err := bank.Check(ctx, tr.env.pgRaw, myRaw, tr.cfg.tables(), tr.outcomes)
	tr.mu.Unlock()
	if err != nil {
		return nil, 0, err
	}
	vs = append(vs, res.Violations...)
	n, err := tr.left(ctx)
	if err != nil {
		return nil, 0, err
	}
	if n > 0 {
		vs = append(vs, fmt.Sprintf("%d branches left prepared", n))
	}
	log, closeLog, err := bank.OpenLog(ctx, tr.kind, tr.cfg.LogPath, tr.env.pgDSN, tr.cfg.MyDSN)
	if err != nil {
		return nil, 0, err
	}
	defer closeLog()
	ds, err := log.Pending(ctx, "")
	if err != nil {
		return nil, 0, err
	}
	for _, d := range ds {
		vs = append(vs, "decision still pending: "+d.Global)
	}
	if len(vs) > 0 {
		vs = append(vs, "children's stderr: "+tr.stderr.String())
	}
	return vs, n, nil
}
