package fscache

import (
	"os"
	"slices"
	"testing"
	"time"
)

// BenchmarkCachedReadAt compares Cookie.ReadAt (presence check, fd
// reference, pread) with os.File.ReadAt on the same backing file, in the
// same run: the reported ratio is cached throughput / direct throughput
// (goal >= 0.9). The file is in the page cache, so this measures the
// cache's own overhead, not the disk.
func BenchmarkCachedReadAt(b *testing.B) {
	for _, bs := range []struct {
		name string
		n    int
	}{{"4KiB", 4 << 10}, {"64KiB", 64 << 10}, {"1MiB", 1 << 20}} {
		b.Run(bs.name, func(b *testing.B) {
			const size = 32 << 20
			c := openTest(b, b.TempDir(), testOptions())
			ck := mustCookie(b, mustVolume(b, c, "vol"), "f", "x", 0)
			ck.Use(false)
			chunk := pattern(1, 0, 1<<20)
			for off := int64(0); off < size; off += int64(len(chunk)) {
				if _, err := ck.WriteAt(chunk, off); err != nil {
					b.Fatal(err)
				}
			}
			direct, err := os.Open(ck.path)
			if err != nil {
				b.Fatal(err)
			}
			defer direct.Close()
			buf := make([]byte, bs.n)
			blocks := int64(size / bs.n)

			// The same reads straight from the backing file are the
			// baseline. The two are interleaved in short rounds so that
			// load from other processes hits both alike.
			b.SetBytes(int64(bs.n))
			b.ResetTimer()
			var directTime, cachedTime time.Duration
			var directRounds, cachedRounds []time.Duration
			const round = 16
			readDirect := func(from, to int) time.Duration {
				t0 := time.Now()
				for i := from; i < to; i++ {
					if _, err := direct.ReadAt(buf, (int64(i)%blocks)*int64(bs.n)); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(t0)
			}
			readCached := func(from, to int) time.Duration {
				t0 := time.Now()
				for i := from; i < to; i++ {
					if _, err := ck.ReadAt(buf, (int64(i)%blocks)*int64(bs.n)); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(t0)
			}
			for done, r := 0, 0; done < b.N; done, r = done+round, r+1 {
				to := min(done+round, b.N)
				// Alternate which goes first: the second reads blocks the
				// first just brought into the CPU caches.
				var d, cd time.Duration
				if r%2 == 0 {
					d = readDirect(done, to)
					cd = readCached(done, to)
				} else {
					cd = readCached(done, to)
					d = readDirect(done, to)
				}
				directTime += d
				cachedTime += cd
				if to-done == round {
					directRounds = append(directRounds, d)
					cachedRounds = append(cachedRounds, cd)
				}
			}
			b.StopTimer()
			mb := float64(b.N) * float64(bs.n) / 1e6
			// ns/op and MB/s above cover both loops; these split them.
			b.ReportMetric(mb/cachedTime.Seconds(), "cached-MB/s")
			b.ReportMetric(mb/directTime.Seconds(), "direct-MB/s")
			b.ReportMetric(directTime.Seconds()/cachedTime.Seconds(), "ratio-vs-os.File")
			// The ratio of median round times resists load spikes from
			// other processes on a shared machine.
			if len(directRounds) > 0 {
				b.ReportMetric(median(directRounds).Seconds()/median(cachedRounds).Seconds(), "median-ratio")
			}
		})
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
