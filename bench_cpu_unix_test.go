//go:build unix

package dtx_test

import (
	"syscall"
	"time"
)

// processCPU is the CPU time this process has used, user and system: the
// client's cost of a benchmark, which the servers' share does not blur.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
