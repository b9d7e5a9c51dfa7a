package billyfs

import (
	"container/list"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/fscache"
	"github.com/nfscache/nfscache/writeback"
)

// inode is one remote regular file known to this FS: its handle, the
// attributes last seen (including the effect of our own writes), its local
// size, its fscache cookie and its writeback state.
//
// Concurrency: opens and elem are guarded by state.mu; the fields under mu
// by mu. fillMu orders cache fills from the server, revalidation's
// truncate/invalidate and truncate (exclusive) against local writes
// (shared), so a fill never overwrites data written locally and no write
// acknowledged is cut or dropped by a decision made without it. revalMu
// serializes revalidations at open. Order: revalMu → fillMu → mu.
type inode struct {
	s  *state
	fh client.Handle
	wb *writeback.Inode // nil without a cache
	ck *fscache.Cookie  // nil without a cache, or when the cache refused the cookie

	ready chan struct{} // closed when wb/ck are set

	fillMu  sync.RWMutex
	revalMu sync.Mutex

	// guarded by state.mu
	opens   int
	writers int           // open Files with write access
	elem    *list.Element // in state.idle while opens == 0

	mu         sync.Mutex
	attr       client.Attr // server attributes as last known
	size       int64       // local file size (grows with our writes)
	needCommit bool        // data written through (UNSTABLE) not yet committed
	bypass     bool        // the cache stepped aside: I/O goes to the server until the last close
	gen        uint64      // bumped by every local change (invalidates read-ahead buffers)
	removed    bool        // we removed the file
}

// aux is the cookie's coherency data: size, mtime and ctime (what the Linux
// NFS client keeps in struct nfs_fscache_inode_auxdata).
func aux(a client.Attr) []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint64(b[0:], a.Size)
	binary.BigEndian.PutUint64(b[8:], uint64(a.Mtime.UnixNano()))
	binary.BigEndian.PutUint64(b[16:], uint64(a.Ctime.UnixNano()))
	return b
}

func sameVersion(a, b client.Attr) bool {
	return a.Size == b.Size && a.Mtime.Equal(b.Mtime) && a.Ctime.Equal(b.Ctime)
}

