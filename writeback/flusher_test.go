package writeback

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// TestErrorReportedOnceAndRetried: a background writeback fails after one
// page; that page is clean, the rest stays dirty and pinned; the next Sync
// reports the error exactly once (a second Sync does not), each open-file
// cursor also sees it once, and the retried range reaches the store.
func TestErrorReportedOnceAndRetried(t *testing.T) {
	m := newMemFS(t)
	f := New(m, longExpire)
	defer f.Close()
	ino := f.NewInode("f")
	fileA := ino.SampleErr()
	mustMark(t, f, m, ino, 0, 3*PageSize)
	m.mu.Lock()
	m.fail, m.partial = 1, PageSize+100 // one whole page written, then failure
	m.mu.Unlock()

	err := WriteSingleInode(context.Background(), m, ino, &Control{SyncMode: SyncNone})
	if err == nil {
		t.Fatal("injected failure not returned")
	}
	if got := ino.DirtyExtents(); len(got) != 1 || got[0] != (Extent{PageSize, 3 * PageSize}) {
		t.Fatalf("dirty after partial failure %+v, want [{4096 12288}]", got)
	}
	if ino.State() != DirtyPages|PinningCacheWB || m.usesOf(ino) != 1 {
		t.Fatalf("state %b uses %d after failure", ino.State(), m.usesOf(ino))
	}
	if s := f.Stats(); s.WriteErrors != 1 || s.DirtyBytes != 2*PageSize {
		t.Fatalf("stats %+v", s)
	}
	fileB := ino.SampleErr() // opened after the error, before anyone saw it

	// The next Sync retries (and succeeds) but still reports the error.
	if err := f.Sync(context.Background(), ino); err == nil || !errors.Is(err, errInjected(err)) {
		t.Fatalf("first Sync after failure = %v, want the write error", err)
	}
	if err := f.Sync(context.Background(), ino); err != nil {
		t.Fatalf("second Sync = %v, want nil (error reported once)", err)
	}
	for name, cur := range map[string]*ErrCursor{"A": &fileA, "B": &fileB} {
		if err := ino.CheckErr(cur); err == nil {
			t.Fatalf("file %s did not see the error", name)
		}
		if err := ino.CheckErr(cur); err != nil {
			t.Fatalf("file %s saw the error twice", name)
		}
	}
	if fileC := ino.SampleErr(); ino.CheckErr(&fileC) != nil {
		t.Fatal("a file opened after the error was reported saw it")
	}
	if lost := m.lost(ino); len(lost) != 0 || ino.State() != 0 || m.usesOf(ino) != 0 {
		t.Fatalf("after retry: lost %v, state %b, uses %d", lost, ino.State(), m.usesOf(ino))
	}
}

func errInjected(err error) error {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if e.Error() == "injected write failure" {
			return e
		}
	}
	return errors.New("no injected error in chain")
}

// TestBackgroundErrorRetriedByFlusher: the flusher's writeback fails, the
// range is retried after another expiry, and Sync (after the data is
// safely written) still reports the earlier failure once.
func TestBackgroundErrorRetriedByFlusher(t *testing.T) {
	m := newMemFS(t)
	m.fail = 2
	f := New(m, Options{DirtyExpire: 10 * time.Millisecond, Interval: 2 * time.Millisecond})
	defer f.Close()
	ino := f.NewInode("f")
	mustMark(t, f, m, ino, 0, 2*PageSize)
	eventually(t, "flusher retries until written", func() bool {
		return ino.State() == 0 && len(m.lost(ino)) == 0
	})
	if s := f.Stats(); s.WriteErrors != 2 {
		t.Fatalf("WriteErrors = %d, want 2", s.WriteErrors)
	}
	if err := f.Sync(context.Background(), ino); err == nil {
		t.Fatal("background write errors were dropped")
	}
	if err := f.Sync(context.Background(), ino); err != nil {
		t.Fatalf("error reported twice: %v", err)
	}
	// SyncAll (syncfs) has its own cursor: it reports the failure once
	// even though the inode is clean and off the dirty list by now.
	if err := f.SyncAll(context.Background()); err == nil {
		t.Fatal("SyncAll did not report the background write error")
	}
	if err := f.SyncAll(context.Background()); err != nil {
		t.Fatalf("SyncAll reported the error twice: %v", err)
	}
}

