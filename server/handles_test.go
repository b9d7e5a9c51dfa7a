package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"

	"github.com/nfscache/nfscache/client"
)

// benchServer serves dir (a disk export) on 127.0.0.1 with our client
// connected; identity=false switches the handle table's identity checks
// off (as before they existed) so both are measured in the same run.
func benchServer(b *testing.B, dir string, identity bool) (*client.Client, context.Context) {
	b.Helper()
	s, err := New(osfs.New(dir, osfs.WithBoundOS()), Options{})
	if err != nil {
		b.Fatal(err)
	}
	if !identity {
		s.table.keyAt = nil
		s.open.table = nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = s.Serve(l) }()
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	c, err := client.Dial(ctx, l.Addr().String(), client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c, ctx
}

// lookupPath walks p from the root.
func lookupPath(b *testing.B, c *client.Client, ctx context.Context, p ...string) client.Handle {
	h := c.Root()
	for _, name := range p {
		l, err := c.Lookup(ctx, h, name)
		if err != nil {
			b.Fatalf("LOOKUP %s: %v", name, err)
		}
		h = l.Handle
	}
	return h
}

// BenchmarkIdentityOverhead measures what recording and checking file
// identities costs, against the same server with the checks switched off,
// in the same run: 4 KiB READs and UNSTABLE WRITEs (the fast path: no
// per-call stat, one extra fstat per WRITE for the link count), GETATTR
// (a statx per resolve) and READDIRPLUS of 1000 entries (a statx per
// entry) — on a file and a directory two levels deep, 8 calls in flight.
//
//	go test ./server/ -run '^$' -bench IdentityOverhead -benchtime 3x
func BenchmarkIdentityOverhead(b *testing.B) {
	dir := b.TempDir()
	deep := filepath.Join(dir, "a", "b")
	os.MkdirAll(filepath.Join(deep, "many"), 0o755)
	data := make([]byte, 1<<20)
	os.WriteFile(filepath.Join(deep, "data"), data, 0o644)
	for i := range 1000 {
		os.WriteFile(filepath.Join(deep, "many", fmt.Sprintf("f%04d", i)), nil, 0o644)
	}
	type side struct {
		c         *client.Client
		ctx       context.Context
		file, dir client.Handle
	}
	var sides [2]side // 0: identity off, 1: on
	for i := range sides {
		c, ctx := benchServer(b, dir, i == 1)
		sides[i] = side{c, ctx, lookupPath(b, c, ctx, "a", "b", "data"), lookupPath(b, c, ctx, "a", "b", "many")}
	}
	const calls, inFlight = 400, 8
	ops := []struct {
		name  string
		bytes int // per call, for MB/s
		calls int
		do    func(s side, i int) error
	}{
		{"read-4KiB", 4096, calls, func(s side, i int) error {
			buf := make([]byte, 4096)
			_, err := s.c.Read(s.ctx, s.file, uint64(i%256)*4096, buf)
			return err
		}},
		{"write-4KiB-unstable", 4096, calls, func(s side, i int) error {
			_, err := s.c.Write(s.ctx, s.file, uint64(i%256)*4096, data[:4096], client.Unstable)
			return err
		}},
		{"getattr", 0, calls, func(s side, _ int) error {
			_, err := s.c.Getattr(s.ctx, s.file)
			return err
		}},
		{"readdirplus-1000", 0, 2, func(s side, _ int) error {
			_, err := s.c.ReadDirAll(s.ctx, s.dir)
			return err
		}},
	}
	run := func(s side, op int) time.Duration {
		o := ops[op]
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, inFlight)
		for w := range inFlight {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < o.calls; i += inFlight {
					if err := o.do(s, i); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatalf("%s: %v", o.name, err)
		}
		return time.Since(start)
	}
	// The machine is shared: alternate short batches of both sides and
	// compare medians, so a burst of other load hits both alike.
	const rounds = 15
	for op := range ops {
		b.Run(ops[op].name, func(b *testing.B) {
			o := ops[op]
			run(sides[0], op) // warm both
			run(sides[1], op)
			var offs, ons []time.Duration
			for range b.N {
				for range rounds {
					offs = append(offs, run(sides[0], op))
					ons = append(ons, run(sides[1], op))
				}
			}
			off, on := median(offs)/time.Duration(o.calls), median(ons)/time.Duration(o.calls)
			b.ReportMetric(float64(off.Nanoseconds()), "off-ns/call")
			b.ReportMetric(float64(on.Nanoseconds()), "on-ns/call")
			b.ReportMetric(float64(on)/float64(off), "on/off-time")
			if o.bytes > 0 {
				b.ReportMetric(float64(o.bytes)/off.Seconds()/1e6, "off-MB/s")
				b.ReportMetric(float64(o.bytes)/on.Seconds()/1e6, "on-MB/s")
			}
			b.Logf("%s: median %v/call with identity checks, %v without (%.2fx time)", o.name, on, off, float64(on)/float64(off))
		})
	}
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkResolve compares, without the network, the handle resolution
// of the relayed procedures (resolve: one statx of the path) with the
// fast path's (resolveData: MAC + bbolt read only), for a file two
// directories deep, and the fast path's per-WRITE link check (one fstat)
// with a plain pwrite.
//
//	go test ./server/ -run '^$' -bench Resolve
func BenchmarkResolve(b *testing.B) {
	dir := b.TempDir()
	os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755)
	os.WriteFile(filepath.Join(dir, "top"), make([]byte, 4096), 0o644)
	os.WriteFile(filepath.Join(dir, "a", "b", "deep"), make([]byte, 4096), 0o644)
	s, err := New(osfs.New(dir, osfs.WithBoundOS()), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for _, p := range []string{"top", "a/b/deep"} {
		h, err := s.table.assign(p)
		if err != nil {
			b.Fatal(err)
		}
		b.Run("resolveData/"+p, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := s.table.resolveData(h); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run("resolve/"+p, func(b *testing.B) {
			for b.Loop() {
				if _, _, err := s.table.resolve(h); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	id, p, _ := s.table.resolveData(must(s.table.assign("top")))
	of, err := s.open.acquire(id, p, true)
	if err != nil {
		b.Fatal(err)
	}
	defer s.open.release(of)
	buf := make([]byte, 4096)
	b.Run("pwrite-4KiB", func(b *testing.B) {
		w := of.f.(io.WriterAt)
		for b.Loop() {
			if _, err := w.WriteAt(buf, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("writeAt-4KiB-with-link-check", func(b *testing.B) {
		for b.Loop() {
			if _, err := of.writeAt(buf, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// vanishingFS fails the first `fail` ReadDir calls with ENOENT, as osfs
// does when a name is renamed away between getdents and its lstat.
type vanishingFS struct {
	billy.Filesystem
	fail atomic.Int32
}

func (v *vanishingFS) ReadDir(p string) ([]os.FileInfo, error) {
	if v.fail.Add(-1) >= 0 {
		return nil, &os.PathError{Op: "lstat", Path: p + "/gone", Err: syscall.ENOENT}
	}
	return v.Filesystem.ReadDir(p)
}

// Exports that are not disk directories get their listing asked again
// when a name vanished during it; a directory that is itself gone still
// fails.
func TestListDirRetriesVanishedName(t *testing.T) {
	mem := NewMemFS()
	mem.MkdirAll("d", 0o755)
	f, _ := mem.Create("d/x")
	f.Close()
	v := &vanishingFS{Filesystem: mem}
	e := &exportFS{exportCore: &exportCore{base: v}}
	v.fail.Store(3)
	ents, err := e.listDir("d")
	if err != nil || len(ents) != 1 || ents[0].Name() != "x" {
		t.Fatalf("listDir after 3 vanished names: %v %v", ents, err)
	}
	v.fail.Store(0)
	if _, err := e.listDir("missing"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("listDir of a missing directory: %v", err)
	}
}

// Many resolves of one handle race an out-of-band replacement: each
// answers the old file or STALE, never anything else, the id is forgotten
// exactly once (Stats.Handles), and afterwards every resolve is STALE.
func TestConcurrentResolveDuringReplacement(t *testing.T) {
	dir, fsys := diskFS(t)
	os.WriteFile(filepath.Join(dir, "f"), []byte("old"), 0o644)
	s, err := New(fsys, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h, err := s.table.assign("f")
	if err != nil {
		t.Fatal(err)
	}
	if n := s.Stats().Handles; n != 2 {
		t.Fatalf("handles = %d, want 2", n)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var ok, stale atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, p, err := s.table.resolve(h)
				switch {
				case err == nil && p == "f":
					ok.Add(1)
				case errors.Is(err, errStaleHandle):
					stale.Add(1)
				default:
					t.Errorf("resolve: %q %v", p, err)
					return
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	replaceOutOfBand(t, filepath.Join(dir, "f"), []byte("new"))
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if _, _, err := s.table.resolve(h); !errors.Is(err, errStaleHandle) {
		t.Fatalf("after the replacement: %v, want stale", err)
	}
	if n := s.Stats().Handles; n != 1 {
		t.Fatalf("handles = %d, want 1: the replaced id is dropped exactly once", n)
	}
	h2, err := s.table.assign("f")
	if err != nil || bytes.Equal(h2, h) {
		t.Fatalf("new file's handle: %v (same as old: %v)", err, bytes.Equal(h2, h))
	}
	t.Logf("%d resolves saw the old file, %d STALE", ok.Load(), stale.Load())
	if ok.Load() == 0 || stale.Load() == 0 {
		t.Fatalf("the race was not exercised: %d ok, %d stale", ok.Load(), stale.Load())
	}
}
