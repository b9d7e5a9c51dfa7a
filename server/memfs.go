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
// Chtimes sets it. Its FileInfos' Sys() implements RemoteAttributes: a
// fileid that stays with the file across renames and is never reused,
// the access time (set at creation and by Chtimes; reads do not move it,
// as on a noatime mount) and the change time (moved by every change of
// data or metadata, rename included). It keeps no owners: Chown and
// Lchown do nothing and everything belongs to uid 0, gid 0.
func NewMemFS() billy.Filesystem {
	now := time.Now()
	return &memFS{fs: memfs.New(), nextID: 2, meta: map[string]*memMeta{
		"/": {id: 1, atime: now, mtime: now, ctime: now},
	}}
}

// memFS is a locking wrapper over go-billy's memfs.
//
// Concurrency: safe for concurrent use; mu guards the whole tree, all
// file contents and meta (the map and every memMeta). Files share their
// filesystem's mu.
type memFS struct {
	mu     sync.RWMutex
	fs     billy.Filesystem
	nextID uint64
	meta   map[string]*memMeta // by memKey
}

// memMeta is what memFS keeps per file beyond memfs. Rename moves the
// pointer to the new name, and open files hold it, so writes through a
// file opened before a rename change the renamed file.
type memMeta struct {
	id                  uint64
	atime, mtime, ctime time.Time
}

// memKey is the canonical name of p in meta.
func memKey(p string) string { return path.Clean("/" + p) }

// memInfo is a memfs entry with a copy of its kept attributes; it is its
// own Sys().
type memInfo struct {
	os.FileInfo
	m memMeta
}

var _ RemoteAttributes = memInfo{}

func (i memInfo) ModTime() time.Time          { return i.m.mtime }
func (i memInfo) Sys() any                    { return i }
func (i memInfo) NFSFileID() uint64           { return i.m.id }
func (i memInfo) NFSOwner() (uid, gid uint32) { return 0, 0 }
func (i memInfo) NFSAccessTime() time.Time    { return i.m.atime }
func (i memInfo) NFSChangeTime() time.Time    { return i.m.ctime }

// NFSLinkCount: memfs has no hard links; a directory counts its "." too.
func (i memInfo) NFSLinkCount() uint32 {
	if i.IsDir() {
		return 2
	}
	return 1
}

// metaOf copies the kept attributes of key; mu must be held. A name
// without an entry (none should exist: ensure runs on every creation)
// reports fileid 0, which no file has.
func (m *memFS) metaOf(key string) memMeta {
	if mm, ok := m.meta[key]; ok {
		return *mm
	}
	return memMeta{}
}

// ensure returns key's entry, giving key and every ancestor without one
// (memfs creates missing parents) a fresh fileid; mu must be held for
// writing.
func (m *memFS) ensure(key string, now time.Time) *memMeta {
	for k := key; ; k = path.Dir(k) {
		if _, ok := m.meta[k]; ok || k == "/" {
			break
		}
		m.meta[k] = &memMeta{id: m.nextID, atime: now, mtime: now, ctime: now}
		m.nextID++
	}
	return m.meta[key]
}

// changed marks mm's data (mtime and ctime) as changed now.
func changed(mm *memMeta, now time.Time) { mm.mtime, mm.ctime = now, now }

// entryChanged marks the directory holding key as changed; mu must be
// held for writing.
func (m *memFS) entryChanged(key string, now time.Time) {
	changed(m.ensure(path.Dir(key), now), now)
}

func (m *memFS) info(p string, fi os.FileInfo, err error) (os.FileInfo, error) {
	if err != nil {
		return nil, err
	}
	return memInfo{fi, m.metaOf(memKey(p))}, nil
}

