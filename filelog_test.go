package dtx

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
)

// testDecision is a decision with every field set, distinct per i.
func testDecision(i int) Decision {
	return Decision{
		Global: fmt.Sprintf("g%04d", i),
		Node:   []string{"node-a", "node-b"}[i%2],
		Branches: []BranchRef{
			{Resource: "orders", Name: fmt.Sprintf("node-a.g%04d.0", i)},
			{Resource: "stock", Name: fmt.Sprintf("node-a.g%04d.1", i)},
		},
		// Nanoseconds and a zone other than UTC, to see both survive.
		At: time.Date(2025, 3, 4, 5, 6, 7, 123456789+i, time.FixedZone("X", 3600)),
	}
}

// openTestLog opens the log in dir and closes it when t ends.
func openTestLog(t *testing.T, dir string) *FileLog {
	t.Helper()
	l, err := OpenFileLog(dir)
	if err != nil {
		t.Fatalf("OpenFileLog: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// reopen closes l and opens its directory again.
func reopen(t *testing.T, l *FileLog) *FileLog {
	t.Helper()
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return openTestLog(t, l.dir)
}

func mustDecide(t *testing.T, l *FileLog, d Decision) {
	t.Helper()
	if err := l.Decide(context.Background(), d); err != nil {
		t.Fatalf("Decide %s: %v", d.Global, err)
	}
}

func mustForget(t *testing.T, l *FileLog, g string) {
	t.Helper()
	if err := l.Forget(context.Background(), g); err != nil {
		t.Fatalf("Forget %s: %v", g, err)
	}
}

// checkPending fails t unless l's pending decisions (all nodes) are exactly
// want, field by field.
func checkPending(t *testing.T, l *FileLog, want ...Decision) {
	t.Helper()
	got, err := l.Pending(context.Background(), "")
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	want = append([]Decision(nil), want...)
	sort.Slice(want, func(i, j int) bool { return want[i].Global < want[j].Global })
	if len(got) != len(want) {
		t.Fatalf("Pending: %d decisions, want %d; missing %v, unexpected %v",
			len(got), len(want), minus(globals(want), globals(got)), minus(globals(got), globals(want)))
	}
	for i := range want {
		checkDecision(t, got[i], want[i])
	}
}

func checkDecision(t *testing.T, got, want Decision) {
	t.Helper()
	if got.Global != want.Global || got.Node != want.Node || !got.At.Equal(want.At) ||
		fmt.Sprint(got.Branches) != fmt.Sprint(want.Branches) {
		t.Fatalf("decision\n got %+v\nwant %+v", got, want)
	}
}

// minus returns the strings of a that are not in b.
func minus(a, b []string) []string {
	in := map[string]bool{}
	for _, s := range b {
		in[s] = true
	}
	var out []string
	for _, s := range a {
		if !in[s] {
			out = append(out, s)
		}
	}
	return out
}

func globals(ds []Decision) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.Global)
	}
	return out
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// recordBounds returns the offsets at which the records of a log file's
// contents start, and the end of the last one.
func recordBounds(t *testing.T, data []byte) []int {
	t.Helper()
	if !bytes.HasPrefix(data, []byte(fileLogMagic)) {
		t.Fatalf("no magic in %q", data)
	}
	off := len(fileLogMagic)
	bounds := []int{off}
	for off < len(data) {
		off += recordHeader + int(binary.BigEndian.Uint32(data[off:]))
		if off > len(data) {
			t.Fatalf("record runs past the end of the file")
		}
		bounds = append(bounds, off)
	}
	return bounds
}

// writeLog writes data as the log file of a new directory.
func writeLog(t *testing.T, data []byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, fileLogName), data, 0o640); err != nil {
		t.Fatal(err)
	}
	return dir
}

