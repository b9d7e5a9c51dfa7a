package server

import (
	"errors"
	"os"
	"path"
	"syscall"
	"time"

	billy "github.com/go-git/go-billy/v5"
)

// exportCore is the exported filesystem as the server sees it: the
// caller's billy.Filesystem, the handle table that follows its renames and
// removals, the open-file cache to invalidate, and the export policy.
//
// Concurrency: safe for concurrent use; it holds no lock of its own (base,
// table and open files each synchronise themselves).
type exportCore struct {
	base     billy.Filesystem
	table    *handleTable
	open     *openFiles
	readOnly bool
	// osRoot confines Chtimes/Lchown/Chown for an osfs export whose billy
	// type lacks billy.Change (osfs BoundOS has only Chmod).
	osRoot *os.Root
	// relayReadDir sends READDIR and READDIRPLUS to go-nfs instead of
	// answering them in the transport: only BenchmarkReadDir sets it (its
	// baseline, in the same run); set before Serve.
	relayReadDir bool
}

// linker is how LINK makes a hard link: through os.Root for a disk
// export, through the exported filesystem if it is a HardLinker; nil if
// neither (LINK is NOTSUPP).
func (c *exportCore) linker() HardLinker {
	if c.osRoot != nil {
		return c.osRoot
	}
	if l, ok := c.base.(HardLinker); ok {
		return l
	}
	return nil
}

// rel turns any path go-nfs builds into a clean path relative to the
// export root. Cleaning it as if rooted at "/" removes every ".." lexically,
// so no name a client sends can climb above the root; symlinks are
// confined by the base filesystem (osfs bound mode resolves them inside
// the root).
func rel(p string) string {
	c := path.Clean("/" + p)
	if c == "/" {
		return ""
	}
	return c[1:]
}

// basePath is what the base filesystem is given for a rel path.
func basePath(r string) string {
	if r == "" {
		return "."
	}
	return r
}

// recorder receives the error of every mutating call made through one
// exportFS; the transport uses it to give the client the precise NFS
// status that go-nfs collapses into NFS3ERR_IO / NFS3ERR_ACCES.
type recorder interface {
	record(err error)
	procedure() uint32
	// seen and seenList log the FileInfos handed to go-nfs, whose
	// atime/ctime the transport restores in the reply (attrs.go).
	seen(fi os.FileInfo)
	seenList(list []os.FileInfo)
	// sattrTimes is what the current call's sattr3 asks for the times.
	sattrTimes() sattrTimes
	// recordLookup receives the error of a failing non-mutating access
	// (Lstat, Stat, ReadDir, Readlink), for the same rewrite.
	recordLookup(err error)
}

// exportFS is the billy.Filesystem go-nfs operates on. All paths are
// confined and cleaned; Remove and Rename keep the handle table and the
// open-file cache in step; a read-only export refuses changes with EROFS.
//
// Concurrency: safe for concurrent use if rec is (each transport lane has
// its own exportFS, used by one go-nfs request at a time).
type exportFS struct {
	*exportCore
	rec recorder
}

var (
	_ billy.Filesystem = (*exportFS)(nil)
	_ billy.Change     = (*exportFS)(nil)
	_ billy.Capable    = (*exportFS)(nil)
)

func (e *exportFS) note(err error) error {
	if err != nil && e.rec != nil {
		e.rec.record(err)
	}
	return err
}

// noteLookup records the error of a non-mutating access.
func (e *exportFS) noteLookup(err error) error {
	if err != nil && e.rec != nil {
		e.rec.recordLookup(err)
	}
	return err
}

func (e *exportFS) proc() uint32 {
	if e.rec == nil {
		return ^uint32(0)
	}
	return e.rec.procedure()
}

func (e *exportFS) rofs(op, p string) error {
	return e.note(pathErr(op, p, syscall.EROFS))
}

// Capabilities drops WriteCapability on a read-only export, which makes
// go-nfs answer every changing procedure with NFS3ERR_ROFS.
func (e *exportFS) Capabilities() billy.Capability {
	c := billy.Capabilities(e.base)
	if e.readOnly {
		c &^= billy.WriteCapability | billy.ReadAndWriteCapability | billy.TruncateCapability
	}
	return c
}

