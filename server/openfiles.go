package server

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	billy "github.com/go-git/go-billy/v5"
	lru "github.com/hashicorp/golang-lru/v2"
)

// openFile is one cached billy file, shared by concurrent READ/WRITE/COMMIT
// requests for the same file id.
//
// Concurrency: refs and evicted are guarded by mu; unlinked is atomic;
// the file itself is used concurrently through ReadAt/WriteAt (seek+write
// under mu for files without WriteAt).
type openFile struct {
	id       uint64
	path     string
	f        billy.File
	writable bool

	// unlinked is set once an fstat of f shows no links left: the file
	// was removed (or replaced) behind the server's back, so nothing
	// written to f could ever be read through a name again.
	unlinked atomic.Bool

	mu      sync.Mutex
	refs    int
	evicted bool
}

// openFiles keeps recently used files open so READ and WRITE do not pay an
// open/close per RPC (go-nfs does). An LRU of at most max entries; an
// evicted file is closed as soon as no request is using it. Every open fd
// holds one of max tokens, so open fds never exceed max: a miss while all
// max files are in use waits for one to be released.
//
// Replaced files (RFC 1813 §4.4 STALE): an fd follows its inode, as a
// knfsd handle does, so a file removed or replaced outside NFS must not
// keep receiving data. The guarantee, for files with an identity
// (fileIdentity) and local files for the link count:
//
//   - acquire, when it opens a file, compares the identity of the fd it
//     got (statx or fstat of the fd) with the one the handle table
//     recorded for the id; on a mismatch the id is forgotten and the call
//     is STALE, so an old handle never opens the file that now has its
//     name, and the new file's handle (a new id) opens the new inode.
//   - Every WRITE checks (fstat) just after writing, every READ just
//     after reading (the fstat of its post-op attributes), and every sync
//     (COMMIT, DATA_SYNC/FILE_SYNC WRITE) just after fsync, that the
//     fd's inode still has a link: one that has none answers STALE and
//     the fd is not used again. So a WRITE or COMMIT answered OK had its
//     data land in a file that still had a name afterwards; a removal
//     after that is an ordinary removal of written data. (A READ answered
//     OK may have read a file unlinked during the read: harmless.)
//   - A file renamed away outside NFS keeps its link, so its cached fd
//     keeps serving it (as knfsd would) until evicted; other procedures,
//     which go by path, already answer STALE (handleTable.resolve).
//
// A hit costs one fstat per WRITE and nothing per READ (it reuses the
// post-op fstat); the identity is checked on a miss only.
//
// Running out of descriptors (EMFILE/ENFILE): max is a budget, not a
// promise that the process may open that many (RLIMIT_NOFILE is shared
// with connections, the state db and go-nfs's own opens). An open that
// fails for want of a descriptor closes the least recently used idle
// cached file and retries (openRetrying), as fscache does for its backing
// files, so a full table costs the cache a file, not the client an
// NFS3ERR_IO.
//
// Concurrency: safe for concurrent use. Lock order: openFiles.missMu, then
// openFile.mu; the LRU's eviction callback runs outside the LRU's lock.
type openFiles struct {
	base     billy.Filesystem
	readOnly bool
	lru      *lru.Cache[uint64, *openFile]
	missMu   sync.Mutex    // one opener per miss, so an id is never opened twice
	tokens   chan struct{} // one per open fd, capacity max
	fds      atomic.Int64
	// exhausted counts opens that failed with EMFILE/ENFILE (each then
	// retried after giving back an idle cached fd, or after a pause).
	exhausted atomic.Uint64
	// table gives the identity recorded for an id (set by attach; nil:
	// not checked).
	table *handleTable
}

func newOpenFiles(base billy.Filesystem, max int, readOnly bool) (*openFiles, error) {
	o := &openFiles{base: base, readOnly: readOnly, tokens: make(chan struct{}, max)}
	c, err := lru.NewWithEvict(max, func(_ uint64, of *openFile) { o.evict(of) })
	if err != nil {
		return nil, fmt.Errorf("open-file cache: %w", err)
	}
	o.lru = c
	return o, nil
}

func (o *openFiles) evict(of *openFile) {
	of.mu.Lock()
	// Already evicted: closeIdle claimed it and closes it itself.
	closeNow := !of.evicted && of.refs == 0
	of.evicted = true
	of.mu.Unlock()
	if closeNow {
		o.closeFile(of)
	}
}

func (o *openFiles) closeFile(of *openFile) {
	_ = of.f.Close()
	o.fds.Add(-1)
	<-o.tokens
}

func (o *openFiles) tryUse(of *openFile, write bool) bool {
	of.mu.Lock()
	defer of.mu.Unlock()
	if of.evicted || of.unlinked.Load() || (write && !of.writable) {
		return false
	}
	of.refs++
	return true
}