// sampleLog writes n decisions to a new log and returns the file's contents.
func sampleLog(t *testing.T, n int) (data []byte, ds []Decision) {
	t.Helper()
	dir := t.TempDir()
	l, err := OpenFileLog(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		ds = append(ds, testDecision(i))
		mustDecide(t, l, ds[i])
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	data, err = os.ReadFile(filepath.Join(dir, fileLogName))
	if err != nil {
		t.Fatal(err)
	}
	if b := recordBounds(t, data); len(b) != n+1 {
		t.Fatalf("%d records in the file, want %d", len(b)-1, n)
	}
	return data, ds
}

func TestFileLogRoundTrip(t *testing.T) {
	ctx := context.Background()
	l := openTestLog(t, t.TempDir())
	var ds []Decision
	for i := range 6 {
		ds = append(ds, testDecision(i))
		mustDecide(t, l, ds[i])
	}
	mustForget(t, l, ds[1].Global)
	mustForget(t, l, ds[4].Global)
	mustForget(t, l, "never-decided") // a no-op, not an error
	if err := l.Heuristic(ctx, ds[2].Global, "stock: branch gone"); err != nil {
		t.Fatal(err)
	}
	mustForget(t, l, ds[2].Global) // forgotten, but the heuristic stays
	want := []Decision{ds[0], ds[3], ds[5]}
	checkPending(t, l, want...)

	for range 2 { // twice: a reopened log must itself reopen intact
		l = reopen(t, l)
		checkPending(t, l, want...)
		if h := l.Heuristics(); len(h) != 1 || h[ds[2].Global] != "stock: branch gone" {
			t.Fatalf("Heuristics after reopen = %v", h)
		}
	}

	// Pending filters by node; "" means every node.
	a, err := l.Pending(ctx, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	if g := strings.Join(globals(a), ","); g != "g0000" {
		t.Fatalf("Pending(node-a) = %s, want g0000", g)
	}
	b, err := l.Pending(ctx, "node-b")
	if err != nil {
		t.Fatal(err)
	}
	if g := strings.Join(globals(b), ","); g != "g0003,g0005" {
		t.Fatalf("Pending(node-b) = %s, want g0003,g0005", g)
	}
	if none, err := l.Pending(ctx, "node-c"); err != nil || len(none) != 0 {
		t.Fatalf("Pending(node-c) = %v, %v; want nothing", none, err)
	}
}

func TestFileLogTornLastRecord(t *testing.T) {
	data, ds := sampleLog(t, 3)
	bounds := recordBounds(t, data)
	last, end := bounds[2], bounds[3]
	for cut := last + 1; cut < end; cut++ {
		dir := writeLog(t, data[:cut])
		l, err := OpenFileLog(dir)
		if err != nil {
			t.Fatalf("cut at %d of %d: OpenFileLog: %v", cut, end, err)
		}
		checkPending(t, l, ds[0], ds[1])
		path := filepath.Join(dir, fileLogName)
		if n := fileSize(t, path); n != int64(last) {
			t.Fatalf("cut at %d: file is %d bytes after open, want %d (cut back to the last good record)", cut, n, last)
		}
		d := testDecision(99)
		mustDecide(t, l, d)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l, err = OpenFileLog(dir)
		if err != nil {
			t.Fatalf("cut at %d: reopening after an append: %v", cut, err)
		}
		checkPending(t, l, ds[0], ds[1], d)
		l.Close()
	}
}

func TestFileLogTornHeader(t *testing.T) {
	for cut := 0; cut < len(fileLogMagic); cut++ {
		dir := writeLog(t, []byte(fileLogMagic[:cut]))
		l, err := OpenFileLog(dir)
		if err != nil {
			t.Fatalf("header cut at %d: %v", cut, err)
		}
		checkPending(t, l)
		d := testDecision(1)
		mustDecide(t, l, d)
		l = reopen(t, l)
		checkPending(t, l, d)
		l.Close()
	}
}

func TestFileLogTrailingZeros(t *testing.T) {
	data, ds := sampleLog(t, 3)
	bounds := recordBounds(t, data)
	zeros := make([]byte, 4096)

	t.Run("after the last record", func(t *testing.T) {
		dir := writeLog(t, append(bytes.Clone(data), zeros...))
		l := openTestLog(t, dir)
		checkPending(t, l, ds...)
		if n := fileSize(t, filepath.Join(dir, fileLogName)); n != int64(len(data)) {
			t.Fatalf("file is %d bytes, want %d: zeros not cut off", n, len(data))
		}
		d := testDecision(7)
		mustDecide(t, l, d)
		l = reopen(t, l)
		checkPending(t, l, append(ds, d)...)
	})

	// A crash after the file grew while the last record only partly
	// reached the disk: its tail reads as zeros, and so does everything after.
	t.Run("after a torn last record", func(t *testing.T) {
		torn := bytes.Clone(data)
		mid := (bounds[2] + recordHeader + bounds[3]) / 2
		clear(torn[mid:])
		dir := writeLog(t, append(torn, zeros...))
		l, err := OpenFileLog(dir)
		if err != nil {
			t.Fatalf("OpenFileLog: %v", err)
		}
		t.Cleanup(func() { l.Close() })
		checkPending(t, l, ds[0], ds[1])
		if n := fileSize(t, filepath.Join(dir, fileLogName)); n != int64(bounds[2]) {
			t.Fatalf("file is %d bytes, want %d", n, bounds[2])
		}
	})
}

func TestFileLogChecksum(t *testing.T) {
	data, _ := sampleLog(t, 3)
	bounds := recordBounds(t, data)

	t.Run("record before the last", func(t *testing.T) {
		// Every byte of the middle record: its length, both checksums and
		// its payload.
		for i := bounds[1]; i < bounds[2]; i++ {
			bad := bytes.Clone(data)
			bad[i] ^= 0x20
			dir := writeLog(t, bad)
			l, err := OpenFileLog(dir)
			if !errors.Is(err, ErrLogCorrupt) {
				if l != nil {
					l.Close()
				}
				t.Fatalf("byte %d flipped: OpenFileLog error %v, want ErrLogCorrupt", i, err)
			}
			// A corrupt log is left as it is, for an operator.
			if got, _ := os.ReadFile(filepath.Join(dir, fileLogName)); !bytes.Equal(got, bad) {
				t.Fatalf("byte %d flipped: OpenFileLog changed a corrupt file", i)
			}
		}
	})

	// A whole last record with a bad checksum is not what a crash leaves
	// (that is a record cut short, or zeros): it could be an acknowledged
	// decision, so it is not cut off either.
	t.Run("last record", func(t *testing.T) {
		bad := bytes.Clone(data)
		bad[bounds[3]-2] ^= 0x20
		dir := writeLog(t, bad)
		l, err := OpenFileLog(dir)
		if !errors.Is(err, ErrLogCorrupt) {
			if l != nil {
				l.Close()
			}
			t.Fatalf("OpenFileLog error %v, want ErrLogCorrupt", err)
		}
		if got, _ := os.ReadFile(filepath.Join(dir, fileLogName)); !bytes.Equal(got, bad) {
			t.Fatal("OpenFileLog changed a corrupt file")
		}
	})

	t.Run("not a dtx log", func(t *testing.T) {
		for _, content := range []string{"hello, world\n", "DTXLOG9\nsomething", "X", "DTXLOG2\nsomething longer than a header"} {
			dir := writeLog(t, []byte(content))
			l, err := OpenFileLog(dir)
			if !errors.Is(err, ErrLogCorrupt) {
				if l != nil {
					l.Close()
				}
				t.Fatalf("%q: OpenFileLog error %v, want ErrLogCorrupt", content, err)
			}
			if got, _ := os.ReadFile(filepath.Join(dir, fileLogName)); string(got) != content {
				t.Fatalf("%q: OpenFileLog changed the file to %q", content, got)
			}
		}
	})
}

func TestFileLogCompaction(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, fileLogName)
	l := openTestLog(t, dir)
	if err := l.Heuristic(ctx, "hx", "mixed outcome"); err != nil {
		t.Fatal(err)
	}
	var kept []Decision
	written := 0 // bytes of the records written
	const n = 3 * compactAfter
	for i := range n {
		d := testDecision(i)
		mustDecide(t, l, d)
		rec, _ := record('D', d)
		written += len(rec)
		if i%500 == 250 {
			kept = append(kept, d)
			continue
		}
		mustForget(t, l, d.Global)
		rec, _ = record('F', forgetRec{Global: d.Global})
		written += len(rec)
	}
	size := fileSize(t, path)
	t.Logf("%d records, %d bytes written; file is %d bytes", 2*n-len(kept), written, size)
	if size > int64(written)/4 {
		t.Fatalf("file is %d bytes after writing %d bytes of records: not compacted", size, written)
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary file left behind: %v", err)
	}
	checkPending(t, l, kept...)

	l = reopen(t, l)
	checkPending(t, l, kept...)
	if h := l.Heuristics(); h["hx"] != "mixed outcome" {
		t.Fatalf("Heuristics after compaction = %v", h)
	}

	// Appends after compaction, to the file compaction wrote.
	more := testDecision(n + 1)
	mustDecide(t, l, more)
	mustForget(t, l, kept[0].Global)
	if err := l.Heuristic(ctx, "hy", "another"); err != nil {
		t.Fatal(err)
	}
	want := append([]Decision{more}, kept[1:]...)
	l = reopen(t, l)
	checkPending(t, l, want...)
	if h := l.Heuristics(); len(h) != 2 || h["hx"] != "mixed outcome" || h["hy"] != "another" {
		t.Fatalf("Heuristics = %v", h)
	}
}

// The record whose write triggers a compaction must be in the compacted file.
func TestFileLogCompactionKeepsTriggeringRecord(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, fileLogName)
	l := openTestLog(t, dir)
	churn := func(from int) {
		// compactAfter/2 decided and forgotten globals: compactAfter dead
		// records, so the next durable write compacts.
		for i := from; i < from+compactAfter/2; i++ {
			mustDecide(t, l, testDecision(i))
			mustForget(t, l, testDecision(i).Global)
		}
	}

	churn(0)
	before := fileSize(t, path)
	keep := testDecision(9000)
	mustDecide(t, l, keep)
	if after := fileSize(t, path); after >= before {
		t.Fatalf("file grew from %d to %d bytes: the decision did not trigger a compaction", before, after)
	}
	checkPending(t, l, keep)
	l = reopen(t, l)
	checkPending(t, l, keep)

	churn(compactAfter)
	before = fileSize(t, path)
	if err := l.Heuristic(ctx, "h1", "detail"); err != nil {
		t.Fatal(err)
	}
	if after := fileSize(t, path); after >= before {
		t.Fatalf("file grew from %d to %d bytes: the heuristic did not trigger a compaction", before, after)
	}

	l = reopen(t, l)
	checkPending(t, l, keep)
	if h := l.Heuristics(); h["h1"] != "detail" {
		t.Fatalf("Heuristics = %v, want h1", h)
	}

	churn(2 * compactAfter)
	before = fileSize(t, path)
	if d, err := l.Abort(ctx, "ga"); d != nil || err != nil {
		t.Fatalf("Abort: %v, %v", d, err)
	}
	if after := fileSize(t, path); after >= before {
		t.Fatalf("file grew from %d to %d bytes: the abort did not trigger a compaction", before, after)
	}
	l = reopen(t, l)
	if err := l.Decide(ctx, Decision{Global: "ga"}); !errors.Is(err, ErrAborted) {
		t.Fatalf("Decide after the abort that triggered a compaction: %v, want ErrAborted", err)
	}
	checkPending(t, l, keep)
}