func (e *exportFS) Join(elem ...string) string { return rel(path.Join(elem...)) }

func (e *exportFS) Root() string { return e.base.Root() }

func (e *exportFS) Chroot(p string) (billy.Filesystem, error) {
	return nil, pathErr("chroot", p, syscall.ENOTSUP)
}

func (e *exportFS) Create(p string) (billy.File, error) {
	// No O_TRUNC: an UNCHECKED CREATE of an existing file must not lose its
	// data; go-nfs applies a requested size=0 through SETATTR semantics.
	return e.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o666)
}

func (e *exportFS) Open(p string) (billy.File, error) { return e.OpenFile(p, os.O_RDONLY, 0) }

func (e *exportFS) OpenFile(p string, flag int, perm os.FileMode) (billy.File, error) {
	r := rel(p)
	if e.readOnly && flag&(os.O_WRONLY|os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND) != 0 {
		return nil, e.rofs("open", r)
	}
	// A FIFO or device opened for writing (SETATTR's truncate) would
	// block or act on hardware; only regular files are opened.
	if info, err := e.base.Lstat(basePath(r)); err == nil && !info.Mode().IsRegular() && !info.IsDir() {
		return nil, e.note(pathErr("open", r, syscall.EINVAL))
	}
	f, err := e.retryFD(func() (billy.File, error) { return e.base.OpenFile(basePath(r), flag, perm) })
	if err != nil {
		return nil, e.note(err)
	}
	return &recordingFile{File: f, fs: e, name: r}, nil
}

// retryFD runs an open that may fail with EMFILE/ENFILE through the
// open-file cache's openRetrying, which closes an idle cached file and
// tries again: the descriptors the cache holds must not make CREATE,
// SETATTR's truncate or a listing fail while they could be given back.
func (e *exportFS) retryFD(open func() (billy.File, error)) (billy.File, error) {
	if e.open == nil {
		return open()
	}
	return e.open.openRetrying(open)
}

func (e *exportFS) Stat(p string) (os.FileInfo, error) {
	fi, err := e.base.Stat(basePath(rel(p)))
	return e.seen(fi), e.noteLookup(err)
}

func (e *exportFS) Lstat(p string) (os.FileInfo, error) {
	fi, err := e.base.Lstat(basePath(rel(p)))
	return e.seen(fi), e.noteLookup(err)
}

func (e *exportFS) ReadDir(p string) ([]os.FileInfo, error) {
	ents, err := e.listDir(basePath(rel(p)))
	for i, fi := range ents {
		ents[i] = forGoNFS(fi)
	}
	if e.rec != nil {
		e.rec.seenList(ents)
	}
	return ents, e.noteLookup(err)
}

// seen prepares fi for go-nfs and logs it.
func (e *exportFS) seen(fi os.FileInfo) os.FileInfo {
	if fi == nil {
		return nil
	}
	fi = forGoNFS(fi)
	if e.rec != nil {
		e.rec.seen(fi)
	}
	return fi
}

func (e *exportFS) Readlink(p string) (string, error) {
	target, err := e.base.Readlink(basePath(rel(p)))
	return target, e.noteLookup(err)
}

func (e *exportFS) TempFile(dir, prefix string) (billy.File, error) {
	if e.readOnly {
		return nil, e.rofs("tempfile", rel(dir))
	}
	f, err := e.retryFD(func() (billy.File, error) { return e.base.TempFile(basePath(rel(dir)), prefix) })
	return f, e.note(err)
}

func (e *exportFS) MkdirAll(p string, perm os.FileMode) error {
	r := rel(p)
	if e.readOnly {
		return e.rofs("mkdir", r)
	}
	// go-nfs only calls MkdirAll for MKDIR, where anything already at
	// the name (a file too) is NFS3ERR_EXIST.
	if _, err := e.base.Lstat(basePath(r)); err == nil {
		return e.note(pathErr("mkdir", r, syscall.EEXIST))
	}
	return e.note(e.base.MkdirAll(basePath(r), perm))
}

