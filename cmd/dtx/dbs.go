package main

import (
	"database/sql"
	"fmt"
	"sort"
	"strings"

	_ "github.com/dtx-go/dtx" // registers dtx+postgres and dtx+mysql
)

// dbSpec is one --db: the name the CLI reports it by (use the resource
// names of CoordinatorOptions.Resources, which decisions name), the driver
// and the parent driver's DSN.
type dbSpec struct {
	name   string
	driver string // "postgres" or "mysql"
	dsn    string
}

// database is an opened dbSpec, through dtx+<driver>.
type database struct {
	dbSpec
	db *sql.DB
}

// parseDB parses name=driver:DSN.
func parseDB(v string) (dbSpec, error) {
	name, rest, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return dbSpec{}, fmt.Errorf("dtx: --db %q: want name=driver:DSN", v)
	}
	return parseTarget(name, rest)
}

// parseTarget parses driver:DSN for the database called name.
func parseTarget(name, v string) (dbSpec, error) {
	if !validDBName(name) {
		return dbSpec{}, fmt.Errorf("dtx: database name %q: want letters, digits, _ and -", name)
	}
	drv, dsn, ok := strings.Cut(v, ":")
	if !ok || dsn == "" {
		return dbSpec{}, fmt.Errorf("dtx: database %s: %q: want driver:DSN (driver postgres or mysql)", name, v)
	}
	switch drv {
	case "postgres", "mysql":
	default:
		return dbSpec{}, fmt.Errorf("dtx: database %s: driver %q: want postgres or mysql", name, drv)
	}
	return dbSpec{name: name, driver: drv, dsn: dsn}, nil
}

func validDBName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// envDBs reads DTX_DB_<NAME>=driver:DSN; the name is <NAME> in lower case
// (DTX_DB_ORDERS is the database "orders"), since environment names are
// upper case by custom and resource names usually are not.
func envDBs(env []string) ([]dbSpec, error) {
	var out []dbSpec
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		name, ok := strings.CutPrefix(k, "DTX_DB_")
		if !ok {
			continue
		}
		d, err := parseTarget(strings.ToLower(name), v)
		if err != nil {
			return nil, usageError{fmt.Sprintf("%v (from %s)", err, k)}
		}
		out = append(out, d)
	}
	return out, nil
}

// mergeDBs puts the --db flags over the environment's databases of the
// same name, sorted by name.
func mergeDBs(flags, env []dbSpec) []dbSpec {
	byName := map[string]dbSpec{}
	for _, d := range env {
		byName[d.name] = d
	}
	for _, d := range flags {
		byName[d.name] = d
	}
	out := make([]dbSpec, 0, len(byName))
	for _, d := range byName {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// openDBs opens every database through dtx. sql.Open does not connect: a
// server that cannot be reached shows in the first query against it.
func openDBs(specs []dbSpec) ([]*database, func(), error) {
	var out []*database
	closeAll := func() {
		for _, d := range out {
			d.db.Close()
		}
	}
	for _, s := range specs {
		db, err := sql.Open("dtx+"+s.driver, s.dsn)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("dtx: database %s: %w", s.name, err)
		}
		out = append(out, &database{dbSpec: s, db: db})
	}
	return out, closeAll, nil
}

func findDB(dbs []*database, name string) *database {
	for _, d := range dbs {
		if d.name == name {
			return d
		}
	}
	return nil
}
