package fscache

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Dirty ranges: local writes the server has not committed yet.
//
// The kernel's FS-Cache never holds the only copy of data; this cache may,
// so that writes a filesystem accepted survive a client crash (the role
// NFS's own "write verifier + resend" plays across a server crash, RFC 1813
// §3.3.7, played here across a client crash). The filesystem writes the
// bytes into the backing file (WriteAt), then calls MarkDirty for the
// range; after the server's COMMIT (or a FILE_SYNC WRITE) covered it,
// ClearDirty. Records go to the index journal in that order — data, then
// record — so a dirty record always names bytes that reached the backing
// file; a torn record is ignored at replay. SyncDirty makes all of it
// durable across power loss too (fdatasync of the dirty backing files, then
// fsync of the index); it also runs every Options.DirtySyncInterval and at
// Close.
//
// A dirty object is never culled, never discarded by Invalidate (ErrDirty)
// or by AcquireCookie with other aux (ErrDirtyConflict). After a crash,
// Volume.DirtyCookies lists what is dirty; AcquireDirtyCookie reopens such
// an object under its recorded aux so its dirty bytes can be read and
// written back; MoveToConflicts keeps it as a conflict file when the remote
// file changed meanwhile.

// DirtyObject describes a cache object holding dirty ranges, as found in
// the index (e.g. after a crash).
type DirtyObject struct {
	Key      []byte  // cookie key (e.g. the NFS file handle)
	Aux      []byte  // coherency data recorded for the object
	Size     int64   // object size recorded (covers every dirty byte)
	Verifier []byte  // last server write verifier passed to ClearDirty, or nil
	Ranges   []Range // dirty byte ranges, sorted, disjoint
}

// MarkDirty records that [off, off+n) of the cookie holds data written
// locally (with WriteAt, which must have returned) and not yet committed
// on the server. The range must be present, otherwise nothing is recorded
// and an error wrapping ErrCacheUnavailable is returned: the caller then
// must deliver the data to the server itself (write through). The record
// survives process death at once and power loss after the next SyncDirty.
// Needs a use.
func (ck *Cookie) MarkDirty(off, n int64) error {
	if off < 0 || n <= 0 {
		return fmt.Errorf("fscache: bad dirty range %d+%d", off, n)
	}
	c := ck.cache
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if err := ck.checkUsableLocked(); err != nil {
		return err
	}
	if ck.extents.presentPrefix(off, off+n) != off+n {
		return fmt.Errorf("%w: dirty range %d+%d not present in the cache", ErrCacheUnavailable, off, n)
	}
	if err := c.journal.commit(encDirty(ck.k, off, n)); err != nil {
		return fmt.Errorf("%w: %w", ErrCacheUnavailable, err)
	}
	ck.dirty = ck.dirty.add(off, off+n)
	ck.markSeq++
	if len(ck.marks) >= maxDirtyMarks {
		// Collapse to one entry with the newest sequence: ClearWrittenDirty
		// then keeps more than needed (safe: a dirty record too many is
		// written back again), never less.
		var all extentSet
		for _, m := range ck.marks {
			for _, e := range m.set {
				all = all.add(e.off, e.end)
			}
		}
		ck.marks = append(ck.marks[:0], dirtyMark{seq: ck.markSeq, set: all})
	}
	ck.marks = append(ck.marks, dirtyMark{seq: ck.markSeq, set: extentSet{{off, off + n}}})
	ck.dirtyUnsynced = true
	c.dirtyUnsynced.Store(true)
	return nil
}

// maxDirtyMarks bounds Cookie.marks.
const maxDirtyMarks = 1024

type dirtyMark struct {
	seq uint64
	set extentSet
}

// DirtySeq is the number of MarkDirty calls so far. Sample it before
// reading dirty bytes from the cache for a WRITE, and pass it to
// ClearWrittenDirty after the COMMIT.
func (ck *Cookie) DirtySeq() uint64 {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	return ck.markSeq
}

