package dtxpgx_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the run when a goroutine outlives the tests: a pool or a
// connection left open, a held session.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
