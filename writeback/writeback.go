package writeback

import (
	"context"
	"fmt"
	"time"
)

// SyncMode is wbc->sync_mode.
type SyncMode int

const (
	// SyncNone is WB_SYNC_NONE: background writeback; an inode already
	// being written back is skipped.
	SyncNone SyncMode = iota
	// SyncAll is WB_SYNC_ALL: data integrity writeback; waits for a
	// writeback already running on the inode, then writes everything dirty
	// in the range.
	SyncAll
)

// Control is struct writeback_control: how much to write and how, plus
// what the writeback found. A Control is used by one goroutine at a time.
type Control struct {
	SyncMode SyncMode
	// RangeStart and RangeEnd bound the bytes to write, [RangeStart,
	// RangeEnd); RangeEnd <= 0 means to the end of the file
	// (range_cyclic / LLONG_MAX).
	RangeStart, RangeEnd int64
	// UnpinnedCacheWB is wbc->unpinned_fscache_wb: set by WriteSingleInode
	// when it cleaned the last dirty page and cleared PinningCacheWB in the
	// same critical section. WriteInode must then drop the cache use the
	// bit stood for (fscache.UnpinWriteback), whether or not it fails.
	// WriteSingleInode resets it on entry and leaves it set on return.
	UnpinnedCacheWB bool
	// MaxBytes caps the bytes written by one call, lowest offsets first
	// (nr_to_write); 0 means no cap. The flusher writes in such chunks so
	// that throttled writers resume as each chunk completes.
	MaxBytes int64
	// PagesWritten accumulates the pages cleaned.
	PagesWritten int64
}

// Filesystem is what writeback needs from the filesystem that owns the
// inodes: ->writepages and ->write_inode. Its methods are called
// concurrently for different inodes but never for the same inode at once
// (one writeback per inode), with no state lock of this package held. They
// may call Inode methods (MarkDirty to re-dirty, Size, Owner) but not
// Flusher.MarkDirty, Sync, SyncAll or Close, which can wait for the very
// writeback that is calling them.
type Filesystem interface {
	// WritePages writes the given dirty extents (sorted, disjoint,
	// page-aligned; the last may run past Size, which the filesystem
	// clips). It returns how many bytes were written, counted through the
	// extents in order: on error, that prefix is cleaned and the rest stays
	// dirty to be retried. On success written is ignored and all are clean.
	WritePages(ctx context.Context, ino *Inode, extents []Extent) (written int64, err error)
	// WriteInode is ->write_inode. It is called after WritePages when
	// pages were written, DirtyInode was set, or wbc.UnpinnedCacheWB is set.
	WriteInode(ctx context.Context, ino *Inode, wbc *Control) error
}

