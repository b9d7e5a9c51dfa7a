package billyfs_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/client"
)

// makeDir creates dir with n empty files on the upstream's disk.
func makeDir(t testing.TB, srv *testServer, dir string, n int) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Join(srv.Dir, dir), 0o755))
	for i := range n {
		must(t, os.WriteFile(filepath.Join(srv.Dir, dir, fmt.Sprintf("f%05d", i)), nil, 0o644))
	}
}

func rpcCalls(fsys *billyfs.FS, proc string) uint64 {
	return fsys.Stats().RPC.Procs[proc].Calls
}

// A listing spanning several READDIRPLUS replies names every entry exactly
// once; a second ReadDir within the attribute timeout is answered from the
// listing cache (0 READDIRPLUS), and our own create shows at once.
func TestReadDirCachedWithinAttrTimeout(t *testing.T) {
	const n = 1500 // several 128 KiB READDIRPLUS replies
	srv := startServer(t)
	makeDir(t, srv, "big", n)
	fsys := mount(t, srv, billyfs.Options{AttrTimeout: time.Hour})

	rdp := rpcCalls(fsys, "READDIRPLUS")
	fis, err := fsys.ReadDir("big")
	must(t, err)
	if calls := rpcCalls(fsys, "READDIRPLUS") - rdp; calls < 2 {
		t.Fatalf("listing %d entries took %d READDIRPLUS; the test wants several replies", n, calls)
	}
	checkOnce(t, fis, n)

	rdp = rpcCalls(fsys, "READDIRPLUS")
	all := fsys.Stats().RPC.Procs
	fis, err = fsys.ReadDir("big")
	must(t, err)
	checkOnce(t, fis, n)
	if calls := rpcCalls(fsys, "READDIRPLUS") - rdp; calls != 0 {
		t.Fatalf("second ReadDir within the attribute timeout sent %d READDIRPLUS, want 0", calls)
	}
	if d := totalCalls(fsys.Stats().RPC.Procs) - totalCalls(all); d != 0 {
		t.Fatalf("second ReadDir within the attribute timeout sent %d RPCs, want 0", d)
	}

	// Our own changes invalidate the cached listing.
	writeFile(t, fsys, "big/new", []byte("x"))
	must(t, fsys.Remove("big/f00000"))
	fis, err = fsys.ReadDir("big")
	must(t, err)
	names := checkOnce(t, fis, n)
	if !names["new"] || names["f00000"] {
		t.Fatalf("listing after our create and remove: new=%v f00000=%v", names["new"], names["f00000"])
	}
}

// checkOnce fails unless fis has want entries, each name once, sorted.
func checkOnce(t *testing.T, fis []os.FileInfo, want int) map[string]bool {
	t.Helper()
	seen := make(map[string]bool, len(fis))
	for i, fi := range fis {
		if seen[fi.Name()] {
			t.Fatalf("%q listed twice", fi.Name())
		}
		seen[fi.Name()] = true
		if i > 0 && fis[i-1].Name() >= fi.Name() {
			t.Fatalf("listing not sorted at %q", fi.Name())
		}
	}
	if len(fis) != want {
		t.Fatalf("listed %d entries, want %d", len(fis), want)
	}
	return seen
}

// An upstream change made behind billyfs's back is seen once the attribute
// timeout has passed (and not served from the cached listing forever).
func TestReadDirSeesUpstreamChangeAfterTimeout(t *testing.T) {
	srv := startServer(t)
	makeDir(t, srv, "d", 20)
	const timeout = 300 * time.Millisecond
	fsys := mount(t, srv, billyfs.Options{AttrTimeout: timeout})
	fis, err := fsys.ReadDir("d")
	must(t, err)
	checkOnce(t, fis, 20)
	must(t, os.WriteFile(filepath.Join(srv.Dir, "d", "remote"), nil, 0o644))
	must(t, os.Remove(filepath.Join(srv.Dir, "d", "f00003")))
	time.Sleep(timeout + 100*time.Millisecond)
	fis, err = fsys.ReadDir("d")
	must(t, err)
	names := checkOnce(t, fis, 20)
	if !names["remote"] || names["f00003"] {
		t.Fatalf("after the timeout: remote=%v f00003=%v, want the upstream's change", names["remote"], names["f00003"])
	}
}

