package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/internal/ganeshatest"
)

const pxFileSize = 8 << 20

// nfsd-cache proxy in front of our own server: libnfs reads twice (the
// second makes zero READs upstream, counted by the upstream server), an
// nfs-cp upload lands byte-identical on the upstream, /metrics and the
// stats command report it, and a handle given out before a proxy restart
// still reads the file afterwards — from the persisted cache, again with
// zero upstream READs — even on the client connection that lived across the
// restart.
func TestProxyOverOurServer(t *testing.T) {
	nfsCat, nfsCp, nfsLs := srvLibnfs(t, "nfs-cat"), srvLibnfs(t, "nfs-cp"), srvLibnfs(t, "nfs-ls")
	bin := pxBuild(t)
	up := pxStartUpstream(t)
	want := pxRandomFile(t, filepath.Join(up.Dir, "data.bin"), pxFileSize)
	cache := t.TempDir()
	args := []string{"--upstream", up.Addr, "--cache-dir", cache, "--metrics", "127.0.0.1:0", "--log-level", "warn"}
	p := pxStart(t, nil, bin, append(args, "--listen", "127.0.0.1:0")...)

	if !regexp.MustCompile(`mount -t nfs -o vers=3,proto=tcp,port=\d+,mountport=\d+,nolock,noacl,addr=127.0.0.1 127.0.0.1:/ /mnt`).MatchString(p.Banner) {
		t.Fatalf("no Linux mount line in the banner:\n%s", p.Banner)
	}
	url := regexp.MustCompile(`nfs://[^' ]+`).FindString(p.Banner)
	if ls := pxRun(t, nfsLs, url); !bytes.Contains(ls, []byte("data.bin")) {
		t.Fatalf("nfs-ls of the banner's URL does not list data.bin:\n%s", ls)
	}

	// Two reads: the first fills the cache, the second is all cache.
	if got := sha256.Sum256(pxRun(t, nfsCat, p.URL("/data.bin"))); got != want {
		t.Fatalf("first nfs-cat through the proxy: sha %s, want %s", pxShortSum(got), pxShortSum(want))
	}
	cold := up.Reads()
	if cold == 0 {
		t.Fatal("the first read made no READ upstream: it cannot have come from the upstream")
	}
	if got := sha256.Sum256(pxRun(t, nfsCat, p.URL("/data.bin"))); got != want {
		t.Fatalf("second nfs-cat through the proxy: sha %s, want %s", pxShortSum(got), pxShortSum(want))
	}
	if warm := up.Reads(); warm != cold {
		t.Fatalf("second read made %d READ calls upstream, want 0", warm-cold)
	}
	t.Logf("cold read: %d upstream READs; warm read: 0", cold)

	// An upload through the proxy is on the upstream once nfs-cp returns.
	local := filepath.Join(t.TempDir(), "up.bin")
	upWant := pxRandomFile(t, local, 5<<20+123)
	pxRun(t, nfsCp, local, p.URL("/up.bin"))
	if got := srvSum(t, filepath.Join(up.Dir, "up.bin")); got != upWant {
		t.Fatalf("nfs-cp through the proxy: upstream file sha %s, want %s", pxShortSum(got), pxShortSum(upWant))
	}

	// Metrics: the series exist and agree with what the upstream saw.
	rep, text := pxScrape(t, p.Metrics, nil)
	for _, series := range []string{
		"nfscache_fscache_cookies ", "nfscache_fscache_opens_total ", "nfscache_fscache_lru_evictions_total ",
		"nfscache_fscache_culled_total ", "nfscache_fscache_invalidations_total ", "nfscache_cache_hit_ratio ",
		"nfscache_bytes_from_cache_total ", "nfscache_bytes_from_upstream_total ", "nfscache_writeback_dirty_bytes ",
		"nfscache_writeback_pinned_inodes ", "nfscache_fscache_open_files ",
		`nfscache_upstream_rpc_duration_seconds_sum{procedure="READ"} `,
		`nfscache_served_rpc_calls_total{procedure="READ"} `,
	} {
		if !strings.Contains(text, "\n"+series) {
			t.Errorf("/metrics lacks %q", series)
		}
	}
	if rep.Upstream["READ"].Calls != cold || rep.Upstream["WRITE"].Calls == 0 || rep.Upstream["COMMIT"].Calls == 0 {
		t.Errorf("upstream calls READ %+v WRITE %+v COMMIT %+v; the upstream answered %d READs",
			rep.Upstream["READ"], rep.Upstream["WRITE"], rep.Upstream["COMMIT"], cold)
	}
	if rep.BytesFromUpstream < pxFileSize || rep.BytesFromCache < 2*pxFileSize || rep.HitRatio <= 0 {
		t.Errorf("bytes from upstream %.0f (want ≥ %d), from cache %.0f (want ≥ %d), hit ratio %v",
			rep.BytesFromUpstream, pxFileSize, rep.BytesFromCache, 2*pxFileSize, rep.HitRatio)
	}
	if rep.Served["READ"] == 0 || rep.ServedReadBytes < 2*pxFileSize || rep.Writeback.DirtyBytes != 0 {
		t.Errorf("served READs %d, bytes %.0f, dirty %d", rep.Served["READ"], rep.ServedReadBytes, rep.Writeback.DirtyBytes)
	}

	// The stats command prints the /proc/fs/fscache/stats layout.
	out, err := exec.Command(bin, "stats", "--metrics", p.Metrics).CombinedOutput()
	if err != nil {
		t.Fatalf("nfsd-cache stats: %v\n%s", err, out)
	}
	for _, re := range []string{`(?m)^FS-Cache statistics$`, `(?m)^Cookies: n=\d+ v=1 `, `(?m)^Acquire: n=\d+ ok=\d+`,
		`(?m)^LRU    : n=\d+ exp=\d+`, `(?m)^IO     : rd=[1-9]\d* wr=[1-9]\d* mis=[1-9]\d*$`,
		`(?m)^Hits   : ratio=0\.\d+ `, `(?m)^  READ +[1-9]\d* +0 +\d+\.\d+$`} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("stats output does not match %s:\n%s", re, out)
		}
	}

	// Handles across a restart, on the same port and cache dir.
	ctx := context.Background()
	c, err := client.Dial(ctx, "127.0.0.1:"+p.Port, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lr, err := c.Lookup(ctx, c.Root(), "data.bin")
	if err != nil {
		t.Fatal(err)
	}
	p.Stop(t)
	before := up.Reads()
	p = pxStart(t, nil, bin, append(args, "--listen", "127.0.0.1:"+p.Port)...)
	readAll := func(c *client.Client) [32]byte {
		buf := make([]byte, pxFileSize)
		if n, err := c.ReadAt(ctx, lr.Handle, buf, 0); err != nil && err != io.EOF || n != len(buf) {
			t.Fatalf("read by the old handle after the proxy restart: %d bytes, %v", n, err)
		}
		return sha256.Sum256(buf)
	}
	if got := readAll(c); got != want { // the connection that lived across the restart
		t.Fatal("old handle on the reconnected client: data differs")
	}
	c2, err := client.Dial(ctx, "127.0.0.1:"+p.Port, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if got := readAll(c2); got != want {
		t.Fatal("old handle on a new client: data differs")
	}
	if after := up.Reads(); after != before {
		t.Errorf("reads after the proxy restart made %d READs upstream; the persisted cache should serve them", after-before)
	}
	p.Stop(t)
}

// The same through nfs-ganesha: the proxy (found through ganesha's
// portmapper) and the libnfs clients run inside ganesha's network
// namespace; upstream READs are counted by the proxy's own upstream client
// (its /metrics, scraped from inside the namespace).
func TestProxyOverGanesha(t *testing.T) {
	nfsCat, nfsCp := srvLibnfs(t, "nfs-cat"), srvLibnfs(t, "nfs-cp")
	g := ganeshatest.Start(t)
	bin := pxBuild(t)
	want := pxRandomFile(t, filepath.Join(g.Dir, "data.bin"), pxFileSize)
	ns := []string{"ip", "netns", "exec", g.NS}
	p := pxStart(t, ns, bin, "--upstream", "127.0.0.1:"+ganeshatest.Export, "--portmap",
		"--cache-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--log-level", "warn")
	upstreamReads := func() uint64 {
		rep, _ := pxScrape(t, p.Metrics, g.Dial)
		return rep.Upstream["READ"].Calls
	}
	if got := sha256.Sum256(pxRun(t, append(ns, nfsCat, p.URL("/data.bin"))...)); got != want {
		t.Fatalf("first nfs-cat through the proxy: sha %s, want %s", pxShortSum(got), pxShortSum(want))
	}
	cold := upstreamReads()
	if cold == 0 {
		t.Fatal("the first read made no READ to ganesha")
	}
	if got := sha256.Sum256(pxRun(t, append(ns, nfsCat, p.URL("/data.bin"))...)); got != want {
		t.Fatalf("second nfs-cat through the proxy: sha %s, want %s", pxShortSum(got), pxShortSum(want))
	}
	if warm := upstreamReads(); warm != cold {
		t.Fatalf("second read made %d READs to ganesha, want 0", warm-cold)
	}
	local := filepath.Join(t.TempDir(), "up.bin")
	upWant := pxRandomFile(t, local, 3<<20+77)
	pxRun(t, append(ns, nfsCp, local, p.URL("/up.bin"))...)
	if got := srvSum(t, filepath.Join(g.Dir, "up.bin")); got != upWant {
		t.Fatalf("nfs-cp through the proxy: ganesha's file sha %s, want %s", pxShortSum(got), pxShortSum(upWant))
	}
	p.Stop(t)
}

// Bad command lines fail with a clear message and exit status 2.
func TestProxyCommandLine(t *testing.T) {
	bin := pxBuild(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"proxy"}, "--upstream and --cache-dir are required"},
		{[]string{"proxy", "--upstream", "host", "--cache-dir", t.TempDir()}, "want HOST:PORT"},
		{[]string{"proxy", "--upstream", "h:1", "--cache-dir", t.TempDir(), "--cache-max-size", "lots"}, "not a positive size"},
		{[]string{"stats", "--metrics", "127.0.0.1:1"}, "connection refused"},
	} {
		out, err := exec.Command(bin, tc.args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("%v: err %v, output %q; want failure mentioning %q", tc.args, err, out, tc.want)
		}
	}
	out, err := exec.Command(bin, "proxy", "--help").CombinedOutput()
	if err != nil || !bytes.Contains(out, []byte("--upstream HOST:PORT[:/export]")) || !bytes.Contains(out, []byte("-serve-stale")) || !bytes.Contains(out, []byte("-max-cached-inodes")) {
		t.Errorf("proxy --help: %v\n%s", err, out)
	}
	// A proxy whose upstream does not answer says so and exits 1.
	cmd := exec.Command(bin, "proxy", "--upstream", "127.0.0.1:1", "--cache-dir", t.TempDir(), "--listen", "127.0.0.1:0")
	out, err = cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "127.0.0.1:1") {
		t.Errorf("unreachable upstream: %v\n%s", err, out)
	}
	_ = os.Remove(bin)
}
