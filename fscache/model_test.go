package fscache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/nfscache/nfscache/writeback"
)

// modelFile is one file of the model: its inode, cookie and the model's
// expectations. mu serializes the steps on the file so that the checks
// after each step see no half-done operation.
type modelFile struct {
	mu        sync.Mutex
	name      string
	ino       *writeback.Inode
	f         *pinFile
	openUsers int
	evictions int
}

// TestModel is a randomized model-based test: goroutines dirty files
// (SetPageDirty with real writeback.Inodes), write them back with
// writeback.WriteSingleInode, open and close them (Use/Unuse), read and
// fill the cache, evict inodes (ClearInodeWriteback + Relinquish +
// re-acquire), invalidate and cull, while fds are bounded and pins are
// bounded below fds. After every step it checks the stepped file:
// use count == open users + (1 if pinned); pinned ⇒ fd held; no dirty byte
// lost (every byte the server lacks is dirty); every cached byte equals the
// server's. Every few steps, with all goroutines quiescent, it checks the
// open backing fds in /proc/self/fd ≤ MaxOpenFiles and that writeback never
// reopened a backing file.
func TestModel(t *testing.T) {
	const (
		nFiles     = 24
		fileSize   = 32 << 10
		goroutines = 6
		maxOpen    = 8
		maxPinned  = 5
	)
	steps := 300
	if testing.Short() {
		steps = 100
	}
	var files []*modelFile
	fs := &cacheFS{t: t, files: map[*writeback.Inode]*pinFile{}}
	opts := testOptions()
	opts.MaxOpenFiles, opts.MaxPinned = maxOpen, maxPinned
	opts.MaxBytes = nFiles * fileSize / 2 // culling has work to do
	opts.PinPressure = func() {
		// balance_dirty_pages: write back some pinned inode nobody is
		// working on right now.
		for _, mf := range files {
			if !mf.mu.TryLock() {
				continue
			}
			if mf.ino.State()&writeback.PinningCacheWB != 0 {
				syncInode(t, fs, mf.ino)
				mf.mu.Unlock()
				return
			}
			mf.mu.Unlock()
		}
	}
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "srv:/export")
	for i := 0; i < nFiles; i++ {
		name := fmt.Sprint("file", i)
		ino, f := newPinFile(t, fs, v, name, fileSize)
		files = append(files, &modelFile{name: name, ino: ino, f: f})
	}

	var quiesce sync.RWMutex // steps hold it shared; global checks exclusively
	checkFile := func(mf *modelFile) error {
		pinned := mf.ino.State()&writeback.PinningCacheWB != 0
		ck := mf.f.ck
		want := mf.openUsers
		if pinned {
			want++
		}
		if got := ck.Users(); got != want {
			return fmt.Errorf("%s: use count %d, want open users %d + pinned %v", mf.name, got, mf.openUsers, pinned)
		}
		if ck.Pinned() != pinned {
			return fmt.Errorf("%s: cookie pinned %v, inode bit %v", mf.name, ck.Pinned(), pinned)
		}
		if pinned && !ck.HasOpenFile() {
			return fmt.Errorf("%s: pinned cookie without fd", mf.name)
		}
		// No dirty byte lost: a byte the server lacks must be dirty.
		dirtyExt := mf.ino.DirtyExtents()
		for i := range mf.f.page {
			if mf.f.page[i] == mf.f.server[i] {
				continue
			}
			ok := false
			for _, e := range dirtyExt {
				if int64(i) >= e.Off && int64(i) < e.End {
					ok = true
				}
			}
			if !ok {
				return fmt.Errorf("%s: byte %d differs from server and is not dirty", mf.name, i)
			}
		}
		// Cached bytes equal the server's.
		if err := ck.Use(false); err != nil {
			return err
		}
		defer ck.Unuse(nil, -1)
		rs, err := ck.Present(0, fileSize)
		if err != nil {
			return err
		}
		for _, r := range rs {
			buf := make([]byte, r.Len)
			if _, err := ck.ReadAt(buf, r.Off); err != nil {
				return fmt.Errorf("%s: read present %v: %w", mf.name, r, err)
			}
			if !bytes.Equal(buf, mf.f.server[r.Off:r.End()]) {
				return fmt.Errorf("%s: cached %v differs from server", mf.name, r)
			}
		}
		return nil
	}
	checkGlobal := func() error {
		if n := backingFDs(t, c); n > maxOpen {
			return fmt.Errorf("%d backing fds open, MaxOpenFiles %d", n, maxOpen)
		}
		st := c.Stats()
		if st.OpenFiles > maxOpen || st.PeakOpenFiles > maxOpen {
			return fmt.Errorf("open files %d peak %d", st.OpenFiles, st.PeakOpenFiles)
		}
		if st.WritebackReopens != 0 {
			return fmt.Errorf("writeback reopened %d backing files", st.WritebackReopens)
		}
		pinned := 0
		for _, mf := range files {
			if mf.ino.State()&writeback.PinningCacheWB != 0 {
				pinned++
			}
		}
		if int64(pinned) != st.Pinned || pinned > maxPinned {
			return fmt.Errorf("pinned inodes %d, cache says %d, bound %d", pinned, st.Pinned, maxPinned)
		}
		return nil
	}

	step := func(r *rand.Rand, mf *modelFile) error {
		ck := mf.f.ck
		switch op := r.IntN(100); {
		case op < 30: // dirty
			off := r.Int64N(fileSize)
			n := 1 + r.Int64N(min(8192, fileSize-off))
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(r.Uint32())
			}
			copy(mf.f.page[off:], data)
			mf.ino.MarkDirty(off, n)
			return SetPageDirty(mf.ino, ck)
		case op < 45: // writeback
			wbc := &writeback.Control{SyncMode: writeback.SyncAll}
			if r.IntN(3) == 0 { // a partial range
				wbc.RangeStart = r.Int64N(fileSize)
				wbc.RangeEnd = wbc.RangeStart + r.Int64N(fileSize)
			}
			return writeback.WriteSingleInode(ctxBG, fs, mf.ino, wbc)
		case op < 55: // open
			if mf.openUsers < 2 {
				if err := ck.Use(false); err != nil {
					return err
				}
				mf.openUsers++
			}
		case op < 65: // close
			if mf.openUsers > 0 {
				if err := ck.Unuse(nil, -1); err != nil {
					return err
				}
				mf.openUsers--
			}
		case op < 78: // read, and fill what missed from the server
			if err := ck.Use(false); err != nil {
				return err
			}
			defer ck.Unuse(nil, -1)
			off := r.Int64N(fileSize)
			buf := make([]byte, 1+r.Int64N(min(16384, fileSize-off)))
			gen := ck.Generation()
			n, err := ck.ReadAt(buf, off)
			if n > 0 && !bytes.Equal(buf[:n], mf.f.server[off:off+int64(n)]) {
				return fmt.Errorf("%s: read [%d,+%d) returned wrong data", mf.name, off, n)
			}
			if isNotCached(err) {
				miss := off + int64(n)
				fill := mf.f.server[miss : off+int64(len(buf))]
				if _, err := ck.WriteAtGeneration(fill, miss, gen); err != nil && !errorsIsAny(err, ErrCacheUnavailable) {
					return err
				}
			}
		case op < 84: // evict the inode (only when nobody has it open)
			if mf.openUsers > 0 {
				return nil
			}
			// evict() writes dirty pages back before clear_inode; a pin
			// can still be held then (the lingering pin below), which
			// ClearInodeWriteback drops.
			syncInode(t, fs, mf.ino)
			if err := ClearInodeWriteback(mf.ino, ck, ck.Aux()); err != nil {
				return err
			}
			if err := ck.Relinquish(r.IntN(4) == 0); err != nil {
				return err
			}
			fs.mu.Lock()
			delete(fs.files, mf.ino)
			fs.mu.Unlock()
			ino := writeback.NewInode(mf.name)
			ino.ExtendSize(fileSize)
			nck, err := v.AcquireCookie([]byte(mf.name), []byte("v1"), fileSize)
			if err != nil {
				return err
			}
			mf.f.ck = nck
			mf.ino = ino
			fs.mu.Lock()
			fs.files[ino] = mf.f
			fs.mu.Unlock()
			mf.evictions++
		case op < 88: // lingering pin on a clean inode
			if mf.ino.State()&writeback.DirtyPages == 0 {
				return SetPageDirty(mf.ino, ck)
			}
		case op < 94: // invalidate (the cache's copy only; server unchanged)
			return ck.Invalidate(ck.Aux(), fileSize)
		default:
			_, err := c.Cull()
			return err
		}
		return nil
	}

	var wg sync.WaitGroup
	errc := make(chan error, goroutines)
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 99))
			for i := 0; i < steps; i++ {
				if i%25 == 0 && seed == 0 {
					quiesce.Lock()
					err := checkGlobal()
					quiesce.Unlock()
					if err != nil {
						errc <- err
						return
					}
				}
				quiesce.RLock()
				mf := files[r.IntN(len(files))]
				mf.mu.Lock()
				err := step(r, mf)
				if err == nil {
					err = checkFile(mf)
				}
				mf.mu.Unlock()
				quiesce.RUnlock()
				if err != nil {
					errc <- err
					return
				}
			}
		}(uint64(g))
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if err := checkGlobal(); err != nil {
		t.Fatal(err)
	}
	// Final writeback: the server holds every byte written.
	for _, mf := range files {
		syncInode(t, fs, mf.ino)
		if !bytes.Equal(mf.f.page, mf.f.server) {
			t.Fatalf("%s: dirty data lost", mf.name)
		}
		if err := checkFile(mf); err != nil {
			t.Fatal(err)
		}
		if mf.f.ck.Users() != mf.openUsers {
			t.Fatalf("%s: users %d after final writeback", mf.name, mf.f.ck.Users())
		}
	}
	st := c.Stats()
	t.Logf("stats:\n%s", st)
	if st.Pins == 0 || st.LRUEvictions == 0 || st.Invalidations == 0 || st.CullPasses == 0 || st.ReadHits == 0 {
		t.Fatalf("model did not exercise everything: %+v", st)
	}
	if fs.errors.Load() != 0 {
		t.Fatal("writeback found an unpinned cookie or a closed fd")
	}
}
