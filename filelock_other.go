//go:build !unix

package dtx

import "os"

// lockFile is a no-op where flock is not available: keep one process per
// log directory yourself.
func lockFile(*os.File) error { return nil }
