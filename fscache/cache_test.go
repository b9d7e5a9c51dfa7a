package fscache

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestExtentSet checks the present-range set against a byte map model.
func TestExtentSet(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for iter := 0; iter < 200; iter++ {
		var s extentSet
		model := make([]bool, 256)
		for op := 0; op < 30; op++ {
			a := r.Int64N(256)
			b := a + r.Int64N(256-a) + 1
			if r.IntN(5) == 0 {
				s = s.truncate(a)
				for i := a; i < 256; i++ {
					model[i] = false
				}
			} else {
				s = s.add(a, b)
				for i := a; i < b; i++ {
					model[i] = true
				}
			}
			// Invariant: sorted, disjoint, non-adjacent.
			for i := 1; i < len(s); i++ {
				if s[i-1].end >= s[i].off {
					t.Fatalf("not merged: %v", s)
				}
			}
			var cnt int64
			for _, m := range model {
				if m {
					cnt++
				}
			}
			if s.bytes() != cnt {
				t.Fatalf("bytes %d, model %d", s.bytes(), cnt)
			}
			q := r.Int64N(256)
			e := q + r.Int64N(256-q) + 1
			want := q
			for want < e && model[want] {
				want++
			}
			if got := s.presentPrefix(q, e); got != want {
				t.Fatalf("presentPrefix(%d,%d)=%d want %d in %v", q, e, got, want, s)
			}
			var inRanges int64
			for _, rg := range s.ranges(q, e) {
				for i := rg.Off; i < rg.End(); i++ {
					if !model[i] || i < q || i >= e {
						t.Fatalf("ranges(%d,%d) includes absent byte %d", q, e, i)
					}
				}
				inRanges += rg.Len
			}
			var wantIn int64
			for i := q; i < e; i++ {
				if model[i] {
					wantIn++
				}
			}
			if inRanges != wantIn {
				t.Fatalf("ranges cover %d, want %d", inRanges, wantIn)
			}
		}
	}
}

// TestReadWriteNeedsUse checks data I/O needs a use, hit/miss/EOF
// semantics, Present, and the hit/miss counters.
func TestReadWriteNeedsUse(t *testing.T) {
	c := openTest(t, t.TempDir(), testOptions())
	v := mustVolume(t, c, "srv:/export")
	ck := mustCookie(t, v, "fh1", "aux1", 0)
	if _, err := ck.WriteAt([]byte("x"), 0); !errors.Is(err, ErrNotInUse) {
		t.Fatalf("WriteAt without use: %v", err)
	}
	if _, err := ck.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrNotInUse) {
		t.Fatalf("ReadAt without use: %v", err)
	}
	if err := ck.Unuse(nil, -1); !errors.Is(err, ErrNotInUse) {
		t.Fatalf("unbalanced Unuse: %v", err)
	}
	if err := ck.Use(false); err != nil {
		t.Fatal(err)
	}
	data := pattern(1, 4096, 8192)
	if n, err := ck.WriteAt(data, 4096); err != nil || n != len(data) {
		t.Fatalf("WriteAt: %d %v", n, err)
	}
	if ck.Size() != 4096+8192 {
		t.Fatalf("size %d", ck.Size())
	}
	if err := checkRead(ck, 4096, data); err != nil {
		t.Fatal(err)
	}
	if err := checkRead(ck, 5000, data[5000-4096:]); err != nil {
		t.Fatal(err)
	}
	// Absent head: a miss with nothing read.
	if n, err := ck.ReadAt(make([]byte, 100), 0); n != 0 || !isNotCached(err) {
		t.Fatalf("absent read: %d %v", n, err)
	}
	// Read running off the end of the object: the present prefix, then EOF.
	buf := make([]byte, 8192)
	if n, err := ck.ReadAt(buf, 8192); n != 4096 || err != io.EOF || !bytes.Equal(buf[:n], data[4096:]) {
		t.Fatalf("tail read: %d %v", n, err)
	}
	// A hole inside the object: present prefix, then ErrNotCached.
	if err := ck.Resize(20000); err != nil {
		t.Fatal(err)
	}
	if n, err := ck.ReadAt(buf, 8192); n != 4096 || !isNotCached(err) {
		t.Fatalf("read into hole: %d %v", n, err)
	}
	got, err := ck.Present(0, 30000)
	if err != nil || len(got) != 1 || got[0] != (Range{4096, 8192}) {
		t.Fatalf("Present: %v %v", got, err)
	}
	// Truncate drops data beyond the size.
	if err := ck.Resize(6000); err != nil {
		t.Fatal(err)
	}
	got, _ = ck.Present(0, 30000)
	if len(got) != 1 || got[0] != (Range{4096, 6000 - 4096}) {
		t.Fatalf("Present after truncate: %v", got)
	}
	st := c.Stats()
	if st.ReadHits < 2 || st.ReadMisses < 2 || st.Writes != 1 || st.Resizes != 2 {
		t.Fatalf("stats: %+v", st)
	}
	if err := ck.Relinquish(false); !errors.Is(err, ErrInUse) {
		t.Fatalf("Relinquish in use: %v", err)
	}
	if err := ck.Unuse(nil, -1); err != nil {
		t.Fatal(err)
	}
	if err := ck.Relinquish(false); err != nil {
		t.Fatal(err)
	}
	if err := ck.Use(false); !errors.Is(err, ErrRelinquished) {
		t.Fatalf("Use after relinquish: %v", err)
	}
	if backingFDs(t, c) != 0 {
		t.Fatal("relinquished cookie kept its fd")
	}
}

