package dtx

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The FileLog under simulated power cuts (memFS): workers decide, abort,
// forget and record heuristics concurrently, compaction runs every few
// forgets, the power goes at a random operation (of the workers, of
// compaction or of the open itself), and the log reopens on what the disk
// kept. After each cut:
//
//   - the log opens (every failure to open is the cut's, during that open);
//   - every decision whose Decide returned nil is pending, exactly as
//     decided, unless forgotten; every abort whose Abort returned nil is
//     there, and so is every heuristic whose Heuristic returned nil;
//   - nothing is there that was never written (a Decide that returned
//     ErrNotDecided, a global never decided);
//   - a forgotten decision may come back (Forget is not durable: recovery
//     forgets it again), but only while no durable write that began after
//     its Forget returned was acknowledged: that write's fsync covered the
//     forget record;
//   - a decision whose Decide failed otherwise (the cut came first) may or
//     may not be there, and is decided from then on if it is.
//
// One cut in eight is followed by a bit flipped at random in the log file:
// the open must then fail with ErrLogCorrupt, or recover everything as
// above (a flip in a torn tail the open cuts off); never open having lost
// an acknowledged record before the bad one.
//
// DTX_POWERCUTS sets the number of cuts (default 10,000); DTX_POWERCUT_SEED
// replays a seed's schedule (the workers' interleaving still varies).
func TestFileLogPowerCuts(t *testing.T) {
	cuts := 10000
	if testing.Short() {
		cuts = 1000
	}
	if v := os.Getenv("DTX_POWERCUTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("DTX_POWERCUTS=%q: %v", v, err)
		}
		cuts = n
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("DTX_POWERCUT_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("DTX_POWERCUT_SEED=%q: %v", v, err)
		}
		seed = n
	}
	t.Logf("seed %d (DTX_POWERCUT_SEED), %d cuts (DTX_POWERCUTS)", seed, cuts)
	rng := rand.New(rand.NewPCG(seed, 1))
	var st pcStats
	var m *pcModel
	var disk *memFS
	for i := range cuts {
		if i%10 == 0 { // a fresh disk now and then keeps the aborts, never expired here, few
			disk, m = newMemFS(rng.Uint64()), newPCModel()
		}
		disk.cutAt = disk.ops + 1 + rng.IntN(50)
		if !pcTrial(t, disk, m, rng, &st) {
			t.Fatalf("cut %d (seed %d): see above", i, seed)
		}
		disk = disk.crash()
		if rng.IntN(8) == 0 {
			if !pcBitFlip(t, disk, m, rng, &st) {
				t.Fatalf("cut %d (seed %d), bit flip: see above", i, seed)
			}
		}
	}
	t.Logf("%d cuts: %d during open, %d compactions begun, %d decisions acknowledged, %d forgets, %d aborts; %d forgotten decisions came back; %d bit flips: %d ErrLogCorrupt, %d recovered exactly; 0 acknowledged records lost",
		cuts, st.openCut, st.compactions.Load(), st.acked.Load(), st.forgets.Load(), st.aborts.Load(), st.reappeared, st.flips, st.flipCorrupt, st.flipExact)
	if st.compactions.Load() == 0 || st.openCut == 0 || st.flipCorrupt == 0 {
		t.Errorf("the schedule missed a case: %d compactions, %d cuts during open, %d flips read as corrupt", st.compactions.Load(), st.openCut, st.flipCorrupt)
	}
}

const pcDir = "/var/dtx"

type pcStats struct {
	openCut, reappeared, flips, flipCorrupt, flipExact int
	acked, forgets, aborts, compactions                atomic.Int64
}