// A decision too large for a record is refused before anything is written:
// written, it would make the log impossible to open.
func TestFileLogRecordTooLarge(t *testing.T) {
	l := openTestLog(t, t.TempDir())
	d := testDecision(1)
	d.Branches[0].Name = strings.Repeat("x", maxRecordSize)
	if err := l.Decide(context.Background(), d); !errors.Is(err, ErrNotDecided) {
		t.Fatalf("Decide of a %d-byte decision: %v, want ErrNotDecided", maxRecordSize, err)
	}
	l = reopen(t, l)
	checkPending(t, l)
}

func TestFileLogConcurrentDecide(t *testing.T) {
	const workers, each = 64, 50
	l := openTestLog(t, t.TempDir())
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			for j := range each {
				if err := l.Decide(context.Background(), testDecision(w*each+j)); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	syncs := l.Syncs()
	t.Logf("%d decisions, %d fsyncs: %.1f decisions per fsync", workers*each, syncs, float64(workers*each)/float64(syncs))
	if syncs >= workers*each {
		t.Fatalf("%d fsyncs for %d decisions: group commit shared none", syncs, workers*each)
	}
	var want []Decision
	for i := range workers * each {
		want = append(want, testDecision(i))
	}
	l = reopen(t, l)
	checkPending(t, l, want...)
}

// Concurrent decisions and forgets, with compactions on the way: what stays
// pending is exactly what was not forgotten, in memory and after a reopen.
func TestFileLogConcurrentCompaction(t *testing.T) {
	const workers, each = 16, 200
	l := openTestLog(t, t.TempDir())
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Go(func() {
			ctx := context.Background()
			for j := range each {
				d := testDecision(w*each + j)
				if err := l.Decide(ctx, d); err != nil {
					errs <- err
					continue
				}
				if j%20 != 0 {
					if err := l.Forget(ctx, d.Global); err != nil {
						errs <- err
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var want []Decision
	for i := range workers * each {
		if i%each%20 == 0 {
			want = append(want, testDecision(i))
		}
	}
	checkPending(t, l, want...)
	size := fileSize(t, l.path)
	l = reopen(t, l)
	checkPending(t, l, want...)
	// Without compaction the file would hold workers*each*2 records.
	if rec, _ := record('D', testDecision(0)); size > int64(workers*each*len(rec)) {
		t.Fatalf("file is %d bytes: never compacted", size)
	}
}

func TestFileLogLocked(t *testing.T) {
	dir := t.TempDir()
	l := openTestLog(t, dir)
	d := testDecision(1)
	mustDecide(t, l, d)
	second, err := OpenFileLog(dir)
	if err == nil {
		second.Close()
		t.Fatal("a second OpenFileLog on an open log's directory succeeded")
	}
	if !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second OpenFileLog: %v; want an error that says the log is in use", err)
	}
	// The failed open changed nothing.
	checkPending(t, l, d)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	l = openTestLog(t, dir)
	checkPending(t, l, d)
}

func TestFileLogWriteError(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := openTestLog(t, dir)
	d := testDecision(1)
	mustDecide(t, l, d)
	l.f.Close() // every write and fsync from now on fails

	if err := l.Decide(ctx, testDecision(2)); err == nil {
		t.Fatal("Decide succeeded on a file that cannot be written")
	}
	checkRefused(t, l, "after a write error", true)
	l.Close()

	// What reached the disk before the error is intact.
	l = openTestLog(t, dir)
	checkPending(t, l, d)
}

func TestFileLogUseAfterClose(t *testing.T) {
	l := openTestLog(t, t.TempDir())
	d := testDecision(1)
	mustDecide(t, l, d)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	checkRefused(t, l, "after Close", true)
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// checkRefused fails t unless every write to l, and Pending when pending
// is set, returns ErrLogClosed; when says in what state l is.
func checkRefused(t *testing.T, l *FileLog, when string, pending bool) {
	t.Helper()
	ctx := context.Background()
	if err := l.Decide(ctx, testDecision(900)); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Decide %s: %v, want ErrLogClosed", when, err)
	}
	if _, err := l.Abort(ctx, "g-refused"); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Abort %s: %v, want ErrLogClosed", when, err)
	}
	if err := l.Heuristic(ctx, "g-refused", "x"); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Heuristic %s: %v, want ErrLogClosed", when, err)
	}
	if err := l.Forget(ctx, testDecision(1).Global); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Forget %s: %v, want ErrLogClosed", when, err)
	}
	if ps, err := l.Pending(ctx, ""); pending && !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Pending %s: %v, %v; want ErrLogClosed", when, globals(ps), err)
	}
}

// waitFor polls cond, with l.mu held, until it holds.
func waitFor(t *testing.T, l *FileLog, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		ok := cond()
		l.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("timed out")
		}
		time.Sleep(time.Millisecond)
	}
}

