package fscache

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The SIGKILL test's child clears ranges of f0..f3 only (it may go on
// clearing after the parent's last line, so for those the parent checks
// only that what was reported cleared stays cleared); ranges of f4..f11
// are never cleared, so each one reported synced must be found dirty.
const files, clearedFiles = 12, 4

// dirtyMap is the test's model: key → dirty extents.
func dirtyMap(v *Volume) map[string]extentSet {
	m := map[string]extentSet{}
	for _, d := range v.DirtyCookies() {
		var s extentSet
		for _, r := range d.Ranges {
			s = s.add(r.Off, r.End())
		}
		m[string(d.Key)] = s
	}
	return m
}

// checkDirtyBytes reads every dirty range of every dirty object through
// AcquireDirtyCookie and compares it with pattern(1, ...).
func checkDirtyBytes(t *testing.T, v *Volume) int64 {
	t.Helper()
	total := int64(0)
	for _, d := range v.DirtyCookies() {
		ck, err := v.AcquireDirtyCookie(d.Key)
		if err != nil {
			t.Fatalf("AcquireDirtyCookie(%s): %v", d.Key, err)
		}
		if err := ck.Use(false); err != nil {
			t.Fatal(err)
		}
		for _, r := range d.Ranges {
			if err := checkRead(ck, r.Off, pattern(1, r.Off, int(r.Len))); err != nil {
				t.Fatalf("%s dirty range %+v: %v", d.Key, r, err)
			}
			total += r.Len
		}
		ck.Unuse(nil, -1)
		if err := ck.Relinquish(false); err != nil {
			t.Fatal(err)
		}
	}
	return total
}

// TestDirtySurvivesSIGKILL: a child process writes into the cache, marks
// the ranges dirty, clears some (as after a COMMIT) and calls SyncDirty,
// printing what each completed SyncDirty covered; the parent SIGKILLs it in
// the middle of this stream. The reopened cache lists every range reported
// synced as dirty (more may be dirty — records appended after the last
// sync line — but each listed range holds exactly the bytes written, never
// a half-written one), and no range reported cleared comes back.
// (Crash of the process, not of the machine: SyncDirty's fsyncs are what
// extend this to power loss; they are exercised here but not proven.)
func TestDirtySurvivesSIGKILL(t *testing.T) {
	if os.Getenv(childEnv) == "dirty-crash" {
		dirtyCrashChild(t, os.Getenv("FSCACHE_TEST_DIR"))
		return
	}
	dir := t.TempDir()
	cmd := runChild(t, "TestDirtySurvivesSIGKILL", "dirty-crash", dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	synced := map[string]extentSet{}
	cleared := map[string]extentSet{}
	sc := bufio.NewScanner(stdout)
	lines := 0
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || (f[0] != "synced" && f[0] != "cleared") {
			continue
		}
		off, _ := strconv.ParseInt(f[2], 10, 64)
		n, _ := strconv.ParseInt(f[3], 10, 64)
		if f[0] == "synced" {
			synced[f[1]] = synced[f[1]].add(off, off+n)
		} else {
			cleared[f[1]] = cleared[f[1]].add(off, off+n)
		}
		if lines++; lines == 300 {
			// Kill at a random moment while the child runs on (the parent
			// keeps reading, so the child never blocks on its stdout): it
			// dies mid-write, mid-record or mid-sync.
			time.AfterFunc(time.Duration(rand.IntN(40_000))*time.Microsecond, func() { cmd.Process.Signal(syscall.SIGKILL) })
		}
	}
	cmd.Wait()
	if lines < 300 {
		t.Fatalf("child ended after %d lines", lines)
	}
	c := openTest(t, dir, testOptions())
	v := mustVolume(t, c, "vol")
	got := dirtyMap(v)
	for k, want := range synced {
		if i, _ := strconv.Atoi(k[1:]); i < clearedFiles {
			continue
		}
		for _, e := range want {
			if got[k].presentPrefix(e.off, e.end) != e.end {
				t.Fatalf("%s: synced dirty range [%d,%d) lost; dirty now %v", k, e.off, e.end, got[k])
			}
		}
	}
	for k, cl := range cleared {
		for _, e := range cl {
			if rs := got[k].ranges(e.off, e.end); len(rs) != 0 {
				t.Fatalf("%s: cleared range [%d,%d) came back dirty: %v", k, e.off, e.end, rs)
			}
		}
	}
	total := checkDirtyBytes(t, v)
	if total == 0 || len(cleared) == 0 {
		t.Fatalf("test proved nothing: %d dirty bytes, %d cleared keys", total, len(cleared))
	}
	t.Logf("after SIGKILL: %d dirty objects, %d dirty bytes verified, %d keys with cleared ranges", len(got), total, len(cleared))
}

