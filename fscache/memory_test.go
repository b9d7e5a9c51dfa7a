package fscache

import (
	"fmt"
	"runtime"
	"testing"
	"time"
)

// fillRelinquished acquires n cookies with realistic key sizes (a 36-byte
// NFSv3 file handle, a 24-byte aux of mtime/ctime/size), writes one 4 KiB
// block to each and relinquishes it without retiring the data: what a
// filesystem evicting idle inodes after a crawl leaves behind.
func fillRelinquished(tb testing.TB, v *Volume, n int) {
	tb.Helper()
	block := pattern(7, 0, 4<<10)
	for i := range n {
		key := fmt.Appendf(nil, "fh-%032d", i)
		aux := fmt.Appendf(nil, "aux-%020d", i)
		ck, err := v.AcquireCookie(key, aux, int64(len(block)))
		if err != nil {
			tb.Fatal(err)
		}
		if err := ck.Use(false); err != nil {
			tb.Fatal(err)
		}
		if _, err := ck.WriteAt(block, 0); err != nil {
			tb.Fatal(err)
		}
		if err := ck.Unuse(nil, 0); err != nil {
			tb.Fatal(err)
		}
		if err := ck.Relinquish(false); err != nil {
			tb.Fatal(err)
		}
	}
}

func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkMemoryPerObject measures the heap the cache keeps per cached
// object after its cookie was relinquished (data kept): N cookies each get
// one 4 KiB block and are relinquished, and the heap growth after GC is
// divided by N. The baseline is the heap of the same open cache before the
// objects were created. "no-limit" (MaxObjects < 0) is the index's cost
// per object, also after a reopen (the index replayed from disk);
// "MaxObjects=2000" shows the budget bounding it (the culler is kicked by
// acquires over budget; one Cull settles it before the measurement). Run
// with -benchtime=1x.
func BenchmarkMemoryPerObject(b *testing.B) {
	const n = 10000
	for _, bc := range []struct {
		name       string
		maxObjects int
	}{{"no-limit", -1}, {"MaxObjects=2000", 2000}} {
		b.Run(bc.name, func(b *testing.B) {
			for range b.N {
				dir := b.TempDir()
				opts := testOptions()
				opts.MaxObjects = bc.maxObjects
				opts.CullInterval = time.Hour // only kicks run the culler
				c, err := Open(dir, opts)
				if err != nil {
					b.Fatal(err)
				}
				v := mustVolume(b, c, "server:/export")
				before := heapInUse()
				fillRelinquished(b, v, n)
				if _, err := c.Cull(); err != nil {
					b.Fatal(err)
				}
				after := heapInUse()
				st := c.Stats()
				if st.Cookies != 0 || bc.maxObjects < 0 && st.Objects != n || bc.maxObjects > 0 && st.Objects > int64(bc.maxObjects) {
					b.Fatalf("Objects = %d, live cookies = %d", st.Objects, st.Cookies)
				}
				b.ReportMetric(float64(int64(after)-int64(before))/n, "B/object")
				b.ReportMetric(float64(st.Objects), "objects")
				if err := c.Close(); err != nil {
					b.Fatal(err)
				}
				base := heapInUse()
				c, err = Open(dir, opts)
				if err != nil {
					b.Fatal(err)
				}
				reopened := heapInUse()
				b.ReportMetric(float64(int64(reopened)-int64(base))/n, "B/object-reopened")
				runtime.KeepAlive(c)
				c.Close()
			}
		})
	}
}

