package writeback

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// checkSet verifies the structural invariants of an extentSet and that it
// holds exactly the pages marked in model.
func checkSet(t *testing.T, s *extentSet, model []bool) {
	t.Helper()
	ext := s.all()
	if s.len() != len(ext) || s.bytes() != func() (n int64) {
		for _, e := range ext {
			n += e.Len()
		}
		return n
	}() {
		t.Fatalf("len %d / bytes %d disagree with extents %+v", s.len(), s.bytes(), ext)
	}
	for k, e := range ext {
		if e.Off%PageSize != 0 || e.End%PageSize != 0 || e.End <= e.Off {
			t.Fatalf("extent %d %+v not page aligned or empty", k, e)
		}
		if k > 0 && ext[k-1].End >= e.Off {
			t.Fatalf("extents %d,%d overlap or touch (not coalesced): %+v %+v", k-1, k, ext[k-1], e)
		}
	}
	got := make([]bool, len(model))
	for _, e := range ext {
		for p := e.Off / PageSize; p < e.End/PageSize; p++ {
			if p >= int64(len(got)) {
				t.Fatalf("extent %+v beyond model", e)
			}
			got[p] = true
		}
	}
	runs := 0
	for p := range model {
		if got[p] != model[p] {
			t.Fatalf("page %d: set has %v, model %v; set %+v", p, got[p], model[p], ext)
		}
		if model[p] && (p == 0 || !model[p-1]) {
			runs++
		}
	}
	if runs != len(ext) {
		t.Fatalf("model has %d dirty runs, set has %d extents", runs, len(ext))
	}
}

// TestExtentSetModel drives add/remove/covered/within with random byte
// ranges against a page bitmap and checks every result and invariant.
func TestExtentSetModel(t *testing.T) {
	const pages = 256
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 7))
		var s extentSet
		model := make([]bool, pages)
		for range 400 {
			off := rng.Int64N(pages*PageSize - 1)
			n := 1 + rng.Int64N(min(pages*PageSize-off, 12*PageSize))
			r := pageRange(off, n)
			if r.Off > off || r.End < off+n || r.Off%PageSize != 0 || r.End%PageSize != 0 {
				t.Fatalf("pageRange(%d,%d) = %+v", off, n, r)
			}
			var inModel int64
			for p := r.Off / PageSize; p < r.End/PageSize; p++ {
				if model[p] {
					inModel += PageSize
				}
			}
			if c := s.covered(r); c != inModel {
				t.Fatalf("covered(%+v) = %d, model %d", r, c, inModel)
			}
			var w int64
			for _, e := range s.within(r) {
				if e.Off < r.Off || e.End > r.End {
					t.Fatalf("within(%+v) returned %+v outside", r, e)
				}
				w += e.Len()
			}
			if w != inModel {
				t.Fatalf("within(%+v) totals %d, model %d", r, w, inModel)
			}
			switch rng.IntN(3) {
			case 0, 1:
				if got := s.add(r); got != r.Len()-inModel {
					t.Fatalf("add(%+v) = %d, want %d", r, got, r.Len()-inModel)
				}
				for p := r.Off / PageSize; p < r.End/PageSize; p++ {
					model[p] = true
				}
			case 2:
				if got := s.remove(r); got != inModel {
					t.Fatalf("remove(%+v) = %d, want %d", r, got, inModel)
				}
				for p := r.Off / PageSize; p < r.End/PageSize; p++ {
					model[p] = false
				}
			}
			checkSet(t, &s, model)
		}
	}
}

// TestSequentialWritesCoalesce: a sequential writer with unaligned writes
// leaves a single extent, so writeback issues one large write.
func TestSequentialWritesCoalesce(t *testing.T) {
	ino := NewInode(nil)
	var off int64
	for range 1000 {
		ino.MarkDirty(off, 1000)
		off += 1000
	}
	ext := ino.DirtyExtents()
	want := Extent{0, pageRange(0, off).End}
	if len(ext) != 1 || ext[0] != want {
		t.Fatalf("extents %+v, want [%+v]", ext, want)
	}
	// Truncating to the middle drops the pages wholly past the new size.
	ino.Truncate(off / 2)
	if got := ino.DirtyExtents(); len(got) != 1 || got[0].End != pageRange(0, off/2).End {
		t.Fatalf("after truncate: %+v", got)
	}
}

// benchMarkDirty dirties the same ranges twice in one run: through
// Inode.MarkDirty (coalesced extents) and through a baseline that keeps a
// map entry per dirty page under a mutex (the page-cache dirty tag shape).
// It reports both costs, their ratio, and how many separate writes each
// representation would hand to writeback.
func benchMarkDirty(b *testing.B, offs []int64, n int64) {
	ino := NewInode(nil)
	start := time.Now()
	for k := range b.N {
		if err := ino.MarkDirty(offs[k%len(offs)], n); err != nil {
			b.Fatal(err)
		}
	}
	extNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)

	var mu sync.Mutex
	pages := make(map[int64]struct{})
	start = time.Now()
	for k := range b.N {
		r := pageRange(offs[k%len(offs)], n)
		mu.Lock()
		for p := r.Off / PageSize; p < r.End/PageSize; p++ {
			pages[p] = struct{}{}
		}
		mu.Unlock()
	}
	mapNs := float64(time.Since(start).Nanoseconds()) / float64(b.N)

	b.ReportMetric(extNs, "extent-ns/op")
	b.ReportMetric(mapNs, "pagemap-ns/op")
	b.ReportMetric(float64(n)/extNs*1e3, "extent-MB/s")
	b.ReportMetric(float64(n)/mapNs*1e3, "pagemap-MB/s")
	b.ReportMetric(mapNs/extNs, "speedup-vs-pagemap")
	b.ReportMetric(float64(len(ino.DirtyExtents())), "extents")
	b.ReportMetric(float64(len(pages)), "pagemap-entries")
}

func BenchmarkMarkDirtySequential1000B(b *testing.B) {
	offs := make([]int64, 1<<20)
	for k := range offs {
		offs[k] = int64(k) * 1000
	}
	benchMarkDirty(b, offs, 1000)
}

func BenchmarkMarkDirtySequential64K(b *testing.B) {
	offs := make([]int64, 1<<16)
	for k := range offs {
		offs[k] = int64(k) << 16
	}
	benchMarkDirty(b, offs, 1<<16)
}

func BenchmarkMarkDirtyRandomPage(b *testing.B) {
	rng := rand.New(rand.NewPCG(1, 2))
	offs := make([]int64, 1<<16)
	for k := range offs {
		offs[k] = rng.Int64N(1<<16) * PageSize
	}
	benchMarkDirty(b, offs, PageSize)
}
