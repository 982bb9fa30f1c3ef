//go:build !unix

package dtx_test

import "time"

// processCPU is not measured here: cpu-us/op reads 0.
func processCPU() time.Duration { return 0 }
