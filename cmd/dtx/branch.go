package main

import (
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// parseBranch splits a Coordinator branch name, g.<node>.<global>.<n>, into
// its node and global, the way dtx's recovery does (its parser is not
// exported): the node letters, digits and '-' (1 to 20 bytes), the global 32
// characters, n a number.
func parseBranch(name string) (node, global string, ok bool) {
	rest, ok := strings.CutPrefix(name, "g.")
	if !ok {
		return "", "", false
	}
	node, rest, ok = strings.Cut(rest, ".")
	if !ok || !validNode(node) {
		return "", "", false
	}
	global, n, ok := strings.Cut(rest, ".")
	if !ok || len(global) != 32 {
		return "", "", false
	}
	if _, err := strconv.Atoi(n); err != nil {
		return "", "", false
	}
	return node, global, true
}

func validNode(node string) bool {
	if len(node) == 0 || len(node) > 20 {
		return false
	}
	for i := 0; i < len(node); i++ {
		b := node[i]
		if !('a' <= b && b <= 'z' || 'A' <= b && b <= 'Z' || '0' <= b && b <= '9' || b == '-') {
			return false
		}
	}
	return true
}

// globalTime is when a global started, read from its UUIDv7.
func globalTime(global string) (time.Time, bool) {
	u, err := uuid.Parse(global)
	if err != nil || u.Version() != 7 {
		return time.Time{}, false
	}
	sec, nsec := u.Time().UnixTime()
	return time.Unix(sec, nsec), true
}

// isGlobalID reports whether s looks like a global's id: 32 hex digits.
func isGlobalID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}
