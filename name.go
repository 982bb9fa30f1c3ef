package dtx

import (
	"context"
	"database/sql"
	"fmt"
)

// MaxNameLen is the longest global name, in bytes: MySQL's limit for an XA
// gtrid, and well within PostgreSQL's 199-byte gid.
const MaxNameLen = 64

// nameKey is the context key of a global name: a *named.
type nameKey struct{}

// named is what a context carries for a named transaction: the name and,
// when dtx knows it (BeginDistributed, the Coordinator), the caller's pool,
// so that phase two runs on that pool's connections.
type named struct {
	name string
	db   *sql.DB
}

// WithName returns a context under which BeginTx on a dtx database begins a
// global, two-phase transaction named name: its Commit prepares it, and
// CommitDistributed or RollbackDistributed finishes it later. This is how an
// ORM's own transaction becomes a named one:
//
//	tx, err := db.BeginTx(dtx.WithName(ctx, "provision_user_123"), nil)
//
// The name is checked when the transaction begins (see ValidateName).
func WithName(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, nameKey{}, &named{name: name})
}

// withNameDB is WithName for a caller that knows the pool.
func withNameDB(ctx context.Context, name string, db *sql.DB) context.Context {
	return context.WithValue(ctx, nameKey{}, &named{name: name, db: db})
}

func nameFrom(ctx context.Context) (*named, bool) {
	n, ok := ctx.Value(nameKey{}).(*named)
	return n, ok
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