// faultFile is a log file whose writes, fsyncs and truncates fail on demand.
type faultFile struct {
	logFile
	mu        sync.Mutex
	writeErr  error // WriteAt writes half of what it is given, then fails
	syncErr   error // Sync fails, except right after a Truncate (the cut back)
	truncErr  error // Truncate fails
	once      bool  // writeErr and syncErr fail one call, then clear
	flaky     int   // when set, every flaky-th WriteAt and Sync fails
	syncs     int
	truncated bool
	block     chan struct{} // when set, WriteAt waits until it is closed
	writes    int
	blockedAt chan struct{} // closed when a WriteAt starts waiting on block
}

func (f *faultFile) WriteAt(b []byte, off int64) (int, error) {
	f.mu.Lock()
	f.writes++
	block, err := f.block, f.writeErr
	if f.flaky > 0 && f.writes%f.flaky == 0 {
		err = errFlaky
	}
	if block != nil {
		f.block = nil
		close(f.blockedAt)
	}
	f.mu.Unlock()
	if block != nil {
		<-block
		f.mu.Lock()
		err = f.writeErr
		f.mu.Unlock()
	}
	if err != nil {
		f.set(func(f *faultFile) {
			if f.once {
				f.writeErr = nil
			}
		})
		n, _ := f.logFile.WriteAt(b[:len(b)/2], off)
		return n, err
	}
	return f.logFile.WriteAt(b, off)
}

func (f *faultFile) Sync() error {
	f.mu.Lock()
	err := f.syncErr
	f.syncs++
	if f.flaky > 0 && f.syncs%f.flaky == 0 {
		err = errFlaky
	}
	if f.truncated {
		err, f.truncated = nil, false
	}
	if f.once {
		f.syncErr = nil
	}
	f.mu.Unlock()
	if err != nil {
		return err
	}
	return f.logFile.Sync()
}

func (f *faultFile) Truncate(n int64) error {
	f.mu.Lock()
	err := f.truncErr
	f.truncated = err == nil
	f.mu.Unlock()
	if err != nil {
		return err
	}
	return f.logFile.Truncate(n)
}

func (f *faultFile) set(fn func(f *faultFile)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

var errFlaky = errors.New("injected flaky I/O error")

// injectFaults puts a faultFile between l and its file.
func injectFaults(l *FileLog) *faultFile {
	l.mu.Lock()
	defer l.mu.Unlock()
	ff := &faultFile{logFile: l.f}
	l.f = ff
	return ff
}

// A write or fsync that fails is cut back off the file: its Decide says
// for certain that nothing was recorded, and the log goes on.
func TestFileLogWriteCutBack(t *testing.T) {
	ctx := context.Background()
	eio := errors.New("injected I/O error")
	for _, c := range []struct {
		name  string
		fault func(f *faultFile)
	}{
		{"write", func(f *faultFile) { f.writeErr = eio }},
		{"fsync", func(f *faultFile) { f.syncErr = eio }},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := openTestLog(t, t.TempDir())
			d0, d1, d2, d3 := testDecision(0), testDecision(1), testDecision(2), testDecision(3)
			mustDecide(t, l, d0)
			mustDecide(t, l, d1)
			size := fileSize(t, l.path) // at the last fsync
			// A forget written without an fsync: the failure cuts it off too,
			// since a failed fsync may have lost its pages.
			mustForget(t, l, d0.Global)
			ff := injectFaults(l)
			ff.set(c.fault)

			if err := l.Decide(ctx, d2); !errors.Is(err, ErrNotDecided) || !errors.Is(err, eio) {
				t.Fatalf("Decide with a failing %s: %v, want ErrNotDecided wrapping the cause", c.name, err)
			}
			if _, err := l.Abort(ctx, "ga"); err == nil {
				t.Fatalf("Abort with a failing %s succeeded", c.name)
			}
			if err := l.Heuristic(ctx, "gh", "x"); err == nil {
				t.Fatalf("Heuristic with a failing %s succeeded", c.name)
			}
			if err := l.Err(); err != nil {
				t.Fatalf("Err after a write that was cut back: %v, want nil", err)
			}
			if n := fileSize(t, l.path); n != size {
				t.Fatalf("file is %d bytes after the failed writes, want %d", n, size)
			}
			checkPending(t, l, d1)

			ff.set(func(f *faultFile) { f.writeErr, f.syncErr = nil, nil })
			mustDecide(t, l, d3)
			if d, err := l.Abort(ctx, "ga"); d != nil || err != nil {
				t.Fatalf("Abort once writes work again: %v, %v", d, err)
			}
			checkPending(t, l, d1, d3)
			l = reopen(t, l)
			checkPending(t, l, d0, d1, d3) // the forget was lost, which Forget allows
			if !l.aborted["ga"] || len(l.Heuristics()) != 0 {
				t.Fatalf("after reopen: aborted %v, heuristics %v", l.aborted, l.Heuristics())
			}
		})
	}
}

