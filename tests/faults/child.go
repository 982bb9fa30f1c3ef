package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/dtx-go/dtx"
	"github.com/dtx-go/dtx/internal/bank"
)

// The coordinators' settings: short, so that within a run's minutes
// globals time out, nodes take over each other's globals and recovery runs
// often. A pause of PauseLong outlives the abandon age.
const (
	ChildTimeout  = 2 * time.Second
	ChildGrace    = 4 * time.Second
	ChildAbandon  = 5 * time.Second
	ChildInterval = 500 * time.Millisecond
)

// ChildConfig is what the harness tells a coordinator process, as JSON in
// FAULTS_CHILD.
type ChildConfig struct {
	Node    string
	Store   string // bank.Store's kind: inpg, inmy, sqlpg, sqlmy
	Table   string // the store's table
	PgDSN   string // through the node's proxy
	MyDSN   string
	Tables  bank.Tables
	Workers int
}

// ChildEnv is the environment variable that carries a ChildConfig.
const ChildEnv = "FAULTS_CHILD"

// RunChild is a coordinator process: it runs transfers with its workers
// until SIGTERM, and prints "READY" once its coordinator is open, each
// global's outcome as "<class> <global>" (bank.Class), and "DRAINED" when,
// after SIGTERM, every global it began has returned. It returns only on
// failure; after DRAINED it exits.
func RunChild(raw string) error {
	var cfg ChildConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		return err
	}
	res, err := bank.Open(cfg.PgDSN, cfg.MyDSN)
	if err != nil {
		return err
	}
	opts := dtx.CoordinatorOptions{
		Resources:       res,
		Node:            cfg.Node,
		Timeout:         ChildTimeout,
		RecoverGrace:    ChildGrace,
		AbandonAge:      ChildAbandon,
		RecoverInterval: ChildInterval,
	}
	// The store may be unreachable at start (a partition, a server
	// restarting): retry as a supervisor restarting the process would.
	var c *dtx.Coordinator
	for try := 0; ; try++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var closeStore func()
		closeStore, err = bank.Store(ctx, &opts, cfg.Store, cfg.Table, cfg.PgDSN, cfg.MyDSN)
		if err == nil {
			if c, err = dtx.NewCoordinator(opts); err != nil {
				closeStore()
			}
		}
		cancel()
		if err == nil {
			break
		}
		if try == 30 {
			return fmt.Errorf("opening the coordinator: %w", err)
		}
		opts.Log = nil
		time.Sleep(time.Second)
	}
	ctx, stop := context.WithCancel(context.Background())
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() { <-term; stop() }()
	fmt.Println("READY")
	// Globals run under a context SIGTERM does not cancel: a drain lets
	// every global begun finish.
	bank.Work(ctx, context.WithoutCancel(ctx), c, cfg.Tables, cfg.Workers)
	c.Close()
	fmt.Println("DRAINED")
	os.Exit(0)
	return nil
}