func dirtyCrashChild(t *testing.T, dir string) {
	opts := testOptions()
	opts.MaxOpenFiles = 8 // evictions between write and sync
	opts.DirtySyncInterval = -1
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, c, "vol")
	var cks []*Cookie
	for i := 0; i < files; i++ {
		ck := mustCookie(t, v, fmt.Sprint("f", i), "v1", 0)
		ck.Use(true)
		cks = append(cks, ck)
	}
	w := bufio.NewWriter(os.Stdout)
	next := make([]int64, files)
	type rng struct {
		i      int
		off, n int64
	}
	for round := 0; ; round++ {
		var marked []rng
		for j := 0; j < 5; j++ {
			i := (round*5 + j) % files
			n := int64(1+(round*7919+j*104729)%(48<<10)) + 1
			off := next[i]
			if _, err := cks[i].WriteAt(pattern(1, off, int(n)), off); err != nil {
				t.Fatal(err)
			}
			if err := cks[i].MarkDirty(off, n); err != nil {
				t.Fatal(err)
			}
			next[i] += n
			marked = append(marked, rng{i, off, n})
		}
		if err := c.SyncDirty(); err != nil {
			t.Fatal(err)
		}
		for _, m := range marked {
			fmt.Fprintf(w, "synced f%d %d %d\n", m.i, m.off, m.n)
		}
		if round%3 == 2 { // a COMMIT covered the oldest dirty range of one file
			i := round % clearedFiles
			if d := cks[i].Dirty(); len(d) > 0 {
				r := Range{Off: d[0].Off, Len: min(d[0].Len, 20<<10)}
				if err := cks[i].ClearDirty(r.Off, r.Len, []byte("verf")); err != nil {
					t.Fatal(err)
				}
				if err := c.SyncDirty(); err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(w, "cleared f%d %d %d\n", i, r.Off, r.Len)
			}
		}
		w.Flush()
	}
}

// TestDirtyRecordsSurviveReopen: MarkDirty/ClearDirty persist across Close
// and Open (the compacted index keeps them, and the verifier), ClearDirty
// of an unmarked range is a no-op, and a range not present cannot be
// marked.
func TestDirtyRecordsSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "fh1", "aux1", 0)
	ck.Use(true)
	if _, err := ck.WriteAt(pattern(1, 0, 100<<10), 0); err != nil {
		t.Fatal(err)
	}
	if err := ck.MarkDirty(0, 100<<10); err != nil {
		t.Fatal(err)
	}
	if err := ck.MarkDirty(100<<10, 1); !errors.Is(err, ErrCacheUnavailable) {
		t.Fatalf("marking an absent byte dirty: %v", err)
	}
	if err := ck.ClearDirty(10<<10, 20<<10, []byte("v-A")); err != nil {
		t.Fatal(err)
	}
	if err := c.SyncDirty(); err != nil {
		t.Fatal(err)
	}
	ck.Unuse(nil, -1)
	ck.Relinquish(false)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = openTest(t, dir, testOptions())
	v = mustVolume(t, c, "vol")
	ds := v.DirtyCookies()
	want := []Range{{0, 10 << 10}, {30 << 10, 70 << 10}}
	if len(ds) != 1 || string(ds[0].Key) != "fh1" || string(ds[0].Aux) != "aux1" || string(ds[0].Verifier) != "v-A" ||
		fmt.Sprint(ds[0].Ranges) != fmt.Sprint(want) || ds[0].Size != 100<<10 {
		t.Fatalf("after reopen: %+v, want ranges %v", ds, want)
	}
	checkDirtyBytes(t, v)
	ck = mustCookie(t, v, "fh1", "aux1", 0) // remote size 0: dirty bytes are kept
	if ck.Size() != 100<<10 || fmt.Sprint(ck.Dirty()) != fmt.Sprint(want) {
		t.Fatalf("acquire with smaller remote size cut dirty data: size %d dirty %v", ck.Size(), ck.Dirty())
	}
	ck.ClearDirty(0, 100<<10, nil)
	if ds := v.DirtyCookies(); len(ds) != 0 {
		t.Fatalf("cleared records remain: %+v", ds)
	}
}

