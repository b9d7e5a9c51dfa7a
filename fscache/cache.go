package fscache

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// Errors returned by the cache. Callers test them with errors.Is.
var (
	// ErrCacheUnavailable means the cache stepped aside for this I/O (no
	// space, bstop reached, backing file error): go to the server instead.
	// Nothing the caller holds is lost.
	ErrCacheUnavailable = errors.New("fscache: cache unavailable for this I/O")
	// ErrNotCached is returned by ReadAt for a range that is not present.
	ErrNotCached = errors.New("fscache: range not cached")
	// ErrNotInUse means data I/O was attempted on a cookie without a use.
	ErrNotInUse = errors.New("fscache: cookie not in use")
	// ErrInUse means Relinquish was called while the cookie still had users.
	ErrInUse = errors.New("fscache: cookie still in use")
	// ErrStale means a generation-checked write lost a race with Invalidate.
	ErrStale = errors.New("fscache: cookie invalidated since generation was sampled")
	// ErrRelinquished means the cookie was relinquished.
	ErrRelinquished = errors.New("fscache: cookie relinquished")
	// ErrAlreadyAcquired means a live cookie with the same key exists.
	ErrAlreadyAcquired = errors.New("fscache: cookie already acquired")
	// ErrDirty means the operation would discard dirty ranges (data not
	// yet committed on the server), so it was refused.
	ErrDirty = errors.New("fscache: object holds dirty data")
	// ErrDirtyConflict means AcquireCookie found dirty data recorded under
	// other coherency data: the remote file changed while local changes
	// were not written back. Nothing was discarded.
	ErrDirtyConflict = errors.New("fscache: dirty object's coherency data differs")
	// ErrClosed means the cache was closed.
	ErrClosed = errors.New("fscache: cache closed")
)

// Options configure a Cache. The zero value gives the defaults. Options is
// read by Open only; the hooks it holds are called concurrently.
type Options struct {
	// MaxOpenFiles bounds the backing-file descriptors open at once, in-use
	// and pinned ones included. Default 64. (The cache holds two more fds
	// of its own: the index and the directory lock.)
	MaxOpenFiles int
	// MaxPinned bounds the cookies pinned for writeback (each holds its
	// fd). It must be below MaxOpenFiles so unpinned I/O always finds a
	// slot. Default MaxOpenFiles*3/4 (at least 1).
	MaxPinned int
	// PinPressure is called (with no cache lock held) when SetPageDirty must
	// wait because MaxPinned cookies are pinned: the filesystem should start
	// writeback of pinned inodes, like balance_dirty_pages kicking the
	// flusher. It may be called repeatedly while the dirtier waits.
	PinPressure func()
	// MaxBytes limits the bytes of present data in the cache; 0 = no limit.
	MaxBytes int64
	// MaxObjects bounds the objects in the cache index, which is held in
	// memory (about 220 bytes per object, see doc.go "Memory"): when the
	// unused share of it falls below FCull, unused objects are culled,
	// least recently used first, until it is above FRun. It never stops
	// writes. Default 1<<18 (about 58 MB of index); negative = no limit.
	// Keep it well above the live cookies (a filesystem's inode bound):
	// live cookies' entries cannot be culled, and while they alone exceed
	// the budget every new object starts a futile cull pass.
	MaxObjects int
	// Culling thresholds in percent, as cachefilesd's brun/bcull/bstop and
	// frun/fcull/fstop: culling starts when free space (or free files) of
	// the cache filesystem, or the unused share of MaxBytes, falls below
	// Cull; it runs until all are above Run; below Stop no new data is
	// written. Defaults 7/5/1.
	BRun, BCull, BStop float64
	FRun, FCull, FStop float64
	// CullInterval is how often the background culler checks the
	// thresholds. Default 5s; negative disables the background culler
	// (Cull can still be called).
	CullInterval time.Duration
	// Durable makes every present-range record survive power loss, not
	// only process death: the backing file is fdatasync'd before the record
	// is appended, and the index is fsync'd after.
	Durable bool
	// DirtySyncInterval is how often dirty records (MarkDirty) and their
	// data are made durable by a background SyncDirty. Default 5s (like
	// dirty_writeback_centisecs); negative disables it (SyncDirty and
	// Close still sync).
	DirtySyncInterval time.Duration
	// Logger receives culling and error reports. nil discards.
	Logger *slog.Logger

	// statfs is a fault-injection hook for tests: free block and file
	// fractions of the cache filesystem.
	statfs func(dir string) (freeBlocks, freeFiles float64, err error)
	// beforeFdatasync is a test hook: SyncDirty calls it (no lock but
	// Cookie.io held shared) just before each backing-file fdatasync.
	beforeFdatasync func(key []byte)
	// pwrite is a fault-injection hook for tests.
	pwrite func(f *os.File, p []byte, off int64) (int, error)
}