// TestExpiryFlush: with a short expiry and nobody syncing, the flusher
// writes back dirty inodes by itself and drops them from its list.
func TestExpiryFlush(t *testing.T) {
	m := newMemFS(t)
	f := New(m, Options{DirtyExpire: 20 * time.Millisecond, Interval: 5 * time.Millisecond})
	defer f.Close()
	var inodes []*Inode
	for k := range 5 {
		ino := f.NewInode(k)
		inodes = append(inodes, ino)
		mustMark(t, f, m, ino, int64(k)*PageSize, 5000)
	}
	eventually(t, "expired inodes written back", func() bool {
		for _, ino := range inodes {
			if ino.State() != 0 || len(m.lost(ino)) != 0 || m.usesOf(ino) != 0 {
				return false
			}
		}
		return true
	})
	f.mu.Lock()
	queued := f.queue.Len()
	f.mu.Unlock()
	if queued != 0 {
		t.Fatalf("%d clean inodes still on the dirty list", queued)
	}
	if s := f.Stats(); s.DirtyBytes != 0 || s.DirtyInodes != 0 || s.PagesWritten != 10 {
		t.Fatalf("stats %+v", s)
	}
}

// TestBackgroundThreshold: with an expiry far away, passing
// BackgroundBytes still gets data written without any Sync.
func TestBackgroundThreshold(t *testing.T) {
	m := newMemFS(t)
	f := New(m, Options{DirtyExpire: time.Hour, Interval: 2 * time.Millisecond, DirtyLimitBytes: 1 << 20, BackgroundBytes: 8 * PageSize})
	defer f.Close()
	ino := f.NewInode("big")
	mustMark(t, f, m, ino, 0, 4*PageSize)
	mustMark(t, f, m, ino, 4*PageSize, 8*PageSize) // now 12 pages > 8
	eventually(t, "writeback below the background threshold", func() bool {
		return f.Stats().DirtyBytes <= 8*PageSize && m.usesOf(ino) == 0 && len(m.lost(ino)) == 0
	})
}

// TestThrottleBoundsDirtyBytes: writers to several inodes with a slow
// WritePages dirty far more than the hard limit in total, yet the bytes
// held dirty or under writeback never exceed it, sampled after every
// MarkDirty and inside every WritePages.
func TestThrottleBoundsDirtyBytes(t *testing.T) {
	const limit = 16 * PageSize
	m := newMemFS(t)
	m.delay = time.Millisecond // slow enough that writers always reach the limit
	f := New(m, Options{DirtyExpire: time.Hour, Interval: time.Hour, DirtyLimitBytes: limit})
	defer f.Close()
	var peakMu sync.Mutex
	peak := int64(0)
	sample := func() {
		d := f.Stats().DirtyBytes
		peakMu.Lock()
		peak = max(peak, d)
		peakMu.Unlock()
	}
	m.onWritePages = func(*Inode) { sample() }
	var wg sync.WaitGroup
	var inodes []*Inode
	for w := range 4 {
		ino := f.NewInode(w)
		inodes = append(inodes, ino)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range int64(64) { // 64 × 3 pages per writer, 4 writers: 48× the limit
				off := k * 3 * PageSize
				m.write(ino, off, 3*PageSize)
				if err := f.MarkDirty(context.Background(), ino, off, 3*PageSize, m.pin(ino)); err != nil {
					t.Error(err)
					return
				}
				sample()
			}
		}()
	}
	wg.Wait()
	if err := f.SyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, ino := range inodes {
		if lost := m.lost(ino); len(lost) != 0 {
			t.Fatalf("lost pages %v", lost)
		}
	}
	s := f.Stats()
	t.Logf("peak dirty %d bytes (limit %d), %d throttle waits, %d pages written", peak, limit, s.ThrottleWaits, s.PagesWritten)
	if peak > limit {
		t.Fatalf("dirty bytes reached %d, over the hard limit %d", peak, limit)
	}
	if s.ThrottleWaits == 0 {
		t.Fatal("writers never throttled: the test did not exercise the limit")
	}
}

