package integration

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/nfscache/nfscache/billyfs"
)

// Benchmarks of billyfs against baselines measured in the same run:
//
//	go test ./integration/ -run '^$' -bench Billyfs -benchtime 3x
//
// Each reports MB/s (or ops/s) of billyfs and of its baseline, and their
// ratio. The file size is 64 MiB (BILLYFS_BENCH_MB overrides).

func bfsBenchSize() int {
	if s := os.Getenv("BILLYFS_BENCH_MB"); s != "" {
		var mb int
		if _, err := fmt.Sscan(s, &mb); err == nil && mb > 0 {
			return mb << 20
		}
	}
	return 64 << 20
}

// bfsDrain reads f to the end with 1 MiB reads.
func bfsDrain(b *testing.B, r io.Reader, buf []byte) int64 {
	n, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf)
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// bfsGoNFSClient mounts srv with go-nfs-client (the baseline client).
func bfsGoNFSClient(b *testing.B, srv *bfsServer) *nfsc.Target {
	// go-nfs-client binds a random local port and can collide with one in
	// use: retry.
	var c *rpc.Client
	var err error
	for try := 0; try < 20; try++ {
		if c, err = rpc.DialTCP("tcp", srv.Addr, false); err == nil {
			break
		}
	}
	if err != nil {
		b.Fatal(err)
	}
	m := &nfsc.Mount{Client: c}
	target, err := m.Mount("/", rpc.AuthNull)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { target.Close(); c.Close() })
	return target
}

func mbps(bytes int64, d time.Duration) float64 { return float64(bytes) / d.Seconds() / 1e6 }

// Cold read: a fresh billyfs with an empty cache reads the whole file from
// the server (read-ahead, concurrent READs) and fills the cache; baseline:
// go-nfs-client reading the same file with 1 MiB reads.
func BenchmarkBillyfsColdRead(b *testing.B) {
	size := bfsBenchSize()
	srv := bfsStartServer(b)
	if err := os.WriteFile(filepath.Join(srv.Dir, "big"), bfsRand(7, size), 0o644); err != nil {
		b.Fatal(err)
	}
	target := bfsGoNFSClient(b, srv)
	buf := make([]byte, 1<<20)
	var ours, base time.Duration
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		fsys, err := billyfs.New(context.Background(), billyfs.Options{Addr: srv.Addr, CacheDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		f, err := fsys.Open("big")
		if err != nil {
			b.Fatal(err)
		}
		if n := bfsDrain(b, f, buf); n != int64(size) {
			b.Fatalf("read %d", n)
		}
		f.Close()
		ours += time.Since(t0)
		b.StopTimer()
		fsys.Close()
		t0 = time.Now()
		g, err := target.Open("/big")
		if err != nil {
			b.Fatal(err)
		}
		if n := bfsDrain(b, g, buf); n != int64(size) {
			b.Fatalf("go-nfs-client read %d", n)
		}
		g.Close()
		base += time.Since(t0)
		b.StartTimer()
	}
	b.StopTimer()
	total := int64(size) * int64(b.N)
	b.ReportMetric(mbps(total, ours), "billyfs-MB/s")
	b.ReportMetric(mbps(total, base), "go-nfs-client-MB/s")
	b.ReportMetric(base.Seconds()/ours.Seconds(), "ratio")
}

// Warm read: the file is in the cache; each iteration opens (GETATTR
// revalidation), reads it all with 1 MiB reads and closes. Baseline: a
// local read of the backing file itself with the same buffer, in the same
// run (goal: ratio ≥ 0.8).
func BenchmarkBillyfsWarmRead(b *testing.B) {
	size := bfsBenchSize()
	srv := bfsStartServer(b)
	if err := os.WriteFile(filepath.Join(srv.Dir, "big"), bfsRand(8, size), 0o644); err != nil {
		b.Fatal(err)
	}
	cacheDir := b.TempDir()
	fsys := bfsMount(b, srv, billyfs.Options{CacheDir: cacheDir})
	buf := make([]byte, 1<<20)
	f, err := fsys.Open("big")
	if err != nil {
		b.Fatal(err)
	}
	bfsDrain(b, f, buf)
	f.Close()
	backing := bfsLargestFile(b, filepath.Join(cacheDir, "objects"))
	reads := srv.Reads()
	var ours, local time.Duration
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		f, err := fsys.Open("big")
		if err != nil {
			b.Fatal(err)
		}
		if n := bfsDrain(b, f, buf); n != int64(size) {
			b.Fatalf("read %d", n)
		}
		f.Close()
		ours += time.Since(t0)
		b.StopTimer()
		t0 = time.Now()
		g, err := os.Open(backing)
		if err != nil {
			b.Fatal(err)
		}
		bfsDrain(b, g, buf)
		g.Close()
		local += time.Since(t0)
		b.StartTimer()
	}
	b.StopTimer()
	if d := srv.Reads() - reads; d != 0 {
		b.Fatalf("warm reads sent %d READs", d)
	}
	total := int64(size) * int64(b.N)
	b.ReportMetric(mbps(total, ours), "billyfs-MB/s")
	b.ReportMetric(mbps(total, local), "local-MB/s")
	b.ReportMetric(local.Seconds()/ours.Seconds(), "ratio")
}

