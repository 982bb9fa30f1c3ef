package dtx

import (
	"context"
	"database/sql"
	"fmt"
)

// MaxNameLen is the longest global name, in bytes: MySQL's limit for an XA
// gtrid, and well within PostgreSQL's 199-byte gid.
const MaxNameLen = 64

type nameKey struct{}

type dbKey struct{}

// WithName returns a context under which BeginTx on a dtx database begins a
// global, two-phase transaction named name: its Commit prepares it, and
// CommitDistributed or RollbackDistributed finishes it later. This is how an
// ORM's own transaction becomes a named one:
//
//	tx, err := db.BeginTx(dtx.WithName(ctx, "provision_user_123"), nil)
//
// The name is checked when the transaction begins (see ValidateName).
func WithName(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, nameKey{}, name)
}

func nameFrom(ctx context.Context) (string, bool) {
	name, ok := ctx.Value(nameKey{}).(string)
	return name, ok
}

// withDB tells the connector which *sql.DB it serves, so that phase two runs
// on that pool's connections.
func withDB(ctx context.Context, db *sql.DB) context.Context {
	return context.WithValue(ctx, dbKey{}, db)
}

// ValidateName reports whether dtx accepts name as a global transaction name:
// 1 to 64 bytes of ASCII letters, digits and _ - . : + / = @. The set covers
// the seed's names (letters, digits, _), UUIDs, and the base64 gids that
// psycopg and PostgreSQL's JDBC driver make, so those can be finished by name;
// quotes, backslashes, spaces and control bytes never reach SQL. The error
// wraps ErrInvalidName.
func ValidateName(name string) error {
	if len(name) == 0 || len(name) > MaxNameLen {
		return fmt.Errorf("%w: %d bytes, want 1 to %d", ErrInvalidName, len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			return fmt.Errorf("%w: byte %d is %q; allowed are letters, digits and _-.:+/=@", ErrInvalidName, i, name[i])
		}
	}
	return nil
}

func nameByte(b byte) bool {
	switch {
	case 'a' <= b && b <= 'z', 'A' <= b && b <= 'Z', '0' <= b && b <= '9':
		return true
	}
	switch b {
	case '_', '-', '.', ':', '+', '/', '=', '@':
		return true
	}
	return false
}
