package dtx

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
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
		off += 8 + int(binary.BigEndian.Uint32(data[off:]))
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
		mid := (bounds[2] + 8 + bounds[3]) / 2
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
	data, ds := sampleLog(t, 3)
	bounds := recordBounds(t, data)

	t.Run("record before the last", func(t *testing.T) {
		// Every byte of the middle record's payload, and its checksum.
		for i := bounds[1] + 4; i < bounds[2]; i++ {
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

	t.Run("last record", func(t *testing.T) {
		bad := bytes.Clone(data)
		bad[bounds[3]-2] ^= 0x20
		dir := writeLog(t, bad)
		l := openTestLog(t, dir)
		checkPending(t, l, ds[0], ds[1])
		if n := fileSize(t, filepath.Join(dir, fileLogName)); n != int64(bounds[2]) {
			t.Fatalf("file is %d bytes, want %d", n, bounds[2])
		}
	})

	t.Run("not a dtx log", func(t *testing.T) {
		for _, content := range []string{"hello, world\n", "DTXLOG2\nsomething", "X"} {
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
	if err := l.Decide(ctx, testDecision(3)); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Decide after a write error: %v, want ErrLogClosed", err)
	}
	if err := l.Heuristic(ctx, d.Global, "x"); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Heuristic after a write error: %v, want ErrLogClosed", err)
	}
	if err := l.Forget(ctx, d.Global); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Forget after a write error: %v, want ErrLogClosed", err)
	}
	if ps, err := l.Pending(ctx, ""); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Pending after a write error: %v, %v; want ErrLogClosed", globals(ps), err)
	}
	l.Close()

	// What reached the disk before the error is intact.
	l = openTestLog(t, dir)
	checkPending(t, l, d)
}

func TestFileLogUseAfterClose(t *testing.T) {
	ctx := context.Background()
	l := openTestLog(t, t.TempDir())
	d := testDecision(1)
	mustDecide(t, l, d)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Decide(ctx, testDecision(2)); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Decide after Close: %v, want ErrLogClosed", err)
	}
	if err := l.Heuristic(ctx, d.Global, "x"); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Heuristic after Close: %v, want ErrLogClosed", err)
	}
	if err := l.Forget(ctx, d.Global); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Forget after Close: %v, want ErrLogClosed", err)
	}
	if _, err := l.Pending(ctx, ""); !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Pending after Close: %v, want ErrLogClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// Records queued behind a write that fails are not written after it: what
// follows a failed write on disk could be a torn record in the middle of
// the file, which would make the whole log unreadable.
func TestFileLogNoWriteAfterWriteError(t *testing.T) {
	ctx := context.Background()
	l := openTestLog(t, t.TempDir())
	// The log writes into a pipe: a write blocks until the test reads,
	// and every fsync fails (EINVAL on a pipe).
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	l.mu.Lock()
	l.f.Close()
	l.f = w
	l.mu.Unlock()

	big := testDecision(1) // larger than the pipe's buffer
	big.Branches[0].Name = strings.Repeat("x", 1<<18)
	bigRec, _ := record('D', big)
	errA, errB := make(chan error, 1), make(chan error, 1)
	go func() { errA <- l.Decide(ctx, big) }()
	waitFor(t, l, func() bool { return l.flushing && len(l.waiters) == 0 }) // A is being written
	go func() { errB <- l.Decide(ctx, testDecision(2)) }()
	waitFor(t, l, func() bool { return len(l.waiters) == 1 }) // B waits for the next batch

	read := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(r)
		read <- b
	}()
	if err := <-errA; err == nil {
		t.Fatal("Decide succeeded though its fsync failed")
	}
	if err := <-errB; !errors.Is(err, ErrLogClosed) {
		t.Fatalf("Decide queued behind a failed write: %v, want ErrLogClosed", err)
	}
	l.Close() // closes w: the reader sees the end
	if got := <-read; !bytes.Equal(got, bigRec) {
		t.Fatalf("%d bytes written, want only the %d of the failed record", len(got), len(bigRec))
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
