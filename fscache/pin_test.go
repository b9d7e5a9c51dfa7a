package fscache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nfscache/nfscache/writeback"
)

// cacheFS is a writeback.Filesystem that writes dirty pages to a "server"
// buffer and to the cache, as a netfs writes locally modified data to both,
// and unpins in WriteInode. It fails the test if writeback finds the
// cookie unpinned or without an open backing file.
type cacheFS struct {
	t      testing.TB
	mu     sync.Mutex
	files  map[*writeback.Inode]*pinFile
	errors atomic.Int64
	// allowUnpinned accepts writeback of an inode whose pin hook has not
	// run yet (the Flusher.MarkDirty window); the range is discarded from
	// the cache instead of written.
	allowUnpinned bool
	unpinnedWB    atomic.Int64
}

type pinFile struct {
	ck     *Cookie
	pageMu sync.Mutex // guards page against a background flusher
	page   []byte     // the page cache: what the application wrote
	server []byte
}

func (fs *cacheFS) file(ino *writeback.Inode) *pinFile {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.files[ino]
}

func (fs *cacheFS) WritePages(ctx context.Context, ino *writeback.Inode, exts []writeback.Extent) (int64, error) {
	f := fs.file(ino)
	var written int64
	for _, e := range exts {
		end := min(e.End, int64(len(f.page)))
		if e.Off >= end {
			continue
		}
		f.pageMu.Lock()
		data := bytes.Clone(f.page[e.Off:end])
		f.pageMu.Unlock()
		copy(f.server[e.Off:end], data)
		if !f.ck.Pinned() {
			// Writeback ran between the dirtying and the pin (possible with
			// writeback.Flusher.MarkDirty, whose pin hook runs after the
			// pages are visible to the flusher). Writeback must not open
			// the backing file, so the cache's older copy is discarded.
			fs.unpinnedWB.Add(1)
			if !fs.allowUnpinned {
				fs.errors.Add(1)
				fs.t.Errorf("writeback of %q: cookie not pinned", f.ck.key)
			}
			if err := f.ck.DiscardRange(e.Off, end-e.Off); err != nil {
				return written, err
			}
			written += e.Len()
			continue
		}
		if !f.ck.HasOpenFile() {
			fs.errors.Add(1)
			fs.t.Errorf("writeback of %q: pinned cookie without an open backing file", f.ck.key)
		}
		if _, err := f.ck.WriteAt(data, e.Off); err != nil {
			// The cache stepped aside: what it holds for this range is now
			// older than the server; discard it (the pin stays).
			if !errors.Is(err, ErrCacheUnavailable) {
				return written, err
			}
			if err := f.ck.Invalidate(f.ck.Aux(), f.ck.Size()); err != nil {
				return written, err
			}
		}
		written += e.Len()
	}
	return written, nil
}

func (fs *cacheFS) WriteInode(ctx context.Context, ino *writeback.Inode, wbc *writeback.Control) error {
	return UnpinWriteback(wbc, fs.file(ino).ck)
}

func newPinFile(t testing.TB, fs *cacheFS, v *Volume, name string, size int) (*writeback.Inode, *pinFile) {
	ino := writeback.NewInode(name)
	ino.ExtendSize(int64(size))
	f := &pinFile{ck: mustCookie(t, v, name, "v1", int64(size)), page: make([]byte, size), server: make([]byte, size)}
	fs.mu.Lock()
	fs.files[ino] = f
	fs.mu.Unlock()
	return ino, f
}

// dirty writes data into the page cache, marks it dirty and pins.
func dirty(t testing.TB, ino *writeback.Inode, f *pinFile, off int64, data []byte) {
	t.Helper()
	f.pageMu.Lock()
	copy(f.page[off:], data)
	f.pageMu.Unlock()
	ino.MarkDirty(off, int64(len(data)))
	if err := SetPageDirty(ino, f.ck); err != nil {
		t.Fatalf("SetPageDirty: %v", err)
	}
}

