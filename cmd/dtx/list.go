package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/dtx-go/dtx"
)

// Where an age comes from.
const (
	ageServer  = "prepared"     // PostgreSQL's pg_prepared_xacts.prepared
	ageGlobal  = "global start" // a Coordinator branch's UUIDv7: when its global began, before the prepare
	ageUnknown = "unknown"      // MariaDB/MySQL report no time for an XA branch
)

// holderUnknown is every MariaDB/MySQL branch's holder: whether a live
// session still holds it cannot be read reliably. XA RECOVER lists attached
// and detached branches alike; information_schema.innodb_trx is a cache
// refreshed at most every 0.1 s, server-wide, and needs PROCESS; the only
// sure test, XA COMMIT from another session answering 1397, is not
// something a listing may send. See docs/operations.md.
const holderUnknown = "unknown"

// prepared is one in-doubt transaction, as list and show report it.
type prepared struct {
	Name       string     `json:"name"`
	Database   string     `json:"database"` // the --db name
	Driver     string     `json:"driver"`
	PreparedAt *time.Time `json:"prepared_at,omitempty"` // PostgreSQL only
	AgeSeconds *float64   `json:"age_seconds"`           // null when unknown
	AgeFrom    string     `json:"age_from"`
	Owner      string     `json:"owner,omitempty"`  // PostgreSQL: the role that may finish it
	Holder     string     `json:"holder,omitempty"` // MariaDB/MySQL: "unknown"
	Node       string     `json:"node,omitempty"`   // Coordinator branches only, from here on
	Global     string     `json:"global,omitempty"`
	State      string     `json:"state,omitempty"` // the global's outcome in the store
	StoreError string     `json:"store_error,omitempty"`
	Heuristic  string     `json:"heuristic,omitempty"`

	age time.Duration
	db  *database
}

// collect lists every database's prepared transactions. MariaDB/MySQL list
// XA branches server-wide, so a name two mysql --db list is kept once, under
// the first: XA COMMIT/ROLLBACK work from any database of the server.
func collect(ctx context.Context, dbs []*database) ([]*prepared, []error) {
	var out []*prepared
	var errs []error
	seenXA := map[string]bool{}
	now := time.Now()
	for _, d := range dbs {
		ps, err := dtx.ListPrepared(ctx, d.db)
		if err != nil {
			errs = append(errs, fmt.Errorf("dtx: database %s: %w", d.name, err))
			continue
		}
		for _, p := range ps {
			if d.driver == "mysql" {
				if seenXA[p.Name] {
					continue
				}
				seenXA[p.Name] = true
			}
			r := &prepared{Name: p.Name, Database: d.name, Driver: d.driver, Owner: p.Owner, AgeFrom: ageUnknown, db: d}
			r.Node, r.Global, _ = parseBranch(p.Name)
			switch {
			case !p.PreparedAt.IsZero():
				t := p.PreparedAt.UTC()
				r.PreparedAt, r.AgeFrom, r.age = &t, ageServer, now.Sub(p.PreparedAt)
			case r.Global != "":
				if at, ok := globalTime(r.Global); ok {
					r.AgeFrom, r.age = ageGlobal, now.Sub(at)
				}
			}
			if r.AgeFrom != ageUnknown {
				s := r.age.Round(time.Millisecond).Seconds()
				r.AgeSeconds = &s
			}
			if d.driver == "mysql" {
				r.Holder = holderUnknown
			}
			out = append(out, r)
		}
	}
	return out, errs
}

// addStates fills in the store's state of each Coordinator branch's global,
// reading each global once.
func addStates(ctx context.Context, st *store, ps []*prepared) {
	cache := map[string]record{}
	for _, p := range ps {
		if p.Global == "" {
			continue
		}
		r, ok := cache[p.Global]
		if !ok {
			r = st.state(ctx, p.Global)
			cache[p.Global] = r
		}
		p.State, p.StoreError, p.Heuristic = r.State, r.Error, r.Heuristic
	}
}

type listResult struct {
	Prepared []*prepared `json:"prepared"`
	Errors   []string    `json:"errors,omitempty"`
}

// cmdList: exit 3 when anything is listed, so that a cron job alerts.
func cmdList(ctx context.Context, o *options, out *output) error {
	dbs, st, closeAll, err := openAll(o)
	if err != nil {
		return err
	}
	defer closeAll()
	all, errs := collect(ctx, dbs)
	res := listResult{Prepared: []*prepared{}}
	for _, p := range all {
		if o.node != "" && p.Node != o.node {
			continue
		}
		// An unknown age is always listed: it may be old.
		if o.olderThan > 0 && p.AgeSeconds != nil && p.age < o.olderThan {
			continue
		}
		res.Prepared = append(res.Prepared, p)
	}
	sort.SliceStable(res.Prepared, func(i, j int) bool { return res.Prepared[i].age > res.Prepared[j].age })
	addStates(ctx, st, res.Prepared)
	for _, e := range errs {
		res.Errors = append(res.Errors, e.Error())
	}
	if out.json {
		out.printJSON(res)
	} else {
		printPrepared(out, res.Prepared)
		if len(res.Prepared) == 0 {
			out.printf("nothing prepared\n")
		} else {
			out.printf("\n%d prepared (in doubt)\n", len(res.Prepared))
		}
	}
	switch {
	case len(errs) > 0:
		return listError{errs}
	case len(res.Prepared) > 0:
		return errInDoubt
	}
	return nil
}

// listError is a listing that failed on some databases; the output has
// already said which, so it is not printed again in JSON.
type listError struct{ errs []error }

func (e listError) Error() string {
	s := make([]string, len(e.errs))
	for i, err := range e.errs {
		s[i] = err.Error()
	}
	return strings.Join(s, "\n")
}

func (listError) reported() bool { return true }

// printPrepared prints ps as a table.
func printPrepared(out *output, ps []*prepared) {
	if len(ps) == 0 {
		return
	}
	t := out.table("NAME", "DATABASE", "AGE", "OWNER", "HOLDER", "STATE")
	for _, p := range ps {
		age := ageUnknown
		if p.AgeSeconds != nil {
			age = fmtAge(p.age)
			if p.AgeFrom == ageGlobal {
				age += " (global)"
			}
		}
		state := "-" // not a Coordinator branch: its outcome is the application's to know
		if p.State != "" {
			state = p.State
			if p.Heuristic != "" {
				state += " (heuristic)"
			}
		}
		t.row(p.Name, p.Database+" ("+p.Driver+")", age, dash(p.Owner), dash(p.Holder), state)
	}
	t.flush()
}

// fmtAge prints an age to the second under a minute, else to the minute
// (5m, 2h10m), and in days and hours from two days on.
func fmtAge(d time.Duration) string {
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
	}
	return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
