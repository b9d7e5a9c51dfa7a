// Package fscache is a local on-disk cache of remote file data, modelled on
// Linux FS-Cache (fs/fscache), its cachefiles backend (fs/cachefiles) and
// the cachefilesd culling daemon. It knows nothing of NFS: volume keys,
// cookie keys and coherency ("aux") data are opaque bytes.
//
// # Concepts and their kernel counterparts
//
//	kernel                               here
//	fscache_cache (cachefiles "bind")    Cache, Open(dir, Options)
//	fscache_acquire_volume               Cache.AcquireVolume(key)   key = server + export
//	fscache_acquire_cookie               Volume.AcquireCookie(key, aux, size)
//	fscache_relinquish_cookie            Cookie.Relinquish(retire)
//	fscache_use_cookie / unuse           Cookie.Use(willModify) / Cookie.Unuse(aux, size)
//	fscache_read / fscache_write         Cookie.ReadAt / WriteAt / WriteAtGeneration
//	fscache_resize_cookie                Cookie.Resize
//	fscache_invalidate                   Cookie.Invalidate(aux, size)
//	cookie->inval_counter                Cookie.Generation
//	(netfs dropping a stale cache range) Cookie.DiscardRange
//	fscache_cookie_lru (unused cookies)  the fd LRU (golang-lru simplelru)
//	cachefiles xattr (aux, size)         the index journal (journal.go)
//	SEEK_DATA/SEEK_HOLE of backing file  present ranges in the index
//	fscache_dirty_folio                  SetPageDirty(ino, cookie)
//	fscache_unpin_writeback              UnpinWriteback(wbc, cookie)
//	fscache_clear_inode_writeback        ClearInodeWriteback(ino, cookie, aux)
//	cachefilesd brun/bcull/bstop         Options.BRun/BCull/BStop (+ F* for files), Cache.Cull
//	/proc/fs/fscache/stats               Cache.Stats, Stats.String
//	(no kernel counterpart: the page      Cookie.MarkDirty / ClearDirty,
//	 cache dies with the client)          Cache.SyncDirty, Volume.DirtyCookies,
//	                                      AcquireDirtyCookie, MoveToConflicts
//
// # Backing files and the index
//
// Each cookie's data lives in one sparse file, objects/xx/<hash>, where the
// hash is SHA-256 of the volume key and cookie key. Which byte ranges of it
// hold data, the aux data and the object size are kept in one append-only,
// CRC-checked journal ("index") that is replayed at Open: a cache reopened
// after a restart or crash serves what it held. A range is recorded present
// only after its write to the backing file returned, so a process killed
// mid-write never serves a half-written range; a torn journal record is
// ignored. With Options.Durable the same holds across power loss (data is
// fdatasync'd before the record, the record fsync'd after). Acquiring a
// cookie whose recorded aux differs discards its data: it belongs to
// another version of the remote file. The journal is compacted (rewritten
// as one record per object and range, then renamed over the old one) at
// Open, at Close and after each MiB of appends beyond twice its compacted
// size. The new file's descriptor is opened before the rename, so records
// never go to the replaced file; a compaction that fails (EMFILE, ENOSPC)
// leaves the journal as it was, fails no record, and is retried later.
//
// # Uses, pins and file descriptors
//
// A cookie's use count is its open users plus one per writeback pin. Data
// I/O needs a use. Backing fds are opened lazily at the first I/O and
// counted against Options.MaxOpenFiles — all of them, in-use and pinned
// included. When a new fd is needed at the bound, the least recently used
// evictable fd is closed: first those of unused cookies (the kernel's LRU
// of unused cookies), then those of in-use cookies that are not pinned and
// have no I/O in flight; those reopen at their next I/O, an ordinary
// context. A cookie with no users keeps its fd only while it is in the LRU.
//
// The writeback pin is the mechanism of kernel commit 08276bda. Reopening a
// backing file from writeback is what fails (at exit, under EMFILE), so the
// first SetPageDirty of an inode sets writeback.PinningCacheWB and takes a
// use that opens the backing file right then; a pinned fd is never evicted.
// writeback.WriteSingleInode clears the bit atomically with cleaning the
// last dirty page and sets Control.UnpinnedCacheWB, and the filesystem's
// WriteInode calls UnpinWriteback to drop the use. ClearInodeWriteback
// drops a pin still held at inode eviction. Stats.WritebackReopens counts
// opens of a pinned cookie's file after it was pinned: it stays zero. The
// pin's fd is opened before the pin is published, so whoever sees
// Cookie.Pinned() may rely on the fd.
//
// In the kernel the folio lock orders the pin before writeback can see the
// dirtied page. writeback.Flusher.MarkDirty runs the pin hook after the
// pages are already visible to the flusher, so a writeback can find a
// dirty inode whose cookie is not pinned yet; the filesystem must then not
// write the cache (that would open the backing file from writeback) but
// call Cookie.DiscardRange for the range so the older cached copy is not
// served.
//
// Pins are bounded by Options.MaxPinned < MaxOpenFiles, so unpinned I/O
// always finds a slot. At the bound, SetPageDirty calls Options.PinPressure
// (the filesystem kicks writeback of pinned inodes, like
// balance_dirty_pages) and the dirtier waits for an unpin instead of
// opening more files. With a writeback.Flusher, set its MaxPinnedInodes to
// Cache.MaxPinned(): the flusher then throttles the writer in MarkDirty
// (forcing writeback) before the pin is ever taken, and SetPageDirty does
// not wait.
//
// All opens and closes of backing files happen under Cache.mu, after the
// open-file count was checked against the bound, so the bound holds for the
// real descriptors at every instant, not only for the counter.
//
// RLIMIT_NOFILE is shared with the rest of the program, which may leave
// the cache fewer descriptors than MaxOpenFiles. A backing open that fails
// with EMFILE or ENFILE closes one evictable fd and tries again (counted in
// Stats.FDExhausted), so the cache shrinks to what it can get; only with
// nothing left to evict does the I/O fail with ErrCacheUnavailable and the
// caller go to the server. EMFILE never reaches the caller as such.
//
// # Coherency and invalidation
//
// Invalidate discards data and records new aux and size; it takes the
// cookie's I/O lock exclusively, so reads in flight finish first and reads
// after it miss. Data fetched from the server before an invalidation is
// refused by WriteAtGeneration (ErrStale) using the generation sampled
// before the fetch.
//
// # Culling and running out of space
//
// Culling deletes the data of objects no cookie is using, least recently
// used first (never an in-use, pinned or dirty object), when free space or
// free files of the cache filesystem, or the unused share of MaxBytes or
// MaxObjects, fall below the Cull percentage, until all are above Run. Below Stop, and
// whenever a backing write fails (ENOSPC), the cache steps aside: WriteAt
// returns ErrCacheUnavailable, records nothing, and the caller goes to the
// server. Culling never touches an object holding dirty ranges.
//
// # Dirty data and client crashes
//
// Unlike the kernel's FS-Cache, this cache may hold the only copy of data:
// bytes a filesystem accepted and wrote into the cache but has not had
// committed by the server. So that they survive a client crash, the cache
// keeps a record of dirty ranges in the same journal (dirty.go). The order
// is data, then record: WriteAt must have returned before MarkDirty(off, n)
// (which refuses a range that is not present, e.g. after ENOSPC — the
// caller then writes through to the server). ClearDirty(off, n, verifier)
// after the server's COMMIT (or FILE_SYNC WRITE) drops the record and keeps
// the write verifier; ClearWrittenDirty(off, n, seq, verifier), with seq
// sampled by DirtySeq before the bytes were read for the WRITE, keeps the
// parts marked again meanwhile (a write racing the writeback). Records survive process death as soon as MarkDirty
// returns; SyncDirty (fdatasync of every backing file dirtied since the
// last call, then fsync of the index) extends that to power loss, and runs
// every Options.DirtySyncInterval (default 5s) and at Close; a filesystem
// calls it from fsync and close.
//
// A dirty object is never discarded behind the filesystem's back: culling
// skips it, Invalidate returns ErrDirty, Resize and DiscardRange drop only
// the records of the bytes they remove (the file was truncated; the caller
// delivers the superseding data itself), Acquire with a smaller remote size
// keeps the dirty bytes, and AcquireCookie with different aux returns
// ErrDirtyConflict instead of discarding. Relinquish(true) (the remote file
// was removed) deletes it with its records.
//
// After a crash, Volume.DirtyCookies lists the dirty objects (key, aux,
// size, last verifier, ranges). Policy: if the remote file's current
// coherency data equals Aux, the local bytes are newer — acquire with
// AcquireDirtyCookie, read the ranges, WRITE + COMMIT them, ClearDirty. If
// it differs, the remote file changed meanwhile: the server's version
// wins in place, and MoveToConflicts moves the local copy to
// <cache>/conflicts/<name>.<time>.<hash> (logged, counted in
// Stats.Conflicts), so nothing is merged and nothing is lost.
//
// # Memory
//
// The in-memory index (journal.go) holds one entry for every object on
// disk, whether or not a cookie is live: culling needs each object's
// bytes and recency, and AcquireCookie its key, aux and present ranges.
// A relinquished cookie itself is freed (cookie table, fd, locks), but
// its object's entry stays as long as the object holds data — so the
// index grows with the number of cached objects, and what bounds it is
// culling: Options.MaxObjects (default 1<<18), and also MaxBytes and the
// free space and free files of the cache filesystem. MaxObjects is a
// budget like MaxBytes, with the F thresholds: below FCull percent of it
// unused (checked by each acquire of a new object, which kicks the
// culler, and by every cull pass) unused objects are culled least
// recently used first until FRun percent is unused; it never stops
// writes. Only an object whose cookie is live can keep it above the
// budget (its entry stays, its data goes). An object relinquished with nothing cached
// (acquired for a lookup, never read) leaves no entry. Measured by
// BenchmarkMemoryPerObject (10 000 objects of 4 KiB, 36-byte key,
// 24-byte aux, cookies relinquished, heap after GC): about 220 bytes per
// object, the same after a reopen (before the compact indexEntry: 308).
// Of that, ~40 B is the map slot, 96 B the entry, 64 B key+aux (one
// allocation) and 16 B the one present range; the volume key is interned.
// A crawl over a million files that keeps a block of each would hold
// ~220 MB without MaxObjects; the default bounds the index at about
// 58 MB. With MaxObjects 2000 the same 10 000-object run keeps 1 878
// objects and 45 bytes per object created (the benchmark's second case).
// A range map of many extents costs 16 B per
// extent; dirty ranges and the write verifier are allocated only for
// objects that have them. The journal file is compacted to one record per
// object and range, so it is bounded by the same object count.
//
// # Concurrency
//
// Cache, Volume and Cookie are safe for concurrent use. Lock order,
// outermost first:
//
//	Cache.syncMu (one SyncDirty at a time)
//	→ Cookie.io (RW: shared by data I/O, exclusive by Invalidate, Resize,
//	           Relinquish and culling)
//	→ Cache.mu (cookie map, fd LRU, open-file and pinned counts)
//	→ Cookie.mu (users, pins, fd, extents, dirty ranges, aux, size)
//	→ journal.mu (persistent index; a leaf)
//
// Cache.cullMu serializes cull passes and is taken before all of them.
// File reads and writes run with only Cookie.io held shared, plus a
// reference on the fd that keeps eviction away. No lock is held while
// calling Options.PinPressure, and no other package is called with a lock
// held.
package fscache