func (e *exportFS) Symlink(target, link string) error {
	r := rel(link)
	if e.readOnly {
		return e.rofs("symlink", r)
	}
	if _, err := e.base.Lstat(basePath(r)); err == nil {
		return e.note(pathErr("symlink", r, syscall.EEXIST))
	}
	return e.note(e.base.Symlink(target, basePath(r)))
}

func (e *exportFS) Remove(p string) error {
	r := rel(p)
	if e.readOnly {
		return e.rofs("remove", r)
	}
	if r == "" {
		return e.note(pathErr("remove", r, syscall.EBUSY))
	}
	info, err := e.base.Lstat(basePath(r))
	if err != nil {
		return e.note(err)
	}
	switch {
	case info.IsDir() && e.proc() == procRemove:
		return e.note(pathErr("remove", r, syscall.EISDIR))
	case !info.IsDir() && e.proc() == procRmdir:
		return e.note(pathErr("rmdir", r, syscall.ENOTDIR))
	case info.IsDir():
		// memfs removes non-empty directories; POSIX says ENOTEMPTY.
		if ents, err := e.base.ReadDir(basePath(r)); err == nil && len(ents) > 0 {
			return e.note(pathErr("rmdir", r, syscall.ENOTEMPTY))
		}
	}
	if err := e.removeBase(r); err != nil {
		return e.note(err)
	}
	dropped, err := e.table.forget(r)
	e.open.drop(dropped...)
	return e.note(err)
}

func (e *exportFS) Rename(from, to string) error {
	rf, rt := rel(from), rel(to)
	if e.readOnly {
		return e.rofs("rename", rf)
	}
	if rf == "" || rt == "" {
		return e.note(pathErr("rename", rf, syscall.EBUSY))
	}
	if rf == rt {
		return nil
	}
	if len(rt) > len(rf) && rt[:len(rf)+1] == rf+"/" {
		return e.note(pathErr("rename", rf, syscall.EINVAL))
	}
	src, err := e.base.Lstat(basePath(rf))
	if err != nil {
		return e.note(err)
	}
	if dst, err := e.base.Lstat(basePath(rt)); err == nil {
		switch {
		case src.IsDir() && !dst.IsDir():
			return e.note(pathErr("rename", rt, syscall.ENOTDIR))
		case !src.IsDir() && dst.IsDir():
			return e.note(pathErr("rename", rt, syscall.EISDIR))
		case dst.IsDir():
			if ents, err := e.base.ReadDir(basePath(rt)); err == nil && len(ents) > 0 {
				return e.note(pathErr("rename", rt, syscall.ENOTEMPTY))
			}
		}
	}
	// Close cached fds first: the path they were opened by is going away.
	if _, id, ok := e.table.lookup(rf); ok {
		e.open.drop(id)
	}
	if _, id, ok := e.table.lookup(rt); ok {
		e.open.drop(id)
	}
	if err := e.renameBase(rf, rt); err != nil {
		return e.note(err)
	}
	moved, dropped, err := e.table.move(rf, rt)
	e.open.drop(moved...)
	e.open.drop(dropped...)
	return e.note(err)
}

// billy.Change

func (e *exportFS) Chmod(p string, mode os.FileMode) error {
	r := rel(p)
	if e.readOnly {
		return e.rofs("chmod", r)
	}
	if c, ok := e.base.(billy.Chmod); ok {
		return e.changeErr(c.Chmod(basePath(r), mode))
	}
	if e.osRoot != nil {
		return e.changeErr(e.osRoot.Chmod(basePath(r), mode))
	}
	return e.changeErr(pathErr("chmod", r, syscall.ENOTSUP))
}

func (e *exportFS) Lchown(p string, uid, gid int) error {
	return e.chown(p, uid, gid, true)
}

func (e *exportFS) Chown(p string, uid, gid int) error {
	return e.chown(p, uid, gid, false)
}