// Cache is an open cache directory: the counterpart of a cachefiles cache
// bound by cachefilesd. All methods are safe for concurrent use.
//
// Lock order (outermost first): Cookie.io → Cache.mu → Cookie.mu →
// journal.mu. Cache.mu guards the cookie map, the fd LRU, the open-file and
// pinned counts; Cookie.mu a cookie's users, pins, file, extents; journal.mu
// the persistent index. No lock is held while calling Options.PinPressure.
type Cache struct {
	dir      string
	objDir   string
	opts     Options
	log      *slog.Logger
	journal  *journal
	lockFile *os.File

	mu          sync.Mutex
	slotFree    *sync.Cond    // an fd slot may have become free
	pinChanged  chan struct{} // closed and replaced when a cookie is unpinned
	slotWaiters atomic.Int32
	closed      bool
	volumes     map[string]*Volume
	cookies     map[objKey]*Cookie
	lru         *simplelru.LRU[objKey, *Cookie] // unpinned cookies holding an open fd
	openFiles   int
	pinned      int // cookies with pins > 0

	stopped       atomic.Bool // below a Stop threshold: no new data written
	dirtyUnsynced atomic.Bool // MarkDirty since the last SyncDirty
	cullKick      chan struct{}
	done          chan struct{}
	wg            sync.WaitGroup
	cullMu        sync.Mutex // one cull pass at a time
	syncMu        sync.Mutex // one SyncDirty at a time; outermost

	st counters
}

// Open opens (creating if needed) the cache in dir and replays its index:
// a reopened cache serves what it held. Only one Cache may have dir open.
func Open(dir string, opts Options) (*Cache, error) {
	if opts.MaxOpenFiles <= 0 {
		opts.MaxOpenFiles = 64
	}
	if opts.MaxOpenFiles < 2 {
		opts.MaxOpenFiles = 2
	}
	if opts.MaxPinned <= 0 {
		opts.MaxPinned = max(1, opts.MaxOpenFiles*3/4)
	}
	if opts.MaxPinned >= opts.MaxOpenFiles {
		return nil, fmt.Errorf("fscache: MaxPinned %d must be below MaxOpenFiles %d", opts.MaxPinned, opts.MaxOpenFiles)
	}
	def := func(v *float64, d float64) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&opts.BRun, 7)
	def(&opts.BCull, 5)
	def(&opts.BStop, 1)
	def(&opts.FRun, 7)
	def(&opts.FCull, 5)
	def(&opts.FStop, 1)
	if !(opts.BRun > opts.BCull && opts.BCull > opts.BStop && opts.FRun > opts.FCull && opts.FCull > opts.FStop && opts.BRun < 100 && opts.FRun < 100) {
		return nil, fmt.Errorf("fscache: thresholds must satisfy 100 > run > cull > stop > 0")
	}
	if opts.MaxObjects == 0 {
		opts.MaxObjects = 1 << 18
	}
	if opts.CullInterval == 0 {
		opts.CullInterval = 5 * time.Second
	}
	if opts.DirtySyncInterval == 0 {
		opts.DirtySyncInterval = 5 * time.Second
	}
	if opts.statfs == nil {
		opts.statfs = statfsFree
	}
	if opts.pwrite == nil {
		opts.pwrite = func(f *os.File, p []byte, off int64) (int, error) { return f.WriteAt(p, off) }
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	objDir := filepath.Join(dir, "objects")
	if err := os.MkdirAll(objDir, 0o700); err != nil {
		return nil, fmt.Errorf("fscache: create cache dir: %w", err)
	}
	lf, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("fscache: lock file: %w", err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lf.Close()
		return nil, fmt.Errorf("fscache: cache %s is in use by another process: %w", dir, err)
	}
	j, err := openJournal(dir, opts.Durable)
	if err != nil {
		lf.Close()
		return nil, err
	}
	// The LRU never evicts by itself: the bound is enforced by openFiles,
	// which also counts in-use and pinned fds.
	lru, _ := simplelru.NewLRU[objKey, *Cookie](opts.MaxOpenFiles+1, nil)
	c := &Cache{
		dir: dir, objDir: objDir, opts: opts, log: log, journal: j, lockFile: lf,
		volumes: make(map[string]*Volume), cookies: make(map[objKey]*Cookie), lru: lru,
		cullKick: make(chan struct{}, 1), done: make(chan struct{}), pinChanged: make(chan struct{}),
	}
	c.slotFree = sync.NewCond(&c.mu)
	if opts.CullInterval > 0 {
		c.wg.Add(1)
		go c.culler()
	}
	if opts.DirtySyncInterval > 0 {
		c.wg.Add(1)
		go c.dirtySyncer()
	}
	return c, nil
}