// A name found missing is remembered for the attribute timeout: a second
// look costs no LOOKUP, and our own create of it is seen at once.
func TestNegativeLookupCached(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{AttrTimeout: time.Hour})
	must(t, fsys.MkdirAll("n", 0o755))
	_, err := fsys.Stat("n/missing")
	if !os.IsNotExist(err) {
		t.Fatalf("Stat of a missing name: %v", err)
	}
	lookups := rpcCalls(fsys, "LOOKUP")
	for range 3 {
		if _, err := fsys.Lstat("n/missing"); !os.IsNotExist(err) {
			t.Fatalf("Lstat of a missing name: %v", err)
		}
	}
	if d := rpcCalls(fsys, "LOOKUP") - lookups; d != 0 {
		t.Fatalf("repeated lookups of a missing name sent %d LOOKUPs, want 0", d)
	}
	// Each way of creating the name replaces the negative entry.
	writeFile(t, fsys, "n/missing", []byte("here"))
	if got := readFile(t, fsys, "n/missing"); string(got) != "here" {
		t.Fatalf("after create: %q", got)
	}
	for _, c := range []struct {
		name   string
		create func(string) error
	}{
		{"dir", func(p string) error { return fsys.MkdirAll(p, 0o755) }},
		{"sym", func(p string) error { return fsys.Symlink("missing", p) }},
		{"link", func(p string) error { return fsys.Link("n/missing", p) }},
		{"renamed", func(p string) error {
			writeFile(t, fsys, "n/src", []byte("r"))
			return fsys.Rename("n/src", p)
		}},
	} {
		p := "n/" + c.name
		if _, err := fsys.Lstat(p); !os.IsNotExist(err) {
			t.Fatalf("Lstat %s before: %v", p, err)
		}
		must(t, c.create(p))
		if _, err := fsys.Lstat(p); err != nil {
			t.Fatalf("Lstat %s after creating it: %v", p, err)
		}
	}
	// A name created behind our back shows after the timeout.
	short := mount(t, srv, billyfs.Options{AttrTimeout: 200 * time.Millisecond})
	if _, err := short.Stat("n/late"); !os.IsNotExist(err) {
		t.Fatalf("Stat n/late: %v", err)
	}
	must(t, os.WriteFile(filepath.Join(srv.Dir, "n", "late"), nil, 0o644))
	time.Sleep(300 * time.Millisecond)
	if _, err := short.Stat("n/late"); err != nil {
		t.Fatalf("upstream-created name after the timeout: %v", err)
	}
}

// BenchmarkListing compares billyfs ReadDir of a 10 000-entry directory
// with client.ReadDirAll straight on the upstream, measured in the same
// run: cold (a new FS: every entry crosses the wire) and warm (within the
// attribute timeout).
func BenchmarkListing(b *testing.B) {
	const n = 10_000
	srv := startServer(b)
	makeDir(b, srv, "big", n)
	ctx := context.Background()
	c, err := client.Dial(ctx, srv.Addr, client.Options{})
	must(b, err)
	defer c.Close()
	dir, err := c.LookupPath(ctx, c.Root(), "big")
	must(b, err)
	upstream := func() time.Duration {
		start := time.Now()
		ents, err := c.ReadDirAll(ctx, dir.Handle)
		must(b, err)
		if len(ents) != n {
			b.Fatalf("upstream listed %d", len(ents))
		}
		return time.Since(start)
	}
	first := upstream() // the server's first listing of the directory
	base := time.Duration(1 << 62)
	for range 3 {
		base = min(base, upstream())
	}
	b.Logf("upstream ReadDirAll of %d entries: first %v, then %v (%.0f µs/entry)", n, first, base, float64(base.Microseconds())/n)

	list := func(fsys *billyfs.FS) {
		fis, err := fsys.ReadDir("big")
		must(b, err)
		if len(fis) != n {
			b.Fatalf("billyfs listed %d", len(fis))
		}
	}
	b.Run("cold", func(b *testing.B) {
		var total time.Duration
		for range b.N {
			b.StopTimer()
			fsys := mount(b, srv, billyfs.Options{})
			b.StartTimer()
			start := time.Now()
			list(fsys)
			total += time.Since(start)
			b.StopTimer()
			fsys.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(total)/float64(b.N)/float64(base), "x-upstream")
	})
	b.Run("warm", func(b *testing.B) {
		fsys := mount(b, srv, billyfs.Options{AttrTimeout: time.Hour})
		list(fsys)
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			list(fsys)
		}
		b.ReportMetric(float64(time.Since(start))/float64(b.N)/float64(base), "x-upstream")
	})
}
