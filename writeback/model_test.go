package writeback

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"
)

// modelFS is driven by TestInodeModel: each WritePages call runs a few
// random MarkDirty/Truncate calls on the inode (as a concurrent writer
// would, while the pages are under writeback), then reports a chosen
// number of bytes written and maybe fails.
type modelFS struct {
	during  func(ino *Inode) // runs inside WritePages
	written int64            // bytes to report; -1 = all, success
	got     []Extent
}

func (m *modelFS) WritePages(ctx context.Context, ino *Inode, extents []Extent) (int64, error) {
	m.got = slices.Clone(extents)
	if m.during != nil {
		m.during(ino)
	}
	if m.written < 0 {
		return 0, nil
	}
	return m.written, errors.New("model failure")
}

func (m *modelFS) WriteInode(ctx context.Context, ino *Inode, wbc *Control) error { return nil }

// TestInodeModel checks Inode's dirty tracking and the Flusher's byte
// accounting against a page model through random MarkDirty, Truncate and
// (partly failing) WriteSingleInode calls, with re-dirtying and truncation
// happening while pages are under writeback.
func TestInodeModel(t *testing.T) {
	const pages = 96
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 11))
		mfs := &modelFS{}
		f := New(mfs, longExpire)
		ino := f.NewInode(seed)
		dirty := make([]bool, pages) // model: dirty or under writeback
		var snap map[int64]bool      // model: pages under writeback, not re-dirtied
		markDirty := func() {
			off := rng.Int64N(pages*PageSize - 1)
			n := 1 + rng.Int64N(min(pages*PageSize-off, 6*PageSize))
			if err := ino.MarkDirty(off, n); err != nil {
				t.Fatal(err)
			}
			r := pageRange(off, n)
			for p := r.Off / PageSize; p < r.End/PageSize; p++ {
				dirty[p] = true
				delete(snap, p) // re-dirtied: stays dirty whatever the write does
			}
		}
		truncate := func() {
			size := rng.Int64N(pages * PageSize)
			ino.Truncate(size)
			for p := pageRange(size, 0).End / PageSize; p < pages; p++ {
				dirty[p] = false
				delete(snap, p)
			}
			ino.ExtendSize(pages * PageSize)
		}
		check := func(where string) {
			t.Helper()
			var want extentSet
			var n int64
			for p, d := range dirty {
				if d {
					want.add(Extent{int64(p) * PageSize, int64(p+1) * PageSize})
					n += PageSize
				}
			}
			if got := ino.DirtyExtents(); !slices.Equal(got, want.all()) {
				t.Fatalf("seed %d %s: extents %+v, model %+v", seed, where, got, want.all())
			}
			if got := ino.DirtyBytes(); got != n {
				t.Fatalf("seed %d %s: DirtyBytes %d, model %d", seed, where, got, n)
			}
			if got := f.Stats().DirtyBytes; got != n {
				t.Fatalf("seed %d %s: flusher DirtyBytes %d, model %d", seed, where, got, n)
			}
			if (ino.State()&DirtyPages != 0) != (n > 0) && ino.State()&Writeback == 0 {
				t.Fatalf("seed %d %s: DirtyPages bit %b with %d dirty bytes", seed, where, ino.State(), n)
			}
		}
		for range 150 {
			switch rng.IntN(5) {
			case 0, 1:
				markDirty()
				check("after MarkDirty")
			case 2:
				truncate()
				check("after Truncate")
			default:
				start := rng.Int64N(pages) * PageSize
				wbc := &Control{SyncMode: SyncAll, RangeStart: start, RangeEnd: start + rng.Int64N(pages)*PageSize}
				snap = make(map[int64]bool)
				var order []int64 // snapshot pages in write order
				end := wbc.RangeEnd
				if end == 0 {
					end = pages * PageSize // RangeEnd 0 means to the end of the file
				}
				for p := wbc.RangeStart / PageSize; p < end/PageSize && p < pages; p++ {
					if dirty[p] {
						snap[p] = true
						order = append(order, p)
					}
				}
				mfs.written = -1
				if rng.IntN(2) == 0 {
					mfs.written = rng.Int64N(int64(len(order))*PageSize + 1)
				}
				mfs.during = func(*Inode) {
					check("inside WritePages")
					for range rng.IntN(3) {
						if rng.IntN(3) == 0 {
							truncate()
						} else {
							markDirty()
						}
						check("after a change under writeback")
					}
				}
				mfs.got = nil
				err := WriteSingleInode(context.Background(), mfs, ino, wbc)
				var wantExt extentSet
				for _, p := range order {
					wantExt.add(Extent{p * PageSize, (p + 1) * PageSize})
				}
				if !slices.Equal(mfs.got, wantExt.all()) {
					t.Fatalf("seed %d: WritePages got %+v, model snapshot %+v", seed, mfs.got, wantExt.all())
				}
				if (err != nil) != (mfs.written >= 0 && len(order) > 0) {
					t.Fatalf("seed %d: WriteSingleInode error %v with written=%d", seed, err, mfs.written)
				}
				cleaned := len(order)
				if mfs.written >= 0 {
					cleaned = int(mfs.written / PageSize)
				}
				for _, p := range order[:cleaned] {
					if snap[p] {
						dirty[p] = false
					}
				}
				snap = nil
				check("after WriteSingleInode")
			}
		}
		f.Close()
	}
}