// Close closes every backing file and writes the index compactly. Cookies
// become unusable; pins still held are dropped (their dirty data is the
// filesystem's, not the cache's).
func (c *Cache) Close() error {
	// Dirty data must be durable before the files close (close does not
	// fdatasync).
	syncErr := c.SyncDirty()
	if errors.Is(syncErr, ErrClosed) {
		syncErr = nil
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	var files []*os.File
	for _, ck := range c.cookies {
		ck.mu.Lock()
		if ck.file != nil {
			files = append(files, ck.file)
			ck.file = nil
			c.openFiles--
		}
		ck.dead = true
		ck.mu.Unlock()
	}
	c.lru.Purge()
	c.slotFree.Broadcast()
	c.mu.Unlock()
	c.wg.Wait()
	// A SyncDirty called by a user may still be fdatasyncing one of files.
	c.syncMu.Lock()
	var err error
	for _, f := range files {
		err = errors.Join(err, f.Close())
	}
	c.syncMu.Unlock()
	err = errors.Join(err, syncErr, c.journal.close(), c.lockFile.Close())
	return err
}

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.dir }

// BackingDir is the directory holding the backing files (for tests and
// operators counting open descriptors).
func (c *Cache) BackingDir() string { return c.objDir }

// Volume is a cache volume: a namespace of cookies (server + export), as
// fscache_acquire_volume. Safe for concurrent use. Using a relinquished
// Volume acquires cookies in the same namespace (the key is what counts).
type Volume struct {
	cache *Cache
	key   []byte
}

// AcquireVolume returns the volume for key (e.g. server address + export
// path). Acquiring the same key again returns the same volume.
func (c *Cache) AcquireVolume(key []byte) (*Volume, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	if v := c.volumes[string(key)]; v != nil {
		return v, nil
	}
	v := &Volume{cache: c, key: bytes.Clone(key)}
	c.volumes[string(key)] = v
	c.st.volumes.Add(1) // live volumes
	return v, nil
}

// Key is the volume key.
func (v *Volume) Key() []byte { return bytes.Clone(v.key) }

// Relinquish gives the volume up, like fscache_relinquish_volume. Its
// cookies must have been relinquished; the cached data stays for a later
// AcquireVolume of the same key.
func (v *Volume) Relinquish() error {
	c := v.cache
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, ck := range c.cookies {
		if ck.vol == v {
			return fmt.Errorf("%w: volume %q has live cookies", ErrInUse, v.key)
		}
	}
	if c.volumes[string(v.key)] == v {
		delete(c.volumes, string(v.key))
		c.st.volumes.Add(-1)
	}
	return nil
}