func syncInode(t testing.TB, fs *cacheFS, ino *writeback.Inode) {
	t.Helper()
	wbc := &writeback.Control{SyncMode: writeback.SyncAll}
	if err := writeback.WriteSingleInode(context.Background(), fs, ino, wbc); err != nil {
		t.Fatalf("WriteSingleInode: %v", err)
	}
}

// TestPinHoldsFD: the first SetPageDirty pins (one use, fd opened now); a
// second does not take another use; LRU pressure never closes a pinned fd;
// writeback writes to the cache without reopening and then unpins.
func TestPinHoldsFD(t *testing.T) {
	opts := testOptions()
	opts.MaxOpenFiles, opts.MaxPinned = 3, 2
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	fs := &cacheFS{t: t, files: map[*writeback.Inode]*pinFile{}}
	ino, f := newPinFile(t, fs, v, "pinned", 16384)

	dirty(t, ino, f, 0, pattern(1, 0, 5000))
	if ino.State()&writeback.PinningCacheWB == 0 || f.ck.Users() != 1 || !f.ck.HasOpenFile() {
		t.Fatalf("after first SetPageDirty: state %v users %d open %v", ino.State(), f.ck.Users(), f.ck.HasOpenFile())
	}
	dirty(t, ino, f, 8192, pattern(1, 8192, 100))
	if f.ck.Users() != 1 {
		t.Fatalf("second SetPageDirty took another use: %d", f.ck.Users())
	}
	// Churn many other cookies through the remaining fd slots.
	for i := 0; i < 50; i++ {
		ck := mustCookie(t, v, fmt.Sprint("other", i), "x", 0)
		ck.Use(true)
		if _, err := ck.WriteAt(pattern(2, 0, 512), 0); err != nil {
			t.Fatal(err)
		}
		ck.Unuse(nil, -1)
		if !f.ck.HasOpenFile() {
			t.Fatal("pinned cookie lost its fd")
		}
		if n := backingFDs(t, c); n > 3 {
			t.Fatalf("%d backing fds, bound 3", n)
		}
	}
	opens := c.Stats().Opens
	syncInode(t, fs, ino)
	if ino.State()&(writeback.PinningCacheWB|writeback.DirtyPages) != 0 || f.ck.Users() != 0 || f.ck.Pinned() {
		t.Fatalf("after writeback: state %v users %d", ino.State(), f.ck.Users())
	}
	st := c.Stats()
	if st.Opens != opens || st.WritebackReopens != 0 || st.Pinned != 0 {
		t.Fatalf("writeback opened files: %+v", st)
	}
	if !bytes.Equal(f.server, f.page) {
		t.Fatal("server differs from page cache after writeback")
	}
	f.ck.Use(false)
	if err := checkRead(f.ck, 0, f.page[:5000]); err != nil {
		t.Fatalf("written-back data not in cache: %v", err)
	}
	f.ck.Unuse(nil, -1)
	// Unpinned now: its fd is an ordinary LRU entry again and can go.
	for i := 0; i < 5; i++ {
		ck := mustCookie(t, v, fmt.Sprint("more", i), "x", 0)
		ck.Use(true)
		ck.WriteAt([]byte("x"), 0)
		ck.Unuse(nil, -1)
	}
	if f.ck.HasOpenFile() {
		t.Fatal("unpinned, unused cookie kept its fd past LRU eviction")
	}
}

