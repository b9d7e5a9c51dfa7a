package client_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
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
		dir:      s.Dir,
		ours:     func(b *testing.B) *client.Client { return dial(b, s.Addr, oursOpts()) },
		baseline: func(b *testing.B) *gonfs.Target { return mountBaseline(b, s.Addr) },
	}
}

// mountBaseline mounts a go-nfs style server (MOUNT and NFS on one port)
// with go-nfs-client, as FIELD-NOTES.md describes.
func mountBaseline(b *testing.B, addr string) *gonfs.Target {
	rc, err := rpc.DialTCP("tcp", addr, false)
	if err != nil {
		b.Fatal(err)
	}
	t, err := (&gonfs.Mount{Client: rc}).Mount("/", rpc.AuthNull)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { t.Close() })
	return t
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
func baselineRead(b *testing.B, t *gonfs.Target, name string, buf []byte) time.Duration {
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
	return d
}

// baselineWrite writes data with go-nfs-client in 1 MiB calls.
func baselineWrite(b *testing.B, t *gonfs.Target, name string, data []byte) time.Duration {
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
	return time.Since(start)
}

func oursRead(b *testing.B, c *client.Client, h client.Handle, buf []byte) time.Duration {
	start := time.Now()
	for off := 0; off < len(buf); off += benchCall {
		if _, err := c.ReadAt(context.Background(), h, buf[off:min(off+benchCall, len(buf))], int64(off)); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// oursWrite includes the final COMMIT in the time.
func oursWrite(b *testing.B, c *client.Client, h client.Handle, data []byte) time.Duration {
	ctx := context.Background()
	start := time.Now()
	for off := 0; off < len(data); off += benchCall {
		if _, err := c.WriteAt(ctx, h, data[off:min(off+benchCall, len(data))], int64(off)); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := c.Commit(ctx, h, 0, 0); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// pairs runs the baseline and our client alternately b.N times (the order
// flipping each round, so a noisy neighbour hurts both alike) and reports
// both throughputs and the median of the per-round ratios.
func pairs(b *testing.B, what string, size int, base, ours func() time.Duration) {
	var tb, to time.Duration
	var ratios []float64
	for i := 0; i < b.N; i++ {
		var db, do time.Duration
		if i%2 == 0 {
			db = base()
			do = ours()
		} else {
			do = ours()
			db = base()
		}
		tb += db
		to += do
		ratios = append(ratios, db.Seconds()/do.Seconds())
	}
	sort.Float64s(ratios)
	med := ratios[len(ratios)/2]
	ob, oo := mbps(size*b.N, tb), mbps(size*b.N, to)
	b.ReportMetric(oo, "MB/s")
	b.ReportMetric(ob, "go-nfs-client-MB/s")
	b.ReportMetric(med, "x-go-nfs-client")
	b.Logf("%s %d MiB x%d: ours %.0f MB/s (%d conns, %d in flight, %d MiB calls), go-nfs-client %.0f MB/s (1 MiB calls), median ratio %.2fx",
		what, size>>20, b.N, oo, *benchConns, *benchFlight, benchCall>>20, ob, med)
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
	bt := tg.baseline(b)
	c := tg.ours(b)
	lr, err := c.Lookup(context.Background(), c.Root(), "seq")
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, size)
	b.ResetTimer()
	pairs(b, "read", size,
		func() time.Duration { return baselineRead(b, bt, "seq", buf) },
		func() time.Duration {
			clear(buf)
			d := oursRead(b, c, lr.Handle, buf)
			if !bytes.Equal(buf, data) {
				b.Fatal("read data differs")
			}
			return d
		})
}

func benchWrite(b *testing.B, tg benchTarget) {
	size := *benchSize
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i * 13)
	}
	bt := tg.baseline(b)
	c := tg.ours(b)
	f, err := c.Create(context.Background(), c.Root(), "seq-ours", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	pairs(b, "write", size,
		func() time.Duration { return baselineWrite(b, bt, "seq-base", data) },
		func() time.Duration { return oursWrite(b, c, f.Handle, data) })
	b.StopTimer()
	if got, err := os.ReadFile(filepath.Join(tg.dir, "seq-ours")); err != nil || !bytes.Equal(got, data) {
		b.Fatalf("written file differs (%v)", err)
	}
}

// BenchmarkSequential compares 256 MiB sequential reads and writes of this
// client against go-nfs-client, measured in the same run against the same
// server. Run: go test ./client -run XXX -bench Sequential -benchtime 5x
func BenchmarkSequential(b *testing.B) {
	for _, s := range []struct {
		name   string
		target func(*testing.B) benchTarget
	}{{"stock-go-nfs", stockTarget}, {"ganesha", ganeshaTarget}} {
		b.Run(fmt.Sprintf("%s/read", s.name), func(b *testing.B) { benchRead(b, s.target(b)) })
		b.Run(fmt.Sprintf("%s/write", s.name), func(b *testing.B) { benchWrite(b, s.target(b)) })
	}
}
