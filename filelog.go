package dtx

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// FileLog is the embedded decision log: one append-only file of
// checksummed records (see filelog_record.go) in a directory, locked against
// a second process. It serves one process on one machine, and is only as
// durable as that machine's disk.
//
// A decision or abort is durable when Decide or Abort returns: its record is
// written and the file fsynced. Records that arrive while an fsync runs wait
// for the next one and share it (group commit). Forget records are written
// without an fsync. When finished records outnumber live ones the file is
// rewritten with only the live ones (compaction), through a temporary file,
// fsync, rename and a directory fsync.
//
// Decide and Abort of one global claim its key under the log's mutex before
// anything is written, so whichever comes first wins and the other waits for
// the outcome of that write. A failed write or fsync is cut back (truncate
// to the last fsynced size, fsync): the records of that batch are then
// certainly not on disk, their callers are told so, and the log stays
// usable. Only when cutting back fails too is the log broken: see Err.
type FileLog struct {
	dir       string
	path      string
	node      string
	retention time.Duration
	readOnly  bool
	now       func() time.Time // the clock; tests move it
	fs        logFS            // the file system; tests simulate power cuts in it
	compact   int              // dead records before compaction is considered

	mu       sync.Mutex
	f        logFile
	size     int64               // bytes in the file, with writes not yet fsynced
	synced   int64               // bytes in the file at the last fsync that succeeded
	buf      []byte              // records not yet written
	waiters  []waiter            // durable writes waiting for the next fsync
	flushing bool                // a caller is writing and fsyncing outside mu
	idle     sync.Cond           // signalled when flushing ends
	err      error               // broken or closed: set once, never cleared
	pending  map[string]Decision // durable decisions not forgotten
	aborted  map[string]bool     // durable aborts, until compaction expires them
	inflight map[string]*flight  // globals whose decision or abort is being written
	heur     []heuristicRec
	dead     int // records in the file that compaction would drop
	syncs    int64
}

var _ Log = (*FileLog)(nil)

// FileLogOption tunes OpenFileLog and OpenFileLogReadOnly.
type FileLogOption func(*FileLog)

// WithAbortRetention sets how long abort records are kept (default 24h).
// Decide refuses a global older than half of it, so an abort older than all
// of it can no longer meet a late Decide and compaction drops it. The age is
// read from the global's id (a UUIDv7); the abort of a global whose id is
// not one is kept for ever.
func WithAbortRetention(d time.Duration) FileLogOption {
	return func(l *FileLog) {
		if d > 0 {
			l.retention = d
		}
	}
}

const (
	fileLogName           = "dtx.log"
	compactAfter          = 1024 // dead records before compaction is considered
	defaultAbortRetention = 24 * time.Hour
)

// errReadOnly is returned by the writes of a log opened read-only.
var errReadOnly = fmt.Errorf("%w: opened read-only", ErrLogClosed)

// flight is a claim on a global's key while its record is written; done is
// closed once the outcome is known and the memory shows it.
type flight struct{ done chan struct{} }

// waiter is a durable write waiting for its fsync.
type waiter struct {
	ch     chan error
	global string // whose claim the write holds; "" for a heuristic
	typ    byte
	apply  func() // updates the memory, with mu held, once the record is durable
}

type heuristicRec struct {
	Global string `json:"g"`
	Detail string `json:"detail"`
}

type forgetRec struct {
	Global string `json:"g"`
}

func newFileLog(dir string, opts []FileLogOption) *FileLog {
	l := &FileLog{
		dir: dir, path: filepath.Join(dir, fileLogName),
		retention: defaultAbortRetention, now: time.Now, fs: osFS{}, compact: compactAfter,
		pending: map[string]Decision{}, aborted: map[string]bool{}, inflight: map[string]*flight{},
	}
	l.idle.L = &l.mu
	for _, o := range opts {
		o(l)
	}
	return l
}