// twoBatches starts a Decide of a, held inside its write until release is
// closed, and a Decide of b queued behind it for the next batch.
func twoBatches(t *testing.T, l *FileLog, ff *faultFile, a, b Decision) (errA, errB chan error, release chan struct{}) {
	t.Helper()
	release, blockedAt := make(chan struct{}), make(chan struct{})
	ff.set(func(f *faultFile) { f.block, f.blockedAt = release, blockedAt })
	errA, errB = make(chan error, 1), make(chan error, 1)
	go func() { errA <- l.Decide(context.Background(), a) }()
	<-blockedAt
	go func() { errB <- l.Decide(context.Background(), b) }()
	waitFor(t, l, func() bool { return len(l.waiters) == 1 })
	return errA, errB, release
}

// A Decide queued behind a batch whose write fails is not lost with it:
// the failed batch is cut back and the next one is written where it was.
func TestFileLogWriteAfterCutBack(t *testing.T) {
	l := openTestLog(t, t.TempDir())
	ff := injectFaults(l)
	b := testDecision(2)
	errA, errB, release := twoBatches(t, l, ff, testDecision(1), b)
	ff.set(func(f *faultFile) { f.writeErr, f.once = errors.New("injected"), true })
	close(release)
	if err := <-errA; !errors.Is(err, ErrNotDecided) {
		t.Fatalf("Decide whose write failed: %v, want ErrNotDecided", err)
	}
	if err := <-errB; err != nil {
		t.Fatalf("Decide queued behind a failed write: %v", err)
	}
	l = reopen(t, l)
	checkPending(t, l, b)
}

// When the cut back fails too, the log is broken: what the file holds is
// unknown, so nothing more is written and everything fails at once.
func TestFileLogBrokenWhenCutBackFails(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := openTestLog(t, dir)
	d := testDecision(1)
	mustDecide(t, l, d)
	ff := injectFaults(l)
	errA, errB, release := twoBatches(t, l, ff, testDecision(2), testDecision(3))
	ff.set(func(f *faultFile) {
		f.syncErr, f.truncErr = errors.New("injected fsync"), errors.New("injected truncate")
	})
	close(release)
	for _, err := range []error{<-errA, <-errB} {
		if !errors.Is(err, ErrLogClosed) || errors.Is(err, ErrNotDecided) {
			t.Fatalf("Decide when the cut back failed: %v, want ErrLogClosed and not ErrNotDecided", err)
		}
	}
	if err := l.Err(); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Err = %v, want ErrLogClosed", err)
	}
	checkRefused(t, l, "on a broken log", true)
	// What was decided before is still answered from memory.
	if got, err := l.Abort(ctx, d.Global); err != nil || got == nil || got.Global != d.Global {
		t.Fatalf("Abort of a decided global on a broken log: %v, %v", got, err)
	}
	if ff.writes != 1 {
		t.Fatalf("%d writes, want only the failed one: nothing is written after it", ff.writes)
	}
	l.Close()
	l = openTestLog(t, dir)
	if _, err := l.Pending(ctx, ""); err != nil {
		t.Fatal(err) // half of the failed record is a torn tail
	}
}

// A real full disk: a small tmpfs, filled up.
func TestFileLogDiskFull(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a 64k tmpfs to fill up (needs root): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	l := openTestLog(t, dir)
	d1 := testDecision(1)
	mustDecide(t, l, d1)
	size := fileSize(t, l.path)

	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := f.Write(make([]byte, 1024)); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling the disk: %v", err)
			}
			break
		}
	}
	f.Close()

	big := testDecision(2) // more than the slack in the log's last page
	big.Branches[0].Name = strings.Repeat("x", 10000)
	if err := l.Decide(ctx, big); !errors.Is(err, ErrNotDecided) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Decide on a full disk: %v, want ErrNotDecided wrapping ENOSPC", err)
	}
	if err := l.Err(); err != nil {
		t.Fatalf("Err after a full disk: %v, want nil", err)
	}
	if n := fileSize(t, l.path); n != size {
		t.Fatalf("file is %d bytes after the failed Decide, want %d", n, size)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	mustDecide(t, l, big)
	d3 := testDecision(3)
	mustDecide(t, l, d3)
	l = reopen(t, l)
	checkPending(t, l, d1, big, d3)
}