// TestClearInodeWriteback: a pin still held at eviction is dropped, with
// the aux and the inode's size recorded.
func TestClearInodeWriteback(t *testing.T) {
	c := openTest(t, t.TempDir(), testOptions())
	v := mustVolume(t, c, "vol")
	fs := &cacheFS{t: t, files: map[*writeback.Inode]*pinFile{}}
	ino, f := newPinFile(t, fs, v, "f", 4096)
	// A lingering pin on a clean inode (writeback cleaned the page between
	// the dirtying and the pin).
	if err := SetPageDirty(ino, f.ck); err != nil {
		t.Fatal(err)
	}
	ino.ExtendSize(9999)
	if err := ClearInodeWriteback(ino, f.ck, []byte("v9")); err != nil {
		t.Fatal(err)
	}
	if f.ck.Users() != 0 || f.ck.Pinned() || ino.State()&writeback.PinningCacheWB != 0 {
		t.Fatalf("pin not dropped: users %d", f.ck.Users())
	}
	if string(f.ck.Aux()) != "v9" || f.ck.Size() != 9999 {
		t.Fatalf("aux %q size %d", f.ck.Aux(), f.ck.Size())
	}
	// Without a pin it is a no-op.
	if err := ClearInodeWriteback(ino, f.ck, []byte("v10")); err != nil || string(f.ck.Aux()) != "v9" {
		t.Fatalf("second ClearInodeWriteback: %v %q", err, f.ck.Aux())
	}
	if err := f.ck.Relinquish(false); err != nil {
		t.Fatal(err)
	}
}

// TestPinPressure: at MaxPinned the dirtier calls PinPressure and waits
// until writeback unpins a cookie, instead of opening another file.
func TestPinPressure(t *testing.T) {
	opts := testOptions()
	opts.MaxOpenFiles, opts.MaxPinned = 3, 2
	fs := &cacheFS{t: t, files: map[*writeback.Inode]*pinFile{}}
	var inos []*writeback.Inode
	var mu sync.Mutex
	var pressure atomic.Int32
	release := make(chan struct{})
	opts.PinPressure = func() {
		if pressure.Add(1) == 1 {
			<-release // hold the dirtier until the test has looked
		}
		mu.Lock()
		victim := inos[0]
		mu.Unlock()
		syncInode(t, fs, victim)
	}
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	for i := 0; i < 3; i++ {
		ino, _ := newPinFile(t, fs, v, fmt.Sprint("f", i), 4096)
		inos = append(inos, ino)
	}
	dirty(t, inos[0], fs.file(inos[0]), 0, pattern(1, 0, 100))
	dirty(t, inos[1], fs.file(inos[1]), 0, pattern(1, 0, 100))
	done := make(chan struct{})
	go func() {
		defer close(done)
		f := fs.file(inos[2])
		copy(f.page, pattern(3, 0, 100))
		inos[2].MarkDirty(0, 100)
		if err := SetPageDirty(inos[2], f.ck); err != nil {
			t.Errorf("SetPageDirty: %v", err)
		}
	}()
	for pressure.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	if st := c.Stats(); st.Pinned != 2 || st.OpenFiles > 3 || fs.file(inos[2]).ck.Pinned() {
		t.Fatalf("third pin went ahead past MaxPinned: %+v", st)
	}
	close(release)
	<-done
	st := c.Stats()
	if st.Pinned != 2 || st.PinWaits != 1 || !fs.file(inos[2]).ck.Pinned() || fs.file(inos[0]).ck.Pinned() {
		t.Fatalf("after pressure: %+v", st)
	}
	if !bytes.Equal(fs.file(inos[0]).server, fs.file(inos[0]).page) {
		t.Fatal("forced writeback lost data")
	}
}

