package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/dtx-go/dtx"
)

// finishResult is what commit or rollback did.
type finishResult struct {
	Name        string `json:"name"`
	Database    string `json:"database"`
	Action      string `json:"action"` // "committed", "rolled back" or "refused"
	Global      string `json:"global,omitempty"`
	StateBefore string `json:"state_before,omitempty"` // the global's state in the store before this command
	Fenced      bool   `json:"fenced,omitempty"`       // this command wrote the global's abort first
	Forced      bool   `json:"forced,omitempty"`
	Heuristic   string `json:"heuristic,omitempty"` // what was recorded in the store
	Warning     string `json:"warning,omitempty"`
	Error       string `json:"error,omitempty"`
}

func cmdCommit(ctx context.Context, o *options, out *output) error {
	return finish(ctx, o, out, true)
}

func cmdRollback(ctx context.Context, o *options, out *output) error {
	return finish(ctx, o, out, false)
}

// finish commits or rolls back one prepared name through dtx.CommitPrepared
// or RollbackPrepared on the database that lists it, which on MariaDB waits
// out the detach grace and answers ErrNameHeld for a branch a live session
// still holds. A Coordinator branch is first checked against its global's
// outcome in the store: see policy.
func finish(ctx context.Context, o *options, out *output, commit bool) error {
	name := o.args[0]
	if err := dtx.ValidateName(name); err != nil {
		return usageError{err.Error()}
	}
	dbs, st, closeAll, err := openAll(o)
	if err != nil {
		return err
	}
	defer closeAll()
	p, err := locate(ctx, dbs, name)
	if err != nil {
		return err
	}
	res := &finishResult{Name: name, Database: p.Database, Global: p.Global}
	report := func(err error) error {
		if err != nil {
			res.Error = err.Error()
		}
		if out.json {
			out.printJSON(res)
		} else {
			printFinish(out, res)
		}
		if err != nil {
			return reportedError{err}
		}
		return nil
	}
	if p.Global != "" {
		if err := policy(ctx, st, p, commit, o.force, res); err != nil {
			res.Action = "refused"
			return report(err)
		}
	}
	if commit {
		err = dtx.CommitPrepared(ctx, p.db.db, name)
	} else {
		err = dtx.RollbackPrepared(ctx, p.db.db, name)
	}
	switch {
	case errors.Is(err, dtx.ErrNameHeld):
		return report(fmt.Errorf("dtx: %s is held by a live session on %s: the process that prepared it is still running and will finish it; stop that process (its session then closes) before finishing the branch here: %w", name, p.Database, err))
	case errors.Is(err, dtx.ErrUnknownName):
		return report(fmt.Errorf("dtx: %s is no longer prepared on %s: it was finished meanwhile, by its process or a recovery: %w", name, p.Database, err))
	case errors.Is(err, dtx.ErrOutcomeUnknown):
		return report(fmt.Errorf("dtx: %s on %s: the connection broke before the answer; run dtx list to see whether it is still prepared: %w", name, p.Database, err))
	case err != nil:
		return report(err)
	}
	res.Action = "committed"
	if !commit {
		res.Action = "rolled back"
	}
	if res.Forced {
		if st == nil {
			res.Warning = "no --store: the forced outcome is recorded nowhere; record it yourself"
			return report(nil)
		}
		against := res.StateBefore
		if res.Fenced {
			against += " (fenced with an abort by this command)"
		}
		detail := fmt.Sprintf("dtx CLI: branch %s on %s %s by an operator (--force) against the global's %s state, at %s by %s",
			name, p.Database, res.Action, against, time.Now().UTC().Format(time.RFC3339), operator())
		if err := st.heuristic(ctx, p.Global, detail); err != nil {
			return report(fmt.Errorf("dtx: %s was %s, but recording it failed; record it yourself: %w", name, res.Action, err))
		}
		res.Heuristic = detail
	}
	return report(nil)
}