// TestDirtyNeverCulledOrInvalidated: with a MaxBytes budget far exceeded,
// culling removes clean unused objects but no dirty one (unused and
// without a live cookie alike); Invalidate of a dirty cookie is refused
// with ErrDirty and keeps every byte.
func TestDirtyNeverCulledOrInvalidated(t *testing.T) {
	opts := testOptions()
	opts.MaxBytes = 64 << 10
	opts.BRun, opts.BCull, opts.BStop = 40, 20, 5
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	var dirty []*Cookie
	for i := 0; i < 8; i++ {
		ck := mustCookie(t, v, fmt.Sprint("k", i), "x", 0)
		ck.Use(true)
		if _, err := ck.WriteAt(pattern(1, 0, 16<<10), 0); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if err := ck.MarkDirty(0, 16<<10); err != nil {
				t.Fatal(err)
			}
			dirty = append(dirty, ck)
		}
		ck.Unuse(nil, -1)
		if i == 0 {
			ck.Relinquish(false) // no live cookie: culled from the index walk
		}
	}
	n, err := c.Cull()
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Fatalf("culled %d objects, want the 4 clean ones", n)
	}
	if err := dirty[1].Invalidate([]byte("y"), 0); !errors.Is(err, ErrDirty) {
		t.Fatalf("Invalidate of dirty cookie: %v", err)
	}
	if len(dirtyMap(v)) != 4 {
		t.Fatalf("dirty objects after cull: %v", dirtyMap(v))
	}
	for _, ck := range dirty[1:] {
		ck.Relinquish(false)
	}
	if got := checkDirtyBytes(t, v); got != 4*16<<10 {
		t.Fatalf("dirty bytes after cull: %d", got)
	}
}

// TestDirtyConflict: after a reopen, acquiring a dirty object with other
// aux (the remote file changed) fails with ErrDirtyConflict and discards
// nothing; MoveToConflicts keeps the local copy under conflicts/ with a
// readable name and the right bytes, after which the key is acquired
// afresh.
func TestDirtyConflict(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "fh", "mtime1", 0)
	ck.Use(true)
	ck.WriteAt(pattern(1, 0, 5000), 0)
	if err := ck.MarkDirty(1000, 2000); err != nil {
		t.Fatal(err)
	}
	ck.Unuse(nil, -1)
	ck.Relinquish(false)
	c.Close()

	c = openTest(t, dir, testOptions())
	v = mustVolume(t, c, "vol")
	if _, err := v.AcquireCookie([]byte("fh"), []byte("mtime2"), 9); !errors.Is(err, ErrDirtyConflict) {
		t.Fatalf("acquire with changed aux: %v", err)
	}
	if _, _, err := v.MoveToConflicts([]byte("nope"), "x"); !errors.Is(err, ErrNotCached) {
		t.Fatalf("conflict of unknown key: %v", err)
	}
	path, ranges, err := v.MoveToConflicts([]byte("fh"), "/dir/file.txt")
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(path) != filepath.Join(dir, "conflicts") || !strings.HasPrefix(filepath.Base(path), "dir_file.txt.") ||
		fmt.Sprint(ranges) != fmt.Sprint([]Range{{1000, 2000}}) {
		t.Fatalf("conflict at %s ranges %v", path, ranges)
	}
	b, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(b, pattern(1, 0, 5000)) {
		t.Fatalf("conflict file content wrong (%d bytes): %v", len(b), err)
	}
	if len(v.DirtyCookies()) != 0 || c.Stats().Objects != 0 {
		t.Fatalf("conflict still indexed: %+v", v.DirtyCookies())
	}
	ck = mustCookie(t, v, "fh", "mtime2", 9)
	ck.Use(false)
	if _, err := ck.ReadAt(make([]byte, 1), 0); !isNotCached(err) {
		t.Fatalf("new version served old data: %v", err)
	}
}

