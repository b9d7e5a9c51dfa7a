package billyfs_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5"

	"github.com/nfscache/nfscache/billyfs"
)

// checkBounded fails if any metadata cache of fsys holds more than max
// entries, or its inode table more than max+open inodes.
func checkBounded(t *testing.T, fsys *billyfs.FS, max, open int, when string) {
	t.Helper()
	st := fsys.Stats()
	if st.Inodes > max+open || st.CachedAttrs > max || st.Dentries > max || st.ListingNames > max {
		t.Fatalf("%s: inodes %d (bound %d+%d open), attrs %d, dentries %d, listing names %d (bound %d)",
			when, st.Inodes, max, open, st.CachedAttrs, st.Dentries, st.ListingNames, max)
	}
}

// Walking far more files than MaxCachedInodes (stat, negative lookups,
// listings, reads) keeps every metadata cache and the inode table within
// the bound; a file whose inode and names were evicted is read again from
// the local cache (0 READ) after one LOOKUP, its data revalidated.
func TestMetadataCachesBounded(t *testing.T) {
	const files, bound = 2000, 100
	srv := startServer(t)
	must(t, os.MkdirAll(filepath.Join(srv.Dir, "d"), 0o755))
	content := func(i int) []byte { return []byte(fmt.Sprintf("file %05d\n", i)) }
	for i := range files {
		must(t, os.WriteFile(filepath.Join(srv.Dir, "d", fmt.Sprintf("f%05d", i)), content(i), 0o644))
	}
	for i := range 20 {
		makeDir(t, srv, fmt.Sprintf("small/s%02d", i), 30)
	}
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir(), MaxCachedInodes: bound, AttrTimeout: time.Hour})

	first := readFile(t, fsys, "d/f00000")
	if !bytes.Equal(first, content(0)) {
		t.Fatalf("d/f00000 = %q", first)
	}
	for i := range files {
		name := fmt.Sprintf("d/f%05d", i)
		if _, err := fsys.Stat(name); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := fsys.Stat(name + ".missing"); !os.IsNotExist(err) {
				t.Fatalf("stat %s.missing: %v", name, err)
			}
		}
		if i%8 == 0 {
			if got := readFile(t, fsys, name); !bytes.Equal(got, content(i)) {
				t.Fatalf("%s = %q", name, got)
			}
		}
		if i%100 == 0 {
			checkBounded(t, fsys, bound, 0, fmt.Sprintf("after %d files", i+1))
		}
	}
	fis, err := fsys.ReadDir("d") // larger than the bound: not kept
	must(t, err)
	if len(fis) != files {
		t.Fatalf("d: %d entries", len(fis))
	}
	for i := range 20 {
		fis, err := fsys.ReadDir(fmt.Sprintf("small/s%02d", i))
		must(t, err)
		if len(fis) != 30 {
			t.Fatalf("small/s%02d: %d entries", i, len(fis))
		}
		checkBounded(t, fsys, bound, 0, fmt.Sprintf("after listing %d directories", i+1))
	}
	checkBounded(t, fsys, bound, 0, "after the walk")
	// The bound evicts, it does not disable: the last listing is answered
	// from memory.
	rdp := rpcCalls(fsys, "READDIRPLUS")
	fis, err = fsys.ReadDir("small/s19")
	must(t, err)
	if len(fis) != 30 || rpcCalls(fsys, "READDIRPLUS") != rdp {
		t.Fatalf("listing small/s19 again: %d entries, %d READDIRPLUS", len(fis), rpcCalls(fsys, "READDIRPLUS")-rdp)
	}

	// d/f00000 was evicted long ago (inode, attributes, name): its data
	// is still in the cache, used after revalidation.
	reads, before := srv.Reads(), fsys.Stats()
	if got := readFile(t, fsys, "d/f00000"); !bytes.Equal(got, content(0)) {
		t.Fatalf("d/f00000 again = %q", got)
	}
	after := fsys.Stats()
	if r := srv.Reads() - reads; r != 0 {
		t.Fatalf("reading an evicted file again sent %d READs, want 0 (served from the cache)", r)
	}
	calls := totalCalls(after.RPC.Procs) - totalCalls(before.RPC.Procs)
	t.Logf("reading evicted d/f00000 again: %d RPCs, cache read hits %d→%d", calls, before.Cache.ReadHits, after.Cache.ReadHits)
	if calls < 1 || calls > 3 {
		t.Fatalf("reading an evicted file again took %d RPCs (%v), want its revalidation only", calls, after.RPC.Procs)
	}
	if after.Cache.Invalidations != before.Cache.Invalidations || after.Cache.AcquireDiscards != before.Cache.AcquireDiscards {
		t.Fatal("reading an evicted, unchanged file discarded its cached data")
	}
	if after.Cache.ReadHits == before.Cache.ReadHits {
		t.Fatal("reading an evicted file again was no cache hit")
	}
	if before.Cache.Relinquishes == 0 || before.Cache.Cookies > bound {
		t.Fatalf("cookies: %d relinquished, %d live (bound %d)", before.Cache.Relinquishes, before.Cache.Cookies, bound)
	}

	// A change made upstream meanwhile is still seen (close-to-open).
	must(t, os.WriteFile(filepath.Join(srv.Dir, "d", "f00004"), []byte("changed upstream, longer\n"), 0o644))
	if got := readFile(t, fsys, "d/f00004"); string(got) != "changed upstream, longer\n" {
		t.Fatalf("d/f00004 after an upstream change = %q", got)
	}
}

