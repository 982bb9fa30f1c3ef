package dtx

import (
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// FuzzQuoting: whatever the bytes, ValidateName lets through only the
// documented set, and the literals dtx builds are one token that means
// exactly those bytes: pgLiteral under standard_conforming_strings on and
// off (read here by a lexer of PostgreSQL's string-literal rules), xid as a
// hex literal. So no input reaches SQL unquoted, validated or not.
func FuzzQuoting(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		if err := ValidateName(s); err == nil {
			if len(s) == 0 || len(s) > MaxNameLen {
				t.Fatalf("ValidateName(%q) = nil for %d bytes", s, len(s))
			}
			for i := 0; i < len(s); i++ {
				if !strings.ContainsRune("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.:+/=@", rune(s[i])) {
					t.Fatalf("ValidateName(%q) = nil with byte %d = %q", s, i, s[i])
				}
			}
		} else if !errors.Is(err, ErrInvalidName) || !strings.HasPrefix(err.Error(), "dtx: ") {
			t.Fatalf("ValidateName(%q) = %v, want a dtx: error wrapping ErrInvalidName", s, err)
		}
		lit := pgLiteral("COMMIT PREPARED ", s)
		for _, scs := range []bool{true, false} {
			rest, ok := strings.CutPrefix(lit, "COMMIT PREPARED ")
			if !ok {
				t.Fatalf("pgLiteral lost its prefix: %q", lit)
			}
			got, tail, err := lexPgString(rest, scs)
			if err != nil || tail != "" || got != s {
				t.Fatalf("standard_conforming_strings=%v: %q reads as %q then %q (%v), want %q alone", scs, rest, got, tail, err, s)
			}
		}
		x := xid(s)
		h, ok := strings.CutPrefix(x, "X'")
		h, ok2 := strings.CutSuffix(h, "'")
		b, err := hex.DecodeString(h)
		if !ok || !ok2 || err != nil || string(b) != s || strings.ContainsAny(h, `'\`) {
			t.Fatalf("xid(%q) = %s, which does not read back (%v)", s, x, err)
		}
	})
}

// lexPgString reads one PostgreSQL string constant from the start of s: a
// plain '...' (backslashes literal when standard_conforming_strings is on,
// escapes when it is off) or an escape string E'...'; a doubled quote is a quote in
// both. It returns the value and what follows the constant.
func lexPgString(s string, scs bool) (val, rest string, err error) {
	escapes := !scs
	if strings.HasPrefix(s, "E'") || strings.HasPrefix(s, "e'") {
		escapes, s = true, s[1:]
	}
	if !strings.HasPrefix(s, "'") {
		return "", s, errors.New("not a string constant")
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\'' && i+1 < len(s) && s[i+1] == '\'':
			b.WriteByte('\'')
			i++
		case c == '\'':
			return b.String(), s[i+1:], nil
		case c == '\\' && escapes:
			if i+1 == len(s) {
				return "", "", errors.New("unterminated escape")
			}
			i++
			switch e := s[i]; e {
			case '\\', '\'':
				b.WriteByte(e)
			default: // \n, \t, octal, hex, unicode: dtx must never emit them
				return "", "", errors.New("escape \\" + string(e) + " in a dtx literal")
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", "", errors.New("unterminated string constant")
}
