// Package writeback is the VFS writeback model of Linux's fs/fs-writeback.c
// and mm/page-writeback.c, for a filesystem that keeps written data in
// memory and writes it to its backing store later. It knows nothing about
// NFS or about the cache: the filesystem supplies the I/O as callbacks
// (Filesystem), and the cache layer uses the PinningCacheWB bit and the
// Control.UnpinnedCacheWB flag, as include/linux/fscache.h does.
//
// # The model
//
// An Inode is the writeback half of a kernel inode and its address_space:
//
//   - its dirty pages, kept as page-aligned extents (PageSize) in a B-tree
//     keyed by offset where adjacent and overlapping ranges coalesce, so a
//     sequential writer leaves one extent and writeback issues one large
//     write (the "dirty regions" direction named by the fscache pinning
//     commit, instead of the page cache's dirty tag per page), and random
//     writes to a large file stay O(log n);
//   - its state bits (inode->i_state): DirtyPages (I_DIRTY_PAGES),
//     PinningCacheWB (I_PINNING_FSCACHE_WB), DirtyInode (I_DIRTY_SYNC),
//     Writeback (I_SYNC);
//   - when it was dirtied (inode->dirtied_when), its size (i_size), and a
//     writeback error sequence (mapping->wb_err, an errseq_t).
//
// WriteSingleInode is __writeback_single_inode: it moves the dirty extents
// of the requested range to an under-writeback set (the kernel's
// PAGECACHE_TAG_WRITEBACK), calls Filesystem.WritePages (->writepages),
// puts back whatever was not written, then, under the inode lock, checks
// whether any dirty page is left (mapping_tagged(PAGECACHE_TAG_DIRTY)). If
// none is, it clears DirtyPages and — in the same critical section —
// PinningCacheWB, and sets Control.UnpinnedCacheWB (wbc->unpinned_fscache_wb);
// then it calls Filesystem.WriteInode (->write_inode), which drops the cache
// use (fscache_unpin_writeback). Pages dirtied while WritePages runs go to
// the dirty set and stay dirty. Unlike the kernel, which resets
// wbc->unpinned_fscache_wb after ->write_inode, UnpinnedCacheWB stays set on
// return so the caller can see what happened.
//
// Why atomically: the cache layer pins after dirtying (fscache_set_page_dirty
// runs after filemap_dirty_folio) with a test-and-set of the bit under the
// same lock. A dirtier racing with writeback either dirtied before the check
// (writeback sees a dirty page and keeps the pin) or runs its test-and-set
// after the bit is cleared (and pins again). So once a dirtier's pin call has
// returned, its dirty data has a pin, and writeback never has to reopen a
// cache file — the EMFILE/exit() problem the pinning commit fixes. A pin can
// linger on a clean inode only when writeback cleaned it between the
// dirtying and the pin; such an inode is put at the head of the flusher's
// list as already expired and the flusher is woken, so the pin is dropped at
// once.
//
// # Errors
//
// A failed range stays dirty and is retried by a later writeback (after
// another expiry period, redirty_tail). The error is recorded on the inode
// like errseq_set; Flusher.Sync reports each error once to the inode's own
// cursor, and SampleErr/CheckErr/SyncFile give an open file its own cursor
// (file->f_wb_err, errseq_check_and_advance). Background errors are never
// dropped: they wait for the next Sync. Every error is also recorded on the
// Flusher, and SyncAll reports it once like syncfs reports sb->s_wb_err. A write abandoned because the
// caller's context ended is not recorded (nothing was lost).
//
// # The flusher and balance_dirty_pages
//
// A Flusher is a per-filesystem flusher (wb_workfn/wb_writeback): dirty
// inodes sit in a list ordered by dirtied-when; a goroutine wakes every
// Options.Interval (dirty_writeback_centisecs) and writes back, oldest
// first, the inodes dirty for longer than Options.DirtyExpire
// (dirty_expire_centisecs, default 5 s) — or any inode, oldest first, while
// dirty bytes exceed Options.BackgroundBytes (dirty_background_bytes), while
// a writer is throttled, or while the pinned inodes reach
// Options.MaxPinnedInodes.
//
// Flusher.MarkDirty is set_page_dirty followed by balance_dirty_pages: a
// writer that would push the bytes held dirty or under writeback past
// Options.DirtyLimitBytes waits (forcing writeback) until there is room, so
// memory is bounded by the limit (plus one write larger than the limit,
// admitted alone). The same wait bounds the inodes that are dirty or pinned
// to Options.MaxPinnedInodes: the cache layer sets that to its open-file
// budget, and its pin helper runs as MarkDirty's pin hook, after the
// dirtying and before the inode can leave the bound. An inode leaves the
// bound only when it is clean, unpinned, and the WriteInode that dropped
// its cache use has returned. (The cache may briefly count two uses for
// one inode: a re-dirty can pin again while the old pin's WriteInode is
// still running. That is one backing file, not two.)
//
// # Lock order
//
//	Flusher.passMu (one flusher pass at a time)
//	→ Inode.wbMu (one writeback per inode, I_SYNC)
//	  → Inode.mu (i_lock)
//	    → Flusher.mu (wb->list_lock)
//
// Inode.mu and Flusher.mu are never held while Filesystem.WritePages,
// Filesystem.WriteInode or a MarkDirty pin hook runs. The callbacks run
// inside a writeback, holding Inode.wbMu (and Flusher.passMu when the
// flusher calls them): they may call Inode methods (Inode.MarkDirty to
// re-dirty, e.g. after an NFS COMMIT verifier change) but not
// Flusher.MarkDirty (its throttle may wait for this very writeback), Sync,
// SyncAll or Close.
package writeback