// TestReopenServesData: a cache reopened after Close serves what it held;
// an acquire with different aux discards it; retire deletes it.
func TestReopenServesData(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, c, "vol")
	a := mustCookie(t, v, "a", "v1", 0)
	b := mustCookie(t, v, "b", "v1", 0)
	for _, ck := range []*Cookie{a, b} {
		ck.Use(true)
		if _, err := ck.WriteAt(pattern(2, 0, 10000), 0); err != nil {
			t.Fatal(err)
		}
		if err := ck.Unuse([]byte("v2"), 10000); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Open(dir, testOptions()); err == nil {
		t.Fatal("second Open of a cache in use succeeded")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c = openTest(t, dir, testOptions())
	v = mustVolume(t, c, "vol")
	a = mustCookie(t, v, "a", "v2", 10000) // aux as updated at Unuse
	a.Use(false)
	if err := checkRead(a, 0, pattern(2, 0, 10000)); err != nil {
		t.Fatalf("after reopen: %v", err)
	}
	b = mustCookie(t, v, "b", "v3", 10000) // remote changed meanwhile
	b.Use(false)
	if n, err := b.ReadAt(make([]byte, 10), 0); n != 0 || !isNotCached(err) {
		t.Fatalf("stale data served after aux mismatch: %d %v", n, err)
	}
	if c.Stats().AcquireDiscards != 1 {
		t.Fatalf("AcquireDiscards = %d", c.Stats().AcquireDiscards)
	}
	if _, err := v.AcquireCookie([]byte("a"), []byte("v2"), 0); !errors.Is(err, ErrAlreadyAcquired) {
		t.Fatalf("double acquire: %v", err)
	}
	a.Unuse(nil, -1)
	if err := a.Relinquish(true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.path); !os.IsNotExist(err) {
		t.Fatalf("retired backing file still there: %v", err)
	}
	a = mustCookie(t, v, "a", "v2", 10000)
	a.Use(false)
	if _, err := a.ReadAt(make([]byte, 10), 0); !isNotCached(err) {
		t.Fatalf("retired data served: %v", err)
	}
	if err := v.Relinquish(); !errors.Is(err, ErrInUse) {
		t.Fatalf("volume relinquished with live cookies: %v", err)
	}
	a.Unuse(nil, -1)
	a.Relinquish(false)
	b.Unuse(nil, -1)
	b.Relinquish(false)
	if err := v.Relinquish(); err != nil || c.Stats().Volumes != 0 {
		t.Fatalf("volume relinquish: %v, volumes %d", err, c.Stats().Volumes)
	}
}

// TestInvalidate: reads racing an invalidation return old data only before
// it and never after; a fill fetched before it is refused.
func TestInvalidate(t *testing.T) {
	c := openTest(t, t.TempDir(), testOptions())
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "f", "old", 0)
	ck.Use(false)
	const size = 64 << 10
	oldData, newData := pattern(1, 0, size), pattern(2, 0, size)
	if _, err := ck.WriteAt(oldData, 0); err != nil {
		t.Fatal(err)
	}
	gen := ck.Generation()

	var invalidated atomic.Bool
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			for i := 0; i < 300; i++ {
				doneBefore := invalidated.Load()
				n, err := ck.ReadAt(buf, 0)
				if isNotCached(err) && n == 0 {
					continue
				}
				if err != nil {
					errc <- err
					return
				}
				switch {
				case bytes.Equal(buf, newData):
				case bytes.Equal(buf, oldData):
					if doneBefore {
						errc <- errors.New("old data read after Invalidate returned")
						return
					}
				default:
					errc <- errors.New("read returned a mix of generations")
					return
				}
			}
		}()
	}
	if err := ck.Invalidate([]byte("new"), size); err != nil {
		t.Fatal(err)
	}
	invalidated.Store(true)
	// A fill of data fetched before the invalidation is refused.
	if _, err := ck.WriteAtGeneration(oldData, 0, gen); !errors.Is(err, ErrStale) {
		t.Fatalf("stale fill: %v", err)
	}
	if _, err := ck.WriteAtGeneration(newData, 0, ck.Generation()); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if err := checkRead(ck, 0, newData); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ck.Aux(), []byte("new")) || c.Stats().Invalidations != 1 || c.Stats().StaleWrites != 1 {
		t.Fatalf("aux %q stats %+v", ck.Aux(), c.Stats())
	}
}

