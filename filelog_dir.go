package dtx

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// The FileLog's directory: creating it durably, and the node id kept in it.

const (
	nodeFileName = "node"
	maxNodeIDLen = 20
)

// mkdirAllSync is os.MkdirAll that fsyncs the parent of each directory it
// creates, and the parent of dir even when dir exists: until then a crash
// may lose the new directory, and the log and node id in it with it, after
// the log has acknowledged decisions. (An existing dir may have been made
// by an earlier call that failed before its fsync.)
func mkdirAllSync(fsys logFS, dir string) error {
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	if isDir, err := fsys.IsDir(dir); err == nil {
		if !isDir {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: fs.ErrExist}
		}
		return fsys.SyncDir(parent)
	}
	if parent != dir {
		if err := mkdirAllSync(fsys, parent); err != nil {
			return err
		}
	}
	if err := fsys.Mkdir(dir, 0o750); err != nil {
		if isDir, serr := fsys.IsDir(dir); serr == nil && isDir {
			return fsys.SyncDir(parent) // made by someone else meanwhile
		}
		return err
	}
	return fsys.SyncDir(parent)
}

// loadNode returns the node id kept in dir, making one first when there is
// none and create is set. Called with the log's lock held, so two processes
// never make two. The id is written to a temporary file, fsynced and renamed,
// and the directory fsynced: a crash leaves either no id or a whole one, and
// an id that was returned once is the one every later open reads.
func loadNode(fsys logFS, dir string, create bool) (string, error) {
	path := filepath.Join(dir, nodeFileName)
	b, err := fsys.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !validNodeID(id) {
			return "", fmt.Errorf("%w: %s holds %q, not a node id", ErrLogCorrupt, path, b)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("dtx: file log: %w", err)
	}
	if !create {
		return "", nil
	}
	var r [8]byte
	rand.Read(r[:]) // never fails
	id := "n" + hex.EncodeToString(r[:])
	tmp := path + ".tmp"
	f, err := fsys.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return "", fmt.Errorf("dtx: file log: %w", err)
	}
	_, err = f.WriteAt([]byte(id+"\n"), 0)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fsys.Rename(tmp, path)
	}
	if err == nil {
		err = fsys.SyncDir(dir)
	}
	if err != nil {
		fsys.Remove(tmp)
		return "", fmt.Errorf("dtx: file log: writing the node id: %w", err)
	}
	return id, nil
}

// validNodeID reports whether id can be a node id: 1 to 20 letters and
// digits.
func validNodeID(id string) bool {
	if len(id) == 0 || len(id) > maxNodeIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}
