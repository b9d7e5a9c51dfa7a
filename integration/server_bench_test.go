package integration

import (
	"crypto/rand"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	nfs "github.com/willscott/go-nfs"
	nfshelper "github.com/willscott/go-nfs/helpers"

	"github.com/nfscache/nfscache/server"
)

var (
	srvBenchSize   = flag.Int64("server-bench-size", 256<<20, "file size for BenchmarkServerRead and BenchmarkServerWrite")
	srvBenchParent = flag.String("server-bench-dir", "/dev/shm", "parent of BenchmarkServerWrite's exports (falls back to the test temp dir)")
)

// srvBenchDir is an export directory for the write benchmark.
func srvBenchDir(b *testing.B) string {
	d, err := os.MkdirTemp(*srvBenchParent, "nfscache-bench-")
	if err != nil {
		return b.TempDir()
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// BenchmarkServerRead serves one file from stock go-nfs (helloworld-style
// NullAuthHandler + CachingHandler over osfs) and from our server, reads
// it with the same clients, and reports MB/s and our/stock ratios:
//
//	go test ./integration/ -run '^$' -bench ServerRead -benchtime 3x
func BenchmarkServerRead(b *testing.B) {
	nfsCat := srvLibnfs(b, "nfs-cat")
	dir := b.TempDir()
	f, err := os.Create(filepath.Join(dir, "big"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, *srvBenchSize); err != nil {
		b.Fatal(err)
	}
	f.Close()

	// Stock go-nfs.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	stock := nfshelper.NewCachingHandler(nfshelper.NewNullAuthHandler(osfs.New(dir)), 1024)
	go func() { _ = nfs.Serve(l, stock) }()
	defer l.Close()
	_, stockPort, _ := net.SplitHostPort(l.Addr().String())
	_, ourPort := srvStart(b, dir, server.Options{})

	catOnce := func(url string) float64 {
		start := time.Now()
		cmd := exec.Command(nfsCat, url)
		cmd.Stdout = io.Discard
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			b.Fatalf("nfs-cat %s: %v", url, err)
		}
		return float64(*srvBenchSize) / time.Since(start).Seconds() / 1e6
	}
	goOnce := func(port string) float64 {
		v := srvMount(b, port)
		start := time.Now()
		r, err := v.Open("/big")
		if err != nil {
			b.Fatal(err)
		}
		// Hide ReaderFrom/WriterTo so every READ really asks for 1 MiB.
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{r}, make([]byte, 1<<20))
		if err != nil || n != *srvBenchSize {
			b.Fatalf("go-nfs-client read %d: %v", n, err)
		}
		return float64(n) / time.Since(start).Seconds() / 1e6
	}
	stockURL := srvURL(stockPort, "/big") + "&auto-traverse-mounts=0"
	ourURL := srvURL(ourPort, "/big")
	catOnce(ourURL) // warm the page cache
	var sc, oc, sg, og float64
	b.ResetTimer()
	for range b.N {
		sc += catOnce(stockURL)
		oc += catOnce(ourURL)
		sg += goOnce(stockPort)
		og += goOnce(ourPort)
	}
	n := float64(b.N)
	b.ReportMetric(sc/n, "stock-nfscat-MB/s")
	b.ReportMetric(oc/n, "ours-nfscat-MB/s")
	b.ReportMetric(oc/sc, "nfscat-ratio")
	b.ReportMetric(sg/n, "stock-gonfsclient-MB/s")
	b.ReportMetric(og/n, "ours-gonfsclient-MB/s")
	b.ReportMetric(og/sg, "gonfsclient-ratio")
	b.Logf("nfs-cat: stock go-nfs %.0f MB/s, ours %.0f MB/s (%.2fx); go-nfs-client 1 MiB reads: stock %.0f MB/s, ours %.0f MB/s (%.2fx)",
		sc/n, oc/n, oc/sc, sg/n, og/n, og/sg)
}

// BenchmarkServerWrite uploads one file with go-nfs-client (1 MiB
// FILE_SYNC WRITE calls) to stock go-nfs and to our server and reports
// MB/s and the ratio. Stock go-nfs answers FILE_SYNC without syncing;
// our server syncs each one (RFC 1813 §3.3.7) unless Options.Async, so
// both modes of ours are measured. The exports live on tmpfs
// (-server-bench-dir, default /dev/shm) so the disk, shared with other
// work on the machine, does not decide the result; there fsync is free. (nfs-cp cannot be the client here: its CREATE sets
// a mode, which stock go-nfs over a plain osfs refuses.)
//
//	go test ./integration/ -run '^$' -bench ServerWrite -benchtime 3x
func BenchmarkServerWrite(b *testing.B) {
	data := make([]byte, *srvBenchSize)
	rand.Read(data)
	stockDir, ourDir, asyncDir := srvBenchDir(b), srvBenchDir(b), srvBenchDir(b)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	stock := nfshelper.NewCachingHandler(nfshelper.NewNullAuthHandler(osfs.New(stockDir)), 1024)
	go func() { _ = nfs.Serve(l, stock) }()
	defer l.Close()
	_, stockPort, _ := net.SplitHostPort(l.Addr().String())
	_, ourPort := srvStart(b, ourDir, server.Options{})
	_, asyncPort := srvStart(b, asyncDir, server.Options{Async: true})
	upload := func(port, name string) float64 {
		v := srvMount(b, port)
		syscall.Sync() // start each run without the previous run's dirty pages
		start := time.Now()
		f, err := v.OpenFile("/"+name, 0o644)
		if err != nil {
			b.Fatal(err)
		}
		for off := 0; off < len(data); off += 1 << 20 {
			if _, err := f.Write(data[off:min(off+1<<20, len(data))]); err != nil {
				b.Fatal(err)
			}
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		return float64(len(data)) / time.Since(start).Seconds() / 1e6
	}
	var sw, ow, aw float64
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("up%d", i)
		sw += upload(stockPort, name)
		ow += upload(ourPort, name)
		aw += upload(asyncPort, name)
		for _, d := range []string{stockDir, ourDir, asyncDir} {
			os.Remove(filepath.Join(d, name))
		}
	}
	n := float64(b.N)
	b.ReportMetric(sw/n, "stock-write-MB/s")
	b.ReportMetric(ow/n, "ours-sync-write-MB/s")
	b.ReportMetric(aw/n, "ours-async-write-MB/s")
	b.ReportMetric(aw/sw, "async-write-ratio")
	b.Logf("go-nfs-client 1 MiB FILE_SYNC writes: stock go-nfs (no sync) %.0f MB/s, ours synced %.0f MB/s, ours Async %.0f MB/s (%.2fx stock)", sw/n, ow/n, aw/n, aw/sw)
}
