package fscache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Cookie is one remote file in the cache, the counterpart of struct
// fscache_cookie. Data I/O (ReadAt, WriteAt, Resize, Present) requires a
// use (Use/Unuse, fscache_use_cookie/fscache_unuse_cookie). All methods are
// safe for concurrent use; I/O runs concurrently except against
// Invalidate, Resize, culling and Relinquish, which exclude it.
type Cookie struct {
	cache *Cache
	vol   *Volume
	k     objKey
	key   []byte
	path  string

	// io is held shared by data I/O for its whole duration and exclusively
	// by operations that change what the backing file means (Invalidate,
	// Resize, cull, Relinquish): a read in flight therefore never spans an
	// invalidation and never returns data of an older generation.
	io sync.RWMutex

	mu    sync.Mutex
	users int // uses held, pins included
	pins  int // uses held for writeback pinning (PinningCacheWB)
	file  *os.File
	// fileRefs counts I/O calls using file; eviction needs 0. It is
	// incremented only under mu (so it cannot race eviction's check) and
	// decremented without it.
	fileRefs   atomic.Int32
	everOpened bool // a later open is a reopen
	// pinFileHeld: the pin's fd is open and must stay open until unpin;
	// an open while it is set is a writeback reopen (a bug, counted).
	pinFileHeld bool
	pinPending  int  // pins being taken: the fd is being opened for them
	dead        bool // relinquished or cache closed
	gen         uint64
	aux         []byte
	size        int64
	extents     extentSet
	// dirty: ranges written locally and not yet committed on the server
	// (MarkDirty/ClearDirty); a subset of extents. dirtyUnsynced: a dirty
	// record or its data was written since the last SyncDirty.
	dirty         extentSet
	dirtyUnsynced bool
	// markSeq counts MarkDirty calls; marks lists the ranges marked with
	// their sequence numbers, so that ClearWrittenDirty keeps ranges marked
	// after the caller read its data (see dirty.go).
	markSeq uint64
	marks   []dirtyMark
}

// Key is the cookie key.
func (ck *Cookie) Key() []byte { return bytes.Clone(ck.key) }

// Aux is the coherency data currently recorded for the cookie.
func (ck *Cookie) Aux() []byte {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	return bytes.Clone(ck.aux)
}

// Size is the object size recorded for the cookie.
func (ck *Cookie) Size() int64 {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	return ck.size
}

// Generation is incremented by every Invalidate (and by culling): data
// fetched from the server under an older generation must not be written
// with WriteAtGeneration.
func (ck *Cookie) Generation() uint64 {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	return ck.gen
}

// Users is the use count (pins included): open users + 1 per pin.
func (ck *Cookie) Users() int {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	return ck.users
}

// Pinned reports whether the cookie holds a writeback pin.
func (ck *Cookie) Pinned() bool {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	return ck.pins > 0
}

// HasOpenFile reports whether the backing file is open.
func (ck *Cookie) HasOpenFile() bool {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	return ck.file != nil
}

// Use takes a use of the cookie, like fscache_use_cookie: while used, the
// cookie may be read and written and is never culled. willModify tells the
// cache local modification is coming (recorded at Unuse via aux/size).
func (ck *Cookie) Use(willModify bool) error {
	_ = willModify // cachefiles uses it to mark coherency data for update; Unuse carries the new aux here.
	c := ck.cache
	ck.mu.Lock()
	if ck.dead {
		ck.mu.Unlock()
		return ErrRelinquished
	}
	ck.users++
	ck.mu.Unlock()
	c.st.uses.Add(1)
	c.journal.touch(ck.k)
	return nil
}

// Unuse drops a use, like fscache_unuse_cookie. If aux is not nil the
// cookie's coherency data and size are updated and persisted (size < 0
// leaves the size alone). The backing fd stays open, in the LRU, until
// evicted. It fails with ErrNotInUse if no non-pin use is held.
func (ck *Cookie) Unuse(aux []byte, size int64) error {
	return ck.unuse(false, aux, size)
}

func (ck *Cookie) unuse(pin bool, aux []byte, size int64) error {
	c := ck.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if pin && ck.pins == 0 || !pin && ck.users-ck.pins == 0 {
		return ErrNotInUse
	}
	ck.users--
	if pin {
		ck.pins--
		c.releasePinLocked(ck)
	} else if ck.users == 0 && ck.file != nil && !ck.dead {
		c.lru.Add(ck.k, ck) // most recently used
	}
	c.st.unuses.Add(1)
	if aux != nil && !ck.dead {
		if size < 0 {
			size = ck.size
		}
		if !bytes.Equal(aux, ck.aux) || size != ck.size {
			if err := c.journal.commit(encAux(ck.k, aux, size)); err != nil {
				return err
			}
			c.st.updates.Add(1)
			ck.aux = bytes.Clone(aux)
			if size < ck.size {
				ck.extents = ck.extents.truncate(size)
				ck.dirty = ck.dirty.truncate(size)
			}
			ck.size = size
		}
	}
	c.journal.touch(ck.k)
	return nil
}