// OpenFileLog opens (creating it if needed) the log in dir. Only one process
// may have a directory's log open at a time. A log in the first format
// (DTXLOG1) is rewritten in the current one.
func OpenFileLog(dir string, opts ...FileLogOption) (*FileLog, error) {
	l := newFileLog(dir, opts)
	if err := mkdirAllSync(l.fs, dir); err != nil {
		return nil, fmt.Errorf("dtx: file log: %w", err)
	}
	f, err := l.fs.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("dtx: file log: %w", err)
	}
	if err := f.Lock(); err != nil {
		f.Close()
		return nil, fmt.Errorf("dtx: file log %s is in use by another process: %w", l.path, err)
	}
	if err := l.open(f); err != nil {
		l.f.Close()
		return nil, err
	}
	return l, nil
}

// OpenFileLogReadOnly loads the log in dir without taking its lock and
// without changing anything: a torn tail is ignored, not cut off. It is for
// looking at the log of a running service (Pending, Heuristics, Node); its
// writes return ErrLogClosed, and it does not see what is written after it
// opened.
func OpenFileLogReadOnly(dir string, opts ...FileLogOption) (*FileLog, error) {
	l := newFileLog(dir, opts)
	l.readOnly = true
	data, err := l.fs.ReadFile(l.path)
	if err != nil {
		return nil, fmt.Errorf("dtx: file log: %w", err)
	}
	if _, _, err := l.load(data); err != nil {
		return nil, err
	}
	if l.node, err = loadNode(l.fs, dir, false); err != nil {
		return nil, err
	}
	return l, nil
}

// open loads f, cuts off a torn tail or starts a new file, and rewrites a
// log of the first format. l.f is f once it returns, even on error.
func (l *FileLog) open(f logFile) error {
	l.f = f
	data, err := io.ReadAll(f)
	if err != nil {
		return fmt.Errorf("dtx: file log: %w", err)
	}
	end, v1, err := l.load(data)
	if err != nil {
		return err // a corrupt log is left as it is, for an operator
	}
	switch {
	case end == 0: // a new file, or one whose magic a crash tore
		err = f.Truncate(0)
		if err == nil {
			_, err = f.WriteAt([]byte(fileLogMagic), 0)
		}
		if err == nil {
			err = f.Sync()
		}
		end = len(fileLogMagic)
	case end < len(data):
		// A torn tail: a batch that was being written when the process or
		// the machine stopped, whose callers were never answered.
		err = f.Truncate(int64(end))
		if err == nil {
			err = f.Sync()
		}
	}
	if err != nil {
		return fmt.Errorf("dtx: file log: %w", err)
	}
	l.size, l.synced = int64(end), int64(end)
	if v1 {
		if err := l.compactLocked(); err != nil {
			return fmt.Errorf("dtx: file log: rewriting %s in the current format: %w", l.path, err)
		}
	}
	if l.node, err = loadNode(l.fs, l.dir, true); err != nil {
		return err
	}
	// The names of the log file and the node file: fsynced at every open,
	// not only when this open made them, since an earlier open in this
	// process may have made them and failed before its directory fsync,
	// and nothing is acknowledged on a file whose name a crash may lose.
	if err := l.fs.SyncDir(l.dir); err != nil {
		return fmt.Errorf("dtx: file log: %w", err)
	}
	return nil
}

// load applies the records of data, a whole log file, to the memory. It
// returns where the valid records end (0 for a file to start afresh) and
// whether the file is of the first format.
func (l *FileLog) load(data []byte) (end int, v1 bool, err error) {
	if len(data) < len(fileLogMagic) &&
		(bytes.HasPrefix([]byte(fileLogMagic), data) || bytes.HasPrefix([]byte(fileLogMagicV1), data)) {
		return 0, false, nil
	}
	switch {
	case bytes.HasPrefix(data, []byte(fileLogMagic)):
	case bytes.HasPrefix(data, []byte(fileLogMagicV1)):
		v1 = true
	default:
		return 0, false, fmt.Errorf("%w: %s is not a dtx log", ErrLogCorrupt, l.path)
	}
	end, err = scanRecords(data, v1, l.apply)
	if err != nil {
		return 0, false, fmt.Errorf("%w: %s: %w", ErrLogCorrupt, l.path, err)
	}
	return end, v1, nil
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
	case 'A':
		var r forgetRec
		if err := json.Unmarshal(p[1:], &r); err != nil {
			return err
		}
		l.aborted[r.Global] = true
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

// Node returns the id of this log's node: random, made when the directory's
// log was first opened and kept in dir/node, so it stays the same across
// restarts and differs between directories (two replicas never share it).
// It is "" for a log opened read-only whose directory has no node file yet.
func (l *FileLog) Node() string { return l.node }

// Err returns nil while the log can take writes, and otherwise why not: the
// log was closed, opened read-only, or broken by a write that failed in a way
// that leaves what is on disk unknown (ErrLogClosed in each case). A
// coordinator can refuse new globals on it at once.
func (l *FileLog) Err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writableLocked()
}

