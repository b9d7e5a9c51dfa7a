package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-billy/v5/util"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/server"
)

func bfsRand(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func bfsRead(t testing.TB, fsys billy.Filesystem, name string) []byte {
	t.Helper()
	b, err := util.ReadFile(fsys, name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func bfsWrite(t testing.TB, fsys billy.Filesystem, name string, data []byte) {
	t.Helper()
	if err := util.WriteFile(fsys, name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Two billyfs instances (each with its own cache) on one export:
// close-to-open holds in both directions, our own writes keep our cache,
// and a change made by another client invalidates it.
func TestBillyfsCloseToOpenTwoClients(t *testing.T) {
	srv := bfsStartServer(t)
	a := bfsMount(t, srv, billyfs.Options{CacheDir: t.TempDir()})
	b := bfsMount(t, srv, billyfs.Options{CacheDir: t.TempDir()})

	v1 := bfsRand(1, 3<<20+77)
	bfsWrite(t, a, "shared/file", v1) // Close writes back + COMMITs
	if got := bfsRead(t, b, "shared/file"); !bytes.Equal(got, v1) {
		t.Fatalf("reader saw %d bytes, not the %d the writer closed", len(got), len(v1))
	}

	// The writer's own writes must not have invalidated its cache: a new
	// open reads everything from the cache.
	reads := srv.Reads()
	if got := bfsRead(t, a, "shared/file"); !bytes.Equal(got, v1) {
		t.Fatal("writer reread differs")
	}
	if d := srv.Reads() - reads; d != 0 {
		t.Fatalf("writer rereading its own file sent %d READs, want 0", d)
	}

	// b changes part of the file (without reading it first: its cache holds
	// v1 from the read above), a reopens and must see b's bytes.
	inval := a.Stats().Cache.Invalidations
	f, err := b.OpenFile("shared/file", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := bfsRand(2, 10_000)
	if _, err := f.(io.WriterAt).WriteAt(patch, 1<<20+5); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("tail")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	v2 := append(append([]byte{}, v1...), "tail"...)
	copy(v2[1<<20+5:], patch)
	if got := bfsRead(t, a, "shared/file"); !bytes.Equal(got, v2) {
		t.Fatalf("a after b's change: %d bytes, equal=%v", len(got), bytes.Equal(got, v2))
	}
	if a.Stats().Cache.Invalidations <= inval {
		t.Fatal("a's cache was not invalidated by b's change")
	}
	// The server has exactly v2 (b's partial-page writes merged right).
	if got, err := os.ReadFile(filepath.Join(srv.Dir, "shared/file")); err != nil || !bytes.Equal(got, v2) {
		t.Fatalf("server copy differs (err %v)", err)
	}

	// A change made on the server by a third party is seen too.
	v3 := []byte("rewritten by someone else")
	time.Sleep(10 * time.Millisecond) // a distinct mtime even on coarse clocks
	if err := os.WriteFile(filepath.Join(srv.Dir, "shared/file"), v3, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := bfsRead(t, a, "shared/file"); !bytes.Equal(got, v3) {
		t.Fatalf("after a third-party change a read %q", got)
	}
}

// A partial-page write to a file whose data is not in this client's cache
// must send exactly the written bytes, not a page of unknown content.
func TestBillyfsPartialPageWriteUncachedFile(t *testing.T) {
	srv := bfsStartServer(t)
	orig := bfsRand(3, 100_000)
	if err := os.WriteFile(filepath.Join(srv.Dir, "f"), orig, 0o644); err != nil {
		t.Fatal(err)
	}
	fsys := bfsMount(t, srv, billyfs.Options{CacheDir: t.TempDir()})
	f, err := fsys.OpenFile("f", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{5000, 8190, 99_999} {
		if _, err := f.(io.WriterAt).WriteAt([]byte("XY"), off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	want := append([]byte{}, orig...)
	copy(want[5000:], "XY")
	copy(want[8190:], "XY")
	want = append(want[:99_999], "XY"...)
	got, err := os.ReadFile(filepath.Join(srv.Dir, "f"))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("server copy: %d bytes, want %d, equal=%v", len(got), len(want), bytes.Equal(got, want))
	}
	if got := bfsRead(t, fsys, "f"); !bytes.Equal(got, want) {
		t.Fatal("client reread differs")
	}
}

// A billyfs reopened on the same CacheDir after Close serves what the cache
// held with zero READ RPCs: both data it fetched and data it wrote.
func TestBillyfsReopenedCacheZeroReads(t *testing.T) {
	srv := bfsStartServer(t)
	cacheDir := t.TempDir()
	fetched := bfsRand(4, 2<<20+5)
	if err := os.WriteFile(filepath.Join(srv.Dir, "fetched"), fetched, 0o644); err != nil {
		t.Fatal(err)
	}
	written := bfsRand(5, 1<<20+9)

	first, err := billyfs.New(context.Background(), billyfs.Options{Addr: srv.Addr, CacheDir: cacheDir})
	if err != nil {
		t.Fatal(err)
	}
	if got := bfsRead(t, first, "fetched"); !bytes.Equal(got, fetched) {
		t.Fatal("first read differs")
	}
	bfsWrite(t, first, "dir/written", written)
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	second := bfsMount(t, srv, billyfs.Options{Addr: srv.Addr, CacheDir: cacheDir})
	reads := srv.Reads()
	if got := bfsRead(t, second, "fetched"); !bytes.Equal(got, fetched) {
		t.Fatal("reopened read of fetched file differs")
	}
	if got := bfsRead(t, second, "dir/written"); !bytes.Equal(got, written) {
		t.Fatal("reopened read of written file differs")
	}
	if d := srv.Reads() - reads; d != 0 {
		t.Fatalf("reopened cache sent %d READs, want 0", d)
	}
	st := second.Stats()
	if st.Cache.ReadHits == 0 || st.RPC.Procs["READ"].Calls != 0 {
		t.Fatalf("stats: hits %d, client READs %d", st.Cache.ReadHits, st.RPC.Procs["READ"].Calls)
	}
}

// 2000 files written concurrently through a cache limited to 32 open
// files: every byte reaches the server, and backing fds (counted in
// /proc/self/fd while it runs) never exceed 32.
func TestBillyfsManyFilesBoundedFDs(t *testing.T) {
	const (
		files        = 2000
		writers      = 64
		maxOpenFiles = 32
	)
	srv := bfsStartServer(t)
	cacheDir := t.TempDir()
	fsys := bfsMount(t, srv, billyfs.Options{CacheDir: cacheDir, MaxOpenFiles: maxOpenFiles, Connections: 16})
	content := func(i int) []byte {
		return bfsRand(int64(1000+i), 1000+(i*7919)%20000)
	}

	// The sampler counts backing fds in /proc/self/fd while no billyfs
	// call is running (writers hold gate shared around each call; files
	// stay open, dirty and pinned between calls): a listing of
	// /proc/self/fd is not atomic, and counting it while fds are closed and
	// their numbers reused could count one slot twice.
	var gate sync.RWMutex
	var peakFDs atomic.Int64
	var samples atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		objects := filepath.Join(cacheDir, "objects")
		for {
			gate.Lock()
			n := int64(bfsOpenBackingFDs(objects))
			gate.Unlock()
			samples.Add(1)
			if n > peakFDs.Load() {
				peakFDs.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	step := func(fn func() error) error {
		gate.RLock()
		defer gate.RUnlock()
		return fn()
	}

	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= files {
					return
				}
				name := fmt.Sprintf("d%02d/file%04d", i%50, i)
				data := content(i)
				var f billy.File
				// Two writes: the second dirties an already dirty inode.
				err := step(func() (err error) {
					if f, err = fsys.Create(name); err != nil {
						return err
					}
					_, err = f.Write(data[:len(data)/2])
					return err
				})
				if err == nil {
					err = step(func() error { _, err := f.Write(data[len(data)/2:]); return err })
				}
				if err == nil {
					err = step(f.Close)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := fsys.Stats()
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < files; i++ {
		name := filepath.Join(srv.Dir, fmt.Sprintf("d%02d/file%04d", i%50, i))
		got, err := os.ReadFile(name)
		if err != nil || !bytes.Equal(got, content(i)) {
			t.Fatalf("%s on the server: %d bytes, err %v", name, len(got), err)
		}
	}
	t.Logf("peak backing fds: %d in %d samples of /proc/self/fd, %d by fscache; LRU evictions %d, pins %d, pin waits %d",
		peakFDs.Load(), samples.Load(), st.Cache.PeakOpenFiles, st.Cache.LRUEvictions, st.Cache.Pins, st.Cache.PinWaits)
	if peakFDs.Load() > maxOpenFiles || st.Cache.PeakOpenFiles > maxOpenFiles {
		t.Fatalf("backing fds peaked at %d (proc) / %d (fscache), bound %d", peakFDs.Load(), st.Cache.PeakOpenFiles, maxOpenFiles)
	}
	if peakFDs.Load() == 0 {
		t.Fatal("sampler never saw a backing fd: the test measured nothing")
	}
}

// With the cache on a 2 MiB tmpfs, backing writes fail with ENOSPC: the
// cache steps aside (fscache.ErrCacheUnavailable), billyfs sends the data
// to the server instead, and nothing is lost, for writes and for reads.
func TestBillyfsCacheFullStepsAside(t *testing.T) {
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s); the step-aside path is then untested end to end", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	srv := bfsStartServer(t)
	remote := bfsRand(11, 5<<20)
	if err := os.WriteFile(filepath.Join(srv.Dir, "remote"), remote, 0o644); err != nil {
		t.Fatal(err)
	}
	fsys := bfsMount(t, srv, billyfs.Options{CacheDir: filepath.Join(mnt, "cache")})

	local := bfsRand(12, 6<<20+3)
	bfsWrite(t, fsys, "local", local)
	if got, err := os.ReadFile(filepath.Join(srv.Dir, "local")); err != nil || !bytes.Equal(got, local) {
		t.Fatalf("server copy of a file written through a full cache: %d bytes, err %v", len(got), err)
	}
	if got := bfsRead(t, fsys, "remote"); !bytes.Equal(got, remote) {
		t.Fatal("read through a full cache differs")
	}
	if got := bfsRead(t, fsys, "local"); !bytes.Equal(got, local) {
		t.Fatal("reread through a full cache differs")
	}
	if err := fsys.Sync(); err != nil {
		t.Fatal(err)
	}
	if st := fsys.Stats(); st.Cache.NoSpace == 0 {
		t.Fatalf("the cache never ran out of space (stats %+v): the test proved nothing", st.Cache)
	}
}

// A writeback that fails (the server is down) is reported by Close; the
// data stays dirty in the cache and reaches the server once it is back
// (same export, same handle state) — nothing is lost.
func TestBillyfsWritebackErrorReportedAndRetried(t *testing.T) {
	dir, stateDir := t.TempDir(), t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	serve := func(l net.Listener) func() {
		srv, err := server.New(osfs.New(dir, osfs.WithBoundOS()), server.Options{StateDir: stateDir})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = srv.Serve(l)
		}()
		return func() {
			srv.Close()
			l.Close()
			<-done
		}
	}
	stop := serve(l)
	fsys, err := billyfs.New(context.Background(), billyfs.Options{
		Addr: addr, CacheDir: t.TempDir(), Timeout: 2 * time.Second, DirtyExpire: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()

	data := bfsRand(13, 1<<20+17)
	f, err := fsys.Create("f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	stop() // the server goes away with our data still dirty
	if err := f.Close(); err == nil {
		t.Fatal("Close with the server down reported no writeback error")
	} else {
		t.Logf("Close reported: %v", err)
	}

	l2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("relisten on %s: %v", addr, err)
	}
	defer serve(l2)()
	// The first Sync may report the failure once more (to the inode's own
	// error cursor); the data must get through by the next.
	var syncErr error
	for i := 0; i < 3; i++ {
		if syncErr = fsys.Sync(); syncErr == nil {
			break
		}
	}
	if syncErr != nil {
		t.Fatalf("Sync after the server came back: %v", syncErr)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "f")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("server copy after retry: %d bytes, err %v", len(got), err)
	}
}
