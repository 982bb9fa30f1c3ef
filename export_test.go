package dtx

// SetHook replaces the coordinator's test hook, called with the name of
// each protocol step ("before-prepare", "prepared:<i>", "decided",
// "committed:<i>", "before-done", "before-commit-one-phase"), and returns
// a function that puts the previous one back. Set it before any global
// runs: the hook is read without a lock.
func SetHook(f func(point string)) (restore func()) {
	old := hook
	if f == nil {
		f = func(string) {}
	}
	hook = f
	return func() { hook = old }
}

// PgLiteral and Xid expose the quoting of names for tests of the second
// line of defence (names are validated before they reach SQL).
var (
	PgLiteral = pgLiteral
	Xid       = xid
)
