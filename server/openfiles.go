package server

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	billy "github.com/go-git/go-billy/v5"
	lru "github.com/hashicorp/golang-lru/v2"
)

// openFile is one cached billy file, shared by concurrent READ/WRITE/COMMIT
// requests for the same file id.
//
// Concurrency: refs and evicted are guarded by mu; the file itself is
// used concurrently through ReadAt/WriteAt (seek+write under mu for files
// without WriteAt).
type openFile struct {
	id       uint64
	path     string
	f        billy.File
	writable bool

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
// Concurrency: safe for concurrent use. Lock order: openFiles.missMu, then
// openFile.mu; the LRU's eviction callback runs outside the LRU's lock.
type openFiles struct {
	base     billy.Filesystem
	readOnly bool
	lru      *lru.Cache[uint64, *openFile]
	missMu   sync.Mutex    // one opener per miss, so an id is never opened twice
	tokens   chan struct{} // one per open fd, capacity max
	fds      atomic.Int64
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
	of.evicted = true
	closeNow := of.refs == 0
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
	if of.evicted || (write && !of.writable) {
		return false
	}
	of.refs++
	return true
}

// acquire returns the open file for id (opening path if needed) with a
// reference the caller must release.
func (o *openFiles) acquire(id uint64, p string, write bool) (*openFile, error) {
	if of, ok := o.lru.Get(id); ok && o.tryUse(of, write) {
		return of, nil
	}
	o.missMu.Lock()
	defer o.missMu.Unlock()
	if of, ok := o.lru.Get(id); ok {
		if o.tryUse(of, write) {
			return of, nil
		}
		o.lru.Remove(id) // read-only fd but a write is wanted: reopen
	}
	info, err := o.base.Lstat(basePath(p))
	if err != nil {
		return nil, err
	}
	switch {
	case info.IsDir():
		return nil, pathErr("open", p, syscall.EISDIR)
	case !info.Mode().IsRegular():
		// FIFOs and devices would block or misbehave; symlinks are
		// resolved by clients (READLINK), not read.
		return nil, pathErr("open", p, syscall.EINVAL)
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
		f, err = o.base.OpenFile(basePath(p), os.O_RDWR, 0)
		writable = err == nil
	}
	if f == nil {
		if write {
			if err == nil {
				err = os.ErrPermission
			}
			<-o.tokens
			return nil, err
		}
		if f, err = o.base.OpenFile(basePath(p), os.O_RDONLY, 0); err != nil {
			<-o.tokens
			return nil, err
		}
	}
	o.fds.Add(1)
	of := &openFile{id: id, path: p, f: f, writable: writable, refs: 1}
	o.lru.Add(id, of)
	return of, nil
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

func (of *openFile) readAt(b []byte, off int64) (int, error) {
	n, err := of.f.ReadAt(b, off)
	if err == io.EOF {
		err = nil
	}
	return n, err
}

func (of *openFile) writeAt(b []byte, off int64) (int, error) {
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

func (of *openFile) sync() error {
	if s, ok := of.f.(interface{ Sync() error }); ok {
		return s.Sync()
	}
	return nil
}

func (of *openFile) stat(base billy.Filesystem) (os.FileInfo, error) {
	if s, ok := of.f.(interface{ Stat() (os.FileInfo, error) }); ok {
		return s.Stat()
	}
	return base.Stat(basePath(of.path))
}