// Files held open or dirty are never evicted: 200 files written, 50 of
// them kept open, with MaxCachedInodes 100; after Sync every byte is on
// the server, and closing the rest brings the inode table back within
// the bound.
func TestOpenAndDirtyInodesNotEvicted(t *testing.T) {
	const files, kept, bound = 200, 50, 100
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir(), MaxCachedInodes: bound, DirtyExpire: time.Hour})
	data := func(i int) []byte { return randBytes(int64(i), 5000+i) }
	var open []billy.File
	for i := range files {
		f, err := fsys.Create(fmt.Sprintf("w/f%03d", i))
		must(t, err)
		if _, err := f.Write(data(i)); err != nil {
			t.Fatal(err)
		}
		if i%(files/kept) == 0 {
			open = append(open, f) // dirty and open: never evicted
			continue
		}
		must(t, f.Close())
	}
	checkBounded(t, fsys, bound, kept, "with 50 files open")
	if st := fsys.Stats(); st.Writeback.DirtyBytes == 0 {
		t.Fatalf("the open files hold no dirty data (%+v): the test proves nothing", st.Writeback)
	}
	// Touch many other names so everything evictable is evicted.
	for i := range 3 * bound {
		if _, err := fsys.Stat(fmt.Sprintf("w/none%03d", i)); !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	must(t, fsys.Sync())
	for i := range files {
		got, err := os.ReadFile(filepath.Join(srv.Dir, "w", fmt.Sprintf("f%03d", i)))
		must(t, err)
		if !bytes.Equal(got, data(i)) {
			t.Fatalf("w/f%03d on the server: %d bytes, want %d", i, len(got), len(data(i)))
		}
	}
	// Writes after the Sync, through the files still open, reach the
	// server at their close.
	for _, f := range open {
		if _, err := f.Write([]byte("tail")); err != nil {
			t.Fatal(err)
		}
		must(t, f.Close())
	}
	checkBounded(t, fsys, bound, 0, "after closing every file")
	for i := 0; i < files; i += files / kept {
		got, err := os.ReadFile(filepath.Join(srv.Dir, "w", fmt.Sprintf("f%03d", i)))
		must(t, err)
		if want := append(data(i), "tail"...); !bytes.Equal(got, want) {
			t.Fatalf("w/f%03d on the server: %d bytes, want %d", i, len(got), len(want))
		}
	}
}

