package dtx

import (
	"context"
	"database/sql"
	"fmt"
	"sync/atomic"
)

// Stats are in-process counters of named transactions, of the whole process
// (the package function Stats) or of one database (StatsOf). Prepared,
// Unknown and HeldSessions say what is now; the others count since the
// process, or the database's *sql.DB, started.
type Stats struct {
	// Prepared counts the names this process prepared and has not
	// finished: named transactions and Coordinator branches in doubt until
	// their phase two.
	Prepared int64
	// Unknown counts the names whose prepare's outcome is unknown
	// (ErrOutcomeUnknown): reserved until finished by name or forgotten.
	Unknown int64
	// HeldSessions counts the MariaDB/MySQL sessions held for prepared
	// branches (see WithHoldLimit).
	HeldSessions int64
	// ReleasedSessions counts held sessions closed with their branch still
	// prepared (hold timeout or limit, Close, Forget, a lost answer).
	ReleasedSessions int64
	// Commits and Rollbacks count the phase twos of named transactions
	// (CommitDistributed, CommitPrepared and the rollbacks) that this
	// process ran and that succeeded; a Coordinator's branches are counted
	// by its own CoordinatorStats instead.
	Commits   int64
	Rollbacks int64
}

// InDoubt is the names in doubt in this process: Prepared plus Unknown.
func (s Stats) InDoubt() int64 { return s.Prepared + s.Unknown }

// The counters of a Stats, as indexes of counters.
const (
	cPrepared = iota
	cUnknown
	cHeld
	cReleased
	cCommits
	cRollbacks
	nCounters
)

// counters are one connector's Stats, or the process's, as atomics.
type counters [nCounters]atomic.Int64

func (k *counters) load() Stats {
	return Stats{
		Prepared:         k[cPrepared].Load(),
		Unknown:          k[cUnknown].Load(),
		HeldSessions:     k[cHeld].Load(),
		ReleasedSessions: k[cReleased].Load(),
		Commits:          k[cCommits].Load(),
		Rollbacks:        k[cRollbacks].Load(),
	}
}

// procStats are the whole process's counters.
var procStats counters

// count adds d to counter i of the process and of c (nil: the process's only).
func count(c *connector, i int, d int64) {
	procStats[i].Add(d)
	if c != nil {
		c.stats[i].Add(d)
	}
}

// countState counts e in (d = 1) or out of (d = -1) state st, for the
// states the gauges show.
func countState(e *entry, st state, d int64) {
	switch st {
	case stPrepared:
		count(e.c, cPrepared, d)
	case stUncertain:
		count(e.c, cUnknown, d)
	}
}

// ProcessStats returns the counters of every named transaction of this
// process, on every database opened through dtx (closed ones included).
func ProcessStats() Stats { return procStats.load() }

// StatsOf returns the counters of db, which must be opened through dtx. The
// first call for a db that has not begun a named transaction through
// BeginDistributed or a Coordinator takes one of its connections for a
// moment (under ctx) to find dtx's side of it.
func StatsOf(ctx context.Context, db *sql.DB) (Stats, error) {
	if _, err := driverOf(db); err != nil {
		return Stats{}, err
	}
	if c := reg.connectorOf(db); c != nil {
		return c.stats.load(), nil
	}
	cn, err := db.Conn(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("dtx: StatsOf: %w", err)
	}
	defer cn.Close()
	var c *connector
	cn.Raw(func(dc any) error {
		if x, ok := dc.(interface{ dtxConn() *conn }); ok {
			c = x.dtxConn().c
		}
		return nil
	})
	if c == nil {
		return Stats{}, fmt.Errorf("%w: StatsOf: its connections are not dtx's", ErrNotDTX)
	}
	c.learn(db)
	return c.stats.load(), nil
}

// CoordinatorStats are one Coordinator's counters (Coordinator.Stats).
// Active, Waiting and Unresolved say what is now; the others count since
// the Coordinator started.
type CoordinatorStats struct {
	// Active counts the globals in Do now.
	Active int64
	// CommitsOnePhase and CommitsTwoPhase count the globals Do committed
	// (returned nil), by mode; a global without a branch that writes is
	// one-phase.
	CommitsOnePhase int64
	CommitsTwoPhase int64
	// RolledBack counts the globals Do rolled back (ErrRolledBack).
	RolledBack int64
	// Pending counts the globals decided to commit whose phase two left
	// branches to recovery (*PendingError, or an AsyncCommit phase two
	// that did not finish); Heuristic those found finished the other way
	// (*HeuristicError); Unknown those whose decision could be neither
	// confirmed nor fenced (ErrOutcomeUnknown).
	Pending   int64
	Heuristic int64
	Unknown   int64
	// RecoveredCommits and RecoveredRollbacks count the branches recovery
	// committed and rolled back; RecoveryAborts the undecided globals it
	// fenced; RecoveryErrors the actions that failed and were left for
	// the next pass.
	RecoveredCommits   int64
	RecoveredRollbacks int64
	RecoveryAborts     int64
	RecoveryErrors     int64
	// Waiting is how many branches the last recovery pass left prepared
	// (too young, in flight, held, or failed): in doubt on the servers.
	// Unresolved is how many decisions it kept for resources it could not
	// look at.
	Waiting    int64
	Unresolved int64
}

// The counters of a CoordinatorStats, as indexes of coordCounters.
const (
	gActive = iota
	gCommitsOnePhase
	gCommitsTwoPhase
	gRolledBack
	gPending
	gHeuristic
	gUnknown
	gRecoveredCommits
	gRecoveredRollbacks
	gRecoveryAborts
	gRecoveryErrors
	gWaiting
	gUnresolved
	nCoordCounters
)

type coordCounters [nCoordCounters]atomic.Int64

func (k *coordCounters) load() CoordinatorStats {
	return CoordinatorStats{
		Active:             k[gActive].Load(),
		CommitsOnePhase:    k[gCommitsOnePhase].Load(),
		CommitsTwoPhase:    k[gCommitsTwoPhase].Load(),
		RolledBack:         k[gRolledBack].Load(),
		Pending:            k[gPending].Load(),
		Heuristic:          k[gHeuristic].Load(),
		Unknown:            k[gUnknown].Load(),
		RecoveredCommits:   k[gRecoveredCommits].Load(),
		RecoveredRollbacks: k[gRecoveredRollbacks].Load(),
		RecoveryAborts:     k[gRecoveryAborts].Load(),
		RecoveryErrors:     k[gRecoveryErrors].Load(),
		Waiting:            k[gWaiting].Load(),
		Unresolved:         k[gUnresolved].Load(),
	}
}