// objectKey names a backing object: a hash of volume key and cookie key,
// length-prefixed so that (a,bc) and (ab,c) differ.
func objectKey(vol, key []byte) objKey {
	h := sha256.New()
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(vol)))
	h.Write(n[:])
	h.Write(vol)
	h.Write(key)
	var k objKey
	copy(k[:], h.Sum(nil))
	return k
}

func (c *Cache) backingPath(k objKey) string {
	s := hex.EncodeToString(k[:])
	return filepath.Join(c.objDir, s[:2], s)
}

// AcquireCookie returns the cookie for the remote file key (e.g. an NFS
// file handle) with coherency data aux and object size, like
// fscache_acquire_cookie. If the cache holds data for key under different
// aux, that data is discarded. A key may have one live cookie at a time.
func (v *Volume) AcquireCookie(key, aux []byte, size int64) (*Cookie, error) {
	c := v.cache
	k := objectKey(v.key, key)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.st.acquires.Add(1)
	if c.closed {
		return nil, ErrClosed
	}
	if c.cookies[k] != nil {
		return nil, fmt.Errorf("%w: %x", ErrAlreadyAcquired, key)
	}
	ck := &Cookie{cache: c, vol: v, k: k, key: bytes.Clone(key), path: c.backingPath(k)}
	rec, ok := c.journal.lookup(k)
	switch {
	case ok && bytes.Equal(rec.volKey, v.key) && bytes.Equal(rec.key, key) && bytes.Equal(rec.aux, aux):
		ck.aux, ck.size, ck.extents, ck.dirty = rec.aux, rec.size, rec.extents, rec.dirty
		if len(rec.dirty) > 0 {
			// Dirty bytes may lie beyond the remote size: never cut them.
			size = max(size, rec.dirty[len(rec.dirty)-1].end)
		}
		if size != rec.size {
			// The remote size is authoritative; data past it is gone.
			ck.size = size
			ck.extents = ck.extents.truncate(size)
			if err := c.journal.commit(encResize(k, size)); err != nil {
				return nil, err
			}
			if err := truncatePath(ck.path, size); err != nil {
				return nil, err
			}
		}
		c.journal.touch(k)
	case ok && len(rec.dirty) > 0:
		return nil, fmt.Errorf("%w: %x (%d dirty bytes kept)", ErrDirtyConflict, key, rec.dirty.bytes())
	default:
		if ok {
			// Coherency mismatch (or a hash collision): the cached data is
			// of another version of the file.
			c.st.acquireDiscards.Add(1)
			if err := truncatePath(ck.path, 0); err != nil {
				return nil, err
			}
		}
		ck.aux, ck.size = bytes.Clone(aux), size
		if err := c.journal.commit(encObject(k, &objRecord{volKey: v.key, key: ck.key, aux: ck.aux, size: size})); err != nil {
			return nil, err
		}
		if !ok && c.freeObjects() < c.opts.FCull {
			c.kickCull()
		}
	}
	c.cookies[k] = ck
	c.st.cookies.Add(1)
	return ck, nil
}

// truncatePath truncates a backing file that may not exist, without
// keeping an fd.
func truncatePath(path string, size int64) error {
	if err := os.Truncate(path, size); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("fscache: truncate backing file: %w", err)
	}
	return nil
}