func (l *FileLog) writableLocked() error {
	if l.err != nil {
		return l.err
	}
	if l.readOnly {
		return errReadOnly
	}
	return nil
}

// Decide implements Log: it returns once the decision is fsynced.
func (l *FileLog) Decide(ctx context.Context, d Decision) error {
	if err := validDecision(d); err != nil {
		return err
	}
	rec, err := record('D', d)
	if err != nil {
		return fmt.Errorf("%w: global %s: %w", ErrNotDecided, d.Global, err)
	}
	l.mu.Lock()
	for {
		if _, ok := l.pending[d.Global]; ok {
			l.mu.Unlock()
			return nil
		}
		if l.aborted[d.Global] {
			l.mu.Unlock()
			return fmt.Errorf("%w: global %s", ErrAborted, d.Global)
		}
		if err := l.writableLocked(); err != nil {
			l.mu.Unlock()
			return err
		}
		if fl := l.inflight[d.Global]; fl != nil {
			l.waitLocked(fl)
			continue
		}
		break
	}
	// An abort this old may have been dropped by compaction already, so its
	// absence proves nothing: refuse. Half the retention leaves the other
	// half as a margin for clock steps.
	if at, ok := globalTime(d.Global); ok && l.now().Sub(at) > l.retention/2 {
		l.mu.Unlock()
		return fmt.Errorf("%w: global %s is older than half the abort retention (%v)", ErrAborted, d.Global, l.retention/2)
	}
	return l.commit(rec, d.Global, 'D', func() { l.pending[d.Global] = d })
}

// Abort implements Log: it returns once the abort is fsynced, or returns the
// decision when the global was decided first.
func (l *FileLog) Abort(ctx context.Context, global string) (*Decision, error) {
	if err := checkID("global", global); err != nil {
		return nil, err
	}
	rec, err := record('A', forgetRec{Global: global})
	if err != nil {
		return nil, fmt.Errorf("dtx: file log: abort of global %s: %w", global, err)
	}
	l.mu.Lock()
	for {
		if d, ok := l.pending[global]; ok {
			l.mu.Unlock()
			return &d, nil
		}
		if l.aborted[global] {
			l.mu.Unlock()
			return nil, nil
		}
		if err := l.writableLocked(); err != nil {
			l.mu.Unlock()
			return nil, err
		}
		if fl := l.inflight[global]; fl != nil {
			l.waitLocked(fl)
			continue
		}
		break
	}
	return nil, l.commit(rec, global, 'A', func() { l.aborted[global] = true })
}

// waitLocked waits, with mu released, until fl's outcome is in the memory.
func (l *FileLog) waitLocked(fl *flight) {
	l.mu.Unlock()
	<-fl.done
	l.mu.Lock()
}

// Forget implements Log; the records are written but not fsynced.
func (l *FileLog) Forget(ctx context.Context, globals ...string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.writableLocked(); err != nil {
		return err
	}
	for _, g := range globals {
		if _, ok := l.pending[g]; !ok {
			continue
		}
		rec, err := record('F', forgetRec{Global: g})
		if err != nil {
			return fmt.Errorf("dtx: file log: forget of global %s: %w", g, err)
		}
		delete(l.pending, g)
		l.dead += 2
		l.buf = append(l.buf, rec...)
	}
	if len(l.buf) > 0 && !l.flushing {
		return l.appendLocked()
	}
	return nil // the writer that is flushing writes them
}

