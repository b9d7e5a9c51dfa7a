package writeback

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// longExpire keeps the background flusher out of tests that drive
// writeback by hand.
var longExpire = Options{DirtyExpire: time.Hour, Interval: time.Hour}

func mustMark(t *testing.T, f *Flusher, m *memFS, ino *Inode, off, n int64) {
	t.Helper()
	m.write(ino, off, n)
	if err := f.MarkDirty(context.Background(), ino, off, n, m.pin(ino)); err != nil {
		t.Fatalf("MarkDirty(%d,%d): %v", off, n, err)
	}
}

// TestUnpinWithLastDirtyPage: writing back part of the dirty range keeps
// the pin; writing back the rest clears DirtyPages and PinningCacheWB in
// one go and reports UnpinnedCacheWB to WriteInode, which drops the use.
func TestUnpinWithLastDirtyPage(t *testing.T) {
	m := newMemFS(t)
	f := New(m, longExpire)
	defer f.Close()
	ino := f.NewInode("file")
	mustMark(t, f, m, ino, 0, 3*PageSize)
	mustMark(t, f, m, ino, 10*PageSize, 100)
	if st := ino.State(); st != DirtyPages|PinningCacheWB {
		t.Fatalf("state after dirtying = %b, want DirtyPages|PinningCacheWB", st)
	}
	if ino.DirtiedWhen().IsZero() {
		t.Fatal("DirtiedWhen not set on a dirty inode")
	}
	if s := f.Stats(); s.DirtyBytes != 4*PageSize || s.PinnedInodes != 1 || s.DirtyInodes != 1 {
		t.Fatalf("stats %+v", s)
	}

	wbc := &Control{SyncMode: SyncAll, RangeStart: 0, RangeEnd: 5 * PageSize}
	if err := WriteSingleInode(context.Background(), m, ino, wbc); err != nil {
		t.Fatal(err)
	}
	if wbc.UnpinnedCacheWB || ino.State() != DirtyPages|PinningCacheWB || m.usesOf(ino) != 1 {
		t.Fatalf("partial writeback: unpinned=%v state=%b uses=%d", wbc.UnpinnedCacheWB, ino.State(), m.usesOf(ino))
	}
	if got := ino.DirtyExtents(); len(got) != 1 || got[0] != (Extent{10 * PageSize, 11 * PageSize}) {
		t.Fatalf("remaining dirty %+v", got)
	}

	wbc = &Control{SyncMode: SyncAll}
	if err := WriteSingleInode(context.Background(), m, ino, wbc); err != nil {
		t.Fatal(err)
	}
	if !wbc.UnpinnedCacheWB || ino.State() != 0 || m.usesOf(ino) != 0 {
		t.Fatalf("full writeback: unpinned=%v state=%b uses=%d", wbc.UnpinnedCacheWB, ino.State(), m.usesOf(ino))
	}
	if !ino.DirtiedWhen().IsZero() {
		t.Fatal("DirtiedWhen still set on a clean inode")
	}
	if wbc.PagesWritten != 1 {
		t.Fatalf("PagesWritten = %d, want 1", wbc.PagesWritten)
	}
	if lost := m.lost(ino); len(lost) != 0 {
		t.Fatalf("pages never written: %v", lost)
	}
	if s := f.Stats(); s.DirtyBytes != 0 || s.PinnedInodes != 0 || s.DirtyInodes != 0 || s.HeldInodes != 0 || s.PagesWritten != 4 {
		t.Fatalf("stats after writeback %+v", s)
	}
}

// TestPinRaceWithWriteback: many goroutines dirty (with the pin helper as
// MarkDirty's hook) while others write back random ranges in both sync
// modes. At every quiescent check: dirty pages always have a pin, a pin on
// a clean inode is queued for writeback to drop, and the cache uses held
// equal the pin bit (no use leaked, none dropped twice). At the end, after Sync: no dirty page, no pin, no use,
// and every page's latest data reached the store.
func TestPinRaceWithWriteback(t *testing.T) {
	t.Run("clean", func(t *testing.T) { pinRace(t, false) })
	// With partial write failures injected: failed ranges stay dirty and
	// pinned, and the final Syncs still get every byte written.
	t.Run("faults", func(t *testing.T) { pinRace(t, true) })
}

