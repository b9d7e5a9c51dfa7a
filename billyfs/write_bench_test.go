package billyfs_test

import (
	"context"
	"crypto/rand"
	"flag"
	"fmt"
	"net"
	"sort"
	"testing"
	"time"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/server"
)

var (
	proxyWriteMiB    = flag.Int("proxy-write-mib", 64, "MiB BenchmarkProxyWrite writes per upload")
	proxyWritePhases = flag.Bool("proxy-write-phases", false, "BenchmarkProxyWrite logs the time of the WRITEs and of the COMMIT of each upload")
)

// BenchmarkProxyWrite measures sequential write throughput through an
// in-process proxy (server over billyfs with a cache over an upstream server
// over osfs) against the same client writing straight to the upstream, in
// the same run: our client, UNSTABLE WRITEs of wsize (WriteAt) then COMMIT.
// Each round uploads once each way, alternating the order; it reports the
// medians and their ratio.
//
//	go test ./billyfs -run '^$' -bench ProxyWrite -benchtime 5x
func BenchmarkProxyWrite(b *testing.B) {
	up := startServer(b)
	fsys := mount(b, up, billyfs.Options{CacheDir: b.TempDir()})
	proxy, err := server.New(fsys, server.Options{})
	if err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = proxy.Serve(l) }()
	b.Cleanup(func() { proxy.Close(); l.Close(); <-done })

	ctx := context.Background()
	dial := func(addr string) *client.Client {
		c, err := client.Dial(ctx, addr, client.Options{Connections: 1})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c
	}
	toProxy, toUp := dial(l.Addr().String()), dial(up.Addr)
	data := make([]byte, *proxyWriteMiB<<20)
	rand.Read(data)
	upload := func(c *client.Client, name string) float64 {
		start := time.Now()
		r, err := c.Create(ctx, c.Root(), name, client.CreateHow{Mode: client.Unchecked})
		if err != nil {
			b.Fatal(err)
		}
		// The client's WriteAt pipelines wsize WRITEs; 4 MiB per call as
		// a writer's write(2)s would.
		for off := 0; off < len(data); off += 4 << 20 {
			if _, err := c.WriteAt(ctx, r.Handle, data[off:min(off+4<<20, len(data))], int64(off)); err != nil {
				b.Fatal(err)
			}
		}
		wrote := time.Since(start)
		if _, err := c.Commit(ctx, r.Handle, 0, 0); err != nil {
			b.Fatal(err)
		}
		total := time.Since(start)
		if *proxyWritePhases {
			b.Logf("%s: WRITEs %v, COMMIT %v", name, wrote.Round(time.Millisecond), (total - wrote).Round(time.Millisecond))
		}
		return float64(len(data)) / 1e6 / total.Seconds()
	}
	var viaProxy, direct []float64
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("w%d", i)
		if i%2 == 0 {
			viaProxy = append(viaProxy, upload(toProxy, "p"+name))
			direct = append(direct, upload(toUp, "d"+name))
		} else {
			direct = append(direct, upload(toUp, "d"+name))
			viaProxy = append(viaProxy, upload(toProxy, "p"+name))
		}
	}
	b.StopTimer()
	med := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		return s[len(s)/2]
	}
	mp, md := med(viaProxy), med(direct)
	b.ReportMetric(mp, "proxy_MB/s")
	b.ReportMetric(md, "direct_MB/s")
	b.ReportMetric(mp/md, "proxy/direct")
	b.Logf("%d MiB x %d: through the proxy %.0f MB/s, direct to the upstream %.0f MB/s, ratio %.2f (all proxy %v, all direct %v)",
		len(data)>>20, b.N, mp, md, mp/md, viaProxy, direct)
}
