package main

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// showResult is one global (or one plain name): what is prepared of it on
// the databases given, and what the store says.
type showResult struct {
	Name     string       `json:"name,omitempty"`   // the argument, when it is a name
	Global   string       `json:"global,omitempty"` // a Coordinator global
	Node     string       `json:"node,omitempty"`   // from the branch names
	Started  *time.Time   `json:"started,omitempty"`
	Store    string       `json:"store,omitempty"`
	Record   *record      `json:"record,omitempty"`
	Branches []showBranch `json:"branches,omitempty"` // those the decision names
	Prepared []*prepared  `json:"prepared"`
	Errors   []string     `json:"errors,omitempty"`
}

// showBranch is a branch a decision names and whether one of the databases
// given still has it prepared.
type showBranch struct {
	Resource string `json:"resource"`
	Name     string `json:"name"`
	Prepared bool   `json:"prepared"`
	Seen     bool   `json:"resource_given"` // its resource is one of the --db names
}

func cmdShow(ctx context.Context, o *options, out *output) error {
	arg := o.args[0]
	res := showResult{Prepared: []*prepared{}}
	switch node, global, ok := parseBranch(arg); {
	case ok:
		res.Name, res.Global, res.Node = arg, global, node
	case isGlobalID(arg):
		res.Global = arg
	default:
		res.Name = arg
	}
	dbs, st, closeAll, err := openAll(o)
	if err != nil {
		return err
	}
	defer closeAll()
	all, errs := collect(ctx, dbs)
	for _, e := range errs {
		res.Errors = append(res.Errors, e.Error())
	}
	for _, p := range all {
		if p.Name == arg || res.Global != "" && p.Global == res.Global {
			res.Prepared = append(res.Prepared, p)
			if res.Node == "" {
				res.Node = p.Node
			}
		}
	}
	addStates(ctx, st, res.Prepared)
	if res.Global != "" {
		if at, ok := globalTime(res.Global); ok {
			t := at.UTC()
			res.Started = &t
		}
		r := st.state(ctx, res.Global)
		res.Record = &r
		res.Store = o.store
		for _, b := range r.Branches {
			sb := showBranch{Resource: b.Resource, Name: b.Name, Seen: findDB(dbs, b.Resource) != nil}
			for _, p := range res.Prepared {
				if p.Name == b.Name {
					sb.Prepared = true
				}
			}
			res.Branches = append(res.Branches, sb)
		}
	}
	known := len(res.Prepared) > 0 || res.Record != nil && (res.Record.State == stDecided || res.Record.State == stAborted)
	if out.json {
		out.printJSON(res)
	} else {
		printShow(out, &res)
	}
	switch {
	case len(errs) > 0:
		return listError{errs}
	case !known:
		return showNotFound{fmt.Errorf("dtx: %s is not prepared in any database given (%s), and the store has no record of it", arg, dbNames(dbs))}
	}
	return nil
}

// showNotFound: the JSON document, already printed, says it.
type showNotFound struct{ error }

func (showNotFound) reported() bool { return true }

func dbNames(dbs []*database) string {
	s := make([]string, len(dbs))
	for i, d := range dbs {
		s[i] = d.name
	}
	return strings.Join(s, ", ")
}

func printShow(out *output, r *showResult) {
	if r.Global != "" {
		out.printf("global    %s\n", r.Global)
		if r.Node != "" {
			out.printf("node      %s\n", r.Node)
		}
		if r.Started != nil {
			out.printf("started   %s (%s ago)\n", r.Started.Format(time.RFC3339Nano), fmtAge(time.Since(*r.Started)))
		}
		rec := r.Record
		state := rec.State
		switch {
		case rec.State == stDecided:
			state += fmt.Sprintf(" to commit, at %s by node %s", rec.DecidedAt.Format(time.RFC3339Nano), rec.Node)
		case rec.Error != "":
			state += ": " + rec.Error
		}
		out.printf("state     %s\n", state)
		if r.Store != "" {
			out.printf("store     %s\n", r.Store)
		}
		if rec.Heuristic != "" {
			out.printf("heuristic %s\n", rec.Heuristic)
		}
		if len(r.Branches) > 0 {
			out.printf("\nthe decision names %d branches:\n", len(r.Branches))
			t := out.table("  RESOURCE", "NAME", "NOW")
			for _, b := range r.Branches {
				now := "finished (no longer prepared)"
				switch {
				case b.Prepared:
					now = "prepared"
				case !b.Seen:
					now = "unknown (resource not given as --db)"
				}
				t.row("  "+b.Resource, b.Name, now)
			}
			t.flush()
		}
		out.printf("\n")
	}
	if len(r.Prepared) == 0 {
		out.printf("nothing prepared in the databases given\n")
		return
	}
	out.printf("prepared:\n")
	printPrepared(out, r.Prepared)
}