// TestFDBound: fds of unused cookies are kept only in the LRU; the total
// never exceeds MaxOpenFiles; an in-use unpinned cookie may lose its fd and
// reopens it at its next I/O.
func TestFDBound(t *testing.T) {
	opts := testOptions()
	opts.MaxOpenFiles = 4
	opts.MaxPinned = 2
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	var cks []*Cookie
	for i := 0; i < 20; i++ {
		ck := mustCookie(t, v, string(rune('a'+i)), "x", 0)
		cks = append(cks, ck)
		ck.Use(true)
		if _, err := ck.WriteAt(pattern(byte(i), 0, 4096), 0); err != nil {
			t.Fatal(err)
		}
		ck.Unuse(nil, -1)
		if n := backingFDs(t, c); n > 4 {
			t.Fatalf("%d backing fds open, bound 4", n)
		}
	}
	st := c.Stats()
	if st.OpenFiles != 4 || st.PeakOpenFiles != 4 || st.LRUEvictions != 16 || st.LRU != 4 {
		t.Fatalf("stats after filling: %+v", st)
	}
	// The most recent four hold fds; the first was evicted.
	if cks[0].HasOpenFile() || !cks[19].HasOpenFile() {
		t.Fatal("LRU order not respected")
	}
	// Hold 4 in use; a fifth in-use I/O takes an fd from an in-use cookie.
	for i := 0; i < 5; i++ {
		cks[i].Use(false)
	}
	for i := 0; i < 5; i++ {
		if err := checkRead(cks[i], 0, pattern(byte(i), 0, 4096)); err != nil {
			t.Fatal(err)
		}
		if n := backingFDs(t, c); n > 4 {
			t.Fatalf("%d backing fds open, bound 4", n)
		}
	}
	st = c.Stats()
	if st.InUseEvictions == 0 || st.Reopens == 0 {
		t.Fatalf("expected in-use evictions and reopens: %+v", st)
	}
	// The cookie that lost its fd reads again (reopen in ordinary context).
	if err := checkRead(cks[0], 0, pattern(0, 0, 4096)); err != nil {
		t.Fatal(err)
	}
	if st.WritebackReopens != 0 {
		t.Fatal("writeback reopen without pins")
	}
}

