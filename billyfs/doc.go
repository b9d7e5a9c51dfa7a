// Package billyfs is a billy.Filesystem (go-billy v5) over a remote NFSv3
// export (RFC 1813) whose file data is cached on local disk through fscache
// and written back through writeback — the arrangement of the Linux NFS
// client with FS-Cache (fs/nfs + fs/netfs + fs/fscache + cachefiles), in Go.
//
//	fsys, err := billyfs.New(ctx, billyfs.Options{Addr: "127.0.0.1:2049", CacheDir: "/var/cache/app"})
//	f, _ := fsys.Create("dir/file")   // parents are created, as osfs does
//	f.Write(data)                     // into the cache, dirty
//	f.Close()                         // WRITE (UNSTABLE) + COMMIT, errors reported
//	fsys.Close()                      // sync, release cookies and fds, unmount
//
// # Inodes and cookies
//
// Each remote regular file this FS has opened is an inode keyed by its NFS
// file handle (struct nfs_inode). With a cache, the inode holds an fscache
// cookie (volume key "nfs3:" + server address + export, cookie key the file
// handle bytes, aux data the file's size, mtime and ctime, like
// nfs_fscache_inode_auxdata) and a writeback.Inode. Every open File takes a
// cookie use (fscache_use_cookie in nfs_open) and Close drops it
// (fscache_unuse_cookie in nfs_release), recording the current aux data.
// Inodes no file has open stay in memory (their backing fds in fscache's
// LRU) until more than Options.MaxInodes exist; eviction drops a writeback
// pin still held (fscache_clear_inode_writeback) and relinquishes the
// cookie, keeping its data for the next open.
//
// # Memory bound (issue #8)
//
// A long-running FS (a proxy crawled over a 10-million-file export) must
// not grow with every file it ever touched. As the kernel's inode and
// dentry LRUs (prune_icache_sb, prune_dcache_sb, iput_final), every cache
// of this package is bounded by a count, least recently used first out:
//   - the inode table: at most min(MaxInodes, MaxCachedInodes) inodes
//     besides those open, dirty or pinned for writeback, which are never
//     evicted (an idle dirty one is passed over until writeback cleans
//     it). Eviction relinquishes the cookie without retiring its data; the
//     next open acquires it again with the attributes it revalidated, so
//     an unchanged file is read from the cache (0 READ) after one LOOKUP
//     or GETATTR, and a changed one is invalidated as usual.
//   - attributes (per handle), directory entries (negative ones
//     included), names in cached listings, and symbolic link targets:
//     each at most Options.MaxCachedInodes (default 100 000); evicting a
//     handle's attributes drops its listing and link target with them,
//     and a listing larger than the bound is not kept.
//
// Eviction only costs round trips, never data or coherency: an inode
// with dirty data stays, and a metadata entry is re-fetched on next use
// (an evicted entry can no longer stand in during an outage). Measured
// (BenchmarkMetadataMemory, 10 000 files): about 570 B of heap per
// stat'ed file (attributes + directory entry) and 1.5 KB per idle inode
// with its cookie; at the defaults, about 60 MB for metadata and 1.5 MB
// for idle inodes.
//
// # Reads
//
// A read is served from the cache when the range is present
// (fscache_read). A miss reads the missing range plus a read-ahead window
// from the server with client.ReadAt (concurrent READs of rsize), stores the
// parts the cache does not hold (never over locally written data; refused
// by the cookie generation if the file was invalidated meanwhile) and
// serves the caller from the cache. The window starts at 256 KiB and doubles
// while reads are sequential, up to Options.ReadAhead (the kernel's
// on-demand readahead). Without a cache, a File keeps a read-ahead buffer
// of the same window for small sequential reads.
//
// # Writes and writeback: the pinning mechanism
//
// A write goes into the cache file, then Flusher.MarkDirty records the
// page-aligned range dirty (set_page_dirty + balance_dirty_pages, which may
// throttle the writer) and, as its pin hook, fscache.SetPageDirty sets
// PinningCacheWB and takes a cookie use once per dirty period
// (fscache_dirty_folio), so writeback never has to reopen the backing file.
// Writeback (the flusher after Options.DirtyExpire, under memory or pin
// pressure, or Sync/Close) calls our WritePages: the present bytes of each
// dirty extent are sent with UNSTABLE WRITEs (client.WriteAtFrom, which
// re-reads them from the cache should the server's write verifier change)
// followed by a COMMIT (nfs_writepages + nfs_commit_inode); dirty data that
// fits in one WRITE goes FILE_SYNC without a COMMIT, as the Linux client
// sends a single request FLUSH_STABLE. When the last
// dirty page is clean, writeback clears PinningCacheWB atomically with that
// check and our WriteInode calls fscache.UnpinWriteback (->write_inode →
// fscache_unpin_writeback).
//
// Background writeback starts once Options.DirtyBackgroundBytes (4 MiB)
// are dirty, so that the upstream WRITEs overlap a client's upload.
// Measured (BenchmarkProxyWrite, our client, 64 MiB UNSTABLE + COMMIT,
// in-process proxy vs the same upstream directly): 0.45-0.58 of direct.
// Most of the gap is the proxy COMMIT's Cache.SyncDirty fdatasync'ing
// the backing file it just wrote back whole (a second full write of the
// data, to the local disk, on the COMMIT's critical path): skipping it for
// a clean file gave 0.69, 0.77 with early background writeback. It is
// kept until fscache syncs only cookies with dirty ranges left and
// Relinquish waits for SyncDirty's use of the fd (a race seen otherwise).
//
// Without a cache (empty CacheDir) writes go straight to the server as
// UNSTABLE WRITEs (client.WriteAt keeps a copy until COMMIT) and Close/Sync
// COMMIT them.
//
// If the cache steps aside (fscache.ErrCacheUnavailable: ENOSPC, bstop, a
// failed backing write), the inode's dirty data is written back, its cache
// object invalidated, and its I/O goes to the server until the last close:
// nothing is lost.
//
// # Coherency: close-to-open
//
// As the Linux NFS client: File.Close and File.Sync write back and COMMIT
// the file's dirty data and return any writeback error not yet reported to
// that File (errseq, file->f_wb_err); FS.Sync does it for every file. Open
// always revalidates with the server (GETATTR, or the attributes of the
// LOOKUP/CREATE it just did); if size, mtime or ctime differ from what the
// inode last knew, the cookie is invalidated (fscache_invalidate). The
// inode adopts the post-operation attributes the server returns for our
// own COMMIT and SETATTR (wcc_data, RFC 1813 §2.6), so our own writes never
// make us discard our own cache. A change made by another client between
// our last write and our COMMIT is not detected (the same weakness as
// wcc_data without pre-op attributes); nor is one that keeps size, mtime
// and ctime equal.
//
// The invariant (issues #6, #8): revalidation never discards, truncates or
// hides data of an acknowledged write. The attributes an open fetched
// predate its own count as a writer, so a File that opened meanwhile may
// have written and written back since: a difference only says "look
// closer". Revalidation then holds inode.fillMu exclusively — every local
// write holds it shared, cached ones from the cache write to their dirty
// marks, writes through for their WRITE — writes back what is dirty, and
// fetches the attributes again; only if those differ from ours is the
// size set from them and the cache truncated and invalidated, still under
// fillMu. A write acknowledged before that decision is therefore on the
// server and in the attributes compared; one acknowledged after it lands
// on the new version. A size from the upstream older than our own last
// write is never adopted. Truncate (SETATTR size) holds fillMu the same
// way, so a concurrent write is wholly before or wholly after it; so does
// File.Close from sampling the local size it records with its cookie use
// to the Unuse, because fscache cuts the object — present data and dirty
// records — to that size.
//
// Attributes and directory entries are cached for Options.AttrTimeout
// (acregmin/acdirmin); Stat and ReadDir may show another client's change
// that late; open does not. A stale handle (NFS3ERR_STALE) makes the FS
// forget its cached names and look the path up again. Within AttrTimeout
// directory listings and names found missing are cached too (Linux's
// readdir pages and negative dentries): this FS's own creates, removes,
// renames and links update them at once, others' changes show after
// AttrTimeout; a LOOKUP's "not found" is cached only if no entry
// changed while it was in flight (a concurrent create would be hidden).
// Directory operations take the directory's new attributes
// from the reply, only if their ctime is newer (nfs_post_op_update_inode).
//
// # Upstream outages: Options.ServeStale
//
// By default an outage makes every call that needs the upstream wait for
// it — the client reconnects and retransmits by itself — for up to
// Options.Timeout, then fail (ETIMEDOUT); cached answers within
// AttrTimeout and cached file data of files already open keep working.
//
// With ServeStale > 0 (the knfsd-cache-utils idea of riding out a source
// outage, done the Linux way: nfs_revalidate_inode falling back to the
// cached inode), billyfs keeps serving from what it last validated:
//   - The upstream is declared down by the first call that fails with a
//     connection error (no reply, connection lost, refused, reset); a
//     revalidation gives it only Options.OutageDetect (default 3 s) to
//     answer. One Warn line is logged; a NULL probe then runs every
//     half OutageDetect (at most 500 ms) until NULLs on every connection
//     are answered, which is logged once at Info with the outage's
//     length and the number of stale answers given. Stats reports
//     UpstreamDown, Outages and StaleAnswers.
//   - While it is down, attributes, names (LOOKUP), directory listings
//     (READDIRPLUS), symbolic link targets and FSSTAT are answered from
//     the last copy validated with the upstream, provided that validation
//     is at most ServeStale old; open's close-to-open check uses the same
//     attributes, so cached file data is served as it was.
//   - Everything else — reads of data not in the cache, names never seen,
//     CREATE, REMOVE, RENAME, SETATTR, COMMIT (File.Sync/Close of written
//     data) — is sent as usual: the client waits through reconnects for
//     up to Options.Timeout, then the call fails with EIO. An outage
//     shorter than Timeout is therefore invisible to these calls.
//   - Writes go into the cache as always (dirty, pinned, durably
//     recorded). Background writeback does not try while the upstream is
//     down; when the probe sees it again, writeback starts at once. A
//     writeback error that only said "unreachable" is not reported by a
//     later Sync that finds everything written back.
//
// Limits: a writer is still throttled once Options.DirtyLimitBytes of
// dirty data are held (balance_dirty_pages), and during an outage that
// wait lasts until the upstream is back, as with a hard-mounted Linux
// client. A revalidation that is merely slow (longer than OutageDetect,
// e.g. a READDIRPLUS of a huge directory on a loaded upstream) is taken
// for an outage: the stale copy is served (still within ServeStale) and
// the probe ends the "outage" at its next answer.
//
// The staleness guarantee: no answer served during an outage is older
// than ServeStale counted from its last validation with the upstream; past
// that, calls fail (EIO) instead of answering. Changes made on the
// upstream by other clients during the outage are not seen until it is
// back (they cannot be); data written here meanwhile is written back over
// them (last writer wins, as with the Linux client's writeback). If the
// process dies during the outage, the dirty records make the next New
// write the data back, or keep it apart as a conflict (see "Crash safety").
//
// # Paths
//
// Names behave like go-billy's osfs (a chroot helper over the OS): "/" and
// "" are the FS root, names are cleaned, ".." above the root is
// billy.ErrCrossedBoundary, Create/Symlink/Rename create missing parent
// directories, and Chroot returns an *FS rooted lower. Symbolic links are
// followed by billyfs itself (up to 40, then ELOOP); an absolute target
// means the FS root and is stored as an export path, and a link inside a
// chroot that leads out of it is billy.ErrCrossedBoundary.
//
// # Identity, hard links and usage for a re-exporting server
//
// Every os.FileInfo billyfs returns (Stat, Lstat, ReadDir) has a
// *RemoteAttr as Sys(): the upstream's fattr3. Its NFSFileID is the
// upstream's fileid, so a server re-exporting billyfs (nfsd-cache proxy)
// hands its clients the same fileid across renames, as knfsd re-exporting
// an NFS mount does (the Linux client turns a changed fileid into ESTALE);
// NFSLinkCount, NFSOwner, NFSAccessTime and NFSChangeTime pass nlink,
// uid/gid, atime and ctime through. FS.Link is os.Link over LINK (RFC 1813
// §3.3.15) and FS.NFSUsage the upstream's FSSTAT (§3.3.18); they are the
// server package's HardLinker and UsageReporter.
//
// # Errors
//
// Every error leaves billyfs as a *fs.PathError whose Err is a
// syscall.Errno (from client's one NFS3ERR→errno table), so os.IsNotExist,
// os.IsExist and errors.Is(err, fs.ErrNotExist) hold — except
// billy.ErrCrossedBoundary, returned bare as go-billy expects. Lock/Unlock
// are no-ops (no NLM) and Capabilities does not report LockCapability.
//
// # Crash safety of dirty data
//
// A cached write stores the bytes in the cache object, then records the
// range durably with fscache's Cookie.MarkDirty (a journal record that
// survives process death at once), then dirties it in the flusher; if the
// record cannot be written the write goes through to the server instead.
// After each COMMIT (or FILE_SYNC WRITE) the written ranges are cleared
// with ClearWrittenDirty (using the DirtySeq sampled before the cache was
// read, so a racing write stays dirty) and the cookie's recorded coherency
// data is set to the post-COMMIT attributes. File.Sync, File.Close and
// FS.Sync/Close call Cache.SyncDirty (fdatasync of dirty backing files,
// fsync of the index) before reporting success, so dirty records also
// survive power loss; fscache syncs them periodically otherwise.
//
// Policy when New finds dirty objects left by a crashed predecessor on the
// same CacheDir (for each Volume.DirtyCookies entry, before serving):
//   - GETATTR the handle. If the remote file matches the recorded
//     coherency data (size, mtime, ctime) the dirty ranges are read from
//     the cache, sent with UNSTABLE WRITEs and COMMITted, then cleared:
//     the local writes win, as they would have without the crash.
//   - If the remote file changed meanwhile, or is gone (NFS3ERR_STALE),
//     nothing is merged: the server's version stays untouched and the
//     local copy is moved with Volume.MoveToConflicts to
//     <CacheDir>/conflicts/fh-<handle hex>.<UTC time>.<hash>, a warning is
//     logged and Stats.Conflicts counts it. Holes in that file are bytes
//     the cache never held.
//   - Any other failure (server unreachable) is logged and leaves the
//     records for the next New.
//
// A crash between a WRITE reaching the server and the aux update after
// its COMMIT makes the remote file look changed: that file lands in
// conflicts too (safe — nothing lost — but not automatic).
//
// # Concurrency
//
// The outage state (upstream.go) is an atomic flag plus outageMu, which
// guards only its own fields and is never held across a call.
//
// FS and File are safe for concurrent use by many goroutines; a server such
// as go-nfs calls them from many connections at once. Close must not race
// with other calls. Lock order: state.mu → inode.mu; inode.revalMu →
// inode.fillMu → inode.mu, the first two never taken while holding
// state.mu; File.mu is taken before all of them. The metadata LRUs
// (metacache.go) are guarded by state.mu, and their eviction callbacks,
// which run under it, touch only those caches. No lock of this package is
// held while calling client, fscache or writeback, except inode.fillMu
// (an I/O ordering lock): held exclusively around cache fills, invalidation
// and the switch to bypass, and by revalidation and truncate from their
// write-back of dirty data through their GETATTR/SETATTR to the truncate
// and invalidation of the cache; shared by a cached write from its cache
// write through its dirty marks (fscache MarkDirty, writeback MarkDirty,
// which may throttle) and by a write through for its WRITE. The flusher's
// writeback (WritePages, WriteInode) takes no lock of this package but
// inode.mu and state.mu briefly, so neither a throttled writer nor a
// revalidation flushing under fillMu can block the writeback it waits
// for. While a revalidation that found a difference, or a truncate, runs,
// writes and cache fills of that file wait (up to one write-back and one
// round trip; during an outage up to Options.Timeout).
package billyfs
