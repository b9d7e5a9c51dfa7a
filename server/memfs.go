package server

import (
	"os"
	"path"
	"strings"
	"sync"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/memfs"
)

// NewMemFS returns an empty in-memory billy.Filesystem that is safe for
// concurrent use: go-billy v5's memfs is not (concurrent Create panics),
// so every call and every file operation runs under one lock (reads of
// different files share it). Unlike memfs it keeps modification times
// (memfs reports time.Now(), which defeats SETATTR guards and lets
// caching clients miss same-size overwrites): a file's changes on write
// and truncate, a directory's when an entry is added or removed, and
// Chtimes sets it. It keeps no owners: Chown and Lchown do nothing.
func NewMemFS() billy.Filesystem {
	return &memFS{fs: memfs.New(), epoch: time.Now(), mtimes: map[string]time.Time{}}
}

// memFS is a locking wrapper over go-billy's memfs.
//
// Concurrency: safe for concurrent use; mu guards the whole tree, all
// file contents and mtimes. Files share their filesystem's mu.
type memFS struct {
	mu     sync.RWMutex
	fs     billy.Filesystem
	epoch  time.Time            // mtime of anything never changed
	mtimes map[string]time.Time // by memKey
}

// memKey is the canonical name of p in mtimes.
func memKey(p string) string { return path.Clean("/" + p) }

// memInfo is a memfs entry with its kept modification time.
type memInfo struct {
	os.FileInfo
	t time.Time
}

func (i memInfo) ModTime() time.Time { return i.t }

// mtime reads a kept time; mu must be held.
func (m *memFS) mtime(key string) time.Time {
	if t, ok := m.mtimes[key]; ok {
		return t
	}
	return m.epoch
}

// touch marks key and, if entry is set, its parent directory as changed
// now; mu must be held for writing.
func (m *memFS) touch(key string, entry bool) {
	now := time.Now()
	m.mtimes[key] = now
	if entry {
		m.mtimes[path.Dir(key)] = now
	}
}

func (m *memFS) info(p string, fi os.FileInfo, err error) (os.FileInfo, error) {
	if err != nil {
		return nil, err
	}
	return memInfo{fi, m.mtime(memKey(p))}, nil
}

func (m *memFS) wrap(p string, f billy.File, err error) (billy.File, error) {
	if err != nil {
		return nil, err
	}
	return &memFile{f: f, mu: &m.mu, m: m, key: memKey(p)}, nil
}

func (m *memFS) Create(p string) (billy.File, error) {
	return m.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
}

func (m *memFS) Open(p string) (billy.File, error) {
	return m.OpenFile(p, os.O_RDONLY, 0)
}

func (m *memFS) OpenFile(p string, flag int, perm os.FileMode) (billy.File, error) {
	if flag&os.O_CREATE == 0 {
		flag &^= os.O_EXCL // POSIX ignores O_EXCL without O_CREAT; memfs fails
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, statErr := m.fs.Lstat(p)
	f, err := m.fs.OpenFile(p, flag, perm)
	if err == nil && (statErr != nil || flag&os.O_TRUNC != 0) {
		m.touch(memKey(p), statErr != nil)
	}
	return m.wrap(p, f, err)
}

func (m *memFS) Stat(p string) (os.FileInfo, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	fi, err := m.fs.Stat(p)
	return m.info(p, fi, err)
}

func (m *memFS) Lstat(p string) (os.FileInfo, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	fi, err := m.fs.Lstat(p)
	return m.info(p, fi, err)
}

func (m *memFS) Rename(from, to string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fs.Rename(from, to); err != nil {
		return err
	}
	fk, tk := memKey(from), memKey(to)
	for k, t := range m.mtimes {
		if k == fk || strings.HasPrefix(k, fk+"/") {
			delete(m.mtimes, k)
			m.mtimes[tk+k[len(fk):]] = t
		}
	}
	now := time.Now()
	m.mtimes[path.Dir(fk)], m.mtimes[path.Dir(tk)] = now, now
	return nil
}

func (m *memFS) Remove(p string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fs.Remove(p); err != nil {
		return err
	}
	k := memKey(p)
	delete(m.mtimes, k)
	m.mtimes[path.Dir(k)] = time.Now()
	return nil
}

func (m *memFS) Join(elem ...string) string { return m.fs.Join(elem...) }

func (m *memFS) TempFile(dir, prefix string) (billy.File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f, err := m.fs.TempFile(dir, prefix)
	if err != nil {
		return nil, err
	}
	m.touch(memKey(f.Name()), true)
	return m.wrap(f.Name(), f, nil)
}

func (m *memFS) ReadDir(p string) ([]os.FileInfo, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	ents, err := m.fs.ReadDir(p)
	dir := memKey(p)
	for i := range ents {
		ents[i] = memInfo{ents[i], m.mtime(path.Join(dir, ents[i].Name()))}
	}
	return ents, err
}

func (m *memFS) MkdirAll(p string, perm os.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fs.MkdirAll(p, perm); err != nil {
		return err
	}
	m.touch(memKey(p), true)
	return nil
}

func (m *memFS) Symlink(target, link string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fs.Symlink(target, link); err != nil {
		return err
	}
	m.touch(memKey(link), true)
	return nil
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

func (m *memFS) Lchown(p string, uid, gid int) error { return nil }
func (m *memFS) Chown(p string, uid, gid int) error  { return nil }

// Chtimes sets the kept modification time; access times are not kept.
func (m *memFS) Chtimes(p string, atime, mtime time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.fs.Lstat(p); err != nil {
		return err
	}
	m.mtimes[memKey(p)] = mtime
	return nil
}

// memFile is a memfs file whose every operation holds its filesystem's lock.
type memFile struct {
	f   billy.File
	mu  *sync.RWMutex
	m   *memFS
	key string
}

func (f *memFile) Name() string { return f.f.Name() }

func (f *memFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m.touch(f.key, false)
	return f.f.Write(p)
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m.touch(f.key, false)
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
	f.m.touch(f.key, false)
	return f.f.Truncate(size)
}

func (f *memFile) Stat() (os.FileInfo, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if s, ok := f.f.(interface{ Stat() (os.FileInfo, error) }); ok {
		fi, err := s.Stat()
		return f.m.info(f.key, fi, err)
	}
	fi, err := f.m.fs.Stat(f.f.Name())
	return f.m.info(f.key, fi, err)
}