func bfsLargestFile(b *testing.B, dir string) string {
	var best string
	var bestSize int64
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() && fi.Size() > bestSize {
			best, bestSize = p, fi.Size()
		}
		return nil
	})
	if best == "" {
		b.Fatal("no backing file")
	}
	return best
}

// Write + Sync: 1 MiB writes of the whole file, then Close (write back +
// COMMIT), with and without a cache. Baseline: go-nfs-client writing the
// same bytes with 1 MiB calls (FILE_SYNC).
func BenchmarkBillyfsWriteSync(b *testing.B) {
	size := bfsBenchSize()
	data := bfsRand(9, size)
	for _, mode := range []string{"cache", "nocache"} {
		b.Run(mode, func(b *testing.B) {
			srv := bfsStartServer(b)
			opts := billyfs.Options{}
			if mode == "cache" {
				opts.CacheDir = b.TempDir()
			}
			fsys := bfsMount(b, srv, opts)
			target := bfsGoNFSClient(b, srv)
			var ours, base time.Duration
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				f, err := fsys.Create(fmt.Sprintf("w%d", i))
				if err != nil {
					b.Fatal(err)
				}
				for off := 0; off < size; off += 1 << 20 {
					if _, err := f.Write(data[off:min(off+1<<20, size)]); err != nil {
						b.Fatal(err)
					}
				}
				if err := f.Close(); err != nil {
					b.Fatal(err)
				}
				ours += time.Since(t0)
				b.StopTimer()
				t0 = time.Now()
				g, err := target.OpenFile(fmt.Sprintf("/g%d", i), 0o644)
				if err != nil {
					b.Fatal(err)
				}
				for off := 0; off < size; off += 1 << 20 {
					if _, err := g.Write(data[off:min(off+1<<20, size)]); err != nil {
						b.Fatal(err)
					}
				}
				if err := g.Close(); err != nil {
					b.Fatal(err)
				}
				base += time.Since(t0)
				b.StartTimer()
			}
			b.StopTimer()
			total := int64(size) * int64(b.N)
			b.ReportMetric(mbps(total, ours), "billyfs-MB/s")
			b.ReportMetric(mbps(total, base), "go-nfs-client-MB/s")
			b.ReportMetric(base.Seconds()/ours.Seconds(), "ratio")
		})
	}
}

// Small files: create+write 1 KiB+close, stat, and remove rates (ops/s),
// 500 files per iteration, with a cache.
func BenchmarkBillyfsSmallFiles(b *testing.B) {
	const n = 500
	srv := bfsStartServer(b)
	fsys := bfsMount(b, srv, billyfs.Options{CacheDir: b.TempDir()})
	payload := bfsRand(10, 1024)
	var create, stat, remove time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dir := fmt.Sprintf("small%d", i)
		t0 := time.Now()
		for j := 0; j < n; j++ {
			f, err := fsys.Create(fmt.Sprintf("%s/f%d", dir, j))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := f.Write(payload); err != nil {
				b.Fatal(err)
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
		}
		t1 := time.Now()
		for j := 0; j < n; j++ {
			if _, err := fsys.Stat(fmt.Sprintf("%s/f%d", dir, j)); err != nil {
				b.Fatal(err)
			}
		}
		t2 := time.Now()
		for j := 0; j < n; j++ {
			if err := fsys.Remove(fmt.Sprintf("%s/f%d", dir, j)); err != nil {
				b.Fatal(err)
			}
		}
		t3 := time.Now()
		create += t1.Sub(t0)
		stat += t2.Sub(t1)
		remove += t3.Sub(t2)
	}
	b.StopTimer()
	ops := float64(n * b.N)
	b.ReportMetric(ops/create.Seconds(), "creates/s")
	b.ReportMetric(ops/stat.Seconds(), "stats/s")
	b.ReportMetric(ops/remove.Seconds(), "removes/s")
}