func TestFileLogFencing(t *testing.T) {
	ctx := context.Background()
	l := openTestLog(t, t.TempDir())
	a, b := testDecision(1), testDecision(2)

	if d, err := l.Abort(ctx, a.Global); d != nil || err != nil {
		t.Fatalf("Abort: %v, %v", d, err)
	}
	if err := l.Decide(ctx, a); !errors.Is(err, ErrAborted) {
		t.Fatalf("Decide after Abort: %v, want ErrAborted", err)
	}
	if d, err := l.Abort(ctx, a.Global); d != nil || err != nil {
		t.Fatalf("Abort again: %v, %v; want nil, nil", d, err)
	}

	mustDecide(t, l, b)
	mustDecide(t, l, b) // a retry
	if d, err := l.Abort(ctx, b.Global); err != nil || d == nil {
		t.Fatalf("Abort after Decide: %v, %v; want the decision", d, err)
	} else {
		checkDecision(t, *d, b)
	}

	l = reopen(t, l)
	if err := l.Decide(ctx, a); !errors.Is(err, ErrAborted) {
		t.Fatalf("Decide after Abort and a reopen: %v, want ErrAborted", err)
	}
	if d, err := l.Abort(ctx, b.Global); err != nil || d == nil {
		t.Fatalf("Abort after Decide and a reopen: %v, %v; want the decision", d, err)
	}
	checkPending(t, l, b)
}

// Decide and Abort of the same globals from many goroutines at once: each
// global has exactly one outcome, which every caller sees, and a reopen too.
func TestFileLogFencingRace(t *testing.T) {
	const n, each = 200, 3
	ctx := context.Background()
	l := openTestLog(t, t.TempDir())
	decideErr := make([][each]error, n)
	abortDec := make([][each]*Decision, n)
	abortErr := make([][each]error, n)
	var wg sync.WaitGroup
	for i := range n {
		for j := range each {
			wg.Go(func() { decideErr[i][j] = l.Decide(ctx, testDecision(i)) })
			wg.Go(func() { abortDec[i][j], abortErr[i][j] = l.Abort(ctx, testDecision(i).Global) })
		}
	}
	wg.Wait()
	var decided []Decision
	aborted := map[string]bool{}
	for i := range n {
		d := testDecision(i)
		won := decideErr[i][0] == nil
		for j := range each {
			if abortErr[i][j] != nil {
				t.Fatalf("%s: Abort: %v", d.Global, abortErr[i][j])
			}
			if won {
				if decideErr[i][j] != nil || abortDec[i][j] == nil {
					t.Fatalf("%s: Decide %v, Abort returned %v: two outcomes", d.Global, decideErr[i][j], abortDec[i][j])
				}
			} else if !errors.Is(decideErr[i][j], ErrAborted) || abortDec[i][j] != nil {
				t.Fatalf("%s: Decide %v, Abort returned %v: two outcomes", d.Global, decideErr[i][j], abortDec[i][j])
			}
		}
		if won {
			decided = append(decided, d)
		} else {
			aborted[d.Global] = true
		}
	}
	t.Logf("%d decided, %d aborted", len(decided), len(aborted))
	checkPending(t, l, decided...)
	l = reopen(t, l)
	checkPending(t, l, decided...)
	if len(l.aborted) != len(aborted) {
		t.Fatalf("%d aborts after reopen, want %d", len(l.aborted), len(aborted))
	}
	for g := range aborted {
		if !l.aborted[g] {
			t.Fatalf("abort of %s lost by reopen", g)
		}
	}
}

// The fencing race again, with writes and fsyncs failing now and then: a
// global is decided after a reopen exactly when a Decide of it returned
// nil, and aborted exactly when an Abort did; failed calls left nothing.
func TestFileLogFencingRaceWithFailures(t *testing.T) {
	const n, each = 200, 2
	ctx := context.Background()
	l := openTestLog(t, t.TempDir())
	ff := injectFaults(l)
	ff.set(func(f *faultFile) { f.flaky = 3 })
	decideErr := make([][each]error, n)
	abortDec := make([][each]*Decision, n)
	abortErr := make([][each]error, n)
	for round := range 10 { // rounds, so that there are enough batches to fail
		var wg sync.WaitGroup
		for i := round * n / 10; i < (round+1)*n/10; i++ {
			for j := range each {
				wg.Go(func() { decideErr[i][j] = l.Decide(ctx, testDecision(i)) })
				wg.Go(func() { abortDec[i][j], abortErr[i][j] = l.Abort(ctx, testDecision(i).Global) })
			}
		}
		wg.Wait()
	}
	if err := l.Err(); err != nil {
		t.Fatalf("Err after failures that were all cut back: %v", err)
	}
	ff.set(func(f *faultFile) { f.flaky = 0 })
	var decided []Decision
	failed := 0
	l = reopen(t, l)
	for i := range n {
		d := testDecision(i)
		var dec, abo, refused bool
		for j := range each {
			switch err := decideErr[i][j]; {
			case err == nil:
				dec = true
			case errors.Is(err, ErrNotDecided):
				failed++
				if !errors.Is(err, errFlaky) {
					t.Fatalf("%s: Decide: %v", d.Global, err)
				}
			case errors.Is(err, ErrAborted):
				refused = true
			default:
				t.Fatalf("%s: Decide: %v", d.Global, err)
			}
			switch {
			case abortErr[i][j] == nil && abortDec[i][j] == nil:
				abo = true
			case abortErr[i][j] != nil:
				failed++
				if !errors.Is(abortErr[i][j], errFlaky) {
					t.Fatalf("%s: Abort: %v", d.Global, abortErr[i][j])
				}
			}
		}
		if dec && abo {
			t.Fatalf("%s both decided and aborted", d.Global)
		}
		if refused && !abo {
			t.Fatalf("%s: a Decide returned ErrAborted, but no Abort succeeded", d.Global)
		}
		if dec {
			decided = append(decided, d)
		}
		if l.aborted[d.Global] != abo {
			t.Fatalf("%s: aborted after reopen %v, but an Abort succeeded: %v", d.Global, l.aborted[d.Global], abo)
		}
	}
	t.Logf("%d decided, %d aborted, %d calls failed", len(decided), len(l.aborted), failed)
	if failed == 0 {
		t.Fatal("no call failed: the faults were not injected")
	}
	checkPending(t, l, decided...)
}