// TestCullByMaxBytes: culling by byte budget removes least recently used
// unused objects down to the Run threshold and never an in-use one.
func TestCullByMaxBytes(t *testing.T) {
	opts := testOptions()
	opts.MaxBytes = 100 << 10
	opts.BRun, opts.BCull, opts.BStop = 40, 20, 5
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	var cks []*Cookie
	for i := 0; i < 10; i++ { // 80 KiB: 20% of budget free → below... not yet below 20
		ck := mustCookie(t, v, string(rune('a'+i)), "x", 0)
		cks = append(cks, ck)
		ck.Use(true)
		if _, err := ck.WriteAt(pattern(byte(i), 0, 8<<10), 0); err != nil {
			t.Fatal(err)
		}
		ck.Unuse(nil, -1)
	}
	if n, _ := c.Cull(); n != 0 {
		t.Fatalf("culled %d at exactly the threshold", n)
	}
	cks[0].Use(false) // oldest, but in use: must survive
	for i := 10; i < 11; i++ {
		ck := mustCookie(t, v, string(rune('a'+i)), "x", 0)
		cks = append(cks, ck)
		ck.Use(true)
		ck.WriteAt(pattern(byte(i), 0, 8<<10), 0)
		ck.Unuse(nil, -1)
	}
	n, err := c.Cull()
	if err != nil {
		t.Fatal(err)
	}
	// 88 KiB used; Run needs <= 60 KiB: four 8 KiB objects go.
	if n != 4 || c.Stats().UsedBytes != 56<<10 {
		t.Fatalf("culled %d, used %d", n, c.Stats().UsedBytes)
	}
	if err := checkRead(cks[0], 0, pattern(0, 0, 8<<10)); err != nil {
		t.Fatalf("in-use object culled: %v", err)
	}
	for i := 1; i <= 4; i++ {
		cks[i].Use(false)
		if _, err := cks[i].ReadAt(make([]byte, 1), 0); !isNotCached(err) {
			t.Fatalf("object %d (LRU) not culled: %v", i, err)
		}
		cks[i].Unuse(nil, -1)
	}
	for i := 5; i <= 10; i++ {
		cks[i].Use(false)
		if err := checkRead(cks[i], 0, pattern(byte(i), 0, 8<<10)); err != nil {
			t.Fatalf("recent object %d culled: %v", i, err)
		}
		cks[i].Unuse(nil, -1)
	}
}

// TestCullStatfsHysteresis drives culling by the cache filesystem's free
// space: nothing below bcull... culling starts below bcull, runs to brun,
// and writes step aside below bstop.
func TestCullStatfsHysteresis(t *testing.T) {
	var mu sync.Mutex
	free := 50.0
	opts := testOptions()
	var c *Cache
	opts.statfs = func(string) (float64, float64, error) {
		mu.Lock()
		defer mu.Unlock()
		// Each culled KiB frees 1% in this fake filesystem.
		return free - float64(c.journal.usedBytes())/1024, 50, nil
	}
	c = openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	for i := 0; i < 40; i++ {
		ck := mustCookie(t, v, string(rune('a'+i)), "x", 0)
		ck.Use(true)
		if _, err := ck.WriteAt(pattern(byte(i), 0, 1024), 0); err != nil {
			t.Fatal(err)
		}
		ck.Unuse(nil, -1)
	}
	// 50 - 40 = 10% free: above bcull (5) — nothing culled.
	if n, _ := c.Cull(); n != 0 {
		t.Fatalf("culled %d above bcull", n)
	}
	mu.Lock()
	free = 45.5 // 5.5% free: still above bcull
	mu.Unlock()
	if n, _ := c.Cull(); n != 0 {
		t.Fatalf("culled %d above bcull", n)
	}
	mu.Lock()
	free = 40.5 // 0.5% free: below bstop
	mu.Unlock()
	ck := mustCookie(t, v, "new", "x", 0)
	ck.Use(true)
	c.Cull() // hysteresis: culls until >= brun (7%): 7 objects
	if got := c.Stats().Culled; got != 7 {
		t.Fatalf("culled %d, want 7 (0.5%% → 7.5%%)", got)
	}
	if _, err := ck.WriteAt([]byte("x"), 0); err != nil {
		t.Fatalf("write after cull: %v", err)
	}
	// Below bstop with nothing cullable: writes step aside.
	c.stopped.Store(true)
	if _, err := ck.WriteAt([]byte("y"), 1); !errors.Is(err, ErrCacheUnavailable) {
		t.Fatalf("write below bstop: %v", err)
	}
	if c.Stats().NoSpace != 1 {
		t.Fatalf("NoSpace = %d", c.Stats().NoSpace)
	}
}