func (e *exportFS) chown(p string, uid, gid int, link bool) error {
	r := rel(p)
	if e.readOnly {
		return e.rofs("chown", r)
	}
	if c, ok := e.base.(billy.Change); ok {
		if link {
			return e.changeErr(c.Lchown(basePath(r), uid, gid))
		}
		return e.changeErr(c.Chown(basePath(r), uid, gid))
	}
	if e.osRoot != nil {
		if link {
			return e.changeErr(e.osRoot.Lchown(basePath(r), uid, gid))
		}
		return e.changeErr(e.osRoot.Chown(basePath(r), uid, gid))
	}
	return e.changeErr(pathErr("chown", r, syscall.ENOTSUP))
}

func (e *exportFS) Chtimes(p string, atime, mtime time.Time) error {
	r := rel(p)
	if e.readOnly {
		return e.rofs("chtimes", r)
	}
	atime, mtime = e.requestedTimes(r, atime, mtime)
	if c, ok := e.base.(billy.Change); ok {
		return e.changeErr(c.Chtimes(basePath(r), atime, mtime))
	}
	if e.osRoot != nil {
		return e.changeErr(e.osRoot.Chtimes(basePath(r), atime, mtime))
	}
	return e.changeErr(pathErr("chtimes", r, syscall.ENOTSUP))
}

// requestedTimes corrects the times go-nfs's SetFileAttributes.Apply
// passes to Chtimes: for a time the client left alone it passes the
// current mtime (its fattr3 has atime = mtime), so an mtime-only SETATTR
// would move the atime. The real current atime is kept instead, and a
// SET_TO_SERVER_TIME for both gets one instant, as knfsd gives.
func (e *exportFS) requestedTimes(r string, atime, mtime time.Time) (time.Time, time.Time) {
	if e.rec == nil {
		return atime, mtime
	}
	st := e.rec.sattrTimes()
	if !st.valid {
		return atime, mtime
	}
	if st.atime == setToServerTime && st.mtime == setToServerTime {
		atime = mtime
	}
	if st.atime == dontChange {
		if fi, err := e.base.Lstat(basePath(r)); err == nil {
			if x, ok := attrsOf(fi); ok {
				atime = x.atime
			}
		}
	}
	return atime, mtime
}

// changeErr records err; go-nfs's SETATTR returns Change errors raw, and
// the transport turns the recorded error into the right status.
func (e *exportFS) changeErr(err error) error { return e.note(err) }

// recordingFile records the errors of the few file operations go-nfs
// performs itself (SETATTR's Truncate, CREATE's Close).
type recordingFile struct {
	billy.File
	fs   *exportFS
	name string
}

// Name is the export-relative path: go-nfs feeds it back into Join (osfs
// would report an absolute host path).
func (f *recordingFile) Name() string { return f.name }

func (f *recordingFile) Truncate(size int64) error {
	if f.fs.readOnly {
		return f.fs.rofs("truncate", f.Name())
	}
	// Cached fds share the inode, so they see the new size: nothing to drop.
	return f.fs.note(f.File.Truncate(size))
}

func (f *recordingFile) Write(p []byte) (int, error) {
	n, err := f.File.Write(p)
	return n, f.fs.note(err)
}

func (f *recordingFile) Close() error { return f.fs.note(f.File.Close()) }

// removeBase and renameBase go through os.Root for an osfs export: osfs
// bound mode resolves the final symlink of a path, so its Remove and
// Rename would act on a symlink's target instead of the link.
func (e *exportFS) removeBase(r string) error {
	if e.osRoot != nil {
		return e.osRoot.Remove(r)
	}
	return e.base.Remove(r)
}

func (e *exportFS) renameBase(from, to string) error {
	if e.osRoot == nil {
		return e.base.Rename(from, to)
	}
	err := e.osRoot.Rename(from, to)
	if errors.Is(err, syscall.EEXIST) {
		// os.Root.Rename will not replace a directory, which rename(2)
		// does when the target is an empty directory (Rename checked
		// that it is): remove the empty target and rename again.
		if rerr := e.osRoot.Remove(to); rerr != nil {
			return rerr
		}
		err = e.osRoot.Rename(from, to)
	}
	return err
}
