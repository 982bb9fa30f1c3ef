package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"log/slog"
	"strings"

	"github.com/dtx-go/dtx"
)

type recoverResult struct {
	Node       string   `json:"node"`
	Committed  []string `json:"committed"`
	RolledBack []string `json:"rolled_back"`
	Aborted    []string `json:"aborted"`
	Waiting    []string `json:"waiting"`
	Forgotten  []string `json:"forgotten"`
	Unresolved []string `json:"unresolved"`
	Error      string   `json:"error,omitempty"`
}

// cmdRecover runs one recovery pass of a Coordinator made of the --db
// databases (by their names, which must be the services' resource names:
// decisions name them) and the store, opened for writing. Exit 3 when
// branches are left waiting or decisions unresolved.
func cmdRecover(ctx context.Context, o *options, out *output) error {
	if o.store == "" {
		return usagef("recover needs --store: a pass without the decisions would take every decided global for undecided")
	}
	if o.node != "" && !validNode(o.node) {
		return usagef("--node %q: 1 to 20 bytes of letters, digits and -", o.node)
	}
	dbs, st, closeAll, err := openAll(o)
	if err != nil {
		return err
	}
	defer closeAll()
	log, err := st.writable(ctx)
	if err != nil {
		return err
	}
	node := o.node
	if node == "" && st.kind != "file" {
		// A FileLog's own node is the default (the service that owns the
		// log is stopped, or its lock would have refused us). A shared
		// store needs one unique to this pass; it is registered in the
		// store like any node's.
		node = cliNode()
	}
	resources := map[string]*sql.DB{}
	for _, d := range dbs {
		resources[d.name] = d.db
	}
	c, err := dtx.NewCoordinator(dtx.CoordinatorOptions{
		Resources:       resources,
		Log:             log,
		Node:            node,
		AbandonAge:      o.abandonAge,
		RecoverInterval: -1,
		// Warnings only (a store that may lose decisions, decisions
		// kept for branches it cannot see): the report says the rest.
		Logger: slog.New(slog.NewTextHandler(out.errw, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	defer c.Close()
	rep, err := c.Recover(ctx)
	res := recoverResult{Node: c.Node(), Committed: nonNil(rep.Committed), RolledBack: nonNil(rep.RolledBack),
		Aborted: nonNil(rep.Aborted), Waiting: nonNil(rep.Waiting), Forgotten: nonNil(rep.Forgotten), Unresolved: nonNil(rep.Unresolved)}
	if err != nil {
		res.Error = err.Error()
	}
	if out.json {
		out.printJSON(res)
	} else {
		out.printf("recovery pass as node %s\n", res.Node)
		for _, l := range []struct {
			what string
			v    []string
		}{
			{"committed", res.Committed}, {"rolled back", res.RolledBack}, {"aborted (fenced)", res.Aborted},
			{"waiting", res.Waiting}, {"forgotten", res.Forgotten}, {"unresolved", res.Unresolved},
		} {
			out.printf("%-17s %d\n", l.what, len(l.v))
			for _, s := range l.v {
				out.printf("  %s\n", s)
			}
		}
	}
	switch {
	case err != nil:
		return reportedError{err}
	case len(rep.Waiting)+len(rep.Unresolved) > 0:
		return errInDoubt
	}
	return nil
}

// cliNode is "cli-" and 16 random hex digits: 20 bytes, dtx's limit.
func cliNode() string {
	b := make([]byte, 8)
	rand.Read(b)
	return "cli-" + strings.ToLower(hex.EncodeToString(b))
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