// WriteSingleInode is __writeback_single_inode: it writes the inode's dirty
// extents within wbc's range and then its metadata.
//
// The extents are moved from the dirty set to an under-writeback set before
// WritePages is called, so a page dirtied while the write runs lands in the
// dirty set again and stays dirty. Bytes WritePages did not write go back
// to the dirty set and the error is recorded on the inode (errseq), to be
// reported by the next Sync. When no dirty page is left, DirtyPages is
// cleared and, in the same critical section, PinningCacheWB is cleared and
// wbc.UnpinnedCacheWB set; then WriteInode is called.
//
// With SyncNone an inode already under writeback is skipped (nil).
func WriteSingleInode(ctx context.Context, fs Filesystem, ino *Inode, wbc *Control) error {
	if wbc.SyncMode == SyncAll {
		ino.wbMu.Lock()
	} else if !ino.wbMu.TryLock() {
		return nil
	}
	defer ino.wbMu.Unlock()
	wbc.UnpinnedCacheWB = false

	r := Extent{max(wbc.RangeStart, 0) &^ (PageSize - 1), 1<<63 - 1}
	if wbc.RangeEnd > 0 {
		r.End = pageRange(0, wbc.RangeEnd).End
	}

	ino.mu.Lock()
	exts := ino.dirty.within(r)
	if wbc.MaxBytes > 0 {
		exts = trimExtents(exts, max(wbc.MaxBytes&^(PageSize-1), PageSize))
	}
	for _, e := range exts {
		ino.dirty.remove(e)
		ino.writing.add(e)
	}
	inodeDirty := ino.state&DirtyInode != 0
	ino.state &^= DirtyInode
	ino.state |= Writeback
	ino.mu.Unlock()

	var total int64
	for _, e := range exts {
		total += e.Len()
	}
	var written int64
	var werr error
	if len(exts) > 0 {
		written, werr = fs.WritePages(ctx, ino, exts)
		if werr == nil {
			written = total
		} else {
			written = min(max(written, 0), total)
			werr = fmt.Errorf("writeback: write pages: %w", werr)
		}
	}
	// A write abandoned because the caller's context ended lost nothing
	// (the pages stay dirty): it is the caller's error, not the inode's.
	record := werr != nil && ctx.Err() == nil

	ino.mu.Lock()
	// Split the snapshot at the written prefix; only whole pages count as
	// clean, since a partly written page is still dirty.
	cleanTo := written &^ (PageSize - 1)
	var lost int64
	for _, e := range exts {
		n := min(e.Len(), cleanTo)
		cleanTo -= n
		clean := Extent{e.Off, e.Off + n}
		failed := Extent{e.Off + n, e.End}
		for _, s := range ino.writing.within(clean) {
			lost += s.Len() - ino.dirty.covered(s) // re-dirtied bytes stay in memory
		}
		ino.writing.remove(clean)
		for _, s := range ino.writing.within(failed) {
			ino.dirty.add(s) // still in memory: no change in dirty bytes
		}
		ino.writing.remove(failed)
	}
	if record {
		ino.recordErrLocked(werr)
	}
	ino.state &^= Writeback
	unpinned := false
	if ino.dirty.empty() && ino.writing.empty() {
		if ino.state&DirtyPages != 0 && ino.f != nil {
			ino.f.dirtyInodes.Add(-1)
		}
		ino.state &^= DirtyPages
		ino.dirtiedWhen = time.Time{}
		if ino.state&PinningCacheWB != 0 {
			// The heart of the pinning scheme: the pin goes in the same
			// critical section that finds the last dirty page gone, so a
			// concurrent dirtier either dirtied before (we see it and keep
			// the pin) or sees the bit clear afterwards and pins again.
			ino.state &^= PinningCacheWB
			unpinned = true
			// The cache use goes only when WriteInode returns: until then
			// the inode keeps its place in the pinned-inode bound.
			ino.unpinning = true
			if ino.f != nil {
				ino.f.pinned.Add(-1)
			}
		}
	} else if ino.f != nil && record {
		// redirty_tail: a failed range waits another expiry period instead
		// of spinning on a failing server. (Pages merely left outside the
		// range, or re-dirtied meanwhile, keep the inode's place: it is
		// still queued, since only a clean inode leaves the queue.)
		ino.dirtiedWhen = time.Now()
		ino.f.requeueLocked(ino, ino.dirtiedWhen)
	}
	wbc.UnpinnedCacheWB = unpinned
	if ino.f != nil {
		ino.f.addDirtyBytes(-lost)
		ino.f.pagesWritten.Add(written / PageSize)
		if record {
			ino.f.writeErrors.Add(1)
		}
		ino.maybeReleaseSlotLocked()
		ino.f.dequeueIfCleanLocked(ino)
	}
	ino.mu.Unlock()
	wbc.PagesWritten += written / PageSize

	if written > 0 || inodeDirty || unpinned {
		err := fs.WriteInode(ctx, ino, wbc)
		if unpinned {
			ino.mu.Lock()
			ino.unpinning = false
			ino.maybeReleaseSlotLocked()
			ino.mu.Unlock()
		}
		if err != nil {
			err = fmt.Errorf("writeback: write inode: %w", err)
			ino.mu.Lock()
			if ctx.Err() == nil {
				ino.recordErrLocked(err)
			}
			if inodeDirty {
				ino.state |= DirtyInode
				if ino.f != nil {
					ino.f.queueLocked(ino, time.Now())
				}
			}
			if ino.f != nil {
				ino.f.writeErrors.Add(1)
			}
			ino.mu.Unlock()
			if werr == nil {
				werr = err
			}
		}
	}
	return werr
}

// trimExtents keeps the first budget bytes of exts.
func trimExtents(exts []Extent, budget int64) []Extent {
	for k, e := range exts {
		if e.Len() >= budget {
			exts[k].End = e.Off + budget
			return exts[:k+1]
		}
		budget -= e.Len()
	}
	return exts
}
