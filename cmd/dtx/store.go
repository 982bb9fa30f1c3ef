package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dtx-go/dtx"
)

// Decision states of a global, as the CLI reports them.
const (
	stDecided   = "decided"   // the store holds its commit decision: every branch commits
	stUndecided = "undecided" // no record: presumed abort once old enough (recovery fences it first)
	stAborted   = "aborted"   // fenced with an abort: no branch may ever commit
	stUnknown   = "unknown"   // no store given, or it could not be read
)

// store is the --store: where a Coordinator keeps its globals' outcomes.
// Reads never change it: a table is queried directly (OpenSQLLog would
// create it), a FileLog is opened read-only (without its lock, so a running
// service keeps it). writable opens it for Abort and Heuristic, and for a
// recovery pass's Coordinator.
type store struct {
	desc  string
	kind  string // "resource", "file" or "sql"
	dir   string // file
	db    *sql.DB
	pg    bool
	table string
	owned bool // db was opened for the store, and is closed with it

	ro *dtx.FileLog // file: read-only view, reloaded after a write
	rw dtx.Log
}

// record is what the store says about one global.
type record struct {
	State     string          `json:"state"`
	Node      string          `json:"node,omitempty"`     // the deciding node
	Branches  []dtx.BranchRef `json:"branches,omitempty"` // the branches the decision names
	DecidedAt *time.Time      `json:"decided_at,omitempty"`
	Heuristic string          `json:"heuristic,omitempty"`
	Error     string          `json:"error,omitempty"` // why the state is unknown
}

// openAll opens the databases and the store every command works on; the
// function it returns closes both.
func openAll(o *options) ([]*database, *store, func(), error) {
	dbs, closeDBs, err := openDBs(o.dbs)
	if err != nil {
		return nil, nil, nil, err
	}
	st, err := openStore(o.store, dbs)
	if err != nil {
		closeDBs()
		return nil, nil, nil, err
	}
	return dbs, st, func() { st.close(); closeDBs() }, nil
}

// openStore parses spec: resource:<db>[:table], file:<dir> or
// sql:<driver:DSN>[#table]. An empty spec is no store (nil).
func openStore(spec string, dbs []*database) (*store, error) {
	if spec == "" {
		return nil, nil
	}
	kind, rest, _ := strings.Cut(spec, ":")
	s := &store{desc: spec, kind: kind, table: "dtx_decisions"}
	switch kind {
	case "resource":
		name, table, _ := strings.Cut(rest, ":")
		d := findDB(dbs, name)
		if d == nil {
			return nil, usagef("--store %s: no --db named %q", spec, name)
		}
		if table != "" {
			s.table = table
		}
		s.db, s.pg = d.db, d.driver == "postgres"
	case "file":
		if rest == "" {
			return nil, usagef("--store file:<dir>: the directory is missing")
		}
		s.dir = rest
	case "sql":
		target, table := rest, ""
		if i := strings.LastIndex(rest, "#"); i >= 0 {
			target, table = rest[:i], rest[i+1:]
		}
		t, err := parseTarget("store", target)
		if err != nil {
			return nil, usageError{err.Error()}
		}
		if table != "" {
			s.table = table
		}
		// The plain driver: OpenSQLLog takes either, and the store is no
		// resource, so dtx need not know it.
		db, err := sql.Open(t.driver, t.dsn)
		if err != nil {
			return nil, fmt.Errorf("dtx: --store %s: %w", spec, err)
		}
		s.db, s.pg, s.owned = db, t.driver == "postgres", true
	default:
		return nil, usagef("--store %q: want resource:<db>[:table], file:<dir> or sql:<driver:DSN>[#table]", spec)
	}
	if s.db != nil && !validTable(s.table) {
		return nil, usagef("--store %s: table name %q: want a letter or _ then letters, digits or _", spec, s.table)
	}
	return s, nil
}

func validTable(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_' || i > 0 && '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

func (s *store) close() {
	if s == nil {
		return
	}
	if c, ok := s.rw.(interface{ Close() error }); ok {
		c.Close()
	}
	if s.owned {
		s.db.Close()
	}
}

// state reads global's outcome. Without a store, or when it cannot be
// read, the state is unknown and Error says why.
func (s *store) state(ctx context.Context, global string) record {
	if s == nil {
		return record{State: stUnknown, Error: "no --store given"}
	}
	var r record
	var err error
	if s.kind == "file" {
		r, err = s.fileState(ctx, global)
	} else {
		r, err = s.sqlState(ctx, global)
	}
	if err != nil {
		return record{State: stUnknown, Error: err.Error()}
	}
	return r
}

// sqlState reads the global's row: 'D' decided, 'A' aborted, 'F' decided
// and forgotten but kept for its heuristic; no row is undecided.
func (s *store) sqlState(ctx context.Context, global string) (record, error) {
	q := "SELECT node, state, branches, decided_at, heuristic FROM " + s.table + " WHERE global_id = ?"
	if s.pg {
		q = strings.Replace(q, "?", "$1", 1)
	}
	var node, st, branches string
	var at int64
	var heur sql.NullString
	err := s.db.QueryRowContext(ctx, q, global).Scan(&node, &st, &branches, &at, &heur)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return record{State: stUndecided}, nil
	case err != nil:
		return record{}, fmt.Errorf("dtx: store %s: %w", s.desc, err)
	}
	r := record{Heuristic: heur.String}
	switch st {
	case "A":
		r.State = stAborted
		return r, nil
	case "D", "F":
		r.State, r.Node = stDecided, node
	default:
		return record{}, fmt.Errorf("dtx: store %s: global %s has state %q", s.desc, global, st)
	}
	if err := json.Unmarshal([]byte(branches), &r.Branches); err != nil {
		return record{}, fmt.Errorf("dtx: store %s: global %s: branches: %w", s.desc, global, err)
	}
	t := time.UnixMilli(at).UTC()
	r.DecidedAt = &t
	return r, nil
}

