package dtx

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzFileLogDecoder: any bytes after the magic load without a panic, as
// ErrLogCorrupt or as records up to where a torn tail starts; loading
// just those records again gives the same state and no tail.
func FuzzFileLogDecoder(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte, v1 bool) {
		magic := fileLogMagic
		if v1 {
			magic = fileLogMagicV1
		}
		data := append([]byte(magic), body...)
		l := newFileLog("fuzz", nil)
		end, gotV1, err := l.load(data)
		if err != nil {
			if !errors.Is(err, ErrLogCorrupt) {
				t.Fatalf("load: %v, want ErrLogCorrupt", err)
			}
			return
		}
		if gotV1 != v1 || end < len(magic) || end > len(data) {
			t.Fatalf("load: end %d of %d, v1 %v", end, len(data), gotV1)
		}
		again := newFileLog("fuzz", nil)
		end2, _, err := again.load(data[:end])
		if err != nil || end2 != end {
			t.Fatalf("reloading the %d valid bytes: end %d, %v", end, end2, err)
		}
		if !reflect.DeepEqual(l.pending, again.pending) || !reflect.DeepEqual(l.aborted, again.aborted) || !reflect.DeepEqual(l.heur, again.heur) {
			t.Fatal("reloading the valid bytes gives another state")
		}
	})
}

// FuzzFileLogDamage: a log of a few records, damaged (bytes XORed with a
// mask at pos, and/or cut at cut), loads as ErrLogCorrupt or with every
// record that lies wholly before the damage, exact: never silently without
// a record before a bad one. A cut alone is a torn tail: the records
// before it load. A single flipped bit in a whole file is ErrLogCorrupt,
// unless it is in no record (there are none after the magic).
func FuzzFileLogDamage(f *testing.F) {
	f.Fuzz(func(t *testing.T, n uint8, text string, pos uint32, mask uint8, cut uint32) {
		text = strings.ToValidUTF8(text, "?")
		ds := make([]Decision, 1+int(n)%6)
		data := []byte(fileLogMagic)
		starts := []int{}
		for i := range ds {
			ds[i] = Decision{Global: "g" + string(rune('a'+i)) + text, Node: "n", At: time.UnixMilli(int64(i)).UTC(),
				Branches: []BranchRef{{Resource: text, Name: "b"}}}
			rec, err := record('D', ds[i])
			if err != nil {
				t.Skip(err)
			}
			starts = append(starts, len(data))
			data = append(data, rec...)
		}
		ends := append(starts[1:], len(data))
		damaged := bytes.Clone(data)
		first := len(damaged) // the first byte the damage changed
		if mask != 0 {
			p := len(fileLogMagic) + int(pos)%(len(data)-len(fileLogMagic))
			damaged[p] ^= mask
			first = p
		}
		if c := int(cut) % (len(data) + 1); cut != 0 && c >= len(fileLogMagic) {
			damaged = damaged[:c]
			first = min(first, c)
		}
		l := newFileLog("fuzz", nil)
		_, _, err := l.load(damaged)
		if err != nil {
			if !errors.Is(err, ErrLogCorrupt) {
				t.Fatalf("load: %v, want ErrLogCorrupt", err)
			}
			if mask == 0 {
				t.Fatalf("a log cut at %d (a torn tail) read as corrupt: %v", len(damaged), err)
			}
			return
		}
		for i, d := range ds {
			got, ok := l.pending[d.Global]
			switch {
			case ends[i] <= first && (!ok || !sameDecision(got, d)):
				t.Fatalf("record %d (bytes %d-%d) lies before the damage at %d and was lost silently", i, starts[i], ends[i], first)
			case ok && !sameDecision(got, d):
				t.Fatalf("record %d loaded as %+v, want %+v", i, got, d)
			}
		}
		if mask != 0 && mask&(mask-1) == 0 && len(damaged) == len(data) {
			t.Fatalf("bit flipped at %d of a whole log, and it loaded", first)
		}
	})
}

// FuzzDecisionEncoding: a decision either survives each store's encoding
// exactly (the FileLog's record; the SQL table's branches JSON, and its key
// columns) or is refused with ErrInvalidName and ErrNotDecided before
// anything is written.
func FuzzDecisionEncoding(f *testing.F) {
	f.Fuzz(func(t *testing.T, global, node, resource, name string, ms int64) {
		d := Decision{Global: global, Node: node, At: time.UnixMilli(ms % (1 << 50)).UTC(),
			Branches: []BranchRef{{Resource: resource, Name: name}, {Resource: name, Name: resource}}}
		valid := utf8.ValidString(global) && utf8.ValidString(node) && utf8.ValidString(resource) && utf8.ValidString(name)
		err := validDecision(d)
		if !valid {
			if !errors.Is(err, ErrInvalidName) || !errors.Is(err, ErrNotDecided) {
				t.Fatalf("validDecision(%+v) = %v, want ErrInvalidName and ErrNotDecided", d, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("validDecision(%+v) = %v", d, err)
		}
		rec, err := record('D', d)
		if err != nil {
			return // too large: refused, never written
		}
		l := newFileLog("fuzz", nil)
		if _, _, err := l.load(append([]byte(fileLogMagic), rec...)); err != nil {
			t.Fatal(err)
		}
		if got := l.pending[global]; len(l.pending) != 1 || !sameDecision(got, d) {
			t.Fatalf("FileLog record of %+v reads back as %+v", d, l.pending)
		}
		bs, err := json.Marshal(d.Branches)
		if err != nil {
			t.Fatal(err)
		}
		var back []BranchRef
		if err := json.Unmarshal(bs, &back); err != nil || !reflect.DeepEqual(back, d.Branches) {
			t.Fatalf("SQL log branches %s read back as %+v (%v)", bs, back, err)
		}
		my := &SQLLog{}
		ascii := true
		for _, s := range []string{global, node} {
			for i := 0; i < len(s); i++ {
				ascii = ascii && s[i] < utf8.RuneSelf
			}
		}
		if err := my.checkKey(global, node); (err == nil) != ascii {
			t.Fatalf("MariaDB key check of %q, %q: %v", global, node, err)
		}
	})
}
