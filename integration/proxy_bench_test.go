package integration

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"
)

var pxBenchMiB = flag.Int("proxy-bench-mib", 256, "size in MiB of the file BenchmarkProxyRead reads")

// BenchmarkProxyRead reads one file (256 MiB by default) with libnfs
// nfs-cat three ways in every round: through a warm nfsd-cache proxy (all
// data in its cache), directly from the upstream (our server over the same
// directory; the page cache holds the file), and with local `cat` of the
// upstream's file. Each round runs all three, alternating so machine noise
// hits them alike; it reports the median MB/s of each and the ratios of
// the medians.
//
//	go test ./integration -run '^$' -bench ProxyRead -benchtime 3x
func BenchmarkProxyRead(b *testing.B) {
	nfsCat := srvLibnfs(b, "nfs-cat")
	bin := pxBuild(b)
	up := pxStartUpstream(b)
	size := int64(*pxBenchMiB) << 20
	path := filepath.Join(up.Dir, "big.bin")
	pxRandomFile(b, path, int(size))
	p := pxStart(b, nil, bin, "--upstream", up.Addr, "--cache-dir", b.TempDir(), "--listen", "127.0.0.1:0",
		"--log-level", "warn")
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	run := func(argv ...string) float64 {
		cmd := exec.Command(argv[0], argv[1:]...)
		var errb pxLog
		cmd.Stdout, cmd.Stderr = devnull, &errb
		start := time.Now()
		if err := cmd.Run(); err != nil {
			b.Fatalf("%v: %v\n%s", argv, err, errb.String())
		}
		return float64(size) / 1e6 / time.Since(start).Seconds()
	}
	proxyURL, upURL := p.URL("/big.bin"), srvURL(up.Addr[len("127.0.0.1:"):], "/big.bin")
	// Warm-up: fill the proxy's cache and the page cache.
	coldReads := up.Reads()
	cold := run(nfsCat, proxyURL)
	b.Logf("cold read through the proxy: %.0f MB/s (%d upstream READs)", cold, up.Reads()-coldReads)
	run("cat", path)

	var proxy, direct, local []float64
	b.SetBytes(size)
	b.ResetTimer()
	warmReads := up.Reads()
	for i := range b.N {
		if i%2 == 0 {
			proxy = append(proxy, run(nfsCat, proxyURL))
			direct = append(direct, run(nfsCat, upURL))
		} else {
			direct = append(direct, run(nfsCat, upURL))
			proxy = append(proxy, run(nfsCat, proxyURL))
		}
		local = append(local, run("cat", path))
	}
	b.StopTimer()
	// The direct reads go to the same upstream; the warm proxy adds none.
	directReads := up.Reads() - warmReads
	med := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		sort.Float64s(s)
		return s[len(s)/2]
	}
	mp, md, ml := med(proxy), med(direct), med(local)
	b.ReportMetric(mp, "proxy_warm_MB/s")
	b.ReportMetric(md, "upstream_direct_MB/s")
	b.ReportMetric(ml, "local_cat_MB/s")
	b.ReportMetric(mp/md, "warm/direct")
	b.ReportMetric(mp/ml, "warm/local")
	b.Logf("%d MiB, %d rounds: proxy warm %.0f MB/s, upstream direct %.0f MB/s, local cat %.0f MB/s; warm/direct %.2f, warm/local %.2f; upstream READs during the rounds %d (all from the direct reads)",
		size>>20, b.N, mp, md, ml, mp/md, mp/ml, directReads)
	p.Stop(b)
}
