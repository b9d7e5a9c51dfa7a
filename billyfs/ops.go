package billyfs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/go-git/go-billy/v5"
	"github.com/nfscache/nfscache/client"
)

// Create creates or truncates name (mode 0666) and opens it read-write.
// Missing parent directories are created, as osfs does.
func (f *FS) Create(name string) (billy.File, error) {
	return f.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
}

// Open opens name read-only.
func (f *FS) Open(name string) (billy.File, error) {
	return f.OpenFile(name, os.O_RDONLY, 0)
}

// OpenFile opens name with os.O_* flags. With O_CREATE a missing file is
// created with perm (GUARDED CREATE, so an existing file is never truncated
// by accident), and missing parent directories too. Opening revalidates
// the file's attributes with the server (close-to-open).
func (f *FS) OpenFile(name string, flag int, perm os.FileMode) (billy.File, error) {
	file, err := f.openFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return file, nil
}

func (f *FS) openFile(name string, flag int, perm os.FileMode) (*File, error) {
	s := f.s
	rel, err := cleanRel(name)
	if err != nil {
		return nil, err
	}
	ctx := s.ctx
	if s.isClosed() {
		return nil, s.pathErr("open", name, errFSClosed)
	}
	var n node
	created := false
	if flag&os.O_CREATE != 0 {
		n, created, err = f.create(rel, flag, perm)
	} else {
		n, err = f.resolve(ctx, rel, true)
	}
	if err != nil {
		return nil, s.pathErr("open", name, err)
	}
	acc := flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	file := &File{
		fs:       f,
		name:     displayName(rel),
		readable: acc == os.O_RDONLY || acc == os.O_RDWR,
		writable: acc == os.O_WRONLY || acc == os.O_RDWR,
		append:   flag&os.O_APPEND != 0,
	}
	switch n.attr.Type {
	case client.TypeDir:
		if file.writable || flag&os.O_CREATE != 0 {
			return nil, s.pathErr("open", name, syscall.EISDIR)
		}
		file.isDir = true
		return file, nil
	case client.TypeReg:
	default:
		return nil, s.pathErr("open", name, syscall.EINVAL)
	}
	if !n.fresh && !created {
		// Close-to-open: an open always asks the server.
		a, err := s.getattr(ctx, n.fh, true)
		if errors.Is(err, syscall.ESTALE) {
			s.purgeNames()
			if n, err = f.resolve(ctx, rel, true); err == nil {
				a, err = s.getattr(ctx, n.fh, true)
			}
		}
		if err != nil {
			return nil, s.pathErr("open", name, err)
		}
		n.attr = a
	}
	ino, err := s.getInode(ctx, n.fh, n.attr, file.writable)
	if err != nil {
		return nil, s.pathErr("open", name, err)
	}
	file.ino = ino
	if ino.ck != nil {
		if err := ino.ck.Use(file.writable); err == nil {
			file.ckUse = true
		} else {
			s.log.Debug("billyfs: cookie use failed, file goes to the server", "err", err)
			ino.setBypass()
		}
	}
	if ino.wb != nil {
		file.errCur = ino.wb.SampleErr()
	}
	if flag&os.O_TRUNC != 0 && file.writable && !created && ino.localSize() > 0 {
		if err := ino.truncate(ctx, 0); err != nil {
			file.Close()
			return nil, s.pathErr("open", name, err)
		}
	}
	return file, nil
}

