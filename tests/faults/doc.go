// Package faults is dtx's nemesis harness (`make faults`; a short schedule
// runs in `make test`): several coordinator processes sharing one decision
// store move money between PostgreSQL and MariaDB while a nemesis kills,
// pauses and restarts them, cuts, delays, black-holes and drops their
// traffic through proxies, crashes and restarts both database servers and
// partitions coordinators from one database with network namespaces. At
// the end it heals everything, recovers, and checks that no global was
// half applied, that every global reported committed is in both databases
// and that nothing is left prepared or pending.
//
// The servers are the run's own, created in a temporary directory on free
// ports and removed at the end (also on failure or interrupt): the
// harness never touches the servers of the machine. docs/reliability.md
// describes the faults, what they model and what they cannot.
package faults
