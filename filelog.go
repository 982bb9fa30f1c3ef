package dtx

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// FileLog is the embedded decision log: one append-only file of
// checksummed records in a directory, locked against a second process.
//
// A decision is durable when Decide returns: its record is written and the
// file fsynced. Decisions that arrive while an fsync runs wait for the next
// one and share it (group commit). Forget records are written without an
// fsync. When finished records outnumber live ones the file is rewritten
// with only the live ones (compaction), through a temporary file, fsync and
// rename. On open, a torn last record — a crash in the middle of a write —
// is cut off; a bad checksum anywhere else is ErrLogCorrupt.
//
// Record layout: 4-byte big-endian payload length, 4-byte CRC-32C of the
// payload, payload = one type byte ('D' decision, 'F' forget, 'H'
// heuristic) followed by JSON.
type FileLog struct {
	dir  string
	path string

	mu       sync.Mutex
	f        *os.File
	buf      []byte    // records not yet written
	waiters  []waiter  // Decide/Heuristic calls waiting for the next fsync
	flushing bool      // a caller is writing and fsyncing outside mu
	idle     sync.Cond // signalled when flushing ends
	err      error     // the first write error; the log refuses writes after it
	pending  map[string]Decision
	aborted  map[string]bool // globals aborted (fenced against a late Decide)
	claims   map[string]byte // 'D' or 'A' for every global with a record written or being written
	heur     []heuristicRec
	dead     int // records in the file that compaction would drop
	syncs    int64
}

var _ Log = (*FileLog)(nil)

const (
	fileLogName   = "dtx.log"
	fileLogMagic  = "DTXLOG1\n"
	maxRecordSize = 1 << 20
	compactAfter  = 1024 // dead records before compaction is considered
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// waiter is a durable write waiting for its fsync.
type waiter struct {
	ch    chan error
	apply func() // updates the memory, with mu held, once the record is durable
}

type heuristicRec struct {
	Global string `json:"g"`
	Detail string `json:"detail"`
}

type forgetRec struct {
	Global string `json:"g"`
}

// OpenFileLog opens (creating it if needed) the log in dir. Only one process
// may have a directory's log open at a time.
func OpenFileLog(dir string) (*FileLog, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("dtx: file log: %w", err)
	}
	l := &FileLog{dir: dir, path: filepath.Join(dir, fileLogName), pending: map[string]Decision{}, aborted: map[string]bool{}, claims: map[string]byte{}}
	l.idle.L = &l.mu
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("dtx: file log: %w", err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("dtx: file log %s is in use by another process: %w", l.path, err)
	}
	if err := l.load(f); err != nil {
		f.Close()
		return nil, err
	}
	l.f = f
	return l, nil
}

// load reads every record, cuts off a torn tail, and leaves f positioned for
// appending.
func (l *FileLog) load(f *os.File) error {
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("dtx: file log: %w", err)
	}
	if len(data) < len(fileLogMagic) && bytes.HasPrefix([]byte(fileLogMagic), data) {
		// A new file, or one whose header a crash tore: start it afresh.
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("dtx: file log: %w", err)
		}
		if _, err := f.WriteAt([]byte(fileLogMagic), 0); err != nil {
			return fmt.Errorf("dtx: file log: %w", err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("dtx: file log: %w", err)
		}
		if err := syncDir(l.dir); err != nil {
			return fmt.Errorf("dtx: file log: %w", err)
		}
		_, err = f.Seek(int64(len(fileLogMagic)), io.SeekStart)
		return err
	}
	if !bytes.HasPrefix(data, []byte(fileLogMagic)) {
		return fmt.Errorf("%w: %s is not a dtx log", ErrLogCorrupt, l.path)
	}
	off := len(fileLogMagic)
	good := off
	for off < len(data) {
		rest := data[off:]
		if len(rest) < 8 || allZero(rest) {
			break // torn
		}
		n := int(binary.BigEndian.Uint32(rest))
		sum := binary.BigEndian.Uint32(rest[4:])
		if 8+n > len(rest) {
			break // torn: the record runs past the end
		}
		payload := rest[8 : 8+n]
		if n == 0 || n > maxRecordSize || crc32.Checksum(payload, crcTable) != sum {
			if allZero(rest[8+n:]) {
				break // torn last record, perhaps followed by zeros the file grew by
			}
			return fmt.Errorf("%w: %s: bad record at byte %d", ErrLogCorrupt, l.path, off)
		}
		if err := l.apply(payload); err != nil {
			return fmt.Errorf("%w: %s: record at byte %d: %v", ErrLogCorrupt, l.path, off, err)
		}
		off += 8 + n
		good = off
	}
	if good < len(data) {
		if err := f.Truncate(int64(good)); err != nil {
			return fmt.Errorf("dtx: file log: cutting a torn record: %w", err)
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("dtx: file log: %w", err)
		}
	}
	_, err = f.Seek(int64(good), io.SeekStart)
	return err
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// apply updates the in-memory state with one record's payload.
func (l *FileLog) apply(p []byte) error {
	switch p[0] {
	case 'D':
		var d Decision
		if err := json.Unmarshal(p[1:], &d); err != nil {
			return err
		}
		l.pending[d.Global] = d
		l.claims[d.Global] = 'D'
	case 'A':
		var r forgetRec
		if err := json.Unmarshal(p[1:], &r); err != nil {
			return err
		}
		l.aborted[r.Global] = true
		l.claims[r.Global] = 'A'
	case 'F':
		var r forgetRec
		if err := json.Unmarshal(p[1:], &r); err != nil {
			return err
		}
		if _, ok := l.pending[r.Global]; ok {
			delete(l.pending, r.Global)
			l.dead += 2
		}
	case 'H':
		var h heuristicRec
		if err := json.Unmarshal(p[1:], &h); err != nil {
			return err
		}
		l.heur = append(l.heur, h)
	default:
		return fmt.Errorf("unknown record type %q", p[0])
	}
	return nil
}