// create resolves or creates rel for an O_CREATE open.
func (f *FS) create(rel string, flag int, perm os.FileMode) (node, bool, error) {
	s := f.s
	ctx := s.ctx
	dir, name, err := f.resolveParent(ctx, rel, true)
	if err != nil {
		return node{}, false, err
	}
	mode := uint32(perm.Perm())
	for attempt := 0; attempt < 3; attempt++ {
		// First try to create (one RPC for a new file); a name that
		// exists is looked up after the guarded CREATE refused it.
		// During an outage, look first: an existing file may be known.
		if flag&os.O_EXCL == 0 && (attempt > 0 || s.upstreamDown()) {
			n, err := s.lookup(ctx, dir, name)
			if err == nil {
				if n.attr.Type == client.TypeLnk {
					n, err = f.resolve(ctx, rel, true)
				}
				return n, false, err
			}
			if !errors.Is(err, syscall.ENOENT) {
				return node{}, false, err
			}
		}
		r, err := s.clnt.Create(ctx, dir, name, client.CreateHow{Mode: client.Guarded, Attr: client.SetAttr{Mode: &mode}})
		s.dropChild(dir, name) // a negative entry, if any, is wrong now
		s.dirUpdated(dir, r.DirWcc)
		if errors.Is(err, syscall.EEXIST) && flag&os.O_EXCL == 0 {
			continue // exists: open it
		}
		if err != nil {
			return node{}, false, err
		}
		n := node{fh: r.Handle, fresh: true}
		if r.Attr != nil {
			n.attr = *r.Attr
		} else if n.attr, err = s.getattr(ctx, r.Handle, true); err != nil {
			return node{}, false, err
		}
		s.putChild(dir, name, r.Handle)
		s.putAttr(r.Handle, &n.attr)
		return n, true, nil
	}
	return node{}, false, syscall.EEXIST
}

// Stat returns the attributes of name, following symbolic links.
func (f *FS) Stat(name string) (os.FileInfo, error) {
	return f.stat("stat", name, true)
}

// Lstat returns the attributes of name without following a final link.
func (f *FS) Lstat(name string) (os.FileInfo, error) {
	return f.stat("lstat", name, false)
}

func (f *FS) stat(op, name string, follow bool) (os.FileInfo, error) {
	rel, err := cleanRel(name)
	if err != nil {
		return nil, err
	}
	n, err := f.resolve(f.s.ctx, rel, follow)
	if err != nil {
		return nil, f.s.pathErr(op, name, err)
	}
	base := path.Base(filepath.ToSlash(name))
	if rel == "" {
		base = "/"
	}
	return f.s.info(base, n.fh, n.attr), nil
}

// info builds a FileInfo, with the local size of a file this FS has open or
// dirty (data written and not yet written back).
func (s *state) info(name string, fh client.Handle, a client.Attr) *fileInfo {
	fi := newFileInfo(name, a)
	if a.Type != client.TypeReg {
		return fi
	}
	s.mu.Lock()
	ino := s.inodes[string(fh)]
	open := ino != nil && ino.opens > 0
	s.mu.Unlock()
	if ino != nil && (open || ino.dirty()) {
		fi.size = ino.localSize()
	}
	return fi
}

// Rename renames from to to (RENAME), replacing a file at to. Missing
// parents of to are created, as osfs does.
func (f *FS) Rename(from, to string) error {
	s := f.s
	relFrom, err := cleanRel(from)
	if err != nil {
		return err
	}
	relTo, err := cleanRel(to)
	if err != nil {
		return err
	}
	ctx := s.ctx
	fromDir, fromName, err := f.resolveParent(ctx, relFrom, false)
	if err != nil {
		return s.pathErr("rename", from, err)
	}
	src, err := s.lookup(ctx, fromDir, fromName)
	if err != nil {
		return s.pathErr("rename", from, err)
	}
	toDir, toName, err := f.resolveParent(ctx, relTo, true)
	if err != nil {
		return s.pathErr("rename", to, err)
	}
	// Write our dirty data under the old name first: some servers
	// (go-nfs's caching handler) retire a handle when it is renamed.
	if ino := s.liveInode(src.fh); ino != nil && ino.dirty() {
		if err := ino.flush(ctx); err != nil {
			return s.pathErr("rename", from, err)
		}
	}
	var replaced client.Handle
	if dst, err := s.lookup(ctx, toDir, toName); err == nil && dst.attr.Type == client.TypeReg && string(dst.fh) != string(src.fh) {
		replaced = dst.fh
	}
	fromWcc, toWcc, err := s.clnt.Rename(ctx, fromDir, fromName, toDir, toName)
	s.dropChild(fromDir, fromName)
	s.dropChild(toDir, toName)
	s.dirUpdated(fromDir, fromWcc)
	s.dirUpdated(toDir, toWcc)
	s.dropAttr(src.fh)
	if err != nil {
		return s.pathErr("rename", from, err)
	}
	if src.attr.Type == client.TypeDir {
		// Names cached under the moved directory stay valid (same
		// handles), but paths through it changed: forget them all.
		s.purgeNames()
	}
	if replaced != nil {
		s.forgetInode(replaced)
	}
	if ino := s.liveInode(src.fh); ino != nil {
		ino.adoptRenamed(ctx)
	}
	return nil
}

