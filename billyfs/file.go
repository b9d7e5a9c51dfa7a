package billyfs

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/writeback"
)

// readAhead window bounds: the window starts small and doubles while reads
// are sequential, like the kernel's ondemand readahead.
const minReadAhead = 256 << 10

// File is an open remote file. It implements billy.File and io.WriterAt.
//
// Concurrency: safe for concurrent use. Read, Write and Seek share the file
// offset under a mutex (each call is atomic with respect to the offset);
// ReadAt and WriteAt do not touch the offset and run concurrently.
type File struct {
	fs       *FS
	ino      *inode // nil for a directory
	isDir    bool
	name     string
	readable bool
	writable bool
	append   bool
	ckUse    bool // holds a cookie use (Cookie.Use at open)

	mu       sync.Mutex
	closed   bool
	off      int64
	wrote    bool
	errCur   writeback.ErrCursor
	raNext   int64 // where a sequential read would continue
	raWin    int
	rabuf    []byte // read-ahead buffer without a cache
	rabufOff int64
	rabufGen uint64
}

// Name returns the name as given to Open (cleaned, relative to the FS root).
func (f *File) Name() string { return f.name }

func (f *File) err(op string, err error) error {
	return f.fs.s.pathErr(op, f.name, err)
}

func (f *File) check(op string, write bool) error {
	if f.closed {
		return f.err(op, syscall.EBADF)
	}
	if f.isDir {
		return f.err(op, syscall.EISDIR)
	}
	if write && !f.writable || !write && !f.readable {
		return f.err(op, syscall.EBADF)
	}
	return nil
}

// window returns the read-ahead window for a read at off and advances the
// sequential-read detector. Caller holds f.mu.
func (f *File) window(off int64, n int) int {
	if off == f.raNext && f.raWin > 0 {
		f.raWin = min(2*f.raWin, f.fs.s.opts.ReadAhead)
	} else {
		f.raWin = min(minReadAhead, f.fs.s.opts.ReadAhead)
	}
	f.raNext = off + int64(n)
	return f.raWin
}

// Read reads from the file offset.
func (f *File) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("read", false); err != nil {
		return 0, err
	}
	n, err := f.readAtLocked(p, f.off)
	f.off += int64(n)
	return n, err
}

// ReadAt reads len(p) bytes at off; like io.ReaderAt it returns io.EOF with
// a short count at the end of the file.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, f.err("read", syscall.EINVAL)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("read", false); err != nil {
		return 0, err
	}
	return f.readAtLocked(p, off)
}

func (f *File) readAtLocked(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	ino := f.ino
	ra := f.window(off, len(p))
	var n int
	var err error
	if ino.cached() {
		n, err = ino.readAt(f.fs.s.ctx, p, off, ra)
	} else {
		n, err = f.readUncached(p, off, ra)
	}
	if err != nil && err != io.EOF {
		return n, f.err("read", err)
	}
	return n, err
}

// readUncached serves small sequential reads from a per-file read-ahead
// buffer (one large concurrent READ instead of many small ones) and large
// reads straight into p.
func (f *File) readUncached(p []byte, off int64, ra int) (int, error) {
	ino := f.ino
	gen := ino.generation()
	if f.rabufGen == gen && off >= f.rabufOff && off+int64(len(p)) <= f.rabufOff+int64(len(f.rabuf)) {
		return copy(p, f.rabuf[off-f.rabufOff:]), nil
	}
	if len(p) >= ra {
		return ino.readAt(f.fs.s.ctx, p, off, 0)
	}
	size := ino.localSize()
	if off >= size {
		return 0, io.EOF
	}
	n := min(int64(ra), size-off)
	if int64(cap(f.rabuf)) < n {
		f.rabuf = make([]byte, n)
	}
	f.rabuf = f.rabuf[:n]
	got, err := ino.readAt(f.fs.s.ctx, f.rabuf, off, 0)
	if err != nil && err != io.EOF {
		f.rabuf = f.rabuf[:0]
		return 0, err
	}
	f.rabuf, f.rabufOff, f.rabufGen = f.rabuf[:got], off, gen
	m := copy(p, f.rabuf)
	if m < len(p) {
		return m, io.EOF
	}
	return m, nil
}

// Write writes at the file offset (at the end of the file with O_APPEND).
func (f *File) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("write", true); err != nil {
		return 0, err
	}
	off := f.off
	if f.append {
		off = f.ino.localSize()
	}
	if err := f.writeLocked(p, off); err != nil {
		return 0, err
	}
	f.off = off + int64(len(p))
	return len(p), nil
}

// WriteAt writes p at off (io.WriterAt); the file offset is unchanged.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, f.err("write", syscall.EINVAL)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("write", true); err != nil {
		return 0, err
	}
	if err := f.writeLocked(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (f *File) writeLocked(p []byte, off int64) error {
	f.wrote = true
	if err := f.ino.writeAt(f.fs.s.ctx, p, off); err != nil {
		return f.err("write", err)
	}
	return nil
}

// Seek sets the file offset; io.SeekEnd is relative to the local size
// (including data written and not yet written back).
func (f *File) Seek(offset int64, whence int) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, f.err("seek", syscall.EBADF)
	}
	var base int64
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		base = f.off
	case io.SeekEnd:
		if f.ino != nil {
			base = f.ino.localSize()
		}
	default:
		return 0, f.err("seek", syscall.EINVAL)
	}
	if base+offset < 0 {
		return 0, f.err("seek", syscall.EINVAL)
	}
	f.off = base + offset
	return f.off, nil
}