// Heuristic implements Log; heuristic records survive compaction. A detail
// that is not valid UTF-8 is kept with each bad byte sequence as U+FFFD: it
// is text for an operator.
func (l *FileLog) Heuristic(ctx context.Context, global, detail string) error {
	if err := checkID("global", global); err != nil {
		return err
	}
	h := heuristicRec{Global: global, Detail: strings.ToValidUTF8(detail, "\uFFFD")}
	rec, err := record('H', h)
	if err != nil {
		return fmt.Errorf("dtx: file log: heuristic of global %s: %w", global, err)
	}
	l.mu.Lock()
	if err := l.writableLocked(); err != nil {
		l.mu.Unlock()
		return err
	}
	return l.commit(rec, "", 'H', func() { l.heur = append(l.heur, h) })
}

// Pending implements Log.
// Once the log is broken it returns that error: what is on disk may then
// hold decisions the memory does not, and recovery must not act on less.
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

// Heuristics returns the heuristic outcomes recorded, by global.
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

// commit queues rec, claiming global's key when global is set, and returns
// once an fsync covers it (nil), or the write was cut back (an error that
// says nothing was recorded), or the log broke. It is called with mu held
// and releases it. The caller that finds no fsync running does it, for
// everyone waiting.
func (l *FileLog) commit(rec []byte, global string, typ byte, apply func()) error {
	if global != "" {
		l.inflight[global] = &flight{done: make(chan struct{})}
	}
	ch := make(chan error, 1)
	l.buf = append(l.buf, rec...)
	l.waiters = append(l.waiters, waiter{ch: ch, global: global, typ: typ, apply: apply})
	if !l.flushing {
		l.flushLocked()
	}
	l.mu.Unlock()
	return <-ch
}

// flushLocked writes and fsyncs batches, with mu released during the I/O,
// until no durable write waits; then it compacts when that is due. It is
// called and returns with mu held.
func (l *FileLog) flushLocked() {
	l.flushing = true
	for len(l.waiters) > 0 {
		buf, ws := l.buf, l.waiters
		l.buf, l.waiters = nil, nil
		var cut error // the write's error, when it was cut back
		if l.err == nil {
			// Only this caller writes while flushing is set (Forget and
			// Close wait for it to end), so l.f, size and synced stay put.
			off, synced := l.size, l.synced
			l.mu.Unlock()
			_, err := l.f.WriteAt(buf, off)
			if err == nil {
				err = l.f.Sync()
			}
			var broken error
			if err != nil {
				broken = l.cutBack(synced, err)
			}
			l.mu.Lock()
			l.syncs++
			switch {
			case err == nil:
				l.size = off + int64(len(buf))
				l.synced = l.size
			case broken == nil:
				l.size, cut = synced, err
			default:
				l.err = broken
			}
		}
		for _, w := range ws {
			l.finishLocked(w, cut)
		}
	}
	if len(l.buf) > 0 && l.err == nil {
		l.appendLocked() // forgets queued while the batch was written; their error is not theirs to see
	}
	if l.err == nil && l.dead >= l.compact && l.dead > 2*(len(l.pending)+len(l.aborted)+len(l.heur)) {
		// A failed compaction leaves the old file, which is still right, in
		// use; compactLocked itself breaks the log when it cannot tell.
		_ = l.compactLocked()
	}
	l.flushing = false
	l.idle.Broadcast()
}

// finishLocked answers w once its batch is done: cut is the write's error
// when the batch was cut back off the file. The memory shows w's record
// before its claim is released, so a caller waiting on the claim sees it.
func (l *FileLog) finishLocked(w waiter, cut error) {
	var err error
	switch {
	case l.err != nil:
		err = l.err
	case cut != nil:
		switch w.typ {
		case 'D':
			err = fmt.Errorf("%w: global %s: writing %s failed and was cut back: %w", ErrNotDecided, w.global, l.path, cut)
		case 'A':
			err = fmt.Errorf("dtx: abort of global %s not recorded: writing %s failed and was cut back: %w", w.global, l.path, cut)
		default:
			err = fmt.Errorf("dtx: heuristic not recorded: writing %s failed and was cut back: %w", l.path, cut)
		}
	default:
		w.apply()
	}
	if fl := l.inflight[w.global]; fl != nil {
		delete(l.inflight, w.global)
		close(fl.done)
	}
	w.ch <- err
}

