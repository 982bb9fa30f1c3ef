package dtx_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
)

// FuzzNamesOnServers: a name goes through each real server and comes back
// exact. For each input, prefix+input (refused with ErrInvalidName, with
// nothing prepared, unless ValidateName accepts it) and prefix+the input's
// allowed bytes (always valid, cut to MaxNameLen) are begun with
// BeginDistributed, which inserts the name into a table; the prepared
// transaction must be listed by ListPrepared (pg_prepared_xacts, XA RECOVER)
// under exactly that name, and after CommitDistributed the row holds it and
// nothing is prepared under the prefix. The prefix keeps the names apart
// from other tests' on the shared servers.
func FuzzNamesOnServers(f *testing.F) {
	for _, s := range servers() {
		need(f, s)
	}
	type target struct {
		s      server
		db     *sql.DB
		table  string
		prefix string
	}
	var ts []target
	for _, s := range servers() {
		db := open(f, s, s.wrapped)
		ts = append(ts, target{s: s, db: db, table: table(f, s, db, "name VARCHAR(64) NOT NULL"), prefix: names(f, s)})
	}
	f.Fuzz(func(t *testing.T, in string) {
		for _, tg := range ts {
			valid := tg.prefix + keepNameBytes(in)
			valid = valid[:min(len(valid), dtx.MaxNameLen)]
			for _, name := range []string{tg.prefix + in, valid} {
				roundTrip(t, tg.s, tg.db, tg.table, tg.prefix, name)
			}
		}
	})
}

// roundTrip prepares name on db, checks that the server lists it exact,
// commits it and checks the row.
func roundTrip(t *testing.T, s server, db *sql.DB, table, prefix, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	insert := "INSERT INTO " + table + " (name) VALUES (" + ph(s) + ")"
	err := dtx.BeginDistributed(ctx, db, name, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, insert, name)
		return err
	})
	if dtx.ValidateName(name) != nil {
		if !errors.Is(err, dtx.ErrInvalidName) {
			t.Fatalf("%s: BeginDistributed(%q) = %v, want ErrInvalidName", s.label, name, err)
		}
		if ps := coPrepared(t, db, prefix); len(ps) != 0 {
			t.Fatalf("%s: refused name %q, yet prepared: %q", s.label, name, ps)
		}
		return
	}
	if err != nil {
		t.Fatalf("%s: BeginDistributed(%q): %v", s.label, name, err)
	}
	if ps := coPrepared(t, db, prefix); len(ps) != 1 || ps[0] != name {
		dtx.RollbackDistributed(ctx, name)
		t.Fatalf("%s: prepared %q, the server lists %q", s.label, name, ps)
	}
	if err := dtx.CommitDistributed(ctx, name); err != nil {
		t.Fatalf("%s: CommitDistributed(%q): %v", s.label, name, err)
	}
	if ps := coPrepared(t, db, prefix); len(ps) != 0 {
		t.Fatalf("%s: committed %q, still prepared: %q", s.label, name, ps)
	}
	var got string
	if err := db.QueryRowContext(ctx, "SELECT name FROM "+table+" WHERE name = "+ph(s), name).Scan(&got); err != nil || got != name {
		t.Fatalf("%s: the row of %q reads %q (%v)", s.label, name, got, err)
	}
	if _, err := db.ExecContext(ctx, "DELETE FROM "+table); err != nil {
		t.Fatal(err)
	}
}

// keepNameBytes returns the bytes of s that ValidateName allows.
func keepNameBytes(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if dtx.ValidateName(s[i:i+1]) == nil {
			b.WriteByte(s[i])
		}
	}
	return b.String()
}