// BenchmarkMetadataMemory measures the heap held per cached handle: Stat
// of 10 000 files (attributes + directory entry each), then open and close
// of the same files (an idle inode with its cache cookie each). Run with
// -benchtime=1x.
func BenchmarkMetadataMemory(b *testing.B) {
	const files = 10_000
	srv := startServer(b)
	makeDir(b, srv, "m", files)
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	for range b.N {
		fsys := mount(b, srv, billyfs.Options{CacheDir: b.TempDir(), MaxInodes: files, AttrTimeout: time.Hour})
		before := heap()
		for i := range files {
			if _, err := fsys.Stat(fmt.Sprintf("m/f%05d", i)); err != nil {
				b.Fatal(err)
			}
		}
		statted := heap()
		for i := range files {
			f, err := fsys.Open(fmt.Sprintf("m/f%05d", i))
			if err != nil {
				b.Fatal(err)
			}
			must(b, f.Close())
		}
		opened := heap()
		st := fsys.Stats()
		b.ReportMetric(float64(int64(statted)-int64(before))/float64(st.CachedAttrs), "B/cached-handle")
		b.ReportMetric(float64(int64(opened)-int64(statted))/float64(st.Inodes), "B/idle-inode")
		b.Logf("%d handles cached (attrs %d, dentries %d): heap +%d B; %d idle inodes: heap +%d B",
			files, st.CachedAttrs, st.Dentries, int64(statted)-int64(before), st.Inodes, int64(opened)-int64(statted))
		must(b, fsys.Close())
	}
}

// An idle inode whose data could not be written back (its Close failed in
// an upstream outage) is never evicted, while the clean ones around it
// are: reading 20 cached files during the outage with MaxInodes 5 keeps
// at most 5 inodes plus the dirty ones, and their data reaches the server
// once the upstream is back (evicting them loses it: checked by mutation).
func TestDirtyIdleInodeNotEvicted(t *testing.T) {
	const files, maxInodes = 20, 5
	up := startRestartable(t)
	content := func(i int) []byte { return []byte(fmt.Sprintf("cached %02d\n", i)) }
	for i := range files {
		must(t, os.WriteFile(filepath.Join(up.Dir, fmt.Sprintf("c%02d", i)), content(i), 0o644))
	}
	fsys, err := billyfs.New(t.Context(), billyfs.Options{Addr: up.Addr, CacheDir: t.TempDir(),
		ServeStale: time.Minute, OutageDetect: 300 * time.Millisecond, Timeout: time.Second,
		AttrTimeout: 50 * time.Millisecond, Connections: 1, DirtyExpire: time.Hour, MaxInodes: maxInodes})
	must(t, err)
	defer fsys.Close()
	for i := range files {
		readFile(t, fsys, fmt.Sprintf("c%02d", i))
	}
	const dirty = 2
	data := func(i int) []byte { return randBytes(int64(40+i), 70_000) }
	var open []billy.File
	for i := range dirty {
		f, err := fsys.Create(fmt.Sprintf("dirty%d", i))
		must(t, err)
		if _, err := f.Write(data(i)); err != nil {
			t.Fatal(err)
		}
		open = append(open, f)
	}

	up.Stop()
	for _, f := range open {
		if err := f.Close(); err == nil {
			t.Fatal("Close wrote back during the outage")
		}
	}
	if st := fsys.Stats(); st.Writeback.DirtyBytes == 0 {
		t.Fatalf("nothing dirty after the failed Close (%+v): the test proves nothing", st.Writeback)
	}
	for round := range 2 {
		for i := range files {
			if got := readFile(t, fsys, fmt.Sprintf("c%02d", i)); !bytes.Equal(got, content(i)) {
				t.Fatalf("round %d: c%02d = %q during the outage", round, i, got)
			}
		}
		t.Logf("round %d: %d inodes", round, fsys.Stats().Inodes)
		if st := fsys.Stats(); st.Inodes > maxInodes+dirty || st.Writeback.DirtyBytes == 0 {
			t.Fatalf("round %d: %d inodes (bound %d + %d dirty), %d dirty bytes", round, st.Inodes, maxInodes, dirty, st.Writeback.DirtyBytes)
		}
	}

	must(t, up.Start())
	deadline := time.Now().Add(20 * time.Second)
	for fsys.Sync() != nil && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	for i := range dirty {
		got, err := os.ReadFile(filepath.Join(up.Dir, fmt.Sprintf("dirty%d", i)))
		must(t, err)
		if !bytes.Equal(got, data(i)) {
			t.Fatalf("dirty%d on the server after the outage: %d bytes, want %d", i, len(got), len(data(i)))
		}
	}
}