// ensureOpen opens ck's backing file, taking an fd slot. When all
// MaxOpenFiles slots are taken it closes the least recently used evictable
// fd (an unpinned cookie with no I/O in flight, unused ones first), or waits
// for one. An open of a pinned cookie's file after the pin opened it is a
// writeback reopen, which must never happen; it is counted.
//
// The process may run out of descriptors before the cache reaches
// MaxOpenFiles (RLIMIT_NOFILE is shared with the rest of the program). An
// open that fails with EMFILE/ENFILE closes one evictable fd of the cache
// and tries again, so the cache shrinks to the descriptors it can get
// instead of stepping aside for every file; only when it has nothing left
// to evict does the open fail with ErrCacheUnavailable (the caller then
// goes to the server).
func (c *Cache) ensureOpen(ck *Cookie) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.slotWaiters.Add(1)
	defer c.slotWaiters.Add(-1)
	var f *os.File
	for {
		if c.closed {
			return ErrClosed
		}
		ck.mu.Lock()
		open, dead := ck.file != nil, ck.dead
		ck.mu.Unlock()
		if dead {
			return ErrRelinquished
		}
		if open {
			return nil
		}
		if c.openFiles >= c.opts.MaxOpenFiles {
			if !c.evictOneLocked() {
				c.st.slotWaits.Add(1)
				c.slotFree.Wait()
			}
			continue
		}
		// ck.mu is held from the open until ck.file is set: Invalidate and
		// Relinquish act on the backing file by path while ck.file is nil,
		// and must not do so between the open and the assignment.
		ck.mu.Lock()
		var err error
		f, err = openBacking(ck.path)
		if err == nil {
			break
		}
		ck.mu.Unlock()
		if isFDExhausted(err) {
			c.st.fdExhausted.Add(1)
			if c.evictOneLocked() { // locks other cookies' mu: ours is released
				continue
			}
		}
		return fmt.Errorf("%w: open backing file: %w", ErrCacheUnavailable, err)
	}
	ck.file = f
	c.openFiles++
	c.st.opens.Add(1)
	if ck.everOpened {
		c.st.reopens.Add(1)
	}
	if ck.pins > 0 && ck.pinFileHeld {
		c.st.writebackReopens.Add(1)
	}
	ck.everOpened = true
	pinned := ck.pins > 0 || ck.pinPending > 0
	ck.mu.Unlock()
	if !pinned {
		c.lru.Add(ck.k, ck)
	}
	if c.openFiles > int(c.st.peakOpenFiles.Load()) {
		c.st.peakOpenFiles.Store(int64(c.openFiles))
	}
	return nil
}

// openBacking opens (creating) a backing file and its fan-out directory.
func openBacking(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		if err = os.MkdirAll(filepath.Dir(path), 0o700); err == nil {
			f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		}
	}
	return f, err
}

// isFDExhausted: the process (EMFILE) or the system (ENFILE) is out of
// file descriptors.
func isFDExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// evictOneLocked closes one evictable fd; c.mu is held. Unused cookies go
// first (the kernel's LRU of unused cookies), then in-use unpinned ones.
func (c *Cache) evictOneLocked() bool {
	keys := c.lru.Keys() // oldest first
	for pass := 0; pass < 2; pass++ {
		for _, k := range keys {
			ck, ok := c.lru.Peek(k)
			if !ok {
				continue
			}
			ck.mu.Lock()
			if ck.file == nil || ck.pins > 0 || ck.pinPending > 0 || ck.dead {
				// Stale entry: not holding an evictable fd.
				ck.mu.Unlock()
				c.lru.Remove(k)
				continue
			}
			if ck.fileRefs.Load() > 0 || (pass == 0 && ck.users > 0) {
				ck.mu.Unlock()
				continue
			}
			f := ck.file
			ck.file = nil
			inUse := ck.users > 0
			ck.mu.Unlock()
			c.lru.Remove(k)
			f.Close()
			c.openFiles--
			if inUse {
				c.st.inUseEvictions.Add(1)
			} else {
				c.st.lruEvictions.Add(1)
			}
			return true
		}
	}
	return false
}

// closeFileLocked closes ck's fd if open; c.mu is held, ck.mu is not.
func (c *Cache) closeFileLocked(ck *Cookie) {
	ck.mu.Lock()
	f := ck.file
	ck.file = nil
	ck.mu.Unlock()
	c.lru.Remove(ck.k)
	if f != nil {
		f.Close()
		c.openFiles--
		c.slotFree.Broadcast()
	}
}

// MaxPinned is the bound on pinned cookies. A filesystem using a
// writeback.Flusher sets writeback.Options.MaxPinnedInodes to at most this,
// so that the flusher throttles dirtiers (balance_dirty_pages) before
// SetPageDirty would have to wait.
func (c *Cache) MaxPinned() int { return c.opts.MaxPinned }

// MaxOpenFiles is the bound on open backing fds.
func (c *Cache) MaxOpenFiles() int { return c.opts.MaxOpenFiles }
