package server

import (
	"os"
	"sync"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/memfs"
)

// NewMemFS returns an empty in-memory billy.Filesystem that is safe for
// concurrent use: go-billy v5's memfs is not (concurrent Create panics),
// so every call and every file operation runs under one lock (reads of
// different files share it). It keeps neither owners nor timestamps, so
// Chown, Lchown and Chtimes succeed without effect.
func NewMemFS() billy.Filesystem {
	return &memFS{fs: memfs.New(), epoch: time.Now()}
}

// memInfo gives memfs entries a stable modification time: memfs reports
// time.Now(), which defeats SETATTR guards and client attribute caches.
type memInfo struct {
	os.FileInfo
	t time.Time
}

func (i memInfo) ModTime() time.Time { return i.t }

func (m *memFS) info(fi os.FileInfo, err error) (os.FileInfo, error) {
	if err != nil {
		return nil, err
	}
	return memInfo{fi, m.epoch}, nil
}

// memFS is a locking wrapper over go-billy's memfs.
//
// Concurrency: safe for concurrent use; mu guards the whole tree and all
// file contents. Files share their filesystem's mu.
type memFS struct {
	mu    sync.RWMutex
	fs    billy.Filesystem
	epoch time.Time
}

func (m *memFS) wrap(f billy.File, err error) (billy.File, error) {
	if err != nil {
		return nil, err
	}
	return &memFile{f: f, mu: &m.mu, m: m}, nil
}

func (m *memFS) Create(p string) (billy.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wrap(m.fs.Create(p))
}

func (m *memFS) Open(p string) (billy.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wrap(m.fs.Open(p))
}

func (m *memFS) OpenFile(p string, flag int, perm os.FileMode) (billy.File, error) {
	if flag&os.O_CREATE == 0 {
		flag &^= os.O_EXCL // POSIX ignores O_EXCL without O_CREAT; memfs fails
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wrap(m.fs.OpenFile(p, flag, perm))
}

func (m *memFS) Stat(p string) (os.FileInfo, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.info(m.fs.Stat(p))
}

func (m *memFS) Lstat(p string) (os.FileInfo, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.info(m.fs.Lstat(p))
}

func (m *memFS) Rename(from, to string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fs.Rename(from, to)
}

func (m *memFS) Remove(p string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fs.Remove(p)
}

func (m *memFS) Join(elem ...string) string { return m.fs.Join(elem...) }

func (m *memFS) TempFile(dir, prefix string) (billy.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.wrap(m.fs.TempFile(dir, prefix))
}

func (m *memFS) ReadDir(p string) ([]os.FileInfo, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	ents, err := m.fs.ReadDir(p)
	for i := range ents {
		ents[i] = memInfo{ents[i], m.epoch}
	}
	return ents, err
}

func (m *memFS) MkdirAll(p string, perm os.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fs.MkdirAll(p, perm)
}

func (m *memFS) Symlink(target, link string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fs.Symlink(target, link)
}

func (m *memFS) Readlink(link string) (string, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.fs.Readlink(link)
}

func (m *memFS) Chroot(p string) (billy.Filesystem, error) {
	return nil, &os.PathError{Op: "chroot", Path: p, Err: os.ErrInvalid}
}

func (m *memFS) Root() string { return m.fs.Root() }

func (m *memFS) Capabilities() billy.Capability { return billy.Capabilities(m.fs) }

func (m *memFS) Chmod(p string, mode os.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.fs.(billy.Chmod).Chmod(p, mode)
}

func (m *memFS) Lchown(p string, uid, gid int) error            { return nil }
func (m *memFS) Chown(p string, uid, gid int) error             { return nil }
func (m *memFS) Chtimes(p string, atime, mtime time.Time) error { return nil }

// memFile is a memfs file whose every operation holds its filesystem's lock.
type memFile struct {
	f  billy.File
	mu *sync.RWMutex
	m  *memFS
}

func (f *memFile) Name() string { return f.f.Name() }

func (f *memFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.f.Write(p)
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if w, ok := f.f.(interface {
		WriteAt([]byte, int64) (int, error)
	}); ok {
		return w.WriteAt(p, off)
	}
	if _, err := f.f.Seek(off, 0); err != nil {
		return 0, err
	}
	return f.f.Write(p)
}

func (f *memFile) Read(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.f.Read(p)
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.f.ReadAt(p, off)
}

func (f *memFile) Seek(off int64, whence int) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.f.Seek(off, whence)
}

func (f *memFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.f.Close()
}

func (f *memFile) Lock() error   { return nil }
func (f *memFile) Unlock() error { return nil }

func (f *memFile) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.f.Truncate(size)
}

func (f *memFile) Stat() (os.FileInfo, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if s, ok := f.f.(interface{ Stat() (os.FileInfo, error) }); ok {
		return f.m.info(s.Stat())
	}
	return f.m.info(f.m.fs.Stat(f.f.Name()))
}
