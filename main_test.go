package dtx_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a goroutine outlives the tests: a connection
// left open (its driver's reader or watcher), a Coordinator not closed, a
// held MariaDB session, a timer of dtx's own.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