func record(typ byte, v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	rec := make([]byte, 9, 9+len(body))
	rec[8] = typ
	rec = append(rec, body...)
	binary.BigEndian.PutUint32(rec, uint32(len(rec)-8))
	binary.BigEndian.PutUint32(rec[4:], crc32.Checksum(rec[8:], crcTable))
	return rec, nil
}

// claim reserves global's key for a record of type typ and returns the type
// already claimed, or 0. Claims are kept in memory for the life of the log,
// so a Decide and an Abort of one global never both write.
func (l *FileLog) claim(global string, typ byte) byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c, ok := l.claims[global]; ok {
		return c
	}
	l.claims[global] = typ
	return 0
}

// Decide implements Log: it returns once the decision is fsynced.
func (l *FileLog) Decide(ctx context.Context, d Decision) error {
	switch l.claim(d.Global, 'D') {
	case 'A':
		return fmt.Errorf("%w: global %s", ErrAborted, d.Global)
	case 'D':
		if l.decided(d.Global) != nil {
			return nil
		}
	}
	rec, err := record('D', d)
	if err != nil {
		return err
	}
	// The memory learns of d once d is durable, before a compaction can
	// rewrite the file from the memory.
	return l.write(rec, true, func() { l.pending[d.Global] = d })
}

// decided returns global's durable decision, waiting out a write in flight.
func (l *FileLog) decided(global string) *Decision {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.flushing {
		l.idle.Wait()
	}
	if d, ok := l.pending[global]; ok {
		return &d
	}
	return nil
}

// Abort implements Log: it returns once the abort is fsynced, or returns the
// decision when the global was decided first.
func (l *FileLog) Abort(ctx context.Context, global string) (*Decision, error) {
	switch l.claim(global, 'A') {
	case 'A':
		return nil, nil
	case 'D':
		if d := l.decided(global); d != nil {
			return d, nil
		}
		return nil, fmt.Errorf("%w: the decision of global %s was being written when a write failed", ErrLogClosed, global)
	}
	rec, err := record('A', forgetRec{Global: global})
	if err != nil {
		return nil, err
	}
	return nil, l.write(rec, true, func() { l.aborted[global] = true })
}

// Forget implements Log; the records are written but not fsynced.
func (l *FileLog) Forget(ctx context.Context, globals ...string) error {
	for _, g := range globals {
		l.mu.Lock()
		_, ok := l.pending[g]
		delete(l.pending, g)
		if ok {
			l.dead += 2
		}
		l.mu.Unlock()
		if !ok {
			continue
		}
		rec, err := record('F', forgetRec{Global: g})
		if err != nil {
			return err
		}
		if err := l.write(rec, false, nil); err != nil {
			return err
		}
	}
	return nil
}

// Heuristic implements Log; heuristic records survive compaction.
func (l *FileLog) Heuristic(ctx context.Context, global, detail string) error {
	h := heuristicRec{Global: global, Detail: detail}
	rec, err := record('H', h)
	if err != nil {
		return err
	}
	return l.write(rec, true, func() { l.heur = append(l.heur, h) })
}

