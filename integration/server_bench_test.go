package integration

import (
	"crypto/rand"
	"flag"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	nfs "github.com/willscott/go-nfs"
	nfshelper "github.com/willscott/go-nfs/helpers"

	"github.com/nfscache/nfscache/server"
)

var srvBenchSize = flag.Int64("server-bench-size", 256<<20, "file size for BenchmarkServerRead")

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