// Truncate changes the file size (SETATTR after writing back dirty data).
func (f *File) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("truncate", true); err != nil {
		return err
	}
	if size < 0 {
		return f.err("truncate", syscall.EINVAL)
	}
	f.wrote = true
	if err := f.ino.truncate(f.fs.s.ctx, size); err != nil {
		return f.err("truncate", err)
	}
	return nil
}

// Stat returns the open file's attributes (fstat) without a call to the
// upstream: the cached attributes if still fresh, else those the file had
// at open or after our own last change, with the local size (data written
// and not yet written back included). Sys() is a *RemoteAttr.
func (f *File) Stat() (os.FileInfo, error) {
	f.mu.Lock()
	closed := f.closed
	f.mu.Unlock()
	if closed {
		return nil, f.err("stat", syscall.EBADF)
	}
	s := f.fs.s
	if f.ino == nil {
		return f.fs.Stat(f.name)
	}
	ino := f.ino
	a, ok := s.cachedAttr(ino.fh)
	if !ok {
		ino.mu.Lock()
		a = ino.attr
		ino.mu.Unlock()
	}
	return s.info(filepath.Base(f.name), ino.fh, a), nil
}

// Lock is a no-op: NFSv3 locking needs the NLM protocol, which billyfs does
// not speak (FS.Capabilities does not report LockCapability).
func (f *File) Lock() error { return nil }

// Unlock is a no-op, see Lock.
func (f *File) Unlock() error { return nil }

// Sync writes back and COMMITs this file's dirty data (fsync) and reports
// writeback errors not yet reported to this open file.
func (f *File) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return f.err("sync", syscall.EBADF)
	}
	return f.syncLocked()
}

func (f *File) syncLocked() error {
	if f.ino == nil {
		return nil
	}
	ctx := f.fs.s.ctx
	var errs []error
	if f.ino.wb != nil {
		err := f.fs.s.flusher.SyncFile(ctx, f.ino.wb, &f.errCur)
		if f.fs.s.healed(err, !f.ino.dirty()) {
			err = nil
		}
		errs = append(errs, err)
	}
	errs = append(errs, f.ino.commitThrough(ctx))
	if f.fs.s.cache != nil {
		// Dirty records and data still in the cache (written later, or
		// kept after a failed write-back) must survive a crash too.
		errs = append(errs, f.fs.s.cache.SyncDirty())
	}
	if err := errors.Join(errs...); err != nil {
		return f.err("sync", err)
	}
	return nil
}

// Close writes back and COMMITs the file's dirty data if it was written
// through this File (the close half of close-to-open) and reports any
// writeback error; then it releases the cache use.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return f.err("close", syscall.EBADF)
	}
	f.closed = true
	f.rabuf = nil
	if f.ino == nil {
		return nil
	}
	var err error
	if f.wrote {
		err = f.syncLocked()
	}
	ino := f.ino
	if f.ckUse {
		if uerr := ino.unuseCookie(); uerr != nil {
			f.fs.s.log.Debug("billyfs: unuse cookie", "err", uerr)
		}
	}
	if !f.fs.s.isClosed() {
		f.fs.s.lastClose(ino, f.writable)
	}
	return err
}

func (s *state) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// lastClose drops an open of ino; the last one ends a cache bypass.
func (s *state) lastClose(ino *inode, writable bool) {
	s.mu.Lock()
	last := ino.opens == 1
	s.mu.Unlock()
	if last && !ino.dirty() {
		ino.mu.Lock()
		ino.bypass = false
		ino.mu.Unlock()
	}
	s.putInode(ino, writable)
}

// fileInfo is an os.FileInfo from NFS attributes.
type fileInfo struct {
	name string
	attr RemoteAttr
	size int64
}

func newFileInfo(name string, a client.Attr) *fileInfo {
	return &fileInfo{name: name, attr: RemoteAttr{Attr: a}, size: int64(a.Size)}
}

func (fi *fileInfo) Name() string { return fi.name }
func (fi *fileInfo) Size() int64  { return fi.size }
func (fi *fileInfo) Mode() os.FileMode {
	m := os.FileMode(fi.attr.Mode & 0o777)
	if fi.attr.Mode&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if fi.attr.Mode&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if fi.attr.Mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	switch fi.attr.Type {
	case client.TypeDir:
		m |= os.ModeDir
	case client.TypeLnk:
		m |= os.ModeSymlink
	case client.TypeBlk:
		m |= os.ModeDevice
	case client.TypeChr:
		m |= os.ModeDevice | os.ModeCharDevice
	case client.TypeSock:
		m |= os.ModeSocket
	case client.TypeFIFO:
		m |= os.ModeNamedPipe
	}
	return m
}
func (fi *fileInfo) ModTime() time.Time { return fi.attr.Mtime }
func (fi *fileInfo) IsDir() bool        { return fi.attr.Type == client.TypeDir }

// Sys returns the upstream's attributes as a *RemoteAttr.
func (fi *fileInfo) Sys() any { return &fi.attr }