// pcModel is what the workers were told, across cuts of one disk.
type pcModel struct {
	mu        sync.Mutex
	next      int
	acked     map[string]Decision // Decide returned nil, not forgotten since
	tried     map[string]Decision // Decide's outcome unknown
	never     map[string]bool     // Decide returned ErrNotDecided
	forgotten map[string]pcForgot
	aborted   map[string]bool // Abort returned nil, nil
	abortTry  map[string]bool // Abort's outcome unknown
	heur      map[string]string
	ticket    atomic.Int64 // orders writes and forgets
	lastAck   int64        // the latest ticket at which an acknowledged write began
}

type pcForgot struct {
	d      Decision
	ticket int64 // taken when Forget returned nil; max int64 when it failed
}

func newPCModel() *pcModel {
	return &pcModel{
		acked: map[string]Decision{}, tried: map[string]Decision{}, never: map[string]bool{},
		forgotten: map[string]pcForgot{}, aborted: map[string]bool{}, abortTry: map[string]bool{},
		heur: map[string]string{},
	}
}

// pcTrial opens the log on disk, checks it against m, and runs workers until
// the power is cut. It reports false after t.Error.
func pcTrial(t *testing.T, disk *memFS, m *pcModel, rng *rand.Rand, st *pcStats) bool {
	l, err := OpenFileLog(pcDir, withLogFS(disk), withCompactAfter(8))
	if err != nil {
		if !disk.isCut() {
			t.Errorf("open failed with the power on: %v", err)
			return false
		}
		st.openCut++
		return true
	}
	defer l.Close()
	if !m.check(t, l, true, st) {
		return false
	}
	var wg sync.WaitGroup
	for w := range 3 {
		r := rand.New(rand.NewPCG(rng.Uint64(), uint64(w)))
		wg.Go(func() {
			for !disk.isCut() {
				if err := l.Err(); err != nil {
					if !disk.isCut() {
						t.Errorf("log broken with the power on: %v", err)
					}
					return
				}
				m.step(t, l, r, st)
			}
		})
	}
	wg.Wait()
	disk.mu.Lock()
	st.compactions.Add(int64(disk.compactions))
	disk.mu.Unlock()
	return !t.Failed()
}

// withCompactAfter lowers the number of dead records that lets compaction
// run, so that the cuts meet it often.
func withCompactAfter(n int) FileLogOption { return func(l *FileLog) { l.compact = n } }

// step runs one random operation and records its outcome.
func (m *pcModel) step(t *testing.T, l *FileLog, r *rand.Rand, st *pcStats) {
	ctx := context.Background()
	switch p := r.IntN(100); {
	case p < 50:
		d := m.newDecision()
		m.decide(t, l, d, st)
	case p < 60: // a Decide and an Abort race for one key
		d := m.newDecision()
		var wg sync.WaitGroup
		wg.Go(func() { m.decide(t, l, d, st) })
		m.abort(t, l, d.Global, st)
		wg.Wait()
		m.mu.Lock()
		_, a := m.acked[d.Global]
		if a && m.aborted[d.Global] {
			t.Errorf("global %s both decided and aborted", d.Global)
		}
		m.mu.Unlock()
	case p < 65:
		m.abort(t, l, m.newDecision().Global, st)
	case p < 92:
		m.forget(l, r, st)
	default:
		g := m.newDecision().Global
		detail := "mixed " + g
		if err := l.Heuristic(ctx, g, detail); err == nil {
			m.mu.Lock()
			m.heur[g] = detail
			m.mu.Unlock()
		}
	}
}

func (m *pcModel) newDecision() Decision {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.next++
	g := fmt.Sprintf("g%06d", m.next)
	return Decision{Global: g, Node: "n1", At: time.UnixMilli(int64(m.next)).UTC(),
		Branches: []BranchRef{{Resource: "pg", Name: "g.n1." + g + ".0"}, {Resource: "my", Name: "g.n1." + g + ".1"}}}
}

