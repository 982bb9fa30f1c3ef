package dtx

import (
	"io"
	"io/fs"
	"os"
)

// logFS is what the FileLog does with its directory and files. The log
// uses the operating system's (osFS); its power-cut tests put a simulated
// disk in its place (withLogFS), one that keeps only what was fsynced.
type logFS interface {
	// OpenFile opens name as os.OpenFile does.
	OpenFile(name string, flag int, perm fs.FileMode) (logFile, error)
	ReadFile(name string) ([]byte, error)
	// IsDir reports whether name is a directory; an error wrapping
	// fs.ErrNotExist when there is nothing by that name.
	IsDir(name string) (bool, error)
	Mkdir(name string, perm fs.FileMode) error
	Rename(oldpath, newpath string) error
	Remove(name string) error
	// SyncDir fsyncs the directory dir: the names created, renamed or
	// removed in it are durable once it returns.
	SyncDir(dir string) error
}

// logFile is what the log does with an open file.
type logFile interface {
	io.Reader
	WriteAt(b []byte, off int64) (int, error)
	Truncate(size int64) error
	Sync() error
	Close() error
	// Lock takes an exclusive lock on the file, failing at once when
	// another process holds it; closing the file releases it.
	Lock() error
}

// osFS is the operating system's file system.
type osFS struct{}

// osFile is an *os.File with the log's lock.
type osFile struct{ *os.File }

var (
	_ logFS   = osFS{}
	_ logFile = osFile{}
)

// OpenFile implements logFS.
func (osFS) OpenFile(name string, flag int, perm fs.FileMode) (logFile, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// ReadFile implements logFS.
func (osFS) ReadFile(name string) ([]byte, error) { return os.ReadFile(name) }

// IsDir implements logFS.
func (osFS) IsDir(name string) (bool, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return false, err
	}
	return fi.IsDir(), nil
}

// Mkdir implements logFS.
func (osFS) Mkdir(name string, perm fs.FileMode) error { return os.Mkdir(name, perm) }

// Rename implements logFS.
func (osFS) Rename(oldpath, newpath string) error { return os.Rename(oldpath, newpath) }

// Remove implements logFS.
func (osFS) Remove(name string) error { return os.Remove(name) }

// SyncDir implements logFS.
func (osFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Lock implements logFile.
func (f osFile) Lock() error { return lockFile(f.File) }

// withLogFS makes the log use fsys instead of the operating system's file
// system: for tests.
func withLogFS(fsys logFS) FileLogOption {
	return func(l *FileLog) { l.fs = fsys }
}