// wrap makes an open file; mu must be held for writing.
func (m *memFS) wrap(p string, f billy.File) billy.File {
	return &memFile{f: f, mu: &m.mu, m: m, meta: m.ensure(memKey(p), time.Now())}
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
	if err != nil {
		return nil, err
	}
	key, now := memKey(p), time.Now()
	if statErr != nil {
		m.ensure(key, now)
		m.entryChanged(key, now)
	} else if flag&os.O_TRUNC != 0 {
		changed(m.ensure(key, now), now)
	}
	return m.wrap(p, f), nil
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

// under reports whether k is key or below it.
func under(k, key string) bool {
	return k == key || strings.HasPrefix(k, key+"/") || key == "/"
}

func (m *memFS) Rename(from, to string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fs.Rename(from, to); err != nil {
		return err
	}
	fk, tk, now := memKey(from), memKey(to), time.Now()
	moved := map[string]*memMeta{}
	for k, mm := range m.meta {
		if under(k, tk) {
			delete(m.meta, k) // replaced
		}
		if under(k, fk) {
			moved[tk+k[len(fk):]] = mm
			delete(m.meta, k)
		}
	}
	for k, mm := range moved {
		m.meta[k] = mm
	}
	if mm, ok := m.meta[tk]; ok {
		mm.ctime = now
	}
	m.entryChanged(fk, now)
	m.entryChanged(tk, now)
	return nil
}

func (m *memFS) Remove(p string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fs.Remove(p); err != nil {
		return err
	}
	k := memKey(p)
	for mk := range m.meta {
		if under(mk, k) && mk != "/" {
			delete(m.meta, mk)
		}
	}
	m.entryChanged(k, time.Now())
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
	key, now := memKey(f.Name()), time.Now()
	m.ensure(key, now)
	m.entryChanged(key, now)
	return m.wrap(f.Name(), f), nil
}

func (m *memFS) ReadDir(p string) ([]os.FileInfo, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	ents, err := m.fs.ReadDir(p)
	dir := memKey(p)
	for i := range ents {
		ents[i] = memInfo{ents[i], m.metaOf(path.Join(dir, ents[i].Name()))}
	}
	return ents, err
}

func (m *memFS) MkdirAll(p string, perm os.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, statErr := m.fs.Lstat(p)
	if err := m.fs.MkdirAll(p, perm); err != nil {
		return err
	}
	if statErr != nil {
		key, now := memKey(p), time.Now()
		m.ensure(key, now)
		m.entryChanged(key, now)
	}
	return nil
}

func (m *memFS) Symlink(target, link string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fs.Symlink(target, link); err != nil {
		return err
	}
	key, now := memKey(link), time.Now()
	m.ensure(key, now)
	m.entryChanged(key, now)
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
	if err := m.fs.(billy.Chmod).Chmod(p, mode); err != nil {
		return err
	}
	now := time.Now()
	m.ensure(memKey(p), now).ctime = now
	return nil
}

func (m *memFS) Lchown(p string, uid, gid int) error { return nil }
func (m *memFS) Chown(p string, uid, gid int) error  { return nil }

// Chtimes sets the kept access and modification times; a zero time
// leaves that one unchanged, as os.Chtimes does.
func (m *memFS) Chtimes(p string, atime, mtime time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, err := m.fs.Lstat(p); err != nil {
		return err
	}
	now := time.Now()
	mm := m.ensure(memKey(p), now)
	if !atime.IsZero() {
		mm.atime = atime
	}
	if !mtime.IsZero() {
		mm.mtime = mtime
	}
	mm.ctime = now
	return nil
}

// memFile is a memfs file whose every operation holds its filesystem's lock.
type memFile struct {
	f    billy.File
	mu   *sync.RWMutex
	m    *memFS
	meta *memMeta
}

func (f *memFile) Name() string { return f.f.Name() }

func (f *memFile) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	changed(f.meta, time.Now())
	return f.f.Write(p)
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	changed(f.meta, time.Now())
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
	changed(f.meta, time.Now())
	return f.f.Truncate(size)
}

func (f *memFile) Stat() (os.FileInfo, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var fi os.FileInfo
	var err error
	if s, ok := f.f.(interface{ Stat() (os.FileInfo, error) }); ok {
		fi, err = s.Stat()
	} else {
		fi, err = f.m.fs.Stat(f.f.Name())
	}
	if err != nil {
		return nil, err
	}
	return memInfo{fi, *f.meta}, nil
}