func (m *pcModel) decide(t *testing.T, l *FileLog, d Decision, st *pcStats) {
	m.mu.Lock()
	m.tried[d.Global] = d
	m.mu.Unlock()
	begun := m.ticket.Add(1)
	err := l.Decide(context.Background(), d)
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case err == nil:
		delete(m.tried, d.Global)
		m.acked[d.Global] = d
		m.lastAck = max(m.lastAck, begun)
		st.acked.Add(1)
	case errors.Is(err, ErrNotDecided):
		delete(m.tried, d.Global)
		m.never[d.Global] = true
	case errors.Is(err, ErrAborted):
		delete(m.tried, d.Global)
	}
}

func (m *pcModel) abort(t *testing.T, l *FileLog, g string, st *pcStats) {
	m.mu.Lock()
	m.abortTry[g] = true
	m.mu.Unlock()
	begun := m.ticket.Add(1)
	d, err := l.Abort(context.Background(), g)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		delete(m.abortTry, g)
		if d == nil {
			m.aborted[g] = true
			m.lastAck = max(m.lastAck, begun)
			st.aborts.Add(1)
		}
	}
}

// forget forgets one to three acknowledged decisions.
func (m *pcModel) forget(l *FileLog, r *rand.Rand, st *pcStats) {
	m.mu.Lock()
	var gs []string
	var ds []Decision
	for g, d := range m.acked { // map order: random enough
		if len(gs) == 1+r.IntN(3) {
			break
		}
		gs, ds = append(gs, g), append(ds, d)
		delete(m.acked, g)
	}
	m.mu.Unlock()
	if len(gs) == 0 {
		return
	}
	err := l.Forget(context.Background(), gs...)
	ticket := int64(1<<63 - 1)
	if err == nil {
		ticket = m.ticket.Add(1)
		st.forgets.Add(int64(len(gs)))
	}
	m.mu.Lock()
	for i, g := range gs {
		m.forgotten[g] = pcForgot{d: ds[i], ticket: ticket}
	}
	m.mu.Unlock()
}

// check compares the reopened log with the model, reporting false after
// t.Error. With adopt set it then takes what the log holds as the model's
// truth: a decision of unknown outcome that is there is decided.
func (m *pcModel) check(t *testing.T, l *FileLog, adopt bool, st *pcStats) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	ps, err := l.Pending(context.Background(), "")
	if err != nil {
		t.Errorf("Pending: %v", err)
		return false
	}
	got := map[string]Decision{}
	for _, d := range ps {
		got[d.Global] = d
	}
	ok := true
	for g, want := range m.acked {
		if d, present := got[g]; !present || !sameDecision(d, want) {
			t.Errorf("acknowledged decision %s lost or changed after a cut: got %+v (present %v), want %+v", g, d, present, want)
			ok = false
		}
	}
	for g, d := range got {
		if _, a := m.acked[g]; a {
			continue
		}
		want, tried := m.tried[g]
		f, forgot := m.forgotten[g]
		switch {
		case tried:
		case forgot && f.ticket < m.lastAck:
			t.Errorf("forgotten decision %s came back although a durable write begun after its Forget was acknowledged", g)
			ok = false
		case forgot:
			want = f.d
			if adopt {
				st.reappeared++
			}
		default:
			t.Errorf("decision %s pending but never acknowledged nor in flight (ErrNotDecided: %v)", g, m.never[g])
			ok = false
		}
		if !sameDecision(d, want) {
			t.Errorf("decision %s came back as %+v, want %+v", g, d, want)
			ok = false
		}
	}
	l.mu.Lock()
	aborted := maps2(l.aborted)
	l.mu.Unlock()
	for g := range m.aborted {
		if !aborted[g] {
			t.Errorf("acknowledged abort of %s lost after a cut", g)
			ok = false
		}
		if _, d := got[g]; d {
			t.Errorf("global %s aborted and decided", g)
			ok = false
		}
	}
	for g := range aborted {
		if !m.aborted[g] && !m.abortTry[g] {
			t.Errorf("abort of %s there but never asked for", g)
			ok = false
		}
	}
	h := l.Heuristics()
	for g, detail := range m.heur {
		if h[g] != detail {
			t.Errorf("acknowledged heuristic of %s lost: %q", g, h[g])
			ok = false
		}
	}
	if ok && adopt {
		m.acked, m.tried, m.forgotten = got, map[string]Decision{}, map[string]pcForgot{}
		m.aborted, m.abortTry = aborted, map[string]bool{}
		m.heur = h
		m.lastAck = 0
	}
	return ok
}