// pinUse takes the writeback pin's use: it waits while MaxPinned cookies
// are pinned (calling Options.PinPressure), then opens the backing file now,
// in an ordinary context, so writeback never has to.
func (ck *Cookie) pinUse() error {
	c := ck.cache
	waited := false
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return ErrClosed
		}
		ck.mu.Lock()
		if ck.dead {
			ck.mu.Unlock()
			c.mu.Unlock()
			return ErrRelinquished
		}
		if ck.pins > 0 { // already pinned: its fd is already held
			ck.pins++
			ck.users++
			ck.mu.Unlock()
			c.mu.Unlock()
			c.st.pins.Add(1)
			return nil
		}
		if ck.pinPending > 0 { // being pinned by another caller: join it
			ck.pinPending++
			ck.mu.Unlock()
			break // c.mu held
		}
		if c.pinned < c.opts.MaxPinned {
			// c.pinned counts cookies with pins+pinPending > 0.
			c.pinned++
			ck.pinPending++
			ck.mu.Unlock()
			break // c.mu held
		}
		ck.mu.Unlock()
		ch := c.pinChanged
		c.mu.Unlock()
		if !waited {
			waited = true
			c.st.pinWaits.Add(1)
		}
		// Ask the filesystem to write back pinned inodes, then wait for an
		// unpin; ask again now and then in case the writeback it started
		// could not make progress at that moment.
		if f := c.opts.PinPressure; f != nil {
			f()
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ch:
		case <-t.C:
		case <-c.done:
		}
		t.Stop()
	}
	// Open the file before the pin becomes visible: whoever sees Pinned()
	// may rely on the fd being open. pinPending keeps it from eviction.
	c.lru.Remove(ck.k)
	c.mu.Unlock()
	err := c.ensureOpen(ck)
	c.mu.Lock()
	defer c.mu.Unlock()
	ck.mu.Lock()
	defer ck.mu.Unlock()
	ck.pinPending--
	if err == nil && ck.file == nil {
		err = ErrRelinquished // closed by Cache.Close meanwhile
	}
	if err != nil {
		c.releasePinLocked(ck)
		return err
	}
	ck.pins++
	ck.users++
	ck.pinFileHeld = true
	c.st.pins.Add(1)
	return nil
}

// releasePinLocked gives back ck's pinned slot once nothing pins it; c.mu
// and ck.mu are held.
func (c *Cache) releasePinLocked(ck *Cookie) {
	if ck.pins > 0 || ck.pinPending > 0 {
		return
	}
	ck.pinFileHeld = false
	c.pinned--
	if ck.file != nil && !ck.dead {
		c.lru.Add(ck.k, ck)
	}
	close(c.pinChanged)
	c.pinChanged = make(chan struct{})
	c.slotFree.Broadcast()
}

// getFile returns the open backing file with a reference that keeps it
// from being evicted; putFile drops it.
func (ck *Cookie) getFile() (*os.File, error) {
	for {
		ck.mu.Lock()
		if ck.file != nil {
			ck.fileRefs.Add(1)
			f := ck.file
			ck.mu.Unlock()
			return f, nil
		}
		ck.mu.Unlock()
		if err := ck.cache.ensureOpen(ck); err != nil {
			return nil, err
		}
	}
}

func (ck *Cookie) putFile() {
	free := ck.fileRefs.Add(-1) == 0
	c := ck.cache
	if free && c.slotWaiters.Load() > 0 {
		c.mu.Lock()
		c.slotFree.Broadcast()
		c.mu.Unlock()
	}
}

// beginIO checks the cookie may do data I/O; ck.io is held.
func (ck *Cookie) checkUsableLocked() error {
	if ck.dead {
		return ErrRelinquished
	}
	if ck.users == 0 {
		return ErrNotInUse
	}
	return nil
}

