package integration

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/client"
)

// The memory bound of the proxy and of billyfs. It is twice the 128 MiB
// that TestServeMemoryBound holds `serve` to: the proxy is serve plus
// billyfs (read-ahead windows, the writeback flusher's chunks, the
// client's in-flight WRITE/READ buffers), and the billyfs child is a test
// binary that may carry the race detector's shadow memory.
const memBound = 256 << 20

var memBig = flag.Bool("mem.big", false, "the proxy and billyfs memory tests stream 1 GiB instead of 256 MiB")

func memSize() int {
	if *memBig {
		return 1 << 30
	}
	return 256 << 20
}

// memPiece is the unit the tests generate, write and hash: the file is
// memSize()/memPiece pieces of relData(piece index).
const memPiece = 8 << 20

func memWantSum(size int) string {
	h := sha256.New()
	for off := 0; off < size; off += memPiece {
		h.Write(relData(uint64(off/memPiece), memPiece))
	}
	return hex.EncodeToString(h.Sum(nil))
}

func memFileSum(t testing.TB, path string) (string, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil)), n
}

// TestProxyMemoryBound streams a file larger than the bound (256 MiB,
// 1 GiB with -mem.big) into and back out of `nfsd-cache proxy` (a child
// process, default flags, over our server in this process), with our
// client keeping 16 WRITEs/READs of 1 MiB in flight on each of 2
// connections, and checks the proxy's peak RSS (VmHWM) stays under
// memBound: the data goes through the cache directory on disk and is
// written back to the upstream, never held whole in memory. The upstream
// copy and the bytes read back through the proxy are both checked.
func TestProxyMemoryBound(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: streams 256 MiB through a child proxy")
	}
	size := memSize()
	bin := pxBuild(t)
	up := pxStartUpstream(t)
	p := pxStart(t, nil, bin, "--upstream", up.Addr, "--cache-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--log-level", "warn")
	pid := p.cmd.Process.Pid
	startRSS := vmHWM(t, pid)
	c := relDial(t, "127.0.0.1:"+p.Port, client.Options{Connections: 2, Timeout: time.Minute})
	ctx := relCtx(t)
	f, err := c.Create(ctx, c.Root(), "big", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		t.Fatal(err)
	}
	want := memWantSum(size)
	start := time.Now()
	for off := 0; off < size; off += memPiece {
		if _, err := c.WriteAt(ctx, f.Handle, relData(uint64(off/memPiece), memPiece), int64(off)); err != nil {
			t.Fatal(err)
		}
		if (off+memPiece)%(32<<20) == 0 {
			if _, err := c.Commit(ctx, f.Handle, 0, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := c.Commit(ctx, f.Handle, 0, 0); err != nil {
		t.Fatal(err)
	}
	wdur := time.Since(start)
	writeRSS := vmHWM(t, pid)
	// COMMIT through the proxy returns once the data is on the upstream.
	if got, n := memFileSum(t, filepath.Join(up.Dir, "big")); got != want || n != int64(size) {
		t.Fatalf("upstream copy after COMMIT: %d bytes, sha %s…, want %d bytes %s…", n, got[:12], size, want[:12])
	}
	h := sha256.New()
	buf := make([]byte, memPiece)
	start = time.Now()
	for off := 0; off < size; off += memPiece {
		if _, err := c.ReadAt(ctx, f.Handle, buf, int64(off)); err != nil {
			t.Fatal(err)
		}
		h.Write(buf)
	}
	rdur := time.Since(start)
	if got := hex.EncodeToString(h.Sum(nil)); got != want {
		t.Fatalf("read back through the proxy: sha %s…, want %s…", got[:12], want[:12])
	}
	peak := vmHWM(t, pid)
	t.Logf("nfsd-cache proxy streamed %d MiB in (%.0f MB/s, to the upstream) and out (%.0f MB/s): peak RSS %d MiB (at start %d, after the write %d), bound %d MiB",
		size>>20, float64(size)/wdur.Seconds()/1e6, float64(size)/rdur.Seconds()/1e6, peak>>20, startRSS>>20, writeRSS>>20, memBound>>20)
	if peak > memBound {
		t.Fatalf("proxy peak RSS %d MiB over the %d MiB bound for a %d MiB file", peak>>20, memBound>>20, size>>20)
	}
	p.Stop(t)
}

// The billyfs memory test runs billyfs in a child (this test binary,
// env switch memChildEnv) so that its VmHWM is billyfs's alone, not the
// server's or the test harness's.
const (
	memChildEnv = "NFSCACHE_MEM_CHILD" // server address
	memCacheEnv = "NFSCACHE_MEM_CACHE" // cache dir
	memSizeEnv  = "NFSCACHE_MEM_SIZE"  // bytes
)

// TestBillyfsMemoryBound: a child process writes a file larger than the
// bound through billyfs (default Options: cache on, 64 MiB dirty limit) in
// 1 MiB Writes, Closes it (everything written back), reopens it and reads
// it sequentially (read-ahead up to 8 MiB), and reports its peak RSS;
// the parent checks the bytes on the server and in the read, and the peak
// against memBound. Under -race the child carries the race detector's
// shadow memory and is still held to the same bound.
func TestBillyfsMemoryBound(t *testing.T) {
	if addr := os.Getenv(memChildEnv); addr != "" {
		memBillyfsChild(t, addr)
		return
	}
	if testing.Short() {
		t.Skip("-short: streams 256 MiB through billyfs in a child")
	}
	size := memSize()
	srv := bfsStartServer(t)
	cmd := memTestChild(t, "TestBillyfsMemoryBound", memChildEnv+"="+srv.Addr, memCacheEnv+"="+t.TempDir(), memSizeEnv+"="+strconv.Itoa(size))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	var res struct {
		peak, start     int64
		sum             string
		wMBps, rMBps    float64
		dirtyMax, limit int64
	}
	found := false
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if _, err := fmt.Sscanf(sc.Text(), "RESULT peak=%d start=%d sum=%s write=%f read=%f dirtymax=%d limit=%d",
			&res.peak, &res.start, &res.sum, &res.wMBps, &res.rMBps, &res.dirtyMax, &res.limit); err == nil {
			found = true
		}
	}
	if !found {
		t.Fatalf("child printed no RESULT:\n%s", out)
	}
	want := memWantSum(size)
	if got, n := memFileSum(t, filepath.Join(srv.Dir, "big")); got != want || n != int64(size) {
		t.Fatalf("server copy: %d bytes, sha %s…, want %d bytes %s…", n, got[:12], size, want[:12])
	}
	if res.sum != want {
		t.Fatalf("read back through billyfs: sha %s…, want %s…", res.sum[:12], want[:12])
	}
	t.Logf("billyfs child (race detector: %v) streamed %d MiB in (%.0f MB/s incl. Close) and out (%.0f MB/s): peak RSS %d MiB (at start %d), bound %d MiB; dirty bytes peaked at %d MiB (limit %d MiB)",
		memRaceDetector, size>>20, res.wMBps, res.rMBps, res.peak>>20, res.start>>20, memBound>>20, res.dirtyMax>>20, res.limit>>20)
	if res.peak > memBound {
		t.Fatalf("billyfs peak RSS %d MiB over the %d MiB bound for a %d MiB file", res.peak>>20, memBound>>20, size>>20)
	}
	if res.dirtyMax > res.limit {
		t.Errorf("dirty bytes reached %d, over the %d limit", res.dirtyMax, res.limit)
	}
}

func memBillyfsChild(t *testing.T, addr string) {
	size, err := strconv.Atoi(os.Getenv(memSizeEnv))
	if err != nil {
		t.Fatal(err)
	}
	start := vmHWM(t, os.Getpid())
	fsys, err := billyfs.New(context.Background(), billyfs.Options{Addr: addr, CacheDir: os.Getenv(memCacheEnv)})
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	dirtyMax, stop := memWatchDirty(fsys)
	f, err := fsys.Create("big")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	for off := 0; off < size; off += memPiece {
		piece := relData(uint64(off/memPiece), memPiece)
		for o := 0; o < memPiece; o += 1 << 20 {
			if _, err := f.Write(piece[o : o+1<<20]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	wdur := time.Since(t0)
	stop()
	if f, err = fsys.Open("big"); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	buf := make([]byte, 1<<20)
	t0 = time.Now()
	n, err := io.CopyBuffer(h, f, buf)
	if err != nil || n != int64(size) {
		t.Fatalf("read back: %d bytes, %v", n, err)
	}
	rdur := time.Since(t0)
	f.Close()
	fmt.Printf("RESULT peak=%d start=%d sum=%s write=%f read=%f dirtymax=%d limit=%d\n",
		vmHWM(t, os.Getpid()), start, hex.EncodeToString(h.Sum(nil)),
		float64(size)/wdur.Seconds()/1e6, float64(size)/rdur.Seconds()/1e6, dirtyMax.Load(), int64(64<<20))
}

// memWatchDirty samples fsys's writeback dirty bytes every millisecond
// until stop is called and keeps the maximum.
func memWatchDirty(fsys *billyfs.FS) (*atomic.Int64, func()) {
	var peak atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			if d := fsys.Stats().Writeback.DirtyBytes; d > peak.Load() {
				peak.Store(d)
			}
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return &peak, func() { close(done); wg.Wait() }
}

// memTestChild is this test binary re-run for one test with extra env.
func memTestChild(t *testing.T, test string, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// TestBillyfsDirtyThrottle: with a small writeback threshold (1 MiB
// dirty limit, dirty data never expiring by age), four writers pushing
// 8 MiB each through billyfs are throttled: the dirty bytes held in the
// cache never exceed the limit (sampled every millisecond), writers
// waited in the throttle, the process heap does not grow with the data,
// and every byte reaches the server.
func TestBillyfsDirtyThrottle(t *testing.T) {
	const (
		limit   = 1 << 20
		writers = 4
		perFile = 8 << 20
		chunk   = 128 << 10
	)
	srv := bfsStartServer(t)
	fsys := bfsMount(t, srv, billyfs.Options{CacheDir: t.TempDir(), DirtyLimitBytes: limit, DirtyExpire: time.Hour})
	baseHeap := heapInuse()
	dirtyMax, stop := memWatchDirty(fsys)
	var heapMax atomic.Uint64
	heapStop, heapDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(heapDone)
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			if m.HeapInuse > heapMax.Load() {
				heapMax.Store(m.HeapInuse)
			}
			select {
			case <-time.After(20 * time.Millisecond):
			case <-heapStop:
				return
			}
		}
	}()
	err := fdlimForEach(writers, writers, func(w int) error {
		f, err := fsys.Create(fmt.Sprintf("w%d", w))
		if err != nil {
			return err
		}
		for off := 0; off < perFile; off += chunk {
			if _, err := f.Write(relData(uint64(w)<<32|uint64(off), chunk)); err != nil {
				return fmt.Errorf("write w%d at %d: %w", w, off, err)
			}
		}
		return f.Close()
	})
	stop()
	close(heapStop)
	<-heapDone
	if err != nil {
		t.Fatal(err)
	}
	st := fsys.Stats().Writeback
	t.Logf("%d writers × %d MiB with a %d KiB dirty limit: dirty bytes peaked at %d KiB, %d throttle waits, %d pages written; heap %d → peak %d MiB",
		writers, perFile>>20, limit>>10, dirtyMax.Load()>>10, st.ThrottleWaits, st.PagesWritten, baseHeap>>20, heapMax.Load()>>20)
	if dirtyMax.Load() > limit {
		t.Errorf("dirty bytes reached %d, over the %d limit", dirtyMax.Load(), limit)
	}
	if st.ThrottleWaits == 0 {
		t.Error("no writer was ever throttled: the limit was not exercised")
	}
	if heapMax.Load() > baseHeap+32<<20 {
		t.Errorf("heap grew from %d to %d MiB while writing %d MiB: dirty data is held in memory", baseHeap>>20, heapMax.Load()>>20, writers*perFile>>20)
	}
	for w := range writers {
		h := sha256.New()
		for off := 0; off < perFile; off += chunk {
			h.Write(relData(uint64(w)<<32|uint64(off), chunk))
		}
		if got, n := memFileSum(t, filepath.Join(srv.Dir, fmt.Sprintf("w%d", w))); got != hex.EncodeToString(h.Sum(nil)) || n != perFile {
			t.Errorf("w%d on the server: %d bytes, content differs", w, n)
		}
	}
}