// getInode returns the inode for fh with one open counted, creating it (and
// acquiring its cookie) if needed, and revalidates it against attr, fresh
// from the server (close-to-open).
func (s *state) getInode(ctx context.Context, fh client.Handle, attr client.Attr, writable bool) (*inode, error) {
	w := 0
	if writable {
		w = 1
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errFSClosed
	}
	ino := s.inodes[string(fh)]
	if ino != nil {
		otherWriters := ino.writers > 0
		ino.opens++
		ino.writers += w
		if ino.elem != nil {
			s.idle.Remove(ino.elem)
			ino.elem = nil
		}
		s.mu.Unlock()
		<-ino.ready
		if err := ino.revalidate(ctx, attr, otherWriters); err != nil {
			s.putInode(ino, writable)
			return nil, err
		}
		return ino, nil
	}
	ino = &inode{s: s, fh: fh, ready: make(chan struct{}), opens: 1, writers: w, attr: attr, size: int64(attr.Size)}
	s.inodes[string(fh)] = ino
	s.mu.Unlock()
	if s.vol != nil {
		ino.wb = s.flusher.NewInode(ino)
		ino.wb.ExtendSize(int64(attr.Size))
		for try := 0; ; try++ {
			ck, err := s.vol.AcquireCookie([]byte(fh), aux(attr), int64(attr.Size))
			if err == nil {
				ino.ck = ck
				break
			}
			// An evicted inode of the same handle may still be
			// relinquishing its cookie.
			if !errors.Is(err, fscache.ErrAlreadyAcquired) || try >= 50 {
				s.log.Warn("billyfs: no cache cookie, file goes straight to the server", "handle", fh.String(), "err", err)
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	close(ino.ready)
	return ino, nil
}

// putInode drops an open; an inode without opens goes to the idle list and
// the oldest idle inodes beyond Options.MaxInodes are evicted.
func (s *state) putInode(ino *inode, writable bool) {
	s.mu.Lock()
	ino.opens--
	if writable {
		ino.writers--
	}
	last := ino.opens == 0 && s.inodes[string(ino.fh)] == ino
	if last {
		ino.elem = s.idle.PushBack(ino)
	}
	s.mu.Unlock()
	ino.mu.Lock()
	removed := ino.removed
	ino.mu.Unlock()
	if last && removed {
		// The last close of a file we removed while it was open: its
		// cached data can go now.
		s.forgetInode(ino.fh)
	}
	s.evictIdle()
}

// evictIdle is inode eviction (prune_icache_sb → evict →
// fscache_clear_inode_writeback → relinquish): the least recently used
// idle inodes beyond MaxInodes give up their cookies, keeping their cached
// data (Relinquish without retire; the next open re-acquires the cookie
// with the coherency data it revalidated). Inodes open, dirty or pinned
// for writeback are never evicted: an idle dirty one goes to the back of
// the list (writeback will clean it) and the next is looked at, each idle
// inode once per call.
func (s *state) evictIdle() {
	s.mu.Lock()
	budget := s.idle.Len()
	s.mu.Unlock()
	for ; budget > 0; budget-- {
		s.mu.Lock()
		if len(s.inodes) <= s.opts.MaxInodes || s.idle.Len() == 0 {
			s.mu.Unlock()
			return
		}
		ino := s.idle.Remove(s.idle.Front()).(*inode)
		ino.elem = nil
		s.mu.Unlock()
		if ino.dirty() {
			s.mu.Lock()
			if ino.opens == 0 && ino.elem == nil && s.inodes[string(ino.fh)] == ino {
				ino.elem = s.idle.PushBack(ino)
			}
			s.mu.Unlock()
			continue
		}
		s.mu.Lock()
		if ino.opens > 0 || ino.elem != nil || s.inodes[string(ino.fh)] != ino {
			s.mu.Unlock()
			continue
		}
		delete(s.inodes, string(ino.fh))
		s.mu.Unlock()
		if err := ino.release(false, false); err != nil {
			s.log.Warn("billyfs: evicting inode", "handle", ino.fh.String(), "err", err)
		}
	}
}

// forgetInode is called after we removed fh: dirty data of it is dropped
// and, if no file has it open, its cached data retired.
func (s *state) forgetInode(fh client.Handle) {
	s.forgetAttr(fh)
	s.mu.Lock()
	ino := s.inodes[string(fh)]
	if ino == nil {
		s.mu.Unlock()
		s.clnt.Forget(fh)
		return
	}
	idle := ino.opens == 0
	if idle {
		delete(s.inodes, string(fh))
		if ino.elem != nil {
			s.idle.Remove(ino.elem)
			ino.elem = nil
		}
	}
	s.mu.Unlock()
	<-ino.ready
	ino.mu.Lock()
	ino.removed = true
	ino.needCommit = false
	ino.mu.Unlock()
	if ino.wb != nil {
		// truncate_inode_pages: the file is gone, its dirty pages too.
		ino.wb.Truncate(0)
	}
	if idle {
		if err := ino.release(true, false); err != nil {
			s.log.Warn("billyfs: retiring removed file", "handle", fh.String(), "err", err)
		}
		s.clnt.Forget(fh)
	}
}

// release gives up the inode's cookie (retiring its data if retire). With
// force, cache uses still held by open files are dropped too (FS.Close).
func (ino *inode) release(retire, force bool) error {
	<-ino.ready
	if ino.ck == nil {
		return nil
	}
	ino.mu.Lock()
	a, size := aux(ino.attr), ino.size
	ino.mu.Unlock()
	var errs []error
	if ino.wb != nil {
		errs = append(errs, fscache.ClearInodeWriteback(ino.wb, ino.ck, a))
	}
	if force {
		for ino.ck.Users() > 0 {
			if err := ino.ck.Unuse(a, size); err != nil {
				break
			}
		}
	}
	errs = append(errs, ino.ck.Relinquish(retire))
	return errors.Join(errs...)
}

// unuseCookie drops an open File's cookie use (fscache_unuse_cookie in
// nfs_release), recording the inode's attributes and local size as the
// cookie's coherency data. Unuse cuts the object — its present data and
// its dirty records — to the size given, so the size must count every
// write already in the cache: fillMu is held exclusively from sampling it
// to the Unuse, and a concurrent cached write (which extends the object
// and the local size under fillMu shared) is wholly before or after.
func (ino *inode) unuseCookie() error {
	ino.fillMu.Lock()
	defer ino.fillMu.Unlock()
	ino.mu.Lock()
	a, size := aux(ino.attr), ino.size
	ino.mu.Unlock()
	runHook(ino.s.hooks.closeUnuse)
	return ino.ck.Unuse(a, size)
}

// dirty reports whether the inode holds data not yet on the server's stable
// storage.
func (ino *inode) dirty() bool {
	<-ino.ready
	ino.mu.Lock()
	nc := ino.needCommit
	ino.mu.Unlock()
	if nc {
		return true
	}
	return ino.wb != nil && ino.wb.State()&(writeback.DirtyPages|writeback.PinningCacheWB) != 0
}

func (ino *inode) localSize() int64 {
	ino.mu.Lock()
	defer ino.mu.Unlock()
	return ino.size
}

func (ino *inode) generation() uint64 {
	ino.mu.Lock()
	defer ino.mu.Unlock()
	return ino.gen
}

// cached reports whether I/O may use the cache.
func (ino *inode) cached() bool {
	if ino.ck == nil {
		return false
	}
	ino.mu.Lock()
	defer ino.mu.Unlock()
	return !ino.bypass
}

// adopt records attributes the server returned for our own operation
// (wcc_data after a WRITE/COMMIT/SETATTR): our changes must not make the
// next open invalidate our own cache.
func (ino *inode) adopt(a *client.Attr) {
	if a == nil {
		return
	}
	ino.mu.Lock()
	ino.attr = *a
	ino.size = max(ino.size, int64(a.Size))
	ino.mu.Unlock()
	ino.s.putAttr(ino.fh, a)
}

// adoptRenamed is called after we renamed the file: the server may have
// changed its ctime (Linux does), which the next open would take for a
// remote change and invalidate the cache. RENAME returns no attributes of
// the file, so GETATTR; a change of ctime alone is ours and is adopted
// (a remote write would also have changed mtime or size).
func (ino *inode) adoptRenamed(ctx context.Context) {
	<-ino.ready
	a, err := ino.s.clnt.Getattr(ctx, ino.fh)
	if err != nil {
		return
	}
	ino.mu.Lock()
	ours := a.Size == ino.attr.Size && a.Mtime.Equal(ino.attr.Mtime)
	if ours {
		ino.attr = *a
	}
	ino.mu.Unlock()
	ino.s.putAttr(ino.fh, a)
}

// refreshAttr adopts post-op attributes, or fetches them if the reply had
// none.
func (ino *inode) refreshAttr(ctx context.Context, a *client.Attr) {
	if a == nil {
		got, err := ino.s.clnt.Getattr(ctx, ino.fh)
		if err != nil {
			ino.s.dropAttr(ino.fh)
			return
		}
		a = got
	}
	ino.adopt(a)
}

// flush writes back and commits everything dirty of the inode.
func (ino *inode) flush(ctx context.Context) error {
	var errs []error
	if ino.wb != nil {
		errs = append(errs, ino.s.flusher.Sync(ctx, ino.wb))
	}
	errs = append(errs, ino.commitThrough(ctx))
	return errors.Join(errs...)
}

// revalidate is the open half of close-to-open (nfs_revalidate_inode at
// open): if the server's size/mtime/ctime differ from what we last knew
// (our own writes included), the cached data is another version of the
// file and is invalidated (fscache_invalidate). While another File of ours
// has the file open for writing, a change is taken to be ours, as the
// Linux client does when the inode has writers
// (nfs_file_has_buffered_writers): the data is kept.
//
// server was fetched before this open counted itself as a writer, so it may
// predate a write of ours (a File opened meanwhile wrote and wrote back):
// it only says "look closer". The decision is made again on attributes
// fetched with fillMu held exclusively after our dirty data was written
// back, and fillMu stays held until the truncate and the invalidation are
// done. Every local write holds fillMu shared (cached writes from the
// cache write to their dirty marks, writes through for their WRITE), so a
// write acknowledged before the decision is on the server and in those
// attributes, and one acknowledged after it lands on the new version:
// revalidation never discards or truncates dirty data, and never sets the
// size from attributes older than our own last write.
func (ino *inode) revalidate(ctx context.Context, server client.Attr, otherWriters bool) error {
	runHook(ino.s.hooks.revalidateStart)
	ino.revalMu.Lock()
	defer ino.revalMu.Unlock()
	ino.mu.Lock()
	same := sameVersion(ino.attr, server)
	ino.mu.Unlock()
	if same || otherWriters {
		return nil
	}
	ino.fillMu.Lock()
	defer ino.fillMu.Unlock()
	if ino.dirty() {
		// Unwritten data is ours and newer: write it back, so it is
		// neither lost nor mistaken for a remote change. (Writeback
		// takes no lock of ours; see Concurrency in doc.go.)
		if err := ino.flush(ctx); err != nil {
			return err
		}
	}
	a, err := ino.s.getattr(ctx, ino.fh, true)
	if err != nil {
		return err
	}
	ino.mu.Lock()
	same = sameVersion(ino.attr, a)
	ino.mu.Unlock()
	if same {
		return nil
	}
	runHook(ino.s.hooks.revalidateAct)
	ino.mu.Lock()
	ino.attr = a
	ino.size = int64(a.Size)
	ino.gen++
	ino.mu.Unlock()
	if ino.wb != nil {
		ino.wb.Truncate(int64(a.Size))
	}
	if ino.ck != nil {
		if err := ino.ck.Invalidate(aux(a), int64(a.Size)); err != nil {
			// ErrDirty cannot come from a write of ours (none can
			// run, and all were written back); whatever it is, the
			// cache no longer serves this inode.
			ino.s.log.Warn("billyfs: invalidating cache", "handle", ino.fh.String(), "err", err)
			ino.setBypassLocked()
		}
	}
	return nil
}

// setBypass makes the inode's I/O go to the server until its last close.
// It takes fillMu: a cached write in flight (which holds fillMu shared
// from its cache write to its dirty marks) completes first, so the flush
// that follows a bypass sees it, and later writes see the bypass.
func (ino *inode) setBypass() {
	ino.fillMu.Lock()
	ino.setBypassLocked()
	ino.fillMu.Unlock()
}

// setBypassLocked is setBypass with fillMu held exclusively.
func (ino *inode) setBypassLocked() {
	ino.mu.Lock()
	ino.bypass = true
	ino.mu.Unlock()
}

// errBypassed tells writeAt that the cache stepped aside after it chose
// the cached path: write through.
var errBypassed = errors.New("billyfs: cache bypassed")

// cacheDirty reports whether the cache holds data not yet written back.
func (ino *inode) cacheDirty() bool {
	return ino.wb != nil && ino.wb.State()&writeback.DirtyPages != 0
}

// --- data path ---

// readAt reads p at off: from the cache, filling misses from the server
// with a read-ahead window of ra bytes; or straight from the server.
func (ino *inode) readAt(ctx context.Context, p []byte, off int64, ra int) (int, error) {
	size := ino.localSize()
	if off >= size {
		return 0, io.EOF
	}
	want := p[:min(int64(len(p)), size-off)]
	var err error
	if ino.cached() {
		var n int
		n, err = ino.readCached(ctx, want, off, ra)
		if err == nil {
			if len(want) < len(p) {
				return n, io.EOF
			}
			return n, nil
		}
		if ino.s.serveStale() && isConnErr(err) {
			// The upstream is unreachable: retrying the whole read
			// from it would only wait another Timeout.
			return 0, err
		}
		ino.s.log.Debug("billyfs: cached read failed, reading from the server", "handle", ino.fh.String(), "err", err)
		// Whatever the cache did, the server has every byte once
		// our dirty data is written back.
		if err := ino.flush(ctx); err != nil {
			return 0, err
		}
	}
	if ino.cacheDirty() {
		// The cache stepped aside with written data still in it: the
		// server has it only after writeback.
		if err := ino.flush(ctx); err != nil {
			return 0, err
		}
	}
	n, err := ino.readServer(ctx, want, off)
	if err != nil {
		return n, err
	}
	if len(want) < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// readServer reads want at off from the server; bytes past the server's end
// of file but inside our local size are zeros (a hole we extended over).
func (ino *inode) readServer(ctx context.Context, want []byte, off int64) (int, error) {
	n, err := ino.s.clnt.ReadAt(ctx, ino.fh, want, off)
	if err == io.EOF {
		clear(want[n:])
		return len(want), nil
	}
	if err != nil {
		return n, err
	}
	return n, nil
}

func (ino *inode) readCached(ctx context.Context, want []byte, off int64, ra int) (int, error) {
	n, err := ino.ck.ReadAt(want, off)
	if n == len(want) {
		return n, nil
	}
	if err != nil && !errors.Is(err, fscache.ErrNotCached) && !errors.Is(err, io.EOF) {
		return 0, err
	}
	if err := ino.fill(ctx, off+int64(n), max(int64(len(want)-n), int64(ra))); err != nil {
		return 0, err
	}
	m, err := ino.ck.ReadAt(want[n:], off+int64(n))
	if n+m == len(want) {
		return len(want), nil
	}
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return 0, err
}

// fill reads [off, off+n) (clipped to the local size) from the server and
// stores the parts the cache does not hold. Data written locally meanwhile
// is present and therefore never overwritten; data of an older file
// version is refused by the cookie generation check.
func (ino *inode) fill(ctx context.Context, off, n int64) error {
	size := ino.localSize()
	end := min(off+n, size)
	if end <= off {
		return nil
	}
	gen := ino.ck.Generation()
	buf := make([]byte, end-off)
	if _, err := ino.readServer(ctx, buf, off); err != nil {
		return err
	}
	ino.fillMu.Lock()
	defer ino.fillMu.Unlock()
	present, err := ino.ck.Present(off, end-off)
	if err != nil {
		return err
	}
	at := off
	store := func(lo, hi int64) error {
		if hi <= lo {
			return nil
		}
		_, err := ino.ck.WriteAtGeneration(buf[lo-off:hi-off], lo, gen)
		return err
	}
	for _, r := range present {
		if err := store(at, r.Off); err != nil {
			return err
		}
		at = max(at, r.End())
	}
	return store(at, end)
}

// writeAt writes p at off: into the cache, dirtying it through writeback
// (which pins the cookie, fscache_dirty_folio); or through to the server
// when there is no cache or it stepped aside.
func (ino *inode) writeAt(ctx context.Context, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	if ino.cached() {
		err := ino.writeCached(ctx, p, off)
		if err == nil {
			return nil
		}
		if errors.Is(err, errBypassed) {
			return ino.writeThrough(ctx, p, off)
		}
		ino.s.log.Warn("billyfs: cache write failed, writing through to the server", "handle", ino.fh.String(), "err", err)
		// The cache may hold a torn range now: write our dirty data
		// back, then stop using the cache for this inode until its
		// last close.
		ino.setBypass()
		if err := ino.flush(ctx); err != nil {
			return err
		}
		ino.mu.Lock()
		a, size := aux(ino.attr), ino.size
		ino.mu.Unlock()
		ino.fillMu.Lock()
		if err := ino.ck.Invalidate(a, size); err != nil {
			ino.s.log.Warn("billyfs: invalidating cache after failed write", "err", err)
		}
		ino.fillMu.Unlock()
	}
	return ino.writeThrough(ctx, p, off)
}

func (ino *inode) writeCached(ctx context.Context, p []byte, off int64) error {
	// Shared fillMu from the cache write to the dirty marks: a fill never
	// overwrites the data, and a bypass (setBypass) waits until the
	// write is known dirty, so its flush writes it back.
	ino.fillMu.RLock()
	defer ino.fillMu.RUnlock()
	ino.mu.Lock()
	bypass := ino.bypass
	ino.mu.Unlock()
	if bypass {
		return errBypassed
	}
	_, err := ino.ck.WriteAt(p, off)
	if err != nil {
		return err
	}
	end := off + int64(len(p))
	ino.mu.Lock()
	ino.size = max(ino.size, end)
	ino.gen++
	ino.mu.Unlock()
	ino.wb.ExtendSize(end)
	// Order: data, durable dirty record, then the flusher. Without the
	// record a crash could lose the only copy: send it through instead.
	if err := ino.ck.MarkDirty(off, int64(len(p))); err != nil {
		ino.s.log.Warn("billyfs: recording dirty range failed, writing through", "handle", ino.fh.String(), "err", err)
		return ino.sendThrough(ctx, p, off)
	}
	var pinErr error
	err = ino.s.flusher.MarkDirty(ctx, ino.wb, off, int64(len(p)), func() {
		pinErr = fscache.SetPageDirty(ino.wb, ino.ck)
	})
	if err != nil {
		return err
	}
	if pinErr != nil {
		// The pages are dirty but not pinned: writeback will still find
		// them in the cache file; send this write through as well so
		// nothing depends on the unpinned backing file.
		return ino.sendThrough(ctx, p, off)
	}
	return nil
}

// writeThrough sends p at off to the server as an UNSTABLE WRITE. It holds
// fillMu shared, as a cached write does: revalidation and truncate, which
// hold it exclusively, see the write either done or not begun.
func (ino *inode) writeThrough(ctx context.Context, p []byte, off int64) error {
	ino.fillMu.RLock()
	defer ino.fillMu.RUnlock()
	return ino.sendThrough(ctx, p, off)
}

// sendThrough is writeThrough with fillMu held (shared by writeCached).
func (ino *inode) sendThrough(ctx context.Context, p []byte, off int64) error {
	if _, err := ino.s.clnt.WriteAt(ctx, ino.fh, p, off); err != nil {
		return err
	}
	ino.mu.Lock()
	ino.needCommit = true
	ino.size = max(ino.size, off+int64(len(p)))
	ino.gen++
	ino.mu.Unlock()
	return nil
}

// commitThrough COMMITs data written through (WriteAt keeps it until then
// and resends it if the server's verifier changed).
func (ino *inode) commitThrough(ctx context.Context) error {
	ino.mu.Lock()
	if !ino.needCommit {
		ino.mu.Unlock()
		return nil
	}
	ino.needCommit = false
	ino.mu.Unlock()
	res, err := ino.s.clnt.Commit(ctx, ino.fh, 0, 0)
	if err != nil {
		ino.mu.Lock()
		ino.needCommit = !ino.removed
		ino.mu.Unlock()
		return err
	}
	ino.refreshAttr(ctx, res.Wcc.After)
	return nil
}

// truncate is SETATTR(size) after writing back what is dirty, then the
// cache object and writeback state are cut to match. fillMu is held
// exclusively throughout, so a concurrent write is ordered wholly before
// the truncate (written back, then cut if past size) or wholly after it —
// never cut from the cache after it was acknowledged past the new size.
func (ino *inode) truncate(ctx context.Context, size int64) error {
	if size < 0 {
		return errors.New("billyfs: negative size")
	}
	ino.fillMu.Lock()
	defer ino.fillMu.Unlock()
	if err := ino.flush(ctx); err != nil {
		return err
	}
	sz := uint64(size)
	wcc, err := ino.s.clnt.Setattr(ctx, ino.fh, client.SetAttr{Size: &sz}, nil)
	if err != nil {
		return err
	}
	ino.mu.Lock()
	ino.size = size
	ino.gen++
	ino.mu.Unlock()
	ino.refreshAttr(ctx, wcc.After)
	ino.mu.Lock()
	ino.size = size
	ino.mu.Unlock()
	if ino.wb != nil {
		ino.wb.Truncate(size)
	}
	if ino.ck != nil {
		if err := ino.ck.Resize(size); err != nil {
			ino.s.log.Warn("billyfs: resizing cache object", "err", err)
			ino.setBypassLocked()
		}
	}
	return nil
}

// --- writeback callbacks (->writepages, ->write_inode) ---

// wbFilesystem is what the writeback Flusher calls.
type wbFilesystem struct{ s *state }

// maxWriteChunk bounds the buffer one writeback WRITE batch reads from the
// cache; writebackWorkers such batches of one inode are in flight.
const (
	maxWriteChunk    = 4 << 20
	writebackWorkers = 4
)

// forEach runs fn(i) for i in [0, n) on up to width goroutines and returns
// the first error (the remaining calls are skipped).
func forEach(ctx context.Context, n, width int, fn func(i int) error) error {
	if n == 1 {
		return fn(0)
	}
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
		failed   atomic.Bool
	)
	for w := 0; w < min(n, width); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() || ctx.Err() != nil {
					return
				}
				if err := fn(i); err != nil {
					errOnce.Do(func() { firstErr = err; failed.Store(true) })
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err()
	}
	return firstErr
}

// WritePages sends the cached bytes of the dirty extents to the server with
// UNSTABLE WRITEs, then COMMITs (nfs_writepages + nfs_commit_inode). The
// extents are page-aligned: only the present bytes in them are sent (the
// dirty bytes always are present; present clean bytes equal the server's).
func (w wbFilesystem) WritePages(ctx context.Context, wbi *writeback.Inode, extents []writeback.Extent) (int64, error) {
	ino := wbi.Owner().(*inode)
	ino.mu.Lock()
	removed := ino.removed
	ino.mu.Unlock()
	if removed || ino.ck == nil {
		return 0, nil
	}
	if ctx.Value(foregroundKey{}) == nil && w.s.serveStale() && w.s.upstreamDown() {
		// Background writeback waits for the probe to see the upstream
		// again (it then starts writeback): the data stays dirty and
		// pinned, and the flusher is not held up for Timeout per try.
		return 0, errUpstreamDown
	}
	n, err := w.writePages(ctx, ino, extents)
	if err != nil {
		w.s.noteErr(err)
	}
	return n, err
}

func (w wbFilesystem) writePages(ctx context.Context, ino *inode, extents []writeback.Extent) (int64, error) {
	// Hold a use for the reads below, pinned or not.
	if err := ino.ck.Use(false); err != nil {
		return 0, err
	}
	defer ino.ck.Unuse(nil, -1)
	// Sampled before any chunk is read: a write racing with this
	// writeback stays dirty (ClearWrittenDirty).
	seq := ino.ck.DirtySeq()
	size := ino.localSize()
	var chunks []fscache.Range
	for _, e := range extents {
		end := min(e.End, size)
		if e.Off >= end {
			continue
		}
		present, err := ino.ck.Present(e.Off, end-e.Off)
		if err != nil {
			return 0, err
		}
		for _, r := range present {
			for at := r.Off; at < r.End(); at += maxWriteChunk {
				chunks = append(chunks, fscache.Range{Off: at, Len: min(r.End()-at, maxWriteChunk)})
			}
		}
	}
	if len(chunks) == 1 && chunks[0].Len <= int64(w.s.clnt.WSize()) {
		// One small write: FILE_SYNC and no COMMIT, as the Linux client
		// does for a single request (FLUSH_STABLE).
		return 0, w.writeStable(ctx, ino, chunks[0], seq)
	}
	// A few chunks in flight: reading the next chunk from the cache
	// overlaps with the WRITEs of the previous ones.
	if err := forEach(ctx, len(chunks), writebackWorkers, func(i int) error {
		c := chunks[i]
		b := make([]byte, c.Len)
		if _, err := ino.ck.ReadAt(b, c.Off); err != nil {
			return err
		}
		_, err := w.s.clnt.WriteAtFrom(ctx, ino.fh, b, c.Off, cookieReader{ino.ck})
		return err
	}); err != nil {
		return 0, err
	}
	res, err := w.s.clnt.Commit(ctx, ino.fh, 0, 0)
	if err != nil {
		return 0, err
	}
	ino.refreshAttr(ctx, res.Wcc.After)
	var errs []error
	for _, c := range chunks {
		errs = append(errs, ino.ck.ClearWrittenDirty(c.Off, c.Len, seq, res.Verifier[:]))
	}
	ino.recordAux()
	if err := errors.Join(errs...); err != nil {
		// The data is on the server; a stale record only costs a
		// second write-back after a crash.
		ino.s.log.Warn("billyfs: clearing dirty record", "handle", ino.fh.String(), "err", err)
	}
	return 0, nil
}

// recordAux stores the current attributes as the cookie's coherency data,
// so that a reopen after a crash compares dirty ranges against the version
// this client itself last committed, not an older one (no false conflict).
func (ino *inode) recordAux() {
	if err := ino.ck.Use(true); err != nil {
		return
	}
	ino.mu.Lock()
	a := aux(ino.attr)
	ino.mu.Unlock()
	// Size -1: a write racing with this writeback may have extended the
	// object past the size sampled here; a smaller size would cut it.
	if err := ino.ck.Unuse(a, -1); err != nil {
		ino.s.log.Debug("billyfs: recording aux", "err", err)
	}
}

// writeStable writes one chunk with FILE_SYNC WRITEs and adopts the
// post-op attributes of the reply. A server that answers UNSTABLE anyway
// gets a COMMIT, and a changed write verifier means the data may be lost:
// the chunk stays dirty and is written again.
func (w wbFilesystem) writeStable(ctx context.Context, ino *inode, c fscache.Range, seq uint64) error {
	b := make([]byte, c.Len)
	if _, err := ino.ck.ReadAt(b, c.Off); err != nil {
		return err
	}
	var after *client.Attr
	var verf client.Verifier
	for done := 0; done < len(b); {
		r, err := w.s.clnt.Write(ctx, ino.fh, uint64(c.Off)+uint64(done), b[done:], client.FileSync)
		if err != nil {
			return err
		}
		if r.Count <= 0 {
			return fmt.Errorf("billyfs: server wrote 0 bytes at %d", c.Off+int64(done))
		}
		if r.Committed != client.FileSync {
			cr, err := w.s.clnt.Commit(ctx, ino.fh, uint64(c.Off)+uint64(done), uint32(r.Count))
			if err != nil {
				return err
			}
			if cr.Verifier != r.Verifier {
				return fmt.Errorf("billyfs: server restarted before COMMIT (write verifier changed)")
			}
		}
		after = r.Wcc.After
		verf = r.Verifier
		done += r.Count
	}
	ino.refreshAttr(ctx, after)
	if err := ino.ck.ClearWrittenDirty(c.Off, c.Len, seq, verf[:]); err != nil {
		ino.s.log.Warn("billyfs: clearing dirty record", "handle", ino.fh.String(), "err", err)
	}
	ino.recordAux()
	return nil
}

// WriteInode is ->write_inode: it drops the writeback pin when writeback
// cleaned the last dirty page (fscache_unpin_writeback).
func (w wbFilesystem) WriteInode(ctx context.Context, wbi *writeback.Inode, wbc *writeback.Control) error {
	ino := wbi.Owner().(*inode)
	if ino.ck == nil {
		return nil
	}
	return fscache.UnpinWriteback(wbc, ino.ck)
}

// cookieReader lets the client re-read uncommitted data from the cache if
// the server's write verifier changes before COMMIT.
type cookieReader struct{ ck *fscache.Cookie }

func (r cookieReader) ReadAt(p []byte, off int64) (int, error) { return r.ck.ReadAt(p, off) }