// appendLocked writes l.buf without an fsync, with mu held, while no batch
// is being written.
func (l *FileLog) appendLocked() error {
	buf := l.buf
	l.buf = nil
	if _, err := l.f.WriteAt(buf, l.size); err != nil {
		if broken := l.cutBack(l.synced, err); broken != nil {
			l.err = broken
			return broken
		}
		l.size = l.synced
		return fmt.Errorf("dtx: file log: writing %s failed and was cut back to its last fsync: %w", l.path, err)
	}
	l.size += int64(len(buf))
	return nil
}

// cutBack undoes a failed write: it truncates the file to synced, its size
// at the last fsync that succeeded, and fsyncs. Once that succeeds no byte
// of the failed write is in the file, whatever part of it reached the disk,
// so its records are certainly not recorded and the next write appends
// where valid records end. It cuts back to the last fsync rather than to
// the start of the failed write because a failed fsync may have dropped the
// unwritten pages of earlier unsynced writes (forgets, which may be lost)
// too, which would otherwise read as a hole in the middle of the file. It
// returns the error of the broken state when cutting back fails.
func (l *FileLog) cutBack(synced int64, cause error) error {
	err := l.f.Truncate(synced)
	if err == nil {
		err = l.f.Sync()
	}
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: writing %s failed (%v) and cutting it back failed, what it holds is unknown: %w", ErrLogClosed, l.path, cause, err)
}

// compactLocked rewrites the file with only live records: pending decisions,
// aborts younger than the retention, heuristics. It runs with mu held and
// no write waiting (every confirmed record is in the memory it writes from),
// or at open. When it fails before the rename the old file stays in use;
// after the rename it breaks the log, since a crash may bring either file
// back.
func (l *FileLog) compactLocked() error {
	now := l.now()
	out := []byte(fileLogMagic)
	var expired []string
	var err error
	add := func(typ byte, v any) {
		rec, e := record(typ, v)
		if e != nil && err == nil {
			err = e
		}
		out = append(out, rec...)
	}
	for _, d := range l.pending {
		add('D', d)
	}
	for g := range l.aborted {
		if at, ok := globalTime(g); ok && now.Sub(at) > l.retention {
			expired = append(expired, g) // no Decide of g can succeed any more
			continue
		}
		add('A', forgetRec{Global: g})
	}
	for _, h := range l.heur {
		add('H', h)
	}
	if err != nil {
		return err
	}
	tmp := l.path + ".tmp"
	f, err := l.fs.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(out, 0)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Lock()
	}
	if err == nil {
		err = l.fs.Rename(tmp, l.path)
	}
	if err != nil {
		f.Close()
		l.fs.Remove(tmp)
		return err
	}
	l.f.Close()
	l.f = f
	if err := l.fs.SyncDir(l.dir); err != nil {
		l.err = fmt.Errorf("%w: compacting %s: %w", ErrLogClosed, l.path, err)
		return l.err
	}
	for _, g := range expired {
		delete(l.aborted, g)
	}
	l.size, l.synced = int64(len(out)), int64(len(out))
	l.dead = 0
	l.syncs += 2
	return nil
}

// Close writes what is buffered, fsyncs and releases the file.
func (l *FileLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.flushing {
		l.idle.Wait()
	}
	if l.f == nil {
		if l.err == nil {
			l.err = ErrLogClosed
		}
		return nil
	}
	var err error
	if l.err == nil && len(l.buf) > 0 {
		err = l.appendLocked()
	}
	if l.err == nil && err == nil {
		err = l.f.Sync()
		l.syncs++
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