// TestENOSPCStepsAside: a failing backing write records nothing and
// returns ErrCacheUnavailable; the cache keeps working afterwards.
func TestENOSPCStepsAside(t *testing.T) {
	opts := testOptions()
	var fail atomic.Bool
	opts.pwrite = func(f *os.File, p []byte, off int64) (int, error) {
		if fail.Load() {
			// Half the data lands, then the filesystem is full.
			f.WriteAt(p[:len(p)/2], off)
			return len(p) / 2, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
		}
		return f.WriteAt(p, off)
	}
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "f", "x", 0)
	ck.Use(true)
	if _, err := ck.WriteAt(pattern(1, 0, 4096), 0); err != nil {
		t.Fatal(err)
	}
	fail.Store(true)
	_, err := ck.WriteAt(pattern(1, 4096, 4096), 4096)
	if !errors.Is(err, ErrCacheUnavailable) || !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("ENOSPC write: %v", err)
	}
	if r, _ := ck.Present(0, 1<<20); len(r) != 1 || r[0] != (Range{0, 4096}) {
		t.Fatalf("half-written range recorded present: %v", r)
	}
	fail.Store(false)
	if err := checkRead(ck, 0, pattern(1, 0, 4096)); err != nil {
		t.Fatal(err)
	}
	if c.Stats().NoSpace != 1 {
		t.Fatalf("NoSpace %d", c.Stats().NoSpace)
	}
}

// TestJournalTornTail: a torn or corrupt last record is ignored at
// reopen; everything before it is served.
func TestJournalTornTail(t *testing.T) {
	dir := t.TempDir()
	c, _ := Open(dir, testOptions())
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "f", "x", 0)
	ck.Use(true)
	ck.WriteAt(pattern(1, 0, 100), 0)
	// Simulate a crash: no Close (no compaction); copy the journal as it is
	// on disk, then tear it.
	index, err := os.ReadFile(dir + "/index")
	if err != nil {
		t.Fatal(err)
	}
	ck.WriteAt(pattern(1, 100, 100), 100)
	full, _ := os.ReadFile(dir + "/index")
	c.Close()
	for _, tc := range []struct {
		name string
		data []byte
		want int64
	}{
		{"complete", full, 200},
		{"torn", full[:len(full)-3], 100},
		{"corrupt", append(append([]byte{}, index...), bytes.Repeat([]byte{0xff}, len(full)-len(index))...), 100},
	} {
		if err := os.WriteFile(dir+"/index", tc.data, 0o600); err != nil {
			t.Fatal(err)
		}
		c := openTest(t, dir, testOptions())
		ck := mustCookie(t, mustVolume(t, c, "vol"), "f", "x", 200)
		ck.Use(false)
		r, _ := ck.Present(0, 1000)
		if len(r) != 1 || r[0].Len != tc.want {
			t.Fatalf("%s: present %v, want [0,%d)", tc.name, r, tc.want)
		}
		if err := checkRead(ck, 0, pattern(1, 0, int(tc.want))); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		ck.Unuse(nil, -1)
		c.Close()
	}
}

