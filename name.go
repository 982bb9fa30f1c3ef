package dtx

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"unicode/utf8"
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
			return fmt.Errorf("%w: byte %d is %s; allowed are ASCII letters, digits and _-.:+/=@", ErrInvalidName, i, describeByte(name, i))
		}
	}
	return nil
}

// describeByte names the byte at i of s for an error: a quoted ASCII
// character, or for a non-ASCII byte its value and, when it starts a UTF-8
// character, that character (printing the byte as a rune would show
// another character: 0xc3 as 'Ã').
func describeByte(s string, i int) string {
	b := s[i]
	if b < utf8.RuneSelf {
		return strconv.QuoteRune(rune(b))
	}
	if r, n := utf8.DecodeRuneInString(s[i:]); r != utf8.RuneError {
		return fmt.Sprintf("0x%02x, the first of the %d bytes of %s (U+%04X)", b, n, strconv.QuoteRune(r), r)
	}
	return fmt.Sprintf("0x%02x (not UTF-8)", b)
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