func maps2(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func sameDecision(a, b Decision) bool {
	return a.Global == b.Global && a.Node == b.Node && a.At.Equal(b.At) && reflect.DeepEqual(a.Branches, b.Branches)
}

// pcBitFlip flips one bit of the log file on a copy of disk and opens it:
// ErrLogCorrupt, or everything the model holds is there.
func pcBitFlip(t *testing.T, disk *memFS, m *pcModel, rng *rand.Rand, st *pcStats) bool {
	flipped := memFSFrom(disk.names, rng.Uint64())
	n, ok := flipped.names[filepath.Join(pcDir, fileLogName)]
	if !ok || len(n.data) == 0 {
		return true
	}
	i := rng.IntN(len(n.data) * 8)
	if tail := min(len(n.data), 64); rng.IntN(2) == 0 { // the last records, or a torn tail
		i = (len(n.data)-tail)*8 + rng.IntN(tail*8)
	}
	n.data[i/8] ^= 1 << (i % 8)
	n.synced = n.data
	st.flips++
	l, err := OpenFileLog(pcDir, withLogFS(flipped), withCompactAfter(8))
	if err != nil {
		if !errors.Is(err, ErrLogCorrupt) {
			t.Errorf("bit %d flipped: open failed but not with ErrLogCorrupt: %v", i, err)
			return false
		}
		st.flipCorrupt++
		return true
	}
	defer l.Close()
	st.flipExact++
	return m.check(t, l, false, st)
}

// An open that fails at a directory fsync and is retried in the same
// process must still make the directory, the log file's name and the node
// file's name durable before it acknowledges anything: the first attempt
// created them, so the retry finds them there, and a power cut after an
// acknowledged Decide used to lose the whole log (the directory or the file
// never fsynced into its parent).
func TestFileLogOpenRetryIsDurable(t *testing.T) {
	ctx := context.Background()
	d := Decision{Global: "g1", Node: "n1", At: time.UnixMilli(1).UTC(), Branches: []BranchRef{{Resource: "pg", Name: "g.n1.g1.0"}}}
	for _, op := range []string{"syncdir", "sync", "rename", "write", "open", "mkdir"} {
		for nth := 1; ; nth++ {
			disk := newMemFS(uint64(nth))
			disk.fail[op] = nth
			if _, err := OpenFileLog(pcDir, withLogFS(disk)); err == nil {
				if disk.fail[op] > 0 {
					break // the first open has fewer than nth calls of op
				}
				t.Fatalf("%s #%d failed and OpenFileLog did not say so", op, nth)
			}
			l, err := OpenFileLog(pcDir, withLogFS(disk))
			if err != nil {
				t.Fatalf("%s #%d: retried open: %v", op, nth, err)
			}
			if err := l.Decide(ctx, d); err != nil {
				t.Fatal(err)
			}
			node := l.Node()
			after := disk.crash()
			l.Close()
			l, err = OpenFileLog(pcDir, withLogFS(after))
			if err != nil {
				t.Fatalf("%s #%d: open after the cut: %v", op, nth, err)
			}
			if ps, _ := l.Pending(ctx, ""); len(ps) != 1 || !sameDecision(ps[0], d) {
				t.Errorf("%s #%d failed in the first open, retried: the acknowledged decision is lost after a power cut (pending %+v)", op, nth, ps)
			}
			if l.Node() != node {
				t.Errorf("%s #%d failed in the first open, retried: node %s became %s after a power cut", op, nth, node, l.Node())
			}
			l.Close()
		}
	}
}