func pinRace(t *testing.T, faults bool) {
	m := newMemFS(t)
	f := New(m, longExpire)
	defer f.Close()
	const nInodes, pages = 4, 64
	inodes := make([]*Inode, nInodes)
	for k := range inodes {
		inodes[k] = f.NewInode(k)
	}
	// Dirtiers and writers hold gate shared; the checker takes it
	// exclusively (and pauses the flusher) to see a quiescent state.
	var gate sync.RWMutex
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for {
				select {
				case <-stop:
					return
				default:
				}
				ino := inodes[rng.IntN(nInodes)]
				off := rng.Int64N(pages * PageSize)
				n := 1 + rng.Int64N(3*PageSize)
				gate.RLock()
				m.write(ino, off, n)
				err := f.MarkDirty(ctx, ino, off, n, m.pin(ino))
				gate.RUnlock()
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 2))
			for {
				select {
				case <-stop:
					return
				default:
				}
				ino := inodes[rng.IntN(nInodes)]
				start := rng.Int64N(pages) * PageSize
				wbc := &Control{SyncMode: SyncMode(rng.IntN(2)), RangeStart: start, RangeEnd: start + rng.Int64N(pages)*PageSize}
				if rng.IntN(3) == 0 {
					wbc.RangeStart, wbc.RangeEnd = 0, 0
				}
				gate.RLock()
				err := WriteSingleInode(ctx, m, ino, wbc)
				gate.RUnlock()
				if err != nil && !faults {
					t.Error(err)
					return
				}
			}
		}()
	}
	if faults {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(9, 9))
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				m.mu.Lock()
				m.fail, m.partial = 1, rng.Int64N(8*PageSize)
				m.mu.Unlock()
			}
		}()
	}
	check := func() {
		gate.Lock()
		defer gate.Unlock()
		// A lingering pin wakes the flusher: pause it between passes too.
		f.passMu.Lock()
		defer f.passMu.Unlock()
		for _, ino := range inodes {
			st := ino.State()
			if st&DirtyPages != 0 && st&PinningCacheWB == 0 {
				t.Fatalf("inode %v has dirty pages and no pin", ino.Owner())
			}
			if st&PinningCacheWB != 0 && st&DirtyPages == 0 {
				f.mu.Lock()
				_, queued := f.entries[ino]
				f.mu.Unlock()
				if !queued {
					t.Fatalf("inode %v pinned, clean and not queued: the pin would never be dropped", ino.Owner())
				}
			}
			pinned := 0
			if st&PinningCacheWB != 0 {
				pinned = 1
			}
			if u := m.usesOf(ino); u != pinned {
				t.Fatalf("inode %v: %d cache uses held, pin bit %d", ino.Owner(), u, pinned)
			}
		}
		m.mu.Lock()
		err := m.badPin
		m.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(700 * time.Millisecond)
	for time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		check()
	}
	close(stop)
	wg.Wait()
	check()
	m.mu.Lock()
	m.fail = 0
	m.mu.Unlock()
	for _, ino := range inodes {
		err := f.Sync(ctx, ino)
		if err != nil && !faults {
			t.Fatal(err)
		}
		if err := f.Sync(ctx, ino); err != nil {
			t.Fatalf("second Sync reported %v again", err)
		}
	}
	for _, ino := range inodes {
		if ino.State() != 0 || m.usesOf(ino) != 0 {
			t.Fatalf("inode %v after Sync: state %b, uses %d", ino.Owner(), ino.State(), m.usesOf(ino))
		}
	}
	for _, ino := range inodes {
		if lost := m.lost(ino); len(lost) != 0 {
			t.Fatalf("inode %v: latest data of pages %v never written", ino.Owner(), lost)
		}
	}
	s := f.Stats()
	if s.DirtyBytes != 0 || s.PinnedInodes != 0 || s.HeldInodes != 0 || s.DirtyInodes != 0 {
		t.Fatalf("stats at rest %+v", s)
	}
	m.mu.Lock()
	t.Logf("%d WritePages calls, %d WriteInode calls, %d pages written, %d write errors", m.calls, m.inodeWr, s.PagesWritten, s.WriteErrors)
	if faults && s.WriteErrors == 0 {
		t.Error("no fault was injected")
	}
	m.mu.Unlock()
}