func (s *state) liveInode(fh client.Handle) *inode {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inodes[string(fh)]
}

// Remove removes a file, symbolic link or empty directory.
func (f *FS) Remove(name string) error {
	s := f.s
	rel, err := cleanRel(name)
	if err != nil {
		return err
	}
	ctx := s.ctx
	dir, base, err := f.resolveParent(ctx, rel, false)
	if err != nil {
		return s.pathErr("remove", name, err)
	}
	n, err := s.lookup(ctx, dir, base)
	if err != nil {
		return s.pathErr("remove", name, err)
	}
	var wcc client.Wcc
	if n.attr.Type == client.TypeDir {
		wcc, err = s.clnt.Rmdir(ctx, dir, base)
	} else {
		wcc, err = s.clnt.Remove(ctx, dir, base)
	}
	s.dropChild(dir, base)
	s.dirUpdated(dir, wcc)
	if err != nil {
		return s.pathErr("remove", name, err)
	}
	s.putChild(dir, base, nil) // gone: the next lookup needs no LOOKUP
	if n.attr.Type == client.TypeReg {
		s.removedLink(ctx, n)
	} else {
		s.forgetAttr(n.fh)
	}
	return nil
}

// removedLink is called after we removed one name of the regular file n.
// Like nfs_unlink (which only drops the link count; the inode and its
// dirty pages go with the last link), the inode is forgotten only when the
// file is gone: another link keeps its data, cached and dirty. A file with
// one link and no open file costs no RPC beyond the REMOVE; otherwise a
// GETATTR asks the server whether a link is left (our cached nlink may be
// outdated, and losing an open file's writes is what must not happen).
func (s *state) removedLink(ctx context.Context, n node) {
	ino := s.liveInode(n.fh)
	open := false
	if ino != nil {
		s.mu.Lock()
		open = ino.opens > 0
		s.mu.Unlock()
		open = open || ino.dirty()
	}
	if n.attr.Nlink <= 1 && !open {
		s.forgetInode(n.fh)
		return
	}
	a, err := s.clnt.Getattr(ctx, n.fh)
	switch {
	case err == nil && a.Nlink > 0:
		if ino != nil {
			<-ino.ready
			ino.refreshAttr(ctx, a)
		} else {
			s.putAttr(n.fh, a)
		}
	case err != nil && isConnErr(err) && n.attr.Nlink > 1:
		// Unknown, but the file had other links: keep its data (a wrong
		// guess costs a cache entry, the other one a write).
		s.dropAttr(n.fh)
	default: // gone (ESTALE, nlink 0) or had a single link
		s.forgetInode(n.fh)
	}
}