// fileState reads the FileLog read-only. FileLog exports no lookup of one
// global, so it asks by the Log contract: Pending holds the decisions; and
// Abort on a read-only log writes nothing: it returns an existing decision,
// nil for a global already aborted (aborting again is a no-op), and
// ErrLogClosed when it would have to write, that is for an undecided
// global.
func (s *store) fileState(ctx context.Context, global string) (record, error) {
	if s.ro == nil {
		ro, err := dtx.OpenFileLogReadOnly(s.dir)
		if err != nil {
			return record{}, fmt.Errorf("dtx: store %s: %w", s.desc, err)
		}
		s.ro = ro
	}
	heur := s.ro.Heuristics()[global]
	d, err := s.ro.Abort(ctx, global)
	switch {
	case errors.Is(err, dtx.ErrLogClosed):
		return record{State: stUndecided, Heuristic: heur}, nil
	case err != nil:
		return record{}, fmt.Errorf("dtx: store %s: %w", s.desc, err)
	case d == nil:
		return record{State: stAborted, Heuristic: heur}, nil
	}
	at := d.At.UTC()
	return record{State: stDecided, Node: d.Node, Branches: d.Branches, DecidedAt: &at, Heuristic: heur}, nil
}

// writable opens the store for writing. A FileLog's lock is exclusive: while
// a service runs with it, the CLI cannot write to it.
func (s *store) writable(ctx context.Context) (dtx.Log, error) {
	if s.rw != nil {
		return s.rw, nil
	}
	if err := s.exists(ctx); err != nil {
		return nil, err
	}
	switch s.kind {
	case "file":
		l, err := dtx.OpenFileLog(s.dir)
		if err != nil {
			return nil, fmt.Errorf("dtx: store %s cannot be opened for writing; if a running service holds its lock, stop it or finish the branch from that service: %w", s.desc, err)
		}
		s.rw = l
	default:
		l, err := dtx.OpenSQLLog(ctx, s.db, s.table)
		if err != nil {
			return nil, fmt.Errorf("dtx: store %s: %w", s.desc, err)
		}
		s.rw = l
	}
	return s.rw, nil
}

// exists checks that the store is there before it is opened for writing:
// OpenFileLog and OpenSQLLog create an empty one, and with a mistyped
// --store an empty store makes every decided global look undecided, which
// a recovery pass would abort.
func (s *store) exists(ctx context.Context) error {
	if s.kind == "file" {
		if _, err := os.Stat(filepath.Join(s.dir, "dtx.log")); err != nil {
			return fmt.Errorf("dtx: store %s: no decision log there (%w); the CLI creates none: an empty store would make every decided global look undecided", s.desc, err)
		}
		return nil
	}
	var n int
	if err := s.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+s.table+" WHERE 1 = 0").Scan(&n); err != nil {
		return fmt.Errorf("dtx: store %s: cannot read table %s (%w); the CLI creates none: an empty store would make every decided global look undecided", s.desc, s.table, err)
	}
	return nil
}

// abort fences global: afterwards no decision can be written for it. It
// returns the decision instead when the global was decided first.
func (s *store) abort(ctx context.Context, global string) (*dtx.Decision, error) {
	l, err := s.writable(ctx)
	if err != nil {
		return nil, err
	}
	s.ro = nil
	d, err := l.Abort(ctx, global)
	if err != nil {
		return nil, fmt.Errorf("dtx: fencing global %s in store %s: %w", global, s.desc, err)
	}
	return d, nil
}

// heuristic records an operator's forced action against global's outcome.
func (s *store) heuristic(ctx context.Context, global, detail string) error {
	l, err := s.writable(ctx)
	if err != nil {
		return err
	}
	s.ro = nil
	if err := l.Heuristic(ctx, global, detail); err != nil {
		return fmt.Errorf("dtx: recording the heuristic outcome of global %s in store %s: %w", global, s.desc, err)
	}
	return nil
}
