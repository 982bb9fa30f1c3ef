package dtx

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
)

// memFS is a strict in-memory file system for the FileLog's power-cut
// tests, after Pebble's vfs.NewStrictMem: a power cut keeps of each file
// only what its last fsync covered (sometimes plus a prefix of the bytes
// written after it, as a disk may, with or without its data), and of each
// directory only the names its last fsync saw. A file created or renamed
// and not followed by an fsync of its directory vanishes, or comes back
// under its old name.
//
// The cut comes before the cutAt-th operation that changes something
// (create, write, truncate, fsync, rename, remove, mkdir): that operation
// and every one after it fail with errPowerCut, as if the machine had
// stopped there, and crash returns the disk as it is after the restart.
type memFS struct {
	mu          sync.Mutex
	names       map[string]*memNode // what the running process sees
	durable     map[string]*memNode // what a power cut keeps
	ops         int                 // operations that changed something
	cutAt       int                 // 0: never
	image       map[string]*memNode // the disk after the cut, once cut
	rng         *rand.Rand
	fail        map[string]int // op → fail its next calls with errInjected (not a cut)
	compactions int            // renames onto a log file: compactions that got that far
}

type memNode struct {
	dir    bool
	data   []byte // as written
	synced []byte // as of the last fsync
	locked bool
}

var (
	errPowerCut = errors.New("simulated power cut")
	errInjected = errors.New("injected I/O error")
)

var _ logFS = (*memFS)(nil)

// newMemFS returns an empty disk with the directory "/".
func newMemFS(seed uint64) *memFS {
	root := &memNode{dir: true}
	return &memFS{
		names: map[string]*memNode{"/": root}, durable: map[string]*memNode{"/": root},
		rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), fail: map[string]int{},
	}
}

// op counts an operation that changes the disk; it returns the error the
// operation fails with: errPowerCut from the cut on, or an injected one.
func (m *memFS) op(name string) error {
	if m.image != nil {
		return errPowerCut
	}
	m.ops++
	if m.cutAt > 0 && m.ops >= m.cutAt {
		m.image = m.survivors()
		return errPowerCut
	}
	if m.fail[name] > 0 {
		m.fail[name]--
		if m.fail[name] == 0 {
			return errInjected
		}
	}
	return nil
}

// cut cuts the power now, if it was not cut already.
func (m *memFS) cut() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.image == nil {
		m.image = m.survivors()
	}
}

// isCut reports whether the power was cut.
func (m *memFS) isCut() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.image != nil
}

// survivors is what the disk holds after a cut now: the durable names whose
// directories are durable too, each file with its synced bytes and, half the
// time, some of what was written after them.
func (m *memFS) survivors() map[string]*memNode {
	out := map[string]*memNode{}
	for name, n := range m.durable {
		if name != "/" && !m.durableDir(filepath.Dir(name)) {
			continue
		}
		if n.dir {
			out[name] = &memNode{dir: true}
			continue
		}
		data := bytes.Clone(n.synced)
		if extra := len(n.data) - len(n.synced); extra > 0 && bytes.HasPrefix(n.data, n.synced) && m.rng.IntN(2) == 0 {
			k := 1 + m.rng.IntN(extra)
			tail := bytes.Clone(n.data[len(n.synced) : len(n.synced)+k])
			if m.rng.IntN(3) == 0 { // the size reached the disk before the data
				clear(tail[m.rng.IntN(len(tail)):])
			}
			data = append(data, tail...)
		}
		out[name] = &memNode{data: data, synced: bytes.Clone(data)}
	}
	return out
}

func (m *memFS) durableDir(dir string) bool {
	for {
		n, ok := m.durable[dir]
		if !ok || !n.dir {
			return false
		}
		if dir == "/" {
			return true
		}
		dir = filepath.Dir(dir)
	}
}

// crash returns the disk as it is after the cut, with nothing open: the
// machine restarted.
func (m *memFS) crash() *memFS {
	m.cut()
	return memFSFrom(m.image, m.rng.Uint64())
}

// memFSFrom returns a disk holding a copy of image, everything in it durable.
func memFSFrom(image map[string]*memNode, seed uint64) *memFS {
	m := newMemFS(seed)
	for name, n := range image {
		if name != "/" {
			c := &memNode{dir: n.dir, data: bytes.Clone(n.data), synced: bytes.Clone(n.data)}
			m.names[name], m.durable[name] = c, c
		}
	}
	return m
}

// file returns the current bytes of name, for tests.
func (m *memFS) file(name string) []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n, ok := m.names[name]; ok {
		return bytes.Clone(n.data)
	}
	return nil
}

