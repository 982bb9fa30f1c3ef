package dtx_test

import (
	"context"
	"testing"
	"time"

	"github.com/dtx-go/dtx"
)

// Names are validated before they reach SQL; the quoting is the second line.
// Whatever bytes a name held, the literal dtx builds must mean exactly those
// bytes: on PostgreSQL with standard_conforming_strings on and off, on
// MariaDB in the default sql_mode and with NO_BACKSLASH_ESCAPES.
func TestQuotingRoundTrip(t *testing.T) {
	hostile := []string{
		"plain_name",
		"it's",
		`a\b`,
		`\'; DROP TABLE x; --`,
		`''\\''`,
		"tab\there",
		"ünï©ødé",
		"\\",
	}
	eachServer(t, func(t *testing.T, s server) {
		db := open(t, s, s.raw)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		modes := []string{"SET standard_conforming_strings = on", "SET standard_conforming_strings = off"}
		if s.kind == "mysql" {
			modes = []string{"SET SESSION sql_mode = DEFAULT", "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"}
		}
		for _, mode := range modes {
			if _, err := c.ExecContext(ctx, mode); err != nil {
				t.Fatal(err)
			}
			for _, name := range hostile {
				q := "SELECT " + dtx.PgLiteral("", name)
				if s.kind == "mysql" {
					q = "SELECT " + dtx.Xid(name)
				}
				var got []byte
				if err := c.QueryRowContext(ctx, q).Scan(&got); err != nil {
					t.Fatalf("%s; %s: %v", mode, q, err)
				}
				if string(got) != name {
					t.Errorf("%s; %s = %q, want %q", mode, q, got, name)
				}
			}
		}
	})
}