// TestDirtyENOSPC: when the backing write fails with ENOSPC, WriteAt
// returns ErrCacheUnavailable, MarkDirty of the range is refused with it
// (the caller writes through), and nothing is recorded dirty.
func TestDirtyENOSPC(t *testing.T) {
	opts := testOptions()
	opts.pwrite = func(f *os.File, p []byte, off int64) (int, error) {
		if off >= 1<<20 {
			return 0, syscall.ENOSPC
		}
		return f.WriteAt(p, off)
	}
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "fh", "a", 0)
	ck.Use(true)
	if _, err := ck.WriteAt(pattern(1, 1<<20, 4096), 1<<20); !errors.Is(err, ErrCacheUnavailable) {
		t.Fatalf("WriteAt on ENOSPC: %v", err)
	}
	if err := ck.MarkDirty(1<<20, 4096); !errors.Is(err, ErrCacheUnavailable) {
		t.Fatalf("MarkDirty after failed write: %v", err)
	}
	if ds := v.DirtyCookies(); len(ds) != 0 || ck.Dirty() != nil {
		t.Fatalf("dirty after ENOSPC: %+v", ds)
	}
	if err := c.SyncDirty(); err != nil {
		t.Fatal(err)
	}
}

// TestDirtyPeriodicSync: without any SyncDirty call, the background timer
// syncs dirty records (Stats.DirtySyncs counts the pass), and a pass with
// nothing dirtied since does no work.
func TestDirtyPeriodicSync(t *testing.T) {
	opts := testOptions()
	opts.DirtySyncInterval = 10 * time.Millisecond
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "fh", "a", 0)
	ck.Use(true)
	ck.WriteAt(pattern(1, 0, 4096), 0)
	if err := ck.MarkDirty(0, 4096); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().DirtySyncs == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no periodic dirty sync in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := c.Stats().DirtySyncs; n != 1 {
		t.Fatalf("%d sync passes for one MarkDirty", n)
	}
}

// TestClearWrittenDirtyKeepsRacingMarks: a range marked dirty again after
// the writeback sampled DirtySeq (and read the older bytes) stays dirty
// after ClearWrittenDirty of the whole range; the rest is cleared. Also
// with more marks than the bounded mark list holds.
func TestClearWrittenDirtyKeepsRacingMarks(t *testing.T) {
	c := openTest(t, t.TempDir(), testOptions())
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "fh", "a", 0)
	ck.Use(true)
	ck.WriteAt(pattern(1, 0, 3*maxDirtyMarks*10), 0)
	for i := int64(0); i < 2*maxDirtyMarks; i++ {
		ck.MarkDirty(i*10, 10)
	}
	seq := ck.DirtySeq()
	ck.MarkDirty(100, 5) // a write racing the writeback
	ck.MarkDirty(2*maxDirtyMarks*10+50, 10)
	if err := ck.ClearWrittenDirty(0, 2*maxDirtyMarks*10, seq, []byte("v")); err != nil {
		t.Fatal(err)
	}
	want := []Range{{100, 5}, {2*maxDirtyMarks*10 + 50, 10}}
	if got := ck.Dirty(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("dirty after ClearWrittenDirty: %v, want %v", got, want)
	}
	ck.ClearWrittenDirty(0, 1<<40, ck.DirtySeq(), nil)
	if got := ck.Dirty(); got != nil {
		t.Fatalf("dirty after clearing all: %v", got)
	}
}