// listing returns the names the running process sees, sorted.
func (m *memFS) listing() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for name := range m.names {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

func (m *memFS) parentOK(name string) error {
	if p, ok := m.names[filepath.Dir(name)]; !ok || !p.dir {
		return &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return nil
}

func (m *memFS) OpenFile(name string, flag int, perm fs.FileMode) (logFile, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.image != nil {
		return nil, errPowerCut
	}
	n, ok := m.names[name]
	switch {
	case ok && n.dir:
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EISDIR}
	case !ok && flag&os.O_CREATE == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case !ok || flag&os.O_TRUNC != 0:
		if err := m.parentOK(name); err != nil {
			return nil, err
		}
		if err := m.op("open"); err != nil {
			return nil, err
		}
		if !ok {
			n = &memNode{}
			m.names[name] = n
		}
		n.data = n.data[:0:0]
	}
	return &memFile{fs: m, n: n}, nil
}

func (m *memFS) ReadFile(name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.image != nil {
		return nil, errPowerCut
	}
	n, ok := m.names[name]
	if !ok || n.dir {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	}
	return bytes.Clone(n.data), nil
}

func (m *memFS) IsDir(name string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.image != nil {
		return false, errPowerCut
	}
	n, ok := m.names[filepath.Clean(name)]
	if !ok {
		return false, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	return n.dir, nil
}

func (m *memFS) Mkdir(name string, perm fs.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.names[name]; ok {
		return &fs.PathError{Op: "mkdir", Path: name, Err: fs.ErrExist}
	}
	if err := m.parentOK(name); err != nil {
		return err
	}
	if err := m.op("mkdir"); err != nil {
		return err
	}
	m.names[name] = &memNode{dir: true}
	return nil
}

func (m *memFS) Rename(oldpath, newpath string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.names[oldpath]
	if !ok {
		return &fs.PathError{Op: "rename", Path: oldpath, Err: fs.ErrNotExist}
	}
	if err := m.op("rename"); err != nil {
		return err
	}
	delete(m.names, oldpath)
	m.names[newpath] = n
	if filepath.Base(newpath) == fileLogName {
		m.compactions++
	}
	return nil
}

func (m *memFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.names[name]; !ok {
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	}
	if err := m.op("remove"); err != nil {
		return err
	}
	delete(m.names, name)
	return nil
}

// SyncDir makes the names in dir, as they are now, the ones a cut keeps.
func (m *memFS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir = filepath.Clean(dir)
	if n, ok := m.names[dir]; !ok || !n.dir {
		return &fs.PathError{Op: "open", Path: dir, Err: fs.ErrNotExist}
	}
	if err := m.op("syncdir"); err != nil {
		return err
	}
	for name := range m.durable {
		if name != "/" && filepath.Dir(name) == dir {
			delete(m.durable, name)
		}
	}
	for name, n := range m.names {
		if name != "/" && filepath.Dir(name) == dir {
			m.durable[name] = n
		}
	}
	return nil
}

// memFile is an open file of a memFS.
type memFile struct {
	fs     *memFS
	n      *memNode
	pos    int
	locked bool
	closed bool
}

func (f *memFile) Read(b []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.fs.image != nil {
		return 0, errPowerCut
	}
	if f.pos >= len(f.n.data) {
		return 0, io.EOF
	}
	k := copy(b, f.n.data[f.pos:])
	f.pos += k
	return k, nil
}

func (f *memFile) WriteAt(b []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return 0, os.ErrClosed
	}
	if err := f.fs.op("write"); err != nil {
		return 0, err
	}
	if end := int(off) + len(b); end > len(f.n.data) {
		f.n.data = append(f.n.data, make([]byte, end-len(f.n.data))...)
	}
	copy(f.n.data[off:], b)
	return len(b), nil
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return os.ErrClosed
	}
	if err := f.fs.op("truncate"); err != nil {
		return err
	}
	if int(size) <= len(f.n.data) {
		f.n.data = f.n.data[:size]
	} else {
		f.n.data = append(f.n.data, make([]byte, int(size)-len(f.n.data))...)
	}
	return nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return os.ErrClosed
	}
	if err := f.fs.op("sync"); err != nil {
		return err
	}
	f.n.synced = bytes.Clone(f.n.data)
	return nil
}

func (f *memFile) Lock() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.n.locked && !f.locked {
		return syscall.EWOULDBLOCK
	}
	f.n.locked, f.locked = true, true
	return nil
}

func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return os.ErrClosed
	}
	f.closed = true
	if f.locked {
		f.n.locked, f.locked = false, false
	}
	return nil
}
