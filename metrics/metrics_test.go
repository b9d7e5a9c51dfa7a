package metrics_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/metrics"
	"github.com/nfscache/nfscache/server"
)

func serve(t *testing.T, srv *server.Server) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return l.Addr().String()
}

// A proxy in miniature: upstream server → billyfs with a cache → proxy
// server, read twice through the proxy with our client. The scrape must
// show what happened: one fill from upstream, cache hits on the second
// read, the served READs, and the text must parse back into the same
// numbers the sources report.
func TestCollectorScrapeMatchesSources(t *testing.T) {
	ctx := context.Background()
	updir := t.TempDir()
	data := make([]byte, 3<<20)
	rand.Read(data)
	if err := os.WriteFile(filepath.Join(updir, "f"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	upstream, err := server.New(osfs.New(updir, osfs.WithBoundOS()), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	upAddr := serve(t, upstream)
	fsys, err := billyfs.New(ctx, billyfs.Options{Addr: upAddr, CacheDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	proxy, err := server.New(fsys, server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	proxyAddr := serve(t, proxy)
	t.Cleanup(func() { fsys.Close() })

	c, err := client.Dial(ctx, proxyAddr, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lr, err := c.Lookup(ctx, c.Root(), "f")
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		got := make([]byte, len(data))
		if _, err := c.ReadAt(ctx, lr.Handle, got, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatal("data read through the proxy differs")
		}
	}

	col := metrics.New(metrics.Options{FS: fsys, Server: proxy})
	hs := httptest.NewServer(col.Handler())
	defer hs.Close()
	resp, err := http.Get(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	text := string(body)
	for _, series := range []string{
		"nfscache_fscache_cookies ", "nfscache_fscache_opens_total ", "nfscache_fscache_lru_evictions_total ",
		"nfscache_fscache_culled_total ", "nfscache_fscache_invalidations_total ", "nfscache_fscache_open_files ",
		"nfscache_cache_hit_ratio ", "nfscache_bytes_from_cache_total ", "nfscache_bytes_from_upstream_total ",
		`nfscache_upstream_rpc_duration_seconds_count{procedure="READ"} `,
		`nfscache_upstream_rpc_duration_seconds_sum{procedure="GETATTR"} `,
		`nfscache_served_rpc_calls_total{procedure="READ"} `,
		"nfscache_writeback_dirty_bytes ", "nfscache_writeback_pinned_inodes ",
		"nfscache_upstream_down ", "nfscache_upstream_outages_total ", "nfscache_stale_answers_total ",
		"nfscache_fscache_fd_exhausted_total ", "nfscache_served_fd_exhausted_total ", "nfscache_crash_recovered_objects_total ",
		"go_goroutines ", "process_open_fds ",
	} {
		if !strings.Contains(text, "\n"+series) {
			t.Errorf("scrape lacks %q", series)
		}
	}

	rep, err := metrics.ParseText(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	fst, sst, ust := fsys.Stats(), proxy.Stats(), upstream.Stats()
	if rep.Cache.ReadHits == 0 || rep.Cache.ReadHits > fst.Cache.ReadHits || rep.Cache.Cookies != fst.Cache.Cookies {
		t.Errorf("scraped cache stats %+v, sources now %+v", rep.Cache, fst.Cache)
	}
	if rep.BytesFromUpstream != float64(len(data)) || float64(ust.BytesRead) != rep.BytesFromUpstream {
		t.Errorf("bytes from upstream %.0f, want %d (upstream server served %d)", rep.BytesFromUpstream, len(data), ust.BytesRead)
	}
	if rep.BytesFromCache < float64(2*len(data)) {
		t.Errorf("bytes from cache %.0f, want ≥ %d (two reads served from the cache)", rep.BytesFromCache, 2*len(data))
	}
	if rep.HitRatio <= 0 || rep.HitRatio > 1 {
		t.Errorf("hit ratio %v", rep.HitRatio)
	}
	if up := rep.Upstream["READ"]; up.Calls == 0 || up.Calls != ust.NFS[server.ProcRead] || up.LatencySum <= 0 {
		t.Errorf("upstream READ %+v; upstream server counted %d", up, ust.NFS[server.ProcRead])
	}
	if rep.Served["READ"] != sst.NFS[server.ProcRead] || rep.Served["READ"] == 0 || rep.ServedMount["MNT"] == 0 {
		t.Errorf("served READ %d MNT %d; server counted %d", rep.Served["READ"], rep.ServedMount["MNT"], sst.NFS[server.ProcRead])
	}
	out := rep.String()
	for _, line := range []string{"FS-Cache statistics\n", "Cookies: n=1 ", "IO     : rd=", "Hits   : ratio=", "  READ "} {
		if !strings.Contains(out, line) {
			t.Errorf("report lacks %q:\n%s", line, out)
		}
	}
}

// statsValue is an FSSource that returns fixed statistics: it checks the
// mapping of billyfs.Stats fields that a healthy proxy leaves at zero
// (outages, crash recovery, EMFILE) onto series and back.
type statsValue billyfs.Stats

func (s statsValue) Stats() billyfs.Stats { return billyfs.Stats(s) }

func TestOutageAndRecoverySeriesRoundTrip(t *testing.T) {
	var src statsValue
	src.UpstreamDown, src.Outages, src.StaleAnswers = true, 3, 17
	src.Recovered, src.Conflicts = 2, 1
	src.Cache.FDExhausted = 5
	src.CachedAttrs, src.Dentries, src.ListingNames = 11, 12, 13
	hs := httptest.NewServer(metrics.New(metrics.Options{FS: src}).Handler())
	defer hs.Close()
	resp, err := http.Get(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	rep, err := metrics.ParseText(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	if !rep.UpstreamDown || rep.Outages != 3 || rep.StaleAnswers != 17 || rep.CrashRecovered != 2 ||
		rep.CrashConflict != 1 || rep.Cache.FDExhausted != 5 ||
		rep.CachedAttrs != 11 || rep.Dentries != 12 || rep.ListingNames != 13 {
		t.Errorf("round trip lost values: %+v", rep)
	}
	out := rep.String()
	for _, line := range []string{"Outage : down=1 outages=3 stale_answers=17\n", "Crash  : recovered=2 conflicts=1\n", "emfile=5", "attrs=11 dentries=12 listing_names=13\n"} {
		if !strings.Contains(out, line) {
			t.Errorf("report lacks %q:\n%s", line, out)
		}
	}
}

func TestParseTextRejectsForeignInput(t *testing.T) {
	if _, err := metrics.ParseText(strings.NewReader("<html>not metrics</html>\n")); err == nil {
		t.Error("HTML parsed as metrics")
	}
	if _, err := metrics.ParseText(strings.NewReader("# TYPE other_total counter\nother_total 3\n")); err == nil {
		t.Error("an exposition without nfscache_ series was accepted")
	}
}

// Without sources the collector emits nothing of its own and the handler
// still serves the runtime series.
func TestCollectorWithoutSources(t *testing.T) {
	hs := httptest.NewServer(metrics.New(metrics.Options{}).Handler())
	defer hs.Close()
	resp, err := http.Get(hs.URL)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "nfscache_") || !strings.Contains(string(body), "go_goroutines") {
		t.Fatalf("unexpected scrape:\n%.500s", body)
	}
}
