package fscache

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSyncDirtyRacesRelinquish: SyncDirty fdatasyncs a cookie's file while
// the cookie is relinquished. The fdatasync must never run on a closed fd
// (EBADF, or under -race a DATA RACE between Fd and Close): SyncDirty holds
// the cookie's io lock across it, and Relinquish waits for that.
func TestSyncDirtyRacesRelinquish(t *testing.T) {
	c := openTest(t, t.TempDir(), testOptions())
	v := mustVolume(t, c, "vol")
	const rounds = 200
	for i := range rounds {
		ck := mustCookie(t, v, "fh", "a", 0)
		if err := ck.Use(true); err != nil {
			t.Fatal(err)
		}
		if _, err := ck.WriteAt(pattern(1, 0, 4096), 0); err != nil {
			t.Fatal(err)
		}
		if err := ck.MarkDirty(0, 4096); err != nil {
			t.Fatal(err)
		}
		ck.Unuse(nil, -1)
		var wg sync.WaitGroup
		var syncErr error
		wg.Go(func() { syncErr = c.SyncDirty() })
		if i%2 == 0 {
			pause()
		}
		if err := ck.Relinquish(false); err != nil {
			t.Fatalf("round %d: Relinquish: %v", i, err)
		}
		wg.Wait()
		if syncErr != nil {
			t.Fatalf("round %d: SyncDirty racing Relinquish: %v", i, syncErr)
		}
	}
}

// TestConcurrentSyncDirtyWaits: a SyncDirty that starts while another one
// is fdatasyncing the only dirty file must not return (report durable)
// before that fdatasync has finished.
func TestConcurrentSyncDirtyWaits(t *testing.T) {
	opts := testOptions()
	entered := make(chan struct{})
	release := make(chan struct{})
	var first atomic.Bool
	opts.beforeFdatasync = func([]byte) {
		if first.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
	}
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "fh", "a", 0)
	ck.Use(true)
	ck.WriteAt(pattern(1, 0, 4096), 0)
	if err := ck.MarkDirty(0, 4096); err != nil {
		t.Fatal(err)
	}
	var released atomic.Bool
	firstDone := make(chan error, 1)
	go func() { firstDone <- c.SyncDirty() }()
	<-entered // the first call has taken the work and is in its fdatasync
	secondDone := make(chan error, 1)
	var secondReturnedEarly atomic.Bool
	go func() {
		err := c.SyncDirty()
		if !released.Load() {
			secondReturnedEarly.Store(true)
		}
		secondDone <- err
	}()
	// Give the second call time to return early if it were going to.
	time.Sleep(50 * time.Millisecond)
	released.Store(true)
	close(release)
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
	if err := <-secondDone; err != nil {
		t.Fatal(err)
	}
	if secondReturnedEarly.Load() {
		t.Fatal("second SyncDirty returned while the first was still in its fdatasync")
	}
}

// TestSyncDirtySkipsCleanFiles: once ClearWrittenDirty (or ClearDirty)
// leaves a cookie no dirty range, SyncDirty does not fdatasync its file
// (its bytes are stable on the server) but still makes the index durable;
// a cookie with dirty ranges left is still fdatasync'd, and a mark after
// the clear makes the file due again.
func TestSyncDirtySkipsCleanFiles(t *testing.T) {
	opts := testOptions()
	var mu sync.Mutex
	synced := map[string]int{}
	opts.beforeFdatasync = func(key []byte) {
		mu.Lock()
		synced[string(key)]++
		mu.Unlock()
	}
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	clean := mustCookie(t, v, "clean", "a", 0)
	partly := mustCookie(t, v, "partly", "a", 0)
	for _, ck := range []*Cookie{clean, partly} {
		ck.Use(true)
		ck.WriteAt(pattern(1, 0, 8192), 0)
		if err := ck.MarkDirty(0, 8192); err != nil {
			t.Fatal(err)
		}
	}
	if err := clean.ClearWrittenDirty(0, 8192, clean.DirtySeq(), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if err := partly.ClearWrittenDirty(0, 4096, partly.DirtySeq(), []byte("v")); err != nil {
		t.Fatal(err)
	}
	before := c.Stats().DirtySyncs
	if err := c.SyncDirty(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	got := map[string]int{"clean": synced["clean"], "partly": synced["partly"]}
	mu.Unlock()
	if got["clean"] != 0 || got["partly"] != 1 {
		t.Fatalf("fdatasyncs after clearing: %v, want clean 0, partly 1", got)
	}
	if c.Stats().DirtySyncs != before+1 {
		t.Fatal("SyncDirty skipped the index sync")
	}
	if err := clean.MarkDirty(0, 100); err != nil {
		t.Fatal(err)
	}
	if err := c.SyncDirty(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := synced["clean"]
	mu.Unlock()
	if n != 1 {
		t.Fatalf("clean cookie fdatasync'd %d times after a new mark, want 1", n)
	}
}