// uuidV7At returns a global id (a UUIDv7 in hex) that started at t.
func uuidV7At(t time.Time) string {
	u := uuid.Must(uuid.NewV7())
	ms := uint64(t.UnixMilli())
	for i := range 6 {
		u[i] = byte(ms >> (40 - 8*i))
	}
	return hex.EncodeToString(u[:])
}

func TestFileLogAbortRetention(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l, err := OpenFileLog(dir, WithAbortRetention(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	now := time.Now()
	old := uuidV7At(now.Add(-2 * time.Hour))     // older than the retention
	mid := uuidV7At(now.Add(-40 * time.Minute))  // older than half of it
	young := uuidV7At(now.Add(-1 * time.Minute)) // younger than half of it
	for _, g := range []string{old, mid, young, "not-a-uuid"} {
		if d, err := l.Abort(ctx, g); d != nil || err != nil {
			t.Fatalf("Abort %s: %v, %v", g, d, err)
		}
	}
	decision := func(g string) Decision { d := testDecision(1); d.Global = g; return d }
	if err := l.Decide(ctx, decision(uuidV7At(now.Add(-31*time.Minute)))); !errors.Is(err, ErrAborted) ||
		!strings.Contains(err.Error(), "older than half the abort retention") {
		t.Fatalf("Decide of a global older than half the retention: %v, want ErrAborted", err)
	}
	recent := decision(uuidV7At(now.Add(-29 * time.Minute)))
	mustDecide(t, l, recent)

	l.mu.Lock()
	err = l.compactLocked()
	l.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // in memory after compaction, then from the file
		if l.aborted[old] || !l.aborted[mid] || !l.aborted[young] || !l.aborted["not-a-uuid"] {
			t.Fatalf("aborts after compaction: %v; want all but the one older than the retention", l.aborted)
		}
		checkPending(t, l, recent)
		for _, g := range []string{old, mid} {
			if err := l.Decide(ctx, decision(g)); !errors.Is(err, ErrAborted) {
				t.Fatalf("late Decide of %s: %v, want ErrAborted", g, err)
			}
		}
		l = reopen(t, l)
		l.retention = time.Hour
	}

	// Ids that are not UUIDv7 have no age limit.
	if err := l.Decide(ctx, decision("plain-id")); err != nil {
		t.Fatal(err)
	}
}

func TestFileLogNode(t *testing.T) {
	dirA, dirB := t.TempDir(), filepath.Join(t.TempDir(), "new", "log")
	a, b := openTestLog(t, dirA), openTestLog(t, dirB)
	if a.Node() == b.Node() {
		t.Fatalf("two directories share node id %q", a.Node())
	}
	for _, l := range []*FileLog{a, b} {
		id := l.Node()
		if !validNodeID(id) {
			t.Fatalf("node id %q is not letters and digits of at most %d bytes", id, maxNodeIDLen)
		}
		if again := reopen(t, l).Node(); again != id {
			t.Fatalf("node id %q became %q on reopen", id, again)
		}
		ro, err := OpenFileLogReadOnly(l.dir)
		if err != nil {
			t.Fatal(err)
		}
		if ro.Node() != id {
			t.Fatalf("read-only open: node id %q, want %q", ro.Node(), id)
		}
	}
}

// A read-only open loads the log of a running writer, and changes nothing.
func TestFileLogReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	w := openTestLog(t, dir)
	d := testDecision(1)
	mustDecide(t, w, d)
	if err := w.Heuristic(ctx, "gh", "mixed"); err != nil {
		t.Fatal(err)
	}
	r, err := OpenFileLogReadOnly(dir)
	if err != nil {
		t.Fatalf("OpenFileLogReadOnly while a writer has it: %v", err)
	}
	checkPending(t, r, d)
	if h := r.Heuristics(); h["gh"] != "mixed" {
		t.Fatalf("Heuristics = %v", h)
	}
	if err := r.Err(); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Err of a read-only log: %v, want ErrLogClosed", err)
	}
	checkRefused(t, r, "on a read-only log", false)
	checkPending(t, r, d)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	mustDecide(t, w, testDecision(3)) // the writer is unaffected

	// A torn tail is ignored, not cut.
	data, ds := sampleLog(t, 3)
	bounds := recordBounds(t, data)
	torn := writeLog(t, data[:bounds[3]-3])
	r, err = OpenFileLogReadOnly(torn)
	if err != nil {
		t.Fatal(err)
	}
	checkPending(t, r, ds[0], ds[1])
	if n := fileSize(t, filepath.Join(torn, fileLogName)); n != int64(bounds[3]-3) {
		t.Fatalf("read-only open changed the file to %d bytes", n)
	}
	if _, err := os.Stat(filepath.Join(torn, nodeFileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read-only open wrote a node id: %v", err)
	}
	if _, err := OpenFileLogReadOnly(filepath.Join(torn, "none")); err == nil {
		t.Fatal("read-only open of a directory without a log succeeded")
	}
}

// recordV1 encodes a record of the first format.
func recordV1(typ byte, v any) []byte {
	body, _ := json.Marshal(v)
	p := append([]byte{typ}, body...)
	rec := binary.BigEndian.AppendUint32(nil, uint32(len(p)))
	rec = binary.BigEndian.AppendUint32(rec, crc32.Checksum(p, crcTable))
	return append(rec, p...)
}