// acquire returns the open file for id (opening path if needed) with a
// reference the caller must release. When it has to open the file and
// finds another file than the one the id was assigned to, it forgets the
// id and answers errStaleHandle.
func (o *openFiles) acquire(id uint64, p string, write bool) (*openFile, error) {
	of, replaced, err := o.acquireFile(id, p, write)
	if replaced != nil {
		o.table.forgetReplaced(id, *replaced)
	}
	return of, err
}

// acquireFile is acquire with missMu held on a miss; replaced is the
// table entry to forget (outside missMu) when the file was replaced.
func (o *openFiles) acquireFile(id uint64, p string, write bool) (*openFile, *tableEntry, error) {
	if of, ok := o.lru.Get(id); ok && o.tryUse(of, write) {
		return of, nil, nil
	}
	o.missMu.Lock()
	defer o.missMu.Unlock()
	if of, ok := o.lru.Get(id); ok {
		if o.tryUse(of, write) {
			return of, nil, nil
		}
		o.lru.Remove(id) // read-only fd but a write is wanted, or unlinked: reopen
	}
	info, err := o.base.Lstat(basePath(p))
	if err != nil {
		return nil, nil, err
	}
	switch {
	case info.IsDir():
		return nil, nil, pathErr("open", p, syscall.EISDIR)
	case !info.Mode().IsRegular():
		// FIFOs and devices would block or misbehave; symlinks are
		// resolved by clients (READLINK), not read.
		return nil, nil, pathErr("open", p, syscall.EINVAL)
	}
	// Make room: evict the least recently used file (closed now if
	// idle) and wait for a token if every cached file is in use.
	if o.lru.Len() >= cap(o.tokens) {
		o.lru.RemoveOldest()
	}
	o.tokens <- struct{}{}
	var f billy.File
	writable := false
	if !o.readOnly {
		f, err = o.openRetrying(func() (billy.File, error) { return o.base.OpenFile(basePath(p), os.O_RDWR, 0) })
		writable = err == nil
	}
	if f == nil {
		if write || fdExhausted(err) {
			if err == nil {
				err = os.ErrPermission
			}
			<-o.tokens
			return nil, nil, err
		}
		if f, err = o.openRetrying(func() (billy.File, error) { return o.base.OpenFile(basePath(p), os.O_RDONLY, 0) }); err != nil {
			<-o.tokens
			return nil, nil, err
		}
	}
	of := &openFile{id: id, path: p, f: f, writable: writable, refs: 1}
	if replaced, err := o.checkOpened(of); err != nil {
		_ = f.Close()
		<-o.tokens
		return nil, replaced, err
	}
	o.fds.Add(1)
	o.lru.Add(id, of)
	return of, nil, nil
}

// fdRetries bounds how often an open that found no free descriptor is
// retried; with the pauses of openRetrying that is at most ~0.25 s when
// the cache has no idle file to give back.
const fdRetries = 8

// fdExhausted reports whether err says the process (EMFILE) or the
// system (ENFILE) has no descriptor left.
func fdExhausted(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)
}

// openRetrying calls open until it succeeds, fails for another reason
// than a lack of descriptors, or has been retried fdRetries times. Before
// each retry it closes the least recently used idle cached file; when
// every cached file is in use (the descriptors are held elsewhere: other
// connections, go-nfs's transient opens) it pauses instead, 1 ms doubling,
// for them to be given back. It needs no lock of the cache, so any open
// of the export can use it.
func (o *openFiles) openRetrying(open func() (billy.File, error)) (billy.File, error) {
	pause := time.Millisecond
	for attempt := 0; ; attempt++ {
		f, err := open()
		if err == nil || !fdExhausted(err) {
			return f, err
		}
		o.exhausted.Add(1)
		if attempt == fdRetries {
			return nil, fmt.Errorf("%w (after closing idle cached files and %d retries)", err, fdRetries)
		}
		if !o.closeIdle() {
			time.Sleep(pause)
			pause *= 2
		}
	}
}

// closeIdle closes the least recently used cached file no request is
// using, and reports whether there was one. The file is claimed (marked
// evicted, so no request can take it any more) under its own lock before
// it leaves the LRU; the eviction callback leaves a claimed file alone.
func (o *openFiles) closeIdle() bool {
	for _, id := range o.lru.Keys() { // oldest first
		of, ok := o.lru.Peek(id)
		if !ok {
			continue
		}
		of.mu.Lock()
		idle := of.refs == 0 && !of.evicted
		if idle {
			of.evicted = true
		}
		of.mu.Unlock()
		if !idle {
			continue
		}
		// Remove only if the id still maps to this file: a concurrent
		// miss may have replaced it (then the new file stays cached).
		if cur, ok := o.lru.Peek(id); ok && cur == of {
			o.lru.Remove(id)
		}
		o.closeFile(of)
		return true
	}
	return false
}