// ClearWrittenDirty is ClearDirty for data read from the cache when
// DirtySeq was seq: parts of [off, off+n) marked dirty again after that
// (a write that raced with the writeback) stay dirty.
func (ck *Cookie) ClearWrittenDirty(off, n int64, seq uint64, verifier []byte) error {
	if off < 0 || n <= 0 {
		return nil
	}
	ck.mu.Lock()
	clear := extentSet{{off, off + n}}
	for _, m := range ck.marks {
		if m.seq > seq {
			for _, e := range m.set {
				clear = clear.remove(e.off, e.end)
			}
		}
	}
	ck.mu.Unlock()
	var errs []error
	for _, e := range clear {
		errs = append(errs, ck.ClearDirty(e.off, e.end-e.off, verifier))
	}
	return errors.Join(errs...)
}

// ClearDirty records that [off, off+n) was committed on the server, whose
// write verifier was verifier (kept and reported by DirtyCookies; nil
// keeps the previous one). Call it after the COMMIT reply (or FILE_SYNC
// WRITE reply) with the verifier the WRITEs saw. It needs no use.
func (ck *Cookie) ClearDirty(off, n int64, verifier []byte) error {
	if off < 0 || n <= 0 {
		return nil
	}
	c := ck.cache
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if ck.dead {
		return ErrRelinquished
	}
	if len(ck.dirty.ranges(off, off+n)) == 0 {
		return nil
	}
	if err := c.journal.commit(encClean(ck.k, off, n, verifier)); err != nil {
		return err
	}
	ck.dirty = ck.dirty.remove(off, off+n)
	if len(ck.dirty) == 0 {
		// Nothing dirty: no range marked so far can need protecting.
		ck.marks = ck.marks[:0]
		// Nor does the file need an fdatasync: every byte is stable on
		// the server, and no dirty record can be durable in the index
		// without its data (a journal fsync happens only in SyncDirty,
		// which fdatasyncs every cookie still flagged; the clean record
		// appended here becomes durable with the next one), so recovery
		// never replays unsynced local bytes.
		ck.dirtyUnsynced = false
	}
	return nil
}

// Dirty returns the cookie's dirty ranges.
func (ck *Cookie) Dirty() []Range {
	ck.mu.Lock()
	defer ck.mu.Unlock()
	if len(ck.dirty) == 0 {
		return nil
	}
	return ck.dirty.ranges(0, ck.dirty[len(ck.dirty)-1].end)
}

// SyncDirty makes every dirty record and its data durable: each cookie
// dirtied since the last call has its backing file fdatasync'd (opened
// again if its fd was evicted), then the index is fsync'd. A filesystem
// calls it from fsync/Sync and Close before reporting success.
//
// Concurrent calls are serialized (Cache.syncMu): a call that finds
// nothing left to sync may only return once an earlier call that took the
// work has finished its fdatasyncs, otherwise it would report durability
// too early. Each fdatasync runs with the cookie's io lock held shared, so
// Relinquish and culling (which take it exclusive) cannot close the fd
// under it.
func (c *Cache) SyncDirty() error {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	if !c.dirtyUnsynced.Swap(false) {
		return nil
	}
	c.mu.Lock()
	var cks []*Cookie
	for _, ck := range c.cookies {
		ck.mu.Lock()
		if ck.dirtyUnsynced && !ck.dead {
			ck.dirtyUnsynced = false
			cks = append(cks, ck)
		}
		ck.mu.Unlock()
	}
	c.mu.Unlock()
	var errs []error
	for _, ck := range cks {
		err := ck.syncFile()
		if err != nil && !errors.Is(err, ErrRelinquished) {
			errs = append(errs, fmt.Errorf("fscache: sync dirty data: %w", err))
			ck.mu.Lock()
			ck.dirtyUnsynced = true
			ck.mu.Unlock()
			c.dirtyUnsynced.Store(true)
		}
	}
	if err := c.journal.sync(); err != nil {
		c.dirtyUnsynced.Store(true)
		errs = append(errs, err)
	}
	c.st.dirtySyncs.Add(1)
	return errors.Join(errs...)
}

// syncFile fdatasyncs ck's backing file with ck.io held shared, so that
// no Relinquish or cull closes the fd while it is in use.
func (ck *Cookie) syncFile() error {
	ck.io.RLock()
	defer ck.io.RUnlock()
	ck.mu.Lock()
	dead := ck.dead
	ck.mu.Unlock()
	if dead {
		return ErrRelinquished
	}
	f, err := ck.getFile()
	if err != nil {
		return err
	}
	defer ck.putFile()
	if h := ck.cache.opts.beforeFdatasync; h != nil {
		h(ck.key)
	}
	return syscall.Fdatasync(int(f.Fd()))
}