// policy refuses what would break a global's outcome unless force is set:
// committing a branch of a global not decided (aborted, undecided, or of an
// unknown state), rolling back one of a decided global. Rolling back a
// branch of an undecided global fences the global with the store's Abort
// first, so that a late decision can never commit its other branches: the
// same step recovery takes. A forced commit of an undecided global fences
// it too, so that the store's outcome is settled (abort, with this branch
// recorded as the heuristic exception) instead of racing a late decision.
func policy(ctx context.Context, st *store, p *prepared, commit, force bool, res *finishResult) error {
	rec := st.state(ctx, p.Global)
	res.StateBefore = rec.State
	if rec.State == stUndecided && (!commit || force) {
		d, err := st.abort(ctx, p.Global)
		if err != nil {
			return err
		}
		if d != nil {
			// Decided after the read: the decision stands.
			rec.State = stDecided
			res.StateBefore = stDecided
		} else {
			res.Fenced = true
			rec.State = stAborted
		}
	}
	ok := commit && rec.State == stDecided || !commit && rec.State == stAborted
	if ok {
		return nil
	}
	if force {
		res.Forced = true
		return nil
	}
	var why string
	switch {
	case rec.State == stUnknown:
		why = fmt.Sprintf("its global's outcome is unknown (%s)", rec.Error)
	case commit && rec.State == stUndecided:
		why = fmt.Sprintf("its global %s is undecided: with no decision it is presumed aborted and its branches roll back (dtx rollback fences it first)", p.Global)
	case commit:
		why = fmt.Sprintf("its global %s is aborted: no branch of it may commit", p.Global)
	default:
		why = fmt.Sprintf("its global %s is decided to commit: its other branches commit, so rolling this one back breaks the global", p.Global)
	}
	verb := "commit"
	if !commit {
		verb = "roll back"
	}
	return fmt.Errorf("dtx: refusing to %s %s: %s; --force does it anyway and records a heuristic outcome in the store", verb, p.Name, why)
}

// locate finds the one database that has name prepared. MariaDB/MySQL list
// a server's XA branches to every database, and collect keeps those once.
func locate(ctx context.Context, dbs []*database, name string) (*prepared, error) {
	all, errs := collect(ctx, dbs)
	var at []*prepared
	for _, p := range all {
		if p.Name == name {
			at = append(at, p)
		}
	}
	switch {
	case len(at) == 1:
		return at[0], nil
	case len(at) > 1:
		where := make([]string, len(at))
		for i, p := range at {
			where[i] = p.Database
		}
		return nil, fmt.Errorf("dtx: %s is prepared in several databases (%s): give only the --db it belongs to", name, strings.Join(where, ", "))
	case len(errs) > 0:
		return nil, fmt.Errorf("dtx: %s is not prepared in the databases that could be listed, and some could not: %w", name, errors.Join(errs...))
	}
	return nil, fmt.Errorf("dtx: %s is not prepared in any database given (%s)", name, dbNames(dbs))
}

// reportedError is an error the command's output already carries.
type reportedError struct{ error }

func (e reportedError) Unwrap() error { return e.error }
func (reportedError) reported() bool  { return true }

func printFinish(out *output, r *finishResult) {
	switch r.Action {
	case "":
		out.printf("%s on %s: not finished\n", r.Name, r.Database)
	case "refused":
		out.printf("%s on %s: refused (global %s)\n", r.Name, r.Database, r.StateBefore)
	default:
		out.printf("%s on %s: %s\n", r.Name, r.Database, r.Action)
	}
	if r.Fenced {
		out.printf("global %s was %s; this command fenced it with an abort first, so it can never commit\n", r.Global, r.StateBefore)
	}
	if r.Heuristic != "" {
		out.printf("recorded as a heuristic outcome: %s\n", r.Heuristic)
	}
	if r.Warning != "" {
		out.printf("warning: %s\n", r.Warning)
	}
}

// operator names who forced an outcome, for the heuristic record.
func operator() string {
	name := "unknown user"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	return name
}
