package client_test

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	gonfs "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/internal/ganeshatest"
)

var benchSize = flag.Int("client.benchsize", 256<<20, "bytes per sequential read/write benchmark")

// benchTarget is one server under benchmark, reachable by both clients.
type benchTarget struct {
	dir      string
	ours     func(b *testing.B) *client.Client
	baseline func(b *testing.B) *gonfs.Target // go-nfs-client
}

var (
	benchConns  = flag.Int("client.conns", 4, "connections (nconnect) of our client in benchmarks")
	benchFlight = flag.Int("client.inflight", 16, "READs/WRITEs in flight per ReadAt/WriteAt in benchmarks")
	benchIO     = flag.Int("client.iosize", 1<<20, "rsize/wsize cap of our client in benchmarks")
)

const (
	benchCall = 16 << 20 // bytes per ReadAt/WriteAt call of our client
	baseCall  = 1 << 20  // bytes per Read/Write call of go-nfs-client
)

func oursOpts() client.Options {
	return client.Options{Connections: *benchConns, MaxInflight: *benchFlight, MaxIOSize: *benchIO}
}

func stockTarget(b *testing.B) benchTarget {
	s := startStock(b, b.TempDir())
	return benchTarget{
		dir:  s.Dir,
		ours: func(b *testing.B) *client.Client { return dial(b, s.Addr, oursOpts()) },
		baseline: func(b *testing.B) *gonfs.Target {
			rc, err := rpc.DialTCP("tcp", s.Addr, false)
			if err != nil {
				b.Fatal(err)
			}
			t, err := (&gonfs.Mount{Client: rc}).Mount("/", rpc.AuthNull)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { t.Close() })
			return t
		},
	}
}

func ganeshaTarget(b *testing.B) benchTarget {
	g := ganeshatest.Start(b)
	return benchTarget{
		dir: g.Dir,
		ours: func(b *testing.B) *client.Client {
			o := oursOpts()
			o.Portmap, o.Export, o.Dial = true, ganeshatest.Export, g.Dial
			return dial(b, g.Addr, o)
		},
		baseline: func(b *testing.B) *gonfs.Target {
			var t *gonfs.Target
			// go-nfs-client dials by itself: run it on a thread inside the netns.
			err := g.Do(func() error {
				m, err := gonfs.DialMount(g.Addr, time.Second)
				if err != nil {
					return err
				}
				t, err = m.Mount(ganeshatest.Export, rpc.NewAuthUnix("bench", 0, 0).Auth())
				return err
			})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { t.Close() })
			return t
		},
	}
}

func mbps(n int, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }

// baselineRead reads the whole file with go-nfs-client in 1 MiB calls.
func baselineRead(b *testing.B, t *gonfs.Target, name string, buf []byte) float64 {
	f, err := t.Open(name)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	off := 0
	for off < len(buf) {
		n, err := f.ReadAt(buf[off:min(off+baseCall, len(buf))], int64(off))
		off += n
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	d := time.Since(start)
	if off != len(buf) {
		b.Fatalf("go-nfs-client read %d of %d bytes", off, len(buf))
	}
	return mbps(len(buf), d)
}

func baselineWrite(b *testing.B, t *gonfs.Target, name string, data []byte) float64 {
	f, err := t.OpenFile(name, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	for off := 0; off < len(data); off += baseCall {
		if _, err := f.Write(data[off:min(off+baseCall, len(data))]); err != nil {
			b.Fatal(err)
		}
	}
	d := time.Since(start)
	return mbps(len(data), d)
}

func benchRead(b *testing.B, tg benchTarget) {
	size := *benchSize
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := os.WriteFile(filepath.Join(tg.dir, "seq"), data, 0o644); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, size)
	base := baselineRead(b, tg.baseline(b), "seq", buf)
	c := tg.ours(b)
	ctx := context.Background()
	lr, err := c.Lookup(ctx, c.Root(), "seq")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for off := 0; off < size; off += benchCall {
			if _, err := c.ReadAt(ctx, lr.Handle, buf[off:min(off+benchCall, size)], int64(off)); err != nil && err != io.EOF {
				b.Fatal(err)
			}
		}
	}
	ours := mbps(size*b.N, time.Since(start))
	b.StopTimer()
	if string(buf[size-100:]) != string(data[size-100:]) {
		b.Fatal("read data differs")
	}
	report(b, "read", ours, base)
}

func benchWrite(b *testing.B, tg benchTarget) {
	size := *benchSize
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 13)
	}
	base := baselineWrite(b, tg.baseline(b), "seq-base", data)
	c := tg.ours(b)
	ctx := context.Background()
	f, err := c.Create(ctx, c.Root(), "seq-ours", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		for off := 0; off < size; off += benchCall {
			if _, err := c.WriteAt(ctx, f.Handle, data[off:min(off+benchCall, size)], int64(off)); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := c.Commit(ctx, f.Handle, 0, 0); err != nil {
			b.Fatal(err)
		}
	}
	ours := mbps(size*b.N, time.Since(start))
	b.StopTimer()
	if st, err := os.Stat(filepath.Join(tg.dir, "seq-ours")); err != nil || st.Size() != int64(size) {
		b.Fatalf("written file: %v %v", st, err)
	}
	report(b, "write", ours, base)
}

func report(b *testing.B, what string, ours, base float64) {
	b.ReportMetric(base, "go-nfs-client-MB/s")
	b.ReportMetric(ours/base, "x-go-nfs-client")
	b.Logf("%s %d MiB: ours %.0f MB/s (%d conns, %d in flight, %d MiB calls), go-nfs-client %.0f MB/s (1 MiB calls), ratio %.2fx",
		what, *benchSize>>20, ours, *benchConns, *benchFlight, benchCall>>20, base, ours/base)
}

// BenchmarkSequential compares 256 MiB sequential reads and writes of this
// client against go-nfs-client, measured in the same run against the same
// server. Run: go test ./client -run XXX -bench Sequential -benchtime 1x
func BenchmarkSequential(b *testing.B) {
	for _, s := range []struct {
		name   string
		target func(*testing.B) benchTarget
	}{{"stock-go-nfs", stockTarget}, {"ganesha", ganeshaTarget}} {
		b.Run(fmt.Sprintf("%s/read", s.name), func(b *testing.B) { benchRead(b, s.target(b)) })
		b.Run(fmt.Sprintf("%s/write", s.name), func(b *testing.B) { benchWrite(b, s.target(b)) })
	}
}