// ReadDir lists a directory (READDIRPLUS), sorted by name.
func (f *FS) ReadDir(name string) ([]os.FileInfo, error) {
	s := f.s
	rel, err := cleanRel(name)
	if err != nil {
		return nil, err
	}
	ctx := s.ctx
	n, err := f.resolve(ctx, rel, true)
	if err != nil {
		return nil, s.pathErr("readdir", name, err)
	}
	if n.attr.Type != client.TypeDir {
		return nil, s.pathErr("readdir", name, syscall.ENOTDIR)
	}
	if out, ok := s.cachedListing(ctx, n.fh); ok {
		return out, nil
	}
	var ents []client.DirEntry
	stale := false
	err = s.revalidate(ctx, func(ctx context.Context) error {
		got, err := s.clnt.ReadDirAll(ctx, n.fh)
		ents = got
		return err
	}, func() bool {
		ents, stale = s.staleListing(n.fh)
		return stale
	})
	if err != nil {
		return nil, s.pathErr("readdir", name, err)
	}
	out := make([]os.FileInfo, 0, len(ents))
	var l listing
	for _, e := range ents {
		var a client.Attr
		switch {
		case e.Attr != nil && e.Handle != nil:
			a = *e.Attr
			if !stale { // a stale answer must not look freshly validated
				s.putChild(n.fh, e.Name, e.Handle)
				s.putAttr(e.Handle, e.Attr)
			}
		default:
			c, err := s.lookup(ctx, n.fh, e.Name)
			if errors.Is(err, syscall.ENOENT) {
				continue // removed meanwhile
			}
			if err != nil {
				return nil, s.pathErr("readdir", name, err)
			}
			e.Handle, a = c.fh, c.attr
		}
		l.names = append(l.names, e.Name)
		l.handles = append(l.handles, e.Handle)
		out = append(out, s.info(e.Name, e.Handle, a))
	}
	if s.keep() && !stale {
		l.at = time.Now()
		s.mu.Lock()
		s.putListing(n.fh, l)
		s.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, nil
}

// maxListingGetattrs bounds the GETATTRs a cached listing may send for
// entries whose attributes went out of date (our own changes to them);
// beyond it one READDIRPLUS pass is cheaper.
const maxListingGetattrs = 16

// cachedListing answers ReadDir from dir's last listing while it is within
// the attribute timeout (the Linux client keeps its readdir pages as long
// as the directory's attributes are valid). Our own changes to dir drop
// the listing (dirChanged); entries whose attributes our changes made
// outdated are fetched with GETATTR, a few of them at most.
func (s *state) cachedListing(ctx context.Context, dir client.Handle) ([]os.FileInfo, bool) {
	if s.opts.AttrTimeout < 0 || s.upstreamDown() {
		return nil, false
	}
	s.mu.Lock()
	l, ok := s.listings.Get(string(dir))
	s.mu.Unlock()
	if !ok || time.Since(l.at) > s.opts.AttrTimeout {
		return nil, false
	}
	out := make([]os.FileInfo, 0, len(l.names))
	getattrs := 0
	for i, name := range l.names {
		a, ok := s.cachedAttr(l.handles[i])
		if !ok {
			if getattrs++; getattrs > maxListingGetattrs {
				return nil, false
			}
			var err error
			if a, err = s.getattr(ctx, l.handles[i], true); err != nil {
				return nil, false // gone or unreachable: list afresh
			}
		}
		out = append(out, s.info(name, l.handles[i], a))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out, true
}

// staleListing rebuilds dir's entries from its last listing and the
// attributes last validated for them, if an outage lets them stand in (all
// of them: a partial listing would be a wrong one).
func (s *state) staleListing(dir client.Handle) ([]client.DirEntry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.listings.Peek(string(dir))
	if !ok || !s.staleOK(l.at) {
		return nil, false
	}
	ents := make([]client.DirEntry, len(l.names))
	for i, name := range l.names {
		a, ok := s.attrs.Peek(string(l.handles[i]))
		if !ok || !s.staleOK(a.at) {
			return nil, false
		}
		attr := a.attr
		ents[i] = client.DirEntry{Name: name, Handle: l.handles[i], Attr: &attr, FileID: attr.FileID}
	}
	return ents, true
}

// MkdirAll creates a directory and its missing parents with perm.
func (f *FS) MkdirAll(name string, perm os.FileMode) error {
	rel, err := cleanRel(name)
	if err != nil {
		return err
	}
	if err := f.mkdirAll(f.s.ctx, rel, uint32(perm.Perm())); err != nil {
		return f.s.pathErr("mkdir", name, err)
	}
	return nil
}

// TempFile creates a new file named prefix + random digits in dir (the FS
// root if empty), opened read-write; dir is created if missing.
func (f *FS) TempFile(dir, prefix string) (billy.File, error) {
	relDir, err := cleanRel(dir)
	if err != nil {
		return nil, err
	}
	if err := f.mkdirAll(f.s.ctx, relDir, 0o755); err != nil {
		return nil, f.s.pathErr("mkdir", dir, err)
	}
	var b [6]byte
	for try := 0; try < 100; try++ {
		if _, err := rand.Read(b[:]); err != nil {
			return nil, f.s.pathErr("open", dir, err)
		}
		name := f.Join(dir, prefix+hex.EncodeToString(b[:]))
		file, err := f.openFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		return file, nil
	}
	return nil, f.s.pathErr("open", f.Join(dir, prefix+"*"), syscall.EEXIST)
}

// Symlink creates link pointing to target. An absolute target is taken
// relative to this FS's root (stored as an export path), as go-billy's
// chroot helper does. Missing parents of link are created.
func (f *FS) Symlink(target, link string) error {
	s := f.s
	rel, err := cleanRel(link)
	if err != nil {
		return err
	}
	target = filepath.ToSlash(target)
	if strings.HasPrefix(target, "/") {
		target = path.Join(f.base, target)
	}
	ctx := s.ctx
	dir, name, err := f.resolveParent(ctx, rel, true)
	if err != nil {
		return s.pathErr("symlink", link, err)
	}
	mode := uint32(0o777)
	r, err := s.clnt.Symlink(ctx, dir, name, target, client.SetAttr{Mode: &mode})
	s.dropChild(dir, name) // a negative entry, if any, is wrong now
	s.dirUpdated(dir, r.DirWcc)
	if err != nil {
		return s.pathErr("symlink", link, err)
	}
	if r.Handle != nil && r.Attr != nil {
		s.putChild(dir, name, r.Handle)
		s.putAttr(r.Handle, r.Attr)
	}
	return nil
}

// Readlink returns link's target; an absolute target is shown relative to
// this FS's root.
func (f *FS) Readlink(link string) (string, error) {
	s := f.s
	rel, err := cleanRel(link)
	if err != nil {
		return "", err
	}
	ctx := s.ctx
	n, err := f.resolve(ctx, rel, false)
	if err != nil {
		return "", s.pathErr("readlink", link, err)
	}
	if n.attr.Type != client.TypeLnk {
		return "", s.pathErr("readlink", link, syscall.EINVAL)
	}
	target, err := s.readlink(ctx, n.fh)
	if err != nil {
		return "", s.pathErr("readlink", link, err)
	}
	if !strings.HasPrefix(target, "/") || f.base == "/" {
		return filepath.FromSlash(target), nil
	}
	r, err := filepath.Rel(filepath.FromSlash(f.base), filepath.FromSlash(target))
	if err != nil {
		return "", s.pathErr("readlink", link, err)
	}
	return string(filepath.Separator) + r, nil
}

// setattr applies sa to name and adopts the post-op attributes (our own
// change must not look like a remote one at the next open).
func (f *FS) setattr(op, name string, follow bool, sa client.SetAttr) error {
	s := f.s
	rel, err := cleanRel(name)
	if err != nil {
		return err
	}
	n, err := f.resolve(s.ctx, rel, follow)
	if err != nil {
		return s.pathErr(op, name, err)
	}
	wcc, err := s.clnt.Setattr(s.ctx, n.fh, sa, nil)
	if err != nil {
		return s.pathErr(op, name, err)
	}
	if ino := s.liveInode(n.fh); ino != nil {
		<-ino.ready
		ino.refreshAttr(s.ctx, wcc.After)
	} else {
		s.putAttr(n.fh, wcc.After)
	}
	return nil
}

// Chmod changes the permission bits of name (following links).
func (f *FS) Chmod(name string, mode os.FileMode) error {
	m := uint32(mode.Perm())
	if mode&os.ModeSetuid != 0 {
		m |= 0o4000
	}
	if mode&os.ModeSetgid != 0 {
		m |= 0o2000
	}
	if mode&os.ModeSticky != 0 {
		m |= 0o1000
	}
	return f.setattr("chmod", name, true, client.SetAttr{Mode: &m})
}

// Lchown changes the owner of name without following a final link.
func (f *FS) Lchown(name string, uid, gid int) error {
	return f.setattr("lchown", name, false, ownerAttr(uid, gid))
}

// Chown changes the owner of name (following links).
func (f *FS) Chown(name string, uid, gid int) error {
	return f.setattr("chown", name, true, ownerAttr(uid, gid))
}

func ownerAttr(uid, gid int) client.SetAttr {
	var sa client.SetAttr
	if uid >= 0 {
		u := uint32(uid)
		sa.UID = &u
	}
	if gid >= 0 {
		g := uint32(gid)
		sa.GID = &g
	}
	return sa
}

// Chtimes sets the access and modification times of name.
func (f *FS) Chtimes(name string, atime, mtime time.Time) error {
	return f.setattr("chtimes", name, true, client.SetAttr{Atime: &atime, Mtime: &mtime})
}

// Interface checks.
var (
	_ billy.Filesystem = (*FS)(nil)
	_ billy.Change     = (*FS)(nil)
	_ billy.Capable    = (*FS)(nil)
	_ billy.File       = (*File)(nil)
)