// TestLingeringPinIsDropped: writeback cleans the inode between MarkDirty's
// dirtying and its pin hook (simulated by writing back inside the hook),
// so the pin lands on a clean inode. The flusher must drop it promptly, not
// after DirtyExpire (an hour here) or its next periodic wakeup.
func TestLingeringPinIsDropped(t *testing.T) {
	m := newMemFS(t)
	f := New(m, longExpire)
	defer f.Close()
	ino := f.NewInode("late")
	m.write(ino, 0, PageSize)
	pin := m.pin(ino)
	err := f.MarkDirty(context.Background(), ino, 0, PageSize, func() {
		wbc := &Control{SyncMode: SyncAll}
		if err := WriteSingleInode(context.Background(), m, ino, wbc); err != nil {
			t.Error(err)
		}
		if wbc.UnpinnedCacheWB {
			t.Error("unpinned before any pin")
		}
		if ino.State()&DirtyPages != 0 {
			t.Error("still dirty after writeback in the window")
		}
		pin()
	})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "lingering pin dropped by the flusher", func() bool {
		return ino.State() == 0 && m.usesOf(ino) == 0
	})
	if s := f.Stats(); s.PinnedInodes != 0 || s.HeldInodes != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestRedirtyDuringWriteback: pages dirtied while WritePages runs (inside
// and outside the range being written) stay dirty, keep DirtyPages and the
// pin, and a later writeback writes their new data.
func TestRedirtyDuringWriteback(t *testing.T) {
	m := newMemFS(t)
	f := New(m, longExpire)
	defer f.Close()
	ino := f.NewInode("f")
	mustMark(t, f, m, ino, 0, 4*PageSize)
	block := make(chan struct{})
	m.mu.Lock()
	m.block, m.entered = block, make(chan struct{}, 1)
	entered := m.entered
	m.mu.Unlock()
	done := make(chan *Control)
	go func() {
		wbc := &Control{SyncMode: SyncAll}
		if err := WriteSingleInode(context.Background(), m, ino, wbc); err != nil {
			t.Error(err)
		}
		done <- wbc
	}()
	<-entered
	if st := ino.State(); st&Writeback == 0 || st&DirtyPages == 0 {
		t.Fatalf("state during writeback %b", st)
	}
	mustMark(t, f, m, ino, PageSize, 10)   // a page being written
	mustMark(t, f, m, ino, 8*PageSize, 10) // a new page
	if got := f.Stats().DirtyBytes; got != 5*PageSize {
		t.Fatalf("dirty bytes during writeback %d, want %d", got, 5*PageSize)
	}
	m.mu.Lock()
	m.block, m.entered = nil, nil
	m.mu.Unlock()
	close(block)
	wbc := <-done
	if wbc.UnpinnedCacheWB {
		t.Fatal("unpinned although pages were re-dirtied during writeback")
	}
	want := []Extent{{PageSize, 2 * PageSize}, {8 * PageSize, 9 * PageSize}}
	if got := ino.DirtyExtents(); len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("dirty after writeback %+v, want %+v", got, want)
	}
	if ino.State() != DirtyPages|PinningCacheWB {
		t.Fatalf("state %b", ino.State())
	}
	if got := f.Stats().DirtyBytes; got != 2*PageSize {
		t.Fatalf("dirty bytes %d, want %d", got, 2*PageSize)
	}
	if err := f.Sync(context.Background(), ino); err != nil {
		t.Fatal(err)
	}
	if lost := m.lost(ino); len(lost) != 0 || ino.State() != 0 || m.usesOf(ino) != 0 {
		t.Fatalf("after sync: lost %v state %b uses %d", lost, ino.State(), m.usesOf(ino))
	}
}

// TestMaxBytesChunks: a capped writeback writes the lowest dirty bytes
// first, no more than the cap, keeps the pin while pages remain, and the
// flusher writes a big inode in WriteChunkBytes pieces.
func TestMaxBytesChunks(t *testing.T) {
	m := newMemFS(t)
	var mu sync.Mutex
	var sizes []int64
	f := New(m, Options{DirtyExpire: time.Hour, Interval: time.Hour, WriteChunkBytes: 3 * PageSize})
	defer f.Close()
	ino := f.NewInode("f")
	mustMark(t, f, m, ino, 0, 2*PageSize)
	mustMark(t, f, m, ino, 5*PageSize, 4*PageSize)
	wbc := &Control{SyncMode: SyncAll, MaxBytes: 3*PageSize + 17}
	if err := WriteSingleInode(context.Background(), m, ino, wbc); err != nil {
		t.Fatal(err)
	}
	want := []Extent{{6 * PageSize, 9 * PageSize}}
	if got := ino.DirtyExtents(); wbc.PagesWritten != 3 || len(got) != 1 || got[0] != want[0] {
		t.Fatalf("after a 3-page capped writeback: wrote %d pages, dirty %+v, want %+v", wbc.PagesWritten, got, want)
	}
	if wbc.UnpinnedCacheWB || ino.State() != DirtyPages|PinningCacheWB {
		t.Fatalf("pin dropped with pages left: %b", ino.State())
	}
	rec := &recordingFS{memFS: m, sizes: &sizes, mu: &mu}
	f2 := New(rec, Options{DirtyExpire: time.Hour, Interval: time.Hour, WriteChunkBytes: 3 * PageSize})
	defer f2.Close()
	ino2 := f2.NewInode("g")
	mustMark(t, f2, m, ino2, 0, 10*PageSize)
	f2.StartWriteback()
	eventually(t, "chunked background writeback", func() bool { return ino2.State() == 0 })
	mu.Lock()
	defer mu.Unlock()
	if len(sizes) != 4 {
		t.Fatalf("10 pages in 3-page chunks took %d WritePages calls %v, want 4", len(sizes), sizes)
	}
	for _, n := range sizes {
		if n > 3*PageSize {
			t.Fatalf("a WritePages call got %d bytes, over the chunk", n)
		}
	}
}

// recordingFS records the bytes handed to each WritePages call.
type recordingFS struct {
	*memFS
	mu    *sync.Mutex
	sizes *[]int64
}

func (r *recordingFS) WritePages(ctx context.Context, ino *Inode, extents []Extent) (int64, error) {
	var n int64
	for _, e := range extents {
		n += e.Len()
	}
	r.mu.Lock()
	*r.sizes = append(*r.sizes, n)
	r.mu.Unlock()
	return r.memFS.WritePages(ctx, ino, extents)
}