// A log of the first format opens with its decisions, aborts and
// heuristics, and is rewritten in the current format.
func TestFileLogFormatV1(t *testing.T) {
	ctx := context.Background()
	ds := []Decision{testDecision(0), testDecision(1), testDecision(2)}
	data := []byte(fileLogMagicV1)
	for _, d := range ds {
		data = append(data, recordV1('D', d)...)
	}
	data = append(data, recordV1('F', forgetRec{Global: ds[1].Global})...)
	data = append(data, recordV1('A', forgetRec{Global: "ga"})...)
	data = append(data, recordV1('H', heuristicRec{Global: "gh", Detail: "mixed"})...)
	torn := recordV1('D', testDecision(3))
	data = append(data, torn[:len(torn)-5]...)

	dir := writeLog(t, data)
	r, err := OpenFileLogReadOnly(dir)
	if err != nil {
		t.Fatal(err)
	}
	checkPending(t, r, ds[0], ds[2])

	l := openTestLog(t, dir)
	want := []Decision{ds[0], ds[2]}
	for range 2 {
		checkPending(t, l, want...)
		mustDecide(t, l, testDecision(5)) // the second time a retry
		want = []Decision{ds[0], ds[2], testDecision(5)}
		if d, err := l.Abort(ctx, "ga"); d != nil || err != nil {
			t.Fatalf("Abort of an aborted global: %v, %v", d, err)
		}
		if err := l.Decide(ctx, Decision{Global: "ga"}); !errors.Is(err, ErrAborted) {
			t.Fatalf("Decide of a global aborted in a v1 log: %v", err)
		}
		if h := l.Heuristics(); h["gh"] != "mixed" {
			t.Fatalf("Heuristics = %v", h)
		}
		got, _ := os.ReadFile(l.path)
		if !bytes.HasPrefix(got, []byte(fileLogMagic)) {
			t.Fatalf("the log was not rewritten in the current format: %q", got[:8])
		}
		recordBounds(t, got)
		l = reopen(t, l)
	}
}

// The regression for a flipped bit in a length: the rest of the file read
// as a torn tail and was cut off, decisions and all, without an error.
func TestFileLogBitFlips(t *testing.T) {
	data, _ := sampleLog(t, 3)
	bounds := recordBounds(t, data)

	// Every bit of the file, decoded in memory.
	for i := range data {
		for bit := range 8 {
			bad := bytes.Clone(data)
			bad[i] ^= 1 << bit
			l := newFileLog("mem", nil)
			if _, _, err := l.load(bad); !errors.Is(err, ErrLogCorrupt) {
				t.Fatalf("byte %d bit %d flipped: %v with %d decisions, want ErrLogCorrupt", i, bit, err, len(l.pending))
			}
		}
	}

	// Every bit of every record header, through OpenFileLog.
	for r := range 3 {
		for i := bounds[r]; i < bounds[r]+recordHeader; i++ {
			for bit := range 8 {
				bad := bytes.Clone(data)
				bad[i] ^= 1 << bit
				dir := writeLog(t, bad)
				l, err := OpenFileLog(dir)
				if !errors.Is(err, ErrLogCorrupt) {
					n := -1
					if l != nil {
						n = len(l.pending)
						l.Close()
					}
					t.Fatalf("record %d byte %d bit %d flipped: OpenFileLog %v with %d decisions, want ErrLogCorrupt", r, i-bounds[r], bit, err, n)
				}
				if got, _ := os.ReadFile(filepath.Join(dir, fileLogName)); !bytes.Equal(got, bad) {
					t.Fatalf("record %d byte %d bit %d flipped: OpenFileLog changed the file", r, i-bounds[r], bit)
				}
			}
		}
	}
}

// Torn tails of every length, cut short or ending in zeros, decoded in
// memory: all the records before the torn one are kept.
func TestFileLogTornTails(t *testing.T) {
	data, _ := sampleLog(t, 3)
	bounds := recordBounds(t, data)
	for cut := bounds[2]; cut < bounds[3]; cut++ {
		for _, tail := range []int{0, 1, 4096} {
			torn := append(bytes.Clone(data[:cut]), make([]byte, tail)...)
			if tail > 0 {
				torn = append(bytes.Clone(data[:cut]), make([]byte, bounds[3]-cut+tail)...)
			}
			l := newFileLog("mem", nil)
			end, _, err := l.load(torn)
			if err != nil || end != bounds[2] || len(l.pending) != 2 {
				t.Fatalf("cut at %d, %d zeros: end %d, %d decisions, %v; want end %d, 2 decisions", cut, tail, end, len(l.pending), err, bounds[2])
			}
		}
	}
}

// An id that is not UTF-8 is refused, not kept as another: JSON would
// store each bad byte as U+FFFD, and after a reopen the decision would be
// pending under a global (or name a node, resource or branch) that does
// not exist. A UTF-8 id that is not ASCII comes back exact.
func TestFileLogNonUTF8IDs(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	l := openTestLog(t, dir)
	for i, f := range []func(d *Decision){
		func(d *Decision) { d.Global = "g\xff1" },
		func(d *Decision) { d.Node = "node-\xc3" },
		func(d *Decision) { d.Branches[0].Resource = "orders\xe2\x82" },
		func(d *Decision) { d.Branches[1].Name = "\x80" },
	} {
		d := testDecision(i)
		f(&d)
		if err := l.Decide(ctx, d); !errors.Is(err, ErrInvalidName) || !errors.Is(err, ErrNotDecided) {
			t.Errorf("Decide(%+v) = %v, want ErrInvalidName and ErrNotDecided", d, err)
		}
	}
	if _, err := l.Abort(ctx, "g\xfe"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("Abort of a non-UTF-8 global = %v, want ErrInvalidName", err)
	}
	if err := l.Heuristic(ctx, "g\xfe", "x"); !errors.Is(err, ErrInvalidName) {
		t.Errorf("Heuristic of a non-UTF-8 global = %v, want ErrInvalidName", err)
	}
	good := testDecision(7)
	good.Global, good.Branches[0].Resource = "g-ünï©ødé-7", "commandes-é"
	mustDecide(t, l, good)
	if err := l.Heuristic(ctx, "gh", "server said \xff"); err != nil {
		t.Fatal(err)
	}
	l = reopen(t, l)
	checkPending(t, l, good)
	if got := l.Heuristics()["gh"]; got != "server said \uFFFD" {
		t.Errorf("heuristic detail = %q, want the bad byte as U+FFFD", got)
	}
}