// TestMaxPinnedInodes: 16 writers each dirty their own inode (pinning it)
// with MaxPinnedInodes=3: inodes holding a cache use at once never exceed
// 3 (a slot is given back only after WriteInode dropped the use), and all
// data is written.
func TestMaxPinnedInodes(t *testing.T) {
	m := newMemFS(t)
	m.delay = 100 * time.Microsecond
	f := New(m, Options{DirtyExpire: time.Hour, Interval: time.Hour, MaxPinnedInodes: 3})
	defer f.Close()
	var wg sync.WaitGroup
	var inodes []*Inode
	for w := range 16 {
		ino := f.NewInode(w)
		inodes = append(inodes, ino)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range int64(8) {
				m.write(ino, k*PageSize, PageSize)
				if err := f.MarkDirty(context.Background(), ino, k*PageSize, PageSize, m.pin(ino)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := f.SyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	m.mu.Lock()
	peak := m.peakPinned
	m.mu.Unlock()
	s := f.Stats()
	t.Logf("peak pins %d, throttle waits %d", peak, s.ThrottleWaits)
	if peak > 3 {
		t.Fatalf("peak pinned inodes %d > MaxPinnedInodes 3", peak)
	}
	for _, ino := range inodes {
		if lost := m.lost(ino); len(lost) != 0 || ino.State() != 0 {
			t.Fatalf("inode %v: lost %v state %b", ino.Owner(), lost, ino.State())
		}
	}
	if s.ThrottleWaits == 0 || s.PinnedInodes != 0 || s.HeldInodes != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestThrottledWriterCancel: a writer blocked by a stuck writeback gives up
// with its context's error and dirties nothing.
func TestThrottledWriterCancel(t *testing.T) {
	m := newMemFS(t)
	block := make(chan struct{})
	m.block = block
	f := New(m, Options{DirtyExpire: time.Hour, Interval: time.Hour, DirtyLimitBytes: 2 * PageSize})
	ino := f.NewInode("f")
	mustMark(t, f, m, ino, 0, 2*PageSize)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	other := f.NewInode("g")
	if err := f.MarkDirty(ctx, other, 0, PageSize, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("MarkDirty over the limit = %v, want deadline exceeded", err)
	}
	if other.State() != 0 {
		t.Fatalf("cancelled MarkDirty dirtied the inode: %b", other.State())
	}
	m.mu.Lock()
	m.block = nil
	m.mu.Unlock()
	close(block)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if lost := m.lost(ino); len(lost) != 0 {
		t.Fatalf("lost %v", lost)
	}
}

// TestSyncAllAndClose: SyncAll writes every dirty inode; Close writes the
// rest, then MarkDirty fails with ErrClosed and nothing is left dirty.
func TestSyncAllAndClose(t *testing.T) {
	m := newMemFS(t)
	f := New(m, longExpire)
	var first, second []*Inode
	for k := range 10 {
		ino := f.NewInode(fmt.Sprint("a", k))
		first = append(first, ino)
		mustMark(t, f, m, ino, int64(k)*1000, 10000)
	}
	if err := f.SyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, ino := range first {
		if lost := m.lost(ino); len(lost) != 0 || ino.State() != 0 || m.usesOf(ino) != 0 {
			t.Fatalf("after SyncAll %v: lost %v state %b", ino.Owner(), lost, ino.State())
		}
	}
	for k := range 10 {
		ino := f.NewInode(fmt.Sprint("b", k))
		second = append(second, ino)
		mustMark(t, f, m, ino, 0, int64(k+1)*PageSize)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ino := range second {
		if lost := m.lost(ino); len(lost) != 0 || ino.State() != 0 || m.usesOf(ino) != 0 {
			t.Fatalf("after Close %v: lost %v state %b", ino.Owner(), lost, ino.State())
		}
	}
	if err := f.MarkDirty(context.Background(), second[0], 0, 1, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("MarkDirty after Close = %v", err)
	}
	if s := f.Stats(); s.DirtyBytes != 0 || s.DirtyInodes != 0 || s.PinnedInodes != 0 {
		t.Fatalf("stats after Close %+v", s)
	}
}

// TestCloseWakesThrottledWriter: a writer waiting for room is released
// with ErrClosed when the flusher closes.
func TestCloseWakesThrottledWriter(t *testing.T) {
	m := newMemFS(t)
	f := New(m, Options{DirtyExpire: time.Hour, Interval: time.Hour, DirtyLimitBytes: PageSize})
	ino := f.NewInode("f")
	block := make(chan struct{})
	entered := make(chan struct{}, 4)
	m.mu.Lock()
	m.block, m.entered = block, entered
	m.mu.Unlock()
	mustMark(t, f, m, ino, 0, PageSize)
	res := make(chan error)
	go func() { res <- f.MarkDirty(context.Background(), ino, PageSize, PageSize, nil) }()
	<-entered // the throttled writer kicked the flusher, which is now stuck
	closed := make(chan error)
	go func() { closed <- f.Close() }()
	if err := <-res; !errors.Is(err, ErrClosed) {
		t.Fatalf("throttled MarkDirty = %v, want ErrClosed", err)
	}
	m.mu.Lock()
	m.block = nil
	m.mu.Unlock()
	close(block)
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if lost := m.lost(ino); len(lost) != 0 || ino.State() != 0 {
		t.Fatalf("lost %v state %b", lost, ino.State())
	}
}

// TestTruncateDropsDirtyPages: truncation discards dirty pages wholly past
// the new size (accounting follows) and keeps the straddling page; a
// truncate to 0 leaves the pin for writeback to drop.
func TestTruncateDropsDirtyPages(t *testing.T) {
	m := newMemFS(t)
	f := New(m, longExpire)
	defer f.Close()
	ino := f.NewInode("f")
	mustMark(t, f, m, ino, 0, 10*PageSize)
	ino.Truncate(3*PageSize + 1)
	if got := ino.DirtyExtents(); len(got) != 1 || got[0] != (Extent{0, 4 * PageSize}) {
		t.Fatalf("after truncate %+v", got)
	}
	if ino.Size() != 3*PageSize+1 || f.Stats().DirtyBytes != 4*PageSize {
		t.Fatalf("size %d dirty %d", ino.Size(), f.Stats().DirtyBytes)
	}
	ino.Truncate(0)
	if ino.State() != PinningCacheWB || f.Stats().DirtyBytes != 0 || f.Stats().DirtyInodes != 0 {
		t.Fatalf("after truncate to 0: state %b stats %+v", ino.State(), f.Stats())
	}
	wbc := &Control{SyncMode: SyncAll}
	if err := WriteSingleInode(context.Background(), m, ino, wbc); err != nil {
		t.Fatal(err)
	}
	if !wbc.UnpinnedCacheWB || ino.State() != 0 || m.usesOf(ino) != 0 {
		t.Fatalf("pin not dropped: %v %b %d", wbc.UnpinnedCacheWB, ino.State(), m.usesOf(ino))
	}
}

// TestClearPinningAtEviction: the eviction path's test-and-clear reports
// the bit once, and clearing a pin left on a clean inode releases the
// inode's place in the MaxPinnedInodes bound.
func TestClearPinningAtEviction(t *testing.T) {
	m := newMemFS(t)
	f := New(m, longExpire)
	defer f.Close()
	a := f.NewInode("a")
	if !a.SetPinningCacheWB() || a.SetPinningCacheWB() {
		t.Fatal("SetPinningCacheWB is not test-and-set")
	}
	if !a.ClearPinningCacheWB() || a.ClearPinningCacheWB() {
		t.Fatal("ClearPinningCacheWB is not test-and-clear")
	}
	// Dirty a; inside the pin hook write it back first, so the pin lands
	// on a clean inode that still holds its place in the bound.
	m.write(a, 0, 1)
	err := f.MarkDirty(context.Background(), a, 0, 1, func() {
		if err := WriteSingleInode(context.Background(), m, a, &Control{SyncMode: SyncAll}); err != nil {
			t.Error(err)
		}
		m.pin(a)()
	})
	if err != nil {
		t.Fatal(err)
	}
	if s := f.Stats(); a.State() != PinningCacheWB || s.HeldInodes != 1 || s.PinnedInodes != 1 {
		t.Fatalf("before eviction: state %b stats %+v", a.State(), s)
	}
	if !a.ClearPinningCacheWB() {
		t.Fatal("eviction found no pin")
	}
	if s := f.Stats(); a.State() != 0 || s.HeldInodes != 0 || s.PinnedInodes != 0 {
		t.Fatalf("after eviction: state %b stats %+v", a.State(), s)
	}
}

// TestStartWriteback: an explicit request (a cache's pin-pressure hook)
// writes back and unpins inodes long before they expire.
func TestStartWriteback(t *testing.T) {
	m := newMemFS(t)
	f := New(m, longExpire)
	defer f.Close()
	ino := f.NewInode("f")
	mustMark(t, f, m, ino, 0, 3*PageSize)
	f.StartWriteback()
	eventually(t, "requested writeback", func() bool {
		return ino.State() == 0 && m.usesOf(ino) == 0 && len(m.lost(ino)) == 0
	})
}

// TestInvalidRangeRejected: negative offsets, empty ranges and ranges
// whose end overflows are errors and dirty nothing.
func TestInvalidRangeRejected(t *testing.T) {
	m := newMemFS(t)
	f := New(m, longExpire)
	defer f.Close()
	ino := f.NewInode("f")
	bad := [][2]int64{{-1, 10}, {0, 0}, {5, -3}, {1<<63 - 100, 50}, {1<<63 - 1, 1}}
	for _, r := range bad {
		if err := f.MarkDirty(context.Background(), ino, r[0], r[1], nil); err == nil {
			t.Errorf("Flusher.MarkDirty(%d, %d) accepted", r[0], r[1])
		}
		if err := ino.MarkDirty(r[0], r[1]); err == nil {
			t.Errorf("Inode.MarkDirty(%d, %d) accepted", r[0], r[1])
		}
	}
	if ino.State() != 0 || f.Stats().DirtyBytes != 0 {
		t.Fatalf("invalid ranges dirtied something: %b %+v", ino.State(), f.Stats())
	}
	if err := f.MarkDirty(context.Background(), NewInode("x"), 0, 1, nil); err == nil {
		t.Fatal("MarkDirty accepted an inode of no flusher")
	}
}

// TestRewriteAtLimitDoesNotWait: at the dirty limit, rewriting pages that
// are already dirty adds no memory and is admitted at once, while a new
// page waits.
func TestRewriteAtLimitDoesNotWait(t *testing.T) {
	m := newMemFS(t)
	block := make(chan struct{})
	m.block = block
	f := New(m, Options{DirtyExpire: time.Hour, Interval: time.Hour, DirtyLimitBytes: 4 * PageSize})
	ino := f.NewInode("f")
	mustMark(t, f, m, ino, 0, 4*PageSize)
	for range 10 {
		mustMark(t, f, m, ino, PageSize+7, 100) // inside a dirty page
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if err := f.MarkDirty(ctx, ino, 4*PageSize, 1, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("new page at the limit: %v, want to wait", err)
	}
	m.mu.Lock()
	m.block = nil
	m.mu.Unlock()
	close(block)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if lost := m.lost(ino); len(lost) != 0 {
		t.Fatalf("lost %v", lost)
	}
}