// TestFlusherThrottlesPins runs the real writeback.Flusher with
// MaxPinnedInodes = Cache.MaxPinned(): many writers dirty more files than
// there are fd slots; the flusher throttles them and forces writeback, so
// pins never exceed the bound, SetPageDirty never has to wait, open
// backing fds stay within MaxOpenFiles, writeback never reopens a file and
// every byte reaches the server.
func TestFlusherThrottlesPins(t *testing.T) {
	opts := testOptions()
	opts.MaxOpenFiles, opts.MaxPinned = 6, 4
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	fs := &cacheFS{t: t, files: map[*writeback.Inode]*pinFile{}, allowUnpinned: true}
	fl := writeback.New(fs, writeback.Options{DirtyExpire: 20 * time.Millisecond, MaxPinnedInodes: c.MaxPinned()})
	defer fl.Close()
	const files, size = 24, 16 << 10
	var inos []*writeback.Inode
	for i := 0; i < files; i++ {
		ino := fl.NewInode(fmt.Sprint("f", i))
		ino.ExtendSize(size)
		f := &pinFile{ck: mustCookie(t, v, fmt.Sprint("f", i), "v1", size), page: make([]byte, size), server: make([]byte, size)}
		fs.mu.Lock()
		fs.files[ino] = f
		fs.mu.Unlock()
		inos = append(inos, ino)
	}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 60; i++ {
				ino := inos[(w*7+i*5)%files]
				f := fs.file(ino)
				off := int64((i * 1000) % (size - 1000))
				f.pageMu.Lock()
				copy(f.page[off:], pattern(byte(w+i), off, 1000))
				f.pageMu.Unlock()
				var pinErr error
				err := fl.MarkDirty(context.Background(), ino, off, 1000, func() { pinErr = SetPageDirty(ino, f.ck) })
				if err != nil || pinErr != nil {
					t.Errorf("MarkDirty: %v %v", err, pinErr)
					return
				}
				if st := c.Stats(); st.Pinned > int64(opts.MaxPinned) || st.OpenFiles > int64(opts.MaxOpenFiles) {
					t.Errorf("pinned %d open %d", st.Pinned, st.OpenFiles)
				}
			}
		}(w)
	}
	wg.Wait()
	if err := fl.SyncAll(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, ino := range inos {
		f := fs.file(ino)
		if !bytes.Equal(f.page, f.server) {
			t.Fatalf("%v: dirty data lost", ino.Owner())
		}
		if f.ck.Users() != 0 || ino.State()&writeback.PinningCacheWB != 0 {
			t.Fatalf("%v: users %d state %v after SyncAll", ino.Owner(), f.ck.Users(), ino.State())
		}
	}
	st := c.Stats()
	if st.Pinned > int64(opts.MaxPinned) || st.WritebackReopens != 0 || st.PeakOpenFiles > int64(opts.MaxOpenFiles) || st.Pins == 0 {
		t.Fatalf("stats: %+v", st)
	}
	if n := backingFDs(t, c); n > opts.MaxOpenFiles {
		t.Fatalf("%d backing fds", n)
	}
	// Every cached byte is the server's (discarded ranges included).
	for _, ino := range inos {
		f := fs.file(ino)
		f.ck.Use(false)
		rs, _ := f.ck.Present(0, size)
		for _, r := range rs {
			if err := checkRead(f.ck, r.Off, f.server[r.Off:r.End()]); err != nil {
				t.Fatalf("%v: cache differs from server: %v", ino.Owner(), err)
			}
		}
		f.ck.Unuse(nil, -1)
	}
	t.Logf("flusher: %+v; cache pins %d, peak fds %d; writebacks before the pin hook ran: %d",
		fl.Stats(), st.Pins, st.PeakOpenFiles, fs.unpinnedWB.Load())
}

// TestCullSparesPinned: a pinned (dirty) cookie with no open users is
// never culled, however far over budget the cache is; once written back
// and unpinned it is cullable like any other.
func TestCullSparesPinned(t *testing.T) {
	opts := testOptions()
	opts.MaxBytes = 33 << 10 // 32 KiB used: 3% free, below bcull (5%), above bstop (1%)
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	fs := &cacheFS{t: t, files: map[*writeback.Inode]*pinFile{}}
	ino, f := newPinFile(t, fs, v, "dirty", 32<<10)
	f.ck.Use(true)
	if _, err := f.ck.WriteAt(pattern(1, 0, 32<<10), 0); err != nil {
		t.Fatal(err)
	}
	f.ck.Unuse(nil, -1)
	dirty(t, ino, f, 0, pattern(2, 0, 100)) // only the pin's use remains
	if n, err := c.Cull(); err != nil || n != 0 {
		t.Fatalf("culled %d (%v) with the only object pinned", n, err)
	}
	if r, _ := f.ck.Present(0, 1<<20); len(r) == 0 {
		t.Fatal("pinned object lost its data")
	}
	syncInode(t, fs, ino)
	if n, err := c.Cull(); n != 1 {
		t.Fatalf("unpinned object not culled: %d %v users %d state %v", n, err, f.ck.Users(), ino.State())
	}
}