// TestRelinquishedIndex proves what the memory figures in doc.go rest on:
// a relinquished cookie's object stays in the in-memory index as long as
// it holds data (and is served again, also after a reopen), an object
// relinquished with nothing cached leaves no entry behind, and culling by
// MaxBytes is what bounds the index of a cache that keeps data.
func TestRelinquishedIndex(t *testing.T) {
	const n = 60
	dir := t.TempDir()
	c := openTest(t, dir, testOptions())
	v := mustVolume(t, c, "server:/export")
	fillRelinquished(t, v, n)
	// Acquired (a lookup, a getattr) but never read: nothing cached.
	for i := range n {
		ck := mustCookie(t, v, fmt.Sprintf("empty-%d", i), "aux", 100)
		if err := ck.Relinquish(false); err != nil {
			t.Fatal(err)
		}
	}
	if st := c.Stats(); st.Objects != n || st.Cookies != 0 {
		t.Fatalf("Objects = %d (want %d: only those holding data), Cookies = %d", st.Objects, n, st.Cookies)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	opts := testOptions()
	opts.MaxBytes = 20 * 4 << 10 // room for 20 of the 60 objects
	opts.BRun, opts.BCull, opts.BStop = 40, 20, 5
	c = openTest(t, dir, opts)
	v = mustVolume(t, c, "server:/export")
	if got := c.Stats().Objects; got != n {
		t.Fatalf("reopened: Objects = %d, want %d", got, n)
	}
	// The compacted index kept key, aux and ranges: same aux hits, a
	// different aux discards.
	for i, aux := range []string{fmt.Sprintf("aux-%020d", 0), "changed"} {
		ck := mustCookie(t, v, fmt.Sprintf("fh-%032d", i), aux, 4<<10)
		ck.Use(false)
		err := checkRead(ck, 0, pattern(7, 0, 4<<10))
		if i == 0 && err != nil {
			t.Fatalf("relinquished object not served after reopen: %v", err)
		}
		if i == 1 && !isNotCached(err) {
			t.Fatalf("object with changed aux served: %v", err)
		}
		ck.Unuse(nil, -1)
		if err := ck.Relinquish(false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Cull(); err != nil {
		t.Fatal(err)
	}
	// Run = 40% of the budget free: at most 12 objects of 4 KiB remain.
	if st := c.Stats(); st.Objects > 12 || st.Objects == 0 {
		t.Fatalf("after culling: Objects = %d, UsedBytes = %d, want 1..12 objects", st.Objects, st.UsedBytes)
	}
}

// TestCullByMaxObjects: the object budget bounds the in-memory index. With
// MaxObjects 20, 40 relinquished objects are culled, least recently used
// first, down to the FRun share (7% free: at most 18 objects); an object
// in use survives; writes never stop for it.
func TestCullByMaxObjects(t *testing.T) {
	opts := testOptions()
	opts.MaxObjects = 20
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "server:/export")
	live := mustCookie(t, v, "live", "aux", 0)
	live.Use(true)
	if _, err := live.WriteAt(pattern(1, 0, 4<<10), 0); err != nil {
		t.Fatal(err)
	}
	fillRelinquished(t, v, 40)
	if n, err := c.Cull(); err != nil || n == 0 {
		t.Fatalf("Cull = %d, %v", n, err)
	}
	st := c.Stats()
	if st.Objects > 18 || st.Objects < 10 {
		t.Fatalf("after culling: Objects = %d, want 10..18", st.Objects)
	}
	if err := checkRead(live, 0, pattern(1, 0, 4<<10)); err != nil {
		t.Fatalf("in-use object culled: %v", err)
	}
	// The most recently used objects are the ones kept.
	last := mustCookie(t, v, fmt.Sprintf("fh-%032d", 39), fmt.Sprintf("aux-%020d", 39), 4<<10)
	last.Use(false)
	if err := checkRead(last, 0, pattern(7, 0, 4<<10)); err != nil {
		t.Fatalf("most recent object culled: %v", err)
	}
	first := mustCookie(t, v, fmt.Sprintf("fh-%032d", 0), fmt.Sprintf("aux-%020d", 0), 4<<10)
	first.Use(true)
	if _, err := first.ReadAt(make([]byte, 1), 0); !isNotCached(err) {
		t.Fatalf("least recent object not culled: %v", err)
	}
	if _, err := first.WriteAt(pattern(7, 0, 4<<10), 0); err != nil {
		t.Fatalf("write refused under the object budget: %v", err)
	}
}

// TestMaxObjectsKicksCuller: acquiring new objects beyond the budget wakes
// the background culler (its interval here is an hour, so only the kick
// can have run it), which brings the index back under MaxObjects.
func TestMaxObjectsKicksCuller(t *testing.T) {
	opts := testOptions()
	opts.MaxObjects = 20
	opts.CullInterval = time.Hour
	c := openTest(t, t.TempDir(), opts)
	fillRelinquished(t, mustVolume(t, c, "server:/export"), 40)
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Objects > 19 {
		if time.Now().After(deadline) {
			t.Fatalf("Objects = %d: the culler was not kicked", c.Stats().Objects)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