// ReadAt reads cached data. It returns the bytes of the longest present
// prefix of [off, off+len(p)); if that is shorter than p it returns
// ErrNotCached (or io.EOF when the object ends first), like io.ReaderAt.
func (ck *Cookie) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("fscache: negative offset %d", off)
	}
	c := ck.cache
	ck.io.RLock()
	defer ck.io.RUnlock()
	ck.mu.Lock()
	if err := ck.checkUsableLocked(); err != nil {
		ck.mu.Unlock()
		return 0, err
	}
	end := off + int64(len(p))
	if end > ck.size {
		end = ck.size
	}
	if off >= end {
		ck.mu.Unlock()
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	avail := ck.extents.presentPrefix(off, end)
	if avail == off {
		ck.mu.Unlock()
		c.st.readMisses.Add(1)
		return 0, ErrNotCached
	}
	f := ck.file
	if f != nil { // the common case: one critical section for both
		ck.fileRefs.Add(1)
	}
	ck.mu.Unlock()
	if f == nil {
		var err error
		if f, err = ck.getFile(); err != nil {
			c.st.readMisses.Add(1)
			return 0, err
		}
	}
	n, err := f.ReadAt(p[:avail-off], off)
	ck.putFile()
	c.st.bytesRead.Add(int64(n))
	if err != nil {
		// A present range shorter on disk than recorded: the backing file
		// was damaged behind our back. Treat as unavailable.
		c.st.readMisses.Add(1)
		return n, fmt.Errorf("%w: read backing file: %w", ErrCacheUnavailable, err)
	}
	switch {
	case n == len(p):
		c.st.readHits.Add(1)
		return n, nil
	case avail < end:
		c.st.readMisses.Add(1)
		return n, ErrNotCached
	default:
		c.st.readHits.Add(1)
		return n, io.EOF
	}
}

// Present returns the present sub-ranges of [off, off+length).
func (ck *Cookie) Present(off, length int64) ([]Range, error) {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if err := ck.checkUsableLocked(); err != nil {
		return nil, err
	}
	return ck.extents.ranges(off, off+length), nil
}

// WriteAt stores data in the cache and records it present once written.
// The object grows to cover it. ErrCacheUnavailable (e.g. ENOSPC, bstop)
// means the cache stepped aside: nothing was recorded, send the data to the
// server as usual.
func (ck *Cookie) WriteAt(p []byte, off int64) (int, error) {
	return ck.write(p, off, false, 0)
}

// WriteAtGeneration is WriteAt for data fetched from the server while the
// cookie had generation gen: if the cookie was invalidated since, nothing
// is written and ErrStale is returned.
func (ck *Cookie) WriteAtGeneration(p []byte, off int64, gen uint64) (int, error) {
	return ck.write(p, off, true, gen)
}

func (ck *Cookie) write(p []byte, off int64, checkGen bool, gen uint64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("fscache: negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	c := ck.cache
	ck.io.RLock()
	defer ck.io.RUnlock()
	ck.mu.Lock()
	err := ck.checkUsableLocked()
	if err == nil && checkGen && ck.gen != gen {
		err = ErrStale
		c.st.staleWrites.Add(1)
	}
	ck.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if c.stopped.Load() {
		c.st.noSpaceWrites.Add(1)
		return 0, fmt.Errorf("%w: cache below bstop", ErrCacheUnavailable)
	}
	f, err := ck.getFile()
	if err != nil {
		return 0, err
	}
	n, err := c.opts.pwrite(f, p, off)
	if err == nil && c.opts.Durable {
		err = syscall.Fdatasync(int(f.Fd()))
	}
	ck.putFile()
	if err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			c.st.noSpaceWrites.Add(1)
			c.kickCull()
		}
		c.log.Warn("fscache: backing write failed; cache steps aside", "err", err)
		return 0, fmt.Errorf("%w: write backing file: %w", ErrCacheUnavailable, err)
	}
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if err := c.journal.commit(encPresent(ck.k, off, int64(n))); err != nil {
		return 0, fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
	}
	ck.extents = ck.extents.add(off, off+int64(n))
	ck.size = max(ck.size, off+int64(n))
	c.st.writes.Add(1)
	c.st.bytesWritten.Add(int64(n))
	if c.overBudget() {
		c.kickCull()
	}
	return n, nil
}

// Resize sets the object size (truncate or extend), like
// fscache_resize_cookie: data beyond the new size is discarded.
func (ck *Cookie) Resize(size int64) error {
	if size < 0 {
		return fmt.Errorf("fscache: negative size %d", size)
	}
	c := ck.cache
	ck.io.Lock()
	defer ck.io.Unlock()
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if err := ck.checkUsableLocked(); err != nil {
		return err
	}
	if err := c.journal.commit(encResize(ck.k, size)); err != nil {
		return err
	}
	ck.size = size
	ck.extents = ck.extents.truncate(size)
	ck.dirty = ck.dirty.truncate(size)
	c.st.resizes.Add(1)
	if ck.file != nil {
		if err := ck.file.Truncate(size); err != nil {
			return fmt.Errorf("fscache: truncate backing file: %w", err)
		}
		return nil
	}
	return truncatePath(ck.path, size)
}