// dirtySyncer runs SyncDirty every Options.DirtySyncInterval.
func (c *Cache) dirtySyncer() {
	defer c.wg.Done()
	t := time.NewTicker(c.opts.DirtySyncInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
			if err := c.SyncDirty(); err != nil && !errors.Is(err, ErrClosed) {
				c.log.Warn("fscache: periodic dirty sync failed", "err", err)
			}
		}
	}
}

// DirtyCookies lists the objects of the volume that hold dirty ranges,
// live cookies included. After a crash the filesystem writes each back
// (AcquireDirtyCookie, ReadAt of Ranges, WRITE+COMMIT, ClearDirty) or, if
// the remote file changed since (its aux differs from Aux), keeps it with
// MoveToConflicts.
func (v *Volume) DirtyCookies() []DirtyObject {
	var out []DirtyObject
	for _, o := range v.cache.journal.dirtyObjects(v.key) {
		out = append(out, DirtyObject{
			Key: o.key, Aux: o.aux, Size: o.size, Verifier: o.verifier,
			Ranges: o.dirty.ranges(0, o.dirty[len(o.dirty)-1].end),
		})
	}
	return out
}

// AcquireDirtyCookie acquires the cookie of a dirty object under its
// recorded aux and size, whatever the remote file looks like now, so that
// its dirty bytes can be read and written back. It fails with ErrNotCached
// if the index holds no dirty data for key.
func (v *Volume) AcquireDirtyCookie(key []byte) (*Cookie, error) {
	rec, ok := v.cache.journal.lookup(objectKey(v.key, key))
	if !ok || len(rec.dirty) == 0 || !bytes.Equal(rec.key, key) {
		return nil, fmt.Errorf("%w: no dirty object for %x", ErrNotCached, key)
	}
	return v.AcquireCookie(key, rec.aux, rec.size)
}

// MoveToConflicts keeps a dirty object whose remote file changed meanwhile
// (the policy: the server's version wins in place, the local one is kept
// beside it, nothing is merged or lost): its backing file is moved to
// <cache dir>/conflicts/<name>.<UTC time>.<hash> (name is a readable hint,
// e.g. the file's path; '/' become '_'), truncated to the object size, the
// index entry is deleted and the move is logged. Holes in it are bytes the
// cache never held (see the returned dirty ranges). No live cookie may
// hold the object. It returns the new path.
func (v *Volume) MoveToConflicts(key []byte, name string) (string, []Range, error) {
	c := v.cache
	k := objectKey(v.key, key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return "", nil, ErrClosed
	}
	if c.cookies[k] != nil {
		return "", nil, fmt.Errorf("%w: %x", ErrInUse, key)
	}
	rec, ok := c.journal.lookup(k)
	if !ok || !bytes.Equal(rec.key, key) {
		return "", nil, fmt.Errorf("%w: no object for %x", ErrNotCached, key)
	}
	dir := filepath.Join(c.dir, "conflicts")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, fmt.Errorf("fscache: conflicts dir: %w", err)
	}
	name = strings.NewReplacer("/", "_", "\x00", "_").Replace(strings.TrimLeft(name, "/"))
	if name == "" {
		name = "object"
	}
	dst := filepath.Join(dir, fmt.Sprintf("%s.%s.%s", name, time.Now().UTC().Format("20060102T150405Z"), k.String()[:12]))
	src := c.backingPath(k)
	if err := truncatePath(src, rec.size); err != nil {
		return "", nil, err
	}
	if err := os.Rename(src, dst); err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", nil, fmt.Errorf("fscache: move to conflicts: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return "", nil, err
	}
	if err := c.journal.commit(encDelete(k)); err != nil {
		return "", nil, err
	}
	var dirty []Range
	if len(rec.dirty) > 0 {
		dirty = rec.dirty.ranges(0, rec.dirty[len(rec.dirty)-1].end)
	}
	c.st.conflicts.Add(1)
	c.log.Warn("fscache: remote file changed under dirty local data; local copy kept as conflict",
		"key", fmt.Sprintf("%x", key), "path", dst, "dirty", dirty)
	return dst, dirty, nil
}