// checkOpened compares a freshly opened file (fstat: what was really
// opened, whatever the path named a moment before) with the identity the
// table recorded for its id.
func (o *openFiles) checkOpened(of *openFile) (*tableEntry, error) {
	s, ok := of.f.(interface{ Stat() (os.FileInfo, error) })
	if !ok {
		return nil, nil
	}
	fi, err := s.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat opened %q: %w", of.path, err)
	}
	if err := of.checkLinked(fi); err != nil {
		return nil, err
	}
	if o.table == nil {
		return nil, nil
	}
	key, ok := o.table.fdKey(of.f, fi)
	if !ok {
		return nil, nil
	}
	e, found := o.table.entry(of.id)
	if !found {
		return nil, fmt.Errorf("open %q: %w", of.path, errStaleHandle)
	}
	if e.hasKey && e.path == of.path && !e.key.same(key) {
		return &e, fmt.Errorf("open %q: another file has its name now: %w", of.path, errStaleHandle)
	}
	return nil, nil
}

// checkLinked marks of unlinked, and answers errStaleHandle, when fi
// (an fstat of of.f) shows a local inode without links.
func (of *openFile) checkLinked(fi os.FileInfo) error {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 0 {
		of.unlinked.Store(true)
		return fmt.Errorf("%q was removed outside NFS: %w", of.path, errStaleHandle)
	}
	if of.unlinked.Load() {
		return fmt.Errorf("%q was removed outside NFS: %w", of.path, errStaleHandle)
	}
	return nil
}

// fstat stats the open file itself; ok is false when the file type
// cannot (then nothing is checked).
func (of *openFile) fstat() (os.FileInfo, bool, error) {
	s, ok := of.f.(interface{ Stat() (os.FileInfo, error) })
	if !ok {
		return nil, false, nil
	}
	fi, err := s.Stat()
	return fi, true, err
}

func (o *openFiles) release(of *openFile) {
	of.mu.Lock()
	of.refs--
	closeNow := of.evicted && of.refs == 0
	of.mu.Unlock()
	if closeNow {
		o.closeFile(of)
	}
}

// drop closes the cached files of ids (after remove or rename).
func (o *openFiles) drop(ids ...uint64) {
	for _, id := range ids {
		o.lru.Remove(id)
	}
}

func (o *openFiles) closeAll() { o.lru.Purge() }

// open reports how many fds the cache holds right now.
func (o *openFiles) open() int64 { return o.fds.Load() }

// fdExhaustedCount reports how many opens failed with EMFILE/ENFILE.
func (o *openFiles) fdExhaustedCount() uint64 { return o.exhausted.Load() }

// defaultMaxOpenFiles is Options.MaxOpenFiles when zero, for a process
// whose soft RLIMIT_NOFILE is soft: half of it, leaving the other half
// for connections, the state db and go-nfs's own opens, and within
// [8, defaultFiles].
func defaultMaxOpenFiles(soft uint64) int {
	return int(min(defaultFiles, max(8, soft/2)))
}

// processMaxOpenFiles is defaultMaxOpenFiles for this process's current
// soft limit, read when a Server is built (a program may lower its limit
// after start). Unknown: defaultFiles (openRetrying copes if too many).
func processMaxOpenFiles() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return defaultFiles
	}
	return defaultMaxOpenFiles(lim.Cur)
}

func (of *openFile) readAt(b []byte, off int64) (int, error) {
	n, err := of.f.ReadAt(b, off)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

// writeAt writes b at off, then checks (fstat) that the inode still has
// a link: a WRITE answered OK put its data into a file that still had a
// name once the data was in. Checking after the write rather than before
// leaves no window in which an unlink can slip in unnoticed.
func (of *openFile) writeAt(b []byte, off int64) (int, error) {
	if of.unlinked.Load() {
		return 0, fmt.Errorf("%q was removed outside NFS: %w", of.path, errStaleHandle)
	}
	n, err := of.write(b, off)
	if err != nil {
		return n, err
	}
	fi, ok, err := of.fstat()
	if err != nil || !ok {
		return n, err
	}
	return n, of.checkLinked(fi)
}

func (of *openFile) write(b []byte, off int64) (int, error) {
	if w, ok := of.f.(io.WriterAt); ok {
		return w.WriteAt(b, off)
	}
	of.mu.Lock()
	defer of.mu.Unlock()
	if _, err := of.f.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	return of.f.Write(b)
}

// sync makes the file durable, then checks it still has a link: data
// synced into a removed inode is lost, and the client must hear so.
func (of *openFile) sync() error {
	if s, ok := of.f.(interface{ Sync() error }); ok {
		if err := s.Sync(); err != nil {
			return err
		}
	}
	fi, ok, err := of.fstat()
	if err != nil || !ok {
		return err
	}
	return of.checkLinked(fi)
}

// stat returns the file's attributes, or errStaleHandle once its inode
// has no link left.
func (of *openFile) stat(base billy.Filesystem) (os.FileInfo, error) {
	fi, ok, err := of.fstat()
	if !ok {
		return base.Stat(basePath(of.path))
	}
	if err != nil {
		return nil, err
	}
	if err := of.checkLinked(fi); err != nil {
		return nil, err
	}
	return fi, nil
}