// Invalidate discards all cached data and records new coherency data and
// size, like fscache_invalidate: the remote file changed. It waits for I/O
// in flight; every read after it misses until new data is written. A
// pinned cookie keeps its pin and its fd. A cookie holding dirty ranges
// (MarkDirty) is not invalidated: Invalidate returns ErrDirty and changes
// nothing, because those bytes exist nowhere else; write them back (or
// resolve the conflict with Volume.MoveToConflicts) first.
func (ck *Cookie) Invalidate(aux []byte, size int64) error {
	c := ck.cache
	ck.io.Lock()
	defer ck.io.Unlock()
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if ck.dead {
		return ErrRelinquished
	}
	if len(ck.dirty) > 0 {
		return fmt.Errorf("%w: %d dirty bytes", ErrDirty, ck.dirty.bytes())
	}
	ck.gen++
	ck.extents = nil
	ck.aux = bytes.Clone(aux)
	ck.size = size
	c.st.invalidations.Add(1)
	if err := c.journal.commit(encObject(ck.k, &objRecord{volKey: ck.vol.key, key: ck.key, aux: ck.aux, size: size})); err != nil {
		return err
	}
	if ck.file != nil {
		if err := ck.file.Truncate(0); err != nil {
			return fmt.Errorf("fscache: truncate backing file: %w", err)
		}
		return nil
	}
	return truncatePath(ck.path, 0)
}

// DiscardRange marks [off, off+n) absent without touching the backing
// file or needing a use or an fd: for a filesystem that could not write
// new data for the range to the cache (its cookie was not pinned when
// writeback ran, or the cache stepped aside), so the cache must stop
// serving its older copy. Like Invalidate it waits for I/O in flight.
// Dirty records inside the range are dropped with it: the caller's newer
// data for the range supersedes them and is the caller's to deliver.
func (ck *Cookie) DiscardRange(off, n int64) error {
	if off < 0 || n <= 0 {
		return nil
	}
	c := ck.cache
	ck.io.Lock()
	defer ck.io.Unlock()
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if ck.dead {
		return ErrRelinquished
	}
	if len(ck.extents.ranges(off, off+n)) == 0 {
		return nil
	}
	if err := c.journal.commit(encDiscard(ck.k, off, n)); err != nil {
		return err
	}
	ck.extents = ck.extents.remove(off, off+n)
	ck.dirty = ck.dirty.remove(off, off+n)
	c.st.discards.Add(1)
	return nil
}

// Relinquish gives the cookie up, like fscache_relinquish_cookie: its fd
// is closed and, with retire, its data deleted; otherwise the data stays
// for a later AcquireCookie with matching aux (an object holding no data
// is dropped from the index: see doc.go, "Memory"). All uses (and pins)
// must have been dropped first.
func (ck *Cookie) Relinquish(retire bool) error {
	c := ck.cache
	ck.io.Lock()
	defer ck.io.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	ck.mu.Lock()
	if ck.dead {
		ck.mu.Unlock()
		return ErrRelinquished
	}
	if ck.users > 0 {
		ck.mu.Unlock()
		return fmt.Errorf("%w: %d users", ErrInUse, ck.users)
	}
	ck.dead = true
	ck.mu.Unlock()
	c.closeFileLocked(ck)
	delete(c.cookies, ck.k)
	c.st.cookies.Add(-1)
	c.st.relinquishes.Add(1)
	if retire {
		c.st.retires.Add(1)
		return c.removeObjectLocked(ck.k, ck.path)
	}
	if !c.journal.holdsData(ck.k) {
		// Nothing cached: an index entry kept only for its aux would be
		// memory and journal that neither culling (no bytes) nor free
		// files (no backing file) ever reclaim — a crawl that only looks
		// files up would grow the index without bound.
		return c.removeObjectLocked(ck.k, ck.path)
	}
	return nil
}

// removeObjectLocked deletes a backing object and its index entry; c.mu
// is held and no live cookie uses the object's file.
func (c *Cache) removeObjectLocked(k objKey, path string) error {
	if err := c.journal.commit(encDelete(k)); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("fscache: remove backing file: %w", err)
	}
	return nil
}