// TestStatsString checks the /proc/fs/fscache/stats layout.
func TestStatsString(t *testing.T) {
	c := openTest(t, t.TempDir(), testOptions())
	ck := mustCookie(t, mustVolume(t, c, "vol"), "f", "x", 0)
	ck.Use(true)
	ck.WriteAt([]byte("hello"), 0)
	ck.ReadAt(make([]byte, 5), 0)
	ck.ReadAt(make([]byte, 5), 10)
	s := c.Stats().String()
	for _, want := range []string{
		"FS-Cache statistics\n",
		"Cookies: n=1 v=1 vcol=0 voom=0\n",
		"Acquire: n=1 ok=1 oom=0\n",
		"LRU    : n=1 exp=0 rmv=0 drp=0 at=0\n",
		"Invals : n=0\n",
		"IO     : rd=1 wr=1 mis=0\n",
		"Files  : open=1 peak=1 pinned=0",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("stats text lacks %q:\n%s", want, s)
		}
	}
}

// TestUnuseShrinkPersists: an Unuse that records a smaller size drops the
// present ranges beyond it, in memory and in the index across a reopen.
func TestUnuseShrinkPersists(t *testing.T) {
	dir := t.TempDir()
	c, _ := Open(dir, testOptions())
	ck := mustCookie(t, mustVolume(t, c, "vol"), "f", "a", 0)
	ck.Use(true)
	ck.WriteAt(pattern(1, 0, 8192), 0)
	ck.Unuse([]byte("b"), 1000)
	c.Close()
	c = openTest(t, dir, testOptions())
	ck = mustCookie(t, mustVolume(t, c, "vol"), "f", "b", 1000)
	ck.Use(false)
	if err := ck.Resize(8192); err != nil { // the file grows again remotely
		t.Fatal(err)
	}
	r, _ := ck.Present(0, 8192)
	if len(r) != 1 || r[0] != (Range{0, 1000}) {
		t.Fatalf("present after shrink+reopen+grow: %v", r)
	}
}

// TestDiscardRange: a discarded range stops being served, persistently.
func TestDiscardRange(t *testing.T) {
	dir := t.TempDir()
	c, _ := Open(dir, testOptions())
	ck := mustCookie(t, mustVolume(t, c, "vol"), "f", "a", 0)
	ck.Use(true)
	ck.WriteAt(pattern(1, 0, 10000), 0)
	ck.Unuse(nil, -1)
	if err := ck.DiscardRange(2000, 3000); err != nil { // no use needed
		t.Fatal(err)
	}
	c.Close()
	c = openTest(t, dir, testOptions())
	ck = mustCookie(t, mustVolume(t, c, "vol"), "f", "a", 10000)
	ck.Use(false)
	r, _ := ck.Present(0, 10000)
	if len(r) != 2 || r[0] != (Range{0, 2000}) || r[1] != (Range{5000, 5000}) {
		t.Fatalf("present after discard+reopen: %v", r)
	}
	if n, err := ck.ReadAt(make([]byte, 4000), 0); n != 2000 || !isNotCached(err) {
		t.Fatalf("read across discarded range: %d %v", n, err)
	}
}

// TestDurableMode: with Options.Durable every present record follows an
// fdatasync of the data and is fsync'd itself; the cache behaves the same.
func TestDurableMode(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions()
	opts.Durable = true
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	ck := mustCookie(t, mustVolume(t, c, "vol"), "f", "a", 0)
	ck.Use(true)
	for i := int64(0); i < 8; i++ {
		if _, err := ck.WriteAt(pattern(3, i*4096, 4096), i*4096); err != nil {
			t.Fatal(err)
		}
	}
	ck.Unuse(nil, -1)
	c.Close()
	c = openTest(t, dir, opts)
	ck = mustCookie(t, mustVolume(t, c, "vol"), "f", "a", 8*4096)
	ck.Use(false)
	if err := checkRead(ck, 0, pattern(3, 0, 8*4096)); err != nil {
		t.Fatal(err)
	}
}
