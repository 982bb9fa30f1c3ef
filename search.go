package dtx

import (
	"context"
	"database/sql"
)

// searchKey is the context key of the databases a by-name finish searches.
type searchKey struct{}

// searchScope is what WithDatabases puts in a context: the places, or the
// error that makes every search under it fail.
type searchScope struct {
	ps  []place
	err error
}

// WithDatabases returns a context under which CommitDistributed and
// RollbackDistributed search only dbs for a name this process does not
// hold (after a restart, or one another process prepared), and, for a name
// it already finished, look only there for the name prepared again.
// Without it they search every database opened through dtx in this
// process. A service that opened many databases but keeps its named
// transactions in one lists only that one; tests keep one another's
// databases out of their searches (see the dtxtest package).
//
// dbs must be opened through dtx: a search under a context naming another
// fails with ErrNotDTX. With no dbs, nothing is searched: an unknown name
// is ErrUnknownName at once.
func WithDatabases(ctx context.Context, dbs ...*sql.DB) context.Context {
	s := &searchScope{ps: make([]place, 0, len(dbs))}
	for _, db := range dbs {
		p, err := placeOfDB(db)
		if err != nil {
			s.err = err
			break
		}
		s.ps = append(s.ps, p)
	}
	return context.WithValue(ctx, searchKey{}, s)
}

// searched returns the places ctx bounds a search to; ok is false when ctx
// has no bound.
func searched(ctx context.Context) (ps []place, ok bool, err error) {
	s, ok := ctx.Value(searchKey{}).(*searchScope)
	if !ok {
		return nil, false, nil
	}
	return s.ps, true, s.err
}

// Forget makes this process forget name, so that the name can be used
// again at once: a name left in doubt (ErrOutcomeUnknown at prepare), a
// prepared one whose finish this process gives up, or a finished one it
// should no longer answer retries for. It changes nothing on any server:
// a transaction prepared under name stays prepared there, to be finished
// later by name (CommitDistributed then searches the databases, as after
// a restart) or with CommitPrepared and RollbackPrepared. A MariaDB/MySQL
// session held for the branch is closed; the branch stays prepared,
// detached. An operator uses it after deciding an in-doubt name by hand;
// tests use it to keep a failed test's names from the next one.
//
// Forget answers nil for a name this process does not know, and an error
// wrapping ErrNameInUse for one whose transaction is still running (end that
// transaction instead), or wrapping ErrInvalidName.
func Forget(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	return reg.forget(name)
}