// Pending implements Log.
// After a failed write it returns that error: what is on disk may then hold
// decisions the memory does not, and recovery must not act on less.
func (l *FileLog) Pending(ctx context.Context, node string) ([]Decision, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return nil, l.err
	}
	var out []Decision
	for _, d := range l.pending {
		if node == "" || d.Node == node {
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Global < out[j].Global })
	return out, nil
}

// Heuristics returns the heuristic outcomes recorded, oldest first.
func (l *FileLog) Heuristics() map[string]string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]string, len(l.heur))
	for _, h := range l.heur {
		out[h.Global] = h.Detail
	}
	return out
}

// Syncs returns how many fsyncs the log has done since it opened: divided
// by the decisions made, it shows how well group commit works.
func (l *FileLog) Syncs() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.syncs
}

// write appends rec. With durable it returns after an fsync that covers rec,
// and runs apply (with mu held) once that fsync succeeded; the caller that
// finds no fsync running does it, for everyone waiting.
func (l *FileLog) write(rec []byte, durable bool, apply func()) error {
	l.mu.Lock()
	if l.err != nil {
		l.mu.Unlock()
		return l.err
	}
	l.buf = append(l.buf, rec...)
	if !durable {
		var err error
		if !l.flushing {
			err = l.flushLocked(false)
		}
		l.mu.Unlock()
		return err
	}
	ch := make(chan error, 1)
	l.waiters = append(l.waiters, waiter{ch: ch, apply: apply})
	if l.flushing {
		l.mu.Unlock()
		return <-ch
	}
	l.flushing = true
	for len(l.waiters) > 0 {
		buf, ws := l.buf, l.waiters
		l.buf, l.waiters = nil, nil
		// After a failed write nothing more is written: records after a
		// torn one would make it corruption in the middle of the file.
		err := l.err
		if err == nil {
			l.mu.Unlock()
			_, err = l.f.Write(buf)
			if err == nil {
				err = l.f.Sync()
			}
			l.mu.Lock()
			l.syncs++
			if err != nil {
				l.err = fmt.Errorf("%w: writing %s failed: %w", ErrLogClosed, l.path, err)
			}
		}
		for _, w := range ws {
			if err == nil {
				w.apply()
			}
			w.ch <- err
		}
	}
	if len(l.buf) > 0 && l.err == nil {
		l.flushLocked(false)
	}
	if l.err == nil && l.dead >= compactAfter && l.dead > 2*len(l.pending) {
		if err := l.compactLocked(); err != nil {
			l.err = fmt.Errorf("%w: compacting %s failed: %w", ErrLogClosed, l.path, err)
		}
	}
	l.flushing = false
	l.idle.Broadcast()
	l.mu.Unlock()
	return <-ch
}

// flushLocked writes buf with l.mu held, fsyncing when sync is set.
func (l *FileLog) flushLocked(sync bool) error {
	buf := l.buf
	l.buf = nil
	_, err := l.f.Write(buf)
	if err == nil && sync {
		err = l.f.Sync()
		l.syncs++
	}
	if err != nil && l.err == nil {
		l.err = fmt.Errorf("%w: writing %s failed: %w", ErrLogClosed, l.path, err)
	}
	return err
}

// compactLocked rewrites the file with only live records.
func (l *FileLog) compactLocked() error {
	tmp := l.path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	out := []byte(fileLogMagic)
	for _, d := range l.pending {
		rec, err := record('D', d)
		if err != nil {
			f.Close()
			return err
		}
		out = append(out, rec...)
	}
	for g := range l.aborted {
		rec, err := record('A', forgetRec{Global: g})
		if err != nil {
			f.Close()
			return err
		}
		out = append(out, rec...)
	}
	for _, h := range l.heur {
		rec, err := record('H', h)
		if err != nil {
			f.Close()
			return err
		}
		out = append(out, rec...)
	}
	if _, err := f.Write(out); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return err
	}
	if err := os.Rename(tmp, l.path); err != nil {
		f.Close()
		return err
	}
	if err := syncDir(l.dir); err != nil {
		f.Close()
		return err
	}
	l.f.Close()
	l.f = f
	l.dead = 0
	l.syncs += 2
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Close writes what is buffered, fsyncs and releases the file.
func (l *FileLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.flushing {
		l.idle.Wait()
	}
	if l.f == nil {
		return nil
	}
	var err error
	if l.err == nil {
		err = l.flushLocked(true)
	}
	cerr := l.f.Close()
	l.f = nil
	if l.err == nil {
		l.err = ErrLogClosed
	}
	if err != nil {
		return err
	}
	return cerr
}
