package server

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	"github.com/nfscache/nfscache/client"
	nfs "github.com/willscott/go-nfs"
)

func dialClient(t *testing.T, addr string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, client.Options{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// diskAttrs is what the server should report for a local file.
type diskAttrs struct {
	fileid              uint64
	nlink, uid, gid     uint32
	atime, mtime, ctime time.Time
}

func statDisk(t *testing.T, p string) diskAttrs {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	s := fi.Sys().(*syscall.Stat_t)
	return diskAttrs{
		fileid: s.Ino, nlink: uint32(s.Nlink), uid: s.Uid, gid: s.Gid,
		atime: time.Unix(s.Atim.Sec, s.Atim.Nsec),
		mtime: time.Unix(s.Mtim.Sec, s.Mtim.Nsec),
		ctime: time.Unix(s.Ctim.Sec, s.Ctim.Nsec),
	}
}

// sameAttrs fails unless a reports exactly want's identity, owner and times.
func sameAttrs(t *testing.T, what string, a *client.Attr, want diskAttrs) {
	t.Helper()
	if a == nil {
		t.Fatalf("%s: no attributes", what)
	}
	if a.FileID != want.fileid || a.Nlink != want.nlink || a.UID != want.uid || a.GID != want.gid {
		t.Fatalf("%s: fileid %d nlink %d owner %d:%d, want %d %d %d:%d", what,
			a.FileID, a.Nlink, a.UID, a.GID, want.fileid, want.nlink, want.uid, want.gid)
	}
	if !a.Atime.Equal(want.atime) || !a.Mtime.Equal(want.mtime) || !a.Ctime.Equal(want.ctime) {
		t.Fatalf("%s: atime %v mtime %v ctime %v, want %v %v %v", what,
			a.Atime, a.Mtime, a.Ctime, want.atime, want.mtime, want.ctime)
	}
}

var (
	atime2001 = time.Date(2001, 2, 3, 4, 5, 6, 7000, time.UTC)
	mtime2002 = time.Date(2002, 3, 4, 5, 6, 7, 8000, time.UTC)
	mtime2003 = time.Date(2003, 4, 5, 6, 7, 8, 9000, time.UTC)
)

// readDirPages lists dir page by page (cookie + verifier, so the later
// pages come from the server's listing cache) and returns the entries and
// the number of pages.
func readDirPages(t *testing.T, c *client.Client, dir client.Handle) ([]client.DirEntry, int) {
	t.Helper()
	ctx := context.Background()
	var all []client.DirEntry
	var cookie uint64
	var verf client.Verifier
	for pages := 1; ; pages++ {
		r, err := c.ReadDirPlus(ctx, dir, cookie, verf)
		if err != nil {
			t.Fatalf("READDIRPLUS page %d: %v", pages, err)
		}
		all = append(all, r.Entries...)
		if r.EOF || len(r.Entries) == 0 {
			return all, pages
		}
		cookie, verf = r.Entries[len(r.Entries)-1].Cookie, r.CookieVerf
	}
}

// Every fattr3 of a disk export carries the inode's own fileid, nlink,
// owner, atime, mtime and ctime (go-nfs alone reports atime = ctime =
// mtime); SETATTR sets exactly the times asked for; the fileid survives a
// rename; a guarded SETATTR compares the real ctime.
func TestDiskAttributes(t *testing.T) {
	dir, fsys := diskFS(t)
	ctx := context.Background()
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(f, atime2001, mtime2002); err != nil {
		t.Fatal(err)
	}
	// A listing long enough for several READDIRPLUS pages.
	const entries = 1200
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	for i := range entries {
		p := filepath.Join(dir, "d", fmt.Sprintf("e%04d", i))
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, atime2001.Add(time.Duration(i)*time.Second), mtime2002); err != nil {
			t.Fatal(err)
		}
	}
	_, addr := startServer(t, fsys, Options{})
	c := dialClient(t, addr)
	root := c.Root()

	lk, err := c.Lookup(ctx, root, "f")
	if err != nil {
		t.Fatal(err)
	}
	h := lk.Handle
	sameAttrs(t, "LOOKUP", lk.Attr, statDisk(t, f))
	sameAttrs(t, "LOOKUP dir", lk.DirAttr, statDisk(t, dir))
	if lk.Attr.Ctime.Equal(lk.Attr.Mtime) || lk.Attr.Atime.Equal(lk.Attr.Mtime) {
		t.Fatal("atime/ctime reported equal to mtime")
	}
	if _, a, err := c.Access(ctx, h, 0x3f); err != nil {
		t.Fatal(err)
	} else {
		sameAttrs(t, "ACCESS", a, statDisk(t, f))
	}

	// utimes(2) as the Linux client sends it: both times from the client.
	before := statDisk(t, f)
	time.Sleep(5 * time.Millisecond) // so the new ctime differs
	newA, newM := atime2001.Add(time.Hour), mtime2002.Add(time.Hour)
	wcc, err := c.Setattr(ctx, h, client.SetAttr{Atime: &newA, Mtime: &newM}, nil)
	if err != nil {
		t.Fatal(err)
	}
	after := statDisk(t, f)
	if !after.atime.Equal(newA) || !after.mtime.Equal(newM) {
		t.Fatalf("on disk after SETATTR: atime %v mtime %v, want %v %v", after.atime, after.mtime, newA, newM)
	}
	if wcc.Before == nil || !wcc.Before.Ctime.Equal(before.ctime) || !wcc.Before.Mtime.Equal(before.mtime) {
		t.Fatalf("SETATTR pre-op %+v, want mtime %v ctime %v", wcc.Before, before.mtime, before.ctime)
	}
	sameAttrs(t, "SETATTR post-op", wcc.After, after)
	if after.ctime.Equal(before.ctime) {
		t.Fatal("ctime did not move")
	}
	a, err := c.Getattr(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "GETATTR", a, after)

	// touch -m: only the mtime; the atime stays.
	if _, err := c.Setattr(ctx, h, client.SetAttr{Mtime: &mtime2003}, nil); err != nil {
		t.Fatal(err)
	}
	if d := statDisk(t, f); !d.atime.Equal(newA) || !d.mtime.Equal(mtime2003) {
		t.Fatalf("mtime-only SETATTR: atime %v mtime %v, want %v %v", d.atime, d.mtime, newA, mtime2003)
	}
	// touch -a: only the atime.
	if _, err := c.Setattr(ctx, h, client.SetAttr{Atime: &atime2001}, nil); err != nil {
		t.Fatal(err)
	}
	if d := statDisk(t, f); !d.atime.Equal(atime2001) || !d.mtime.Equal(mtime2003) {
		t.Fatalf("atime-only SETATTR: atime %v mtime %v, want %v %v", d.atime, d.mtime, atime2001, mtime2003)
	}
	// touch: both to the server's time, one instant.
	start := time.Now()
	if _, err := c.Setattr(ctx, h, client.SetAttr{AtimeNow: true, MtimeNow: true}, nil); err != nil {
		t.Fatal(err)
	}
	if d := statDisk(t, f); !d.atime.Equal(d.mtime) || d.mtime.Before(start.Add(-time.Second)) {
		t.Fatalf("SET_TO_SERVER_TIME: atime %v mtime %v (start %v)", d.atime, d.mtime, start)
	}

	// Guarded SETATTR: the guard is the real ctime.
	cur := statDisk(t, f)
	if _, err := c.Setattr(ctx, h, client.SetAttr{Mtime: &mtime2002}, &cur.ctime); err != nil {
		t.Fatalf("SETATTR guarded by the current ctime: %v", err)
	}
	var ne *client.Error
	wcc, err = c.Setattr(ctx, h, client.SetAttr{Mtime: &mtime2003}, &cur.mtime)
	if !errors.As(err, &ne) || ne.Status != client.StatusNotSync {
		t.Fatalf("SETATTR guarded by a stale ctime: %v, want NOT_SYNC", err)
	}
	sameAttrs(t, "NOT_SYNC wcc", wcc.After, statDisk(t, f))
	if d := statDisk(t, f); !d.mtime.Equal(mtime2002) {
		t.Fatalf("NOT_SYNC SETATTR changed the mtime to %v", d.mtime)
	}

	// WRITE, READ and COMMIT (the transport's own replies).
	wr, err := c.Write(ctx, h, 0, []byte("DATA"), client.FileSync)
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "WRITE post-op", wr.Wcc.After, statDisk(t, f))
	buf := make([]byte, 4)
	rr, err := c.Read(ctx, h, 0, buf)
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "READ", rr.Attr, statDisk(t, f))

	// RENAME keeps the fileid (the Linux client would see ESTALE otherwise).
	ino := statDisk(t, f).fileid
	if _, _, err := c.Rename(ctx, root, "f", root, "g"); err != nil {
		t.Fatal(err)
	}
	g := filepath.Join(dir, "g")
	a, err = c.Getattr(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "GETATTR after rename", a, statDisk(t, g))
	if a.FileID != ino {
		t.Fatalf("fileid %d after rename, was %d", a.FileID, ino)
	}
	if lk, err := c.Lookup(ctx, root, "g"); err != nil || lk.Attr == nil || lk.Attr.FileID != ino {
		t.Fatalf("LOOKUP of the new name: %v %+v", err, lk.Attr)
	}

	// LINK: nlink 2 on the file, the directory's wcc.
	la, lw, err := c.Link(ctx, h, root, "hard")
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "LINK", la, statDisk(t, g))
	if la.Nlink != 2 {
		t.Fatalf("nlink %d after LINK", la.Nlink)
	}
	sameAttrs(t, "LINK dir", lw.After, statDisk(t, dir))

	// CREATE, MKDIR, SYMLINK, REMOVE wcc and post-op attributes.
	cr, err := c.Create(ctx, root, "new", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "CREATE", cr.Attr, statDisk(t, filepath.Join(dir, "new")))
	sameAttrs(t, "CREATE dir wcc", cr.DirWcc.After, statDisk(t, dir))
	md, err := c.Mkdir(ctx, root, "sub", client.SetAttr{})
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "MKDIR", md.Attr, statDisk(t, filepath.Join(dir, "sub")))
	sl, err := c.Symlink(ctx, root, "ln", "g", client.SetAttr{})
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "SYMLINK", sl.Attr, statDisk(t, filepath.Join(dir, "ln")))
	if _, ra, err := c.Readlink(ctx, sl.Handle); err != nil {
		t.Fatal(err)
	} else {
		sameAttrs(t, "READLINK", ra, statDisk(t, filepath.Join(dir, "ln")))
	}
	pre := statDisk(t, dir)
	time.Sleep(5 * time.Millisecond)
	rw, err := c.Remove(ctx, root, "new")
	if err != nil {
		t.Fatal(err)
	}
	if rw.Before == nil || !rw.Before.Ctime.Equal(pre.ctime) || !rw.Before.Mtime.Equal(pre.mtime) {
		t.Fatalf("REMOVE pre-op %+v, want mtime %v ctime %v", rw.Before, pre.mtime, pre.ctime)
	}
	sameAttrs(t, "REMOVE post-op", rw.After, statDisk(t, dir))

	// RENAME across directories: each directory's pre-op attributes are
	// its own (wcc_attr has no fileid: matched in call order).
	preRoot, preSub := statDisk(t, dir), statDisk(t, filepath.Join(dir, "sub"))
	time.Sleep(5 * time.Millisecond)
	fw, tw, err := c.Rename(ctx, root, "ln", md.Handle, "ln2")
	if err != nil {
		t.Fatal(err)
	}
	if fw.Before == nil || !fw.Before.Ctime.Equal(preRoot.ctime) || tw.Before == nil || !tw.Before.Ctime.Equal(preSub.ctime) {
		t.Fatalf("RENAME pre-op from %+v to %+v, want ctimes %v %v", fw.Before, tw.Before, preRoot.ctime, preSub.ctime)
	}
	sameAttrs(t, "RENAME from-dir post-op", fw.After, statDisk(t, dir))
	sameAttrs(t, "RENAME to-dir post-op", tw.After, statDisk(t, filepath.Join(dir, "sub")))
	if st, err := c.FSStat(ctx, root); err != nil {
		t.Fatal(err)
	} else {
		sameAttrs(t, "FSSTAT", st.Attr, statDisk(t, dir))
	}
	if pc, err := c.PathConf(ctx, h); err != nil {
		t.Fatal(err)
	} else {
		sameAttrs(t, "PATHCONF", pc.Attr, statDisk(t, g))
	}
	if fi, err := c.FSInfo(ctx, root); err != nil {
		t.Fatal(err)
	} else {
		sameAttrs(t, "FSINFO", fi.Attr, statDisk(t, dir))
	}

	// READDIRPLUS: every entry of every page, the later ones served from
	// the listing cache.
	dl, err := c.Lookup(ctx, root, "d")
	if err != nil {
		t.Fatal(err)
	}
	ents, pages := readDirPages(t, c, dl.Handle)
	if pages < 2 {
		t.Fatalf("listing fit in %d page: the test needs several", pages)
	}
	n := 0
	for _, e := range ents {
		if e.Name == "." || e.Name == ".." {
			continue
		}
		n++
		sameAttrs(t, "READDIRPLUS "+e.Name, e.Attr, statDisk(t, filepath.Join(dir, "d", e.Name)))
		if e.FileID != e.Attr.FileID {
			t.Fatalf("entry %s: fileid %d, attributes say %d", e.Name, e.FileID, e.Attr.FileID)
		}
	}
	if n != entries {
		t.Fatalf("READDIRPLUS listed %d entries, want %d", n, entries)
	}
}

// remoteFS is an adapter in the shape of billyfs: a directory on disk
// whose FileInfos hide *syscall.Stat_t behind RemoteAttributes (fileid =
// inode + 1<<40, owner 4242:4343), a HardLinker and a UsageReporter.
type remoteFS struct {
	billy.Filesystem // osfs chroot mode: implements billy.Change
	dir              string
	links            atomic.Int32
}

const (
	remoteIDBase = 1 << 40
	remoteUID    = 4242
	remoteGID    = 4343
)

type remoteStat struct {
	os.FileInfo
	st *syscall.Stat_t
}

func (r remoteStat) Sys() any                    { return r }
func (r remoteStat) NFSFileID() uint64           { return r.st.Ino + remoteIDBase }
func (r remoteStat) NFSLinkCount() uint32        { return uint32(r.st.Nlink) }
func (r remoteStat) NFSOwner() (uid, gid uint32) { return remoteUID, remoteGID }
func (r remoteStat) NFSAccessTime() time.Time    { return time.Unix(r.st.Atim.Sec, r.st.Atim.Nsec) }
func (r remoteStat) NFSChangeTime() time.Time    { return time.Unix(r.st.Ctim.Sec, r.st.Ctim.Nsec) }

func remote(fi os.FileInfo, err error) (os.FileInfo, error) {
	if err != nil {
		return nil, err
	}
	return remoteStat{fi, fi.Sys().(*syscall.Stat_t)}, nil
}

func (r *remoteFS) Stat(p string) (os.FileInfo, error)  { return remote(r.Filesystem.Stat(p)) }
func (r *remoteFS) Lstat(p string) (os.FileInfo, error) { return remote(r.Filesystem.Lstat(p)) }
func (r *remoteFS) ReadDir(p string) ([]os.FileInfo, error) {
	ents, err := r.Filesystem.ReadDir(p)
	for i := range ents {
		ents[i], _ = remote(ents[i], nil)
	}
	return ents, err
}

func (r *remoteFS) OpenFile(p string, flag int, perm os.FileMode) (billy.File, error) {
	f, err := os.OpenFile(r.abs(p), flag, perm)
	if err != nil {
		return nil, err
	}
	return remoteFile{f, r, p}, nil
}

func (r *remoteFS) Create(p string) (billy.File, error) {
	return r.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
}
func (r *remoteFS) Open(p string) (billy.File, error) { return r.OpenFile(p, os.O_RDONLY, 0) }

// The change calls act on the directory directly (chroot osfs has no
// billy.Change).
func (r *remoteFS) Chmod(p string, m os.FileMode) error { return os.Chmod(r.abs(p), m) }
func (r *remoteFS) Lchown(p string, u, g int) error     { return os.Lchown(r.abs(p), u, g) }
func (r *remoteFS) Chown(p string, u, g int) error      { return os.Chown(r.abs(p), u, g) }
func (r *remoteFS) Chtimes(p string, a, m time.Time) error {
	return os.Chtimes(r.abs(p), a, m)
}
func (r *remoteFS) abs(p string) string { return filepath.Join(r.dir, filepath.Clean("/"+p)) }

func (r *remoteFS) Link(target, link string) error {
	r.links.Add(1)
	return os.Link(r.abs(target), r.abs(link))
}

func (r *remoteFS) NFSUsage() (tb, fb, ab, tf, ff, af uint64, err error) {
	return 1 << 40, 1 << 39, 1 << 38, 1000, 600, 500, nil
}

var (
	_ HardLinker    = (*remoteFS)(nil)
	_ UsageReporter = (*remoteFS)(nil)
	_ billy.Change  = (*remoteFS)(nil)
)

// remoteFile is an *os.File whose fstat goes through RemoteAttributes too.
type remoteFile struct {
	*os.File
	fs *remoteFS
	p  string
}

func (f remoteFile) Name() string               { return f.p }
func (f remoteFile) Stat() (os.FileInfo, error) { return remote(f.File.Stat()) }
func (f remoteFile) Lock() error                { return nil }
func (f remoteFile) Unlock() error              { return nil }

// remoteWant is what the server should report for a remoteFS file.
func remoteWant(t *testing.T, p string) diskAttrs {
	d := statDisk(t, p)
	d.fileid += remoteIDBase
	d.uid, d.gid = remoteUID, remoteGID
	return d
}

// A filesystem whose Sys() is RemoteAttributes has its fileid, owner,
// nlink and times reported by every procedure, stable across rename; its
// HardLinker answers LINK and its UsageReporter FSSTAT.
func TestRemoteAttributes(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "f")
	os.WriteFile(f, []byte("data"), 0o644)
	os.Chtimes(f, atime2001, mtime2002)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	for i := range 5 {
		os.WriteFile(filepath.Join(dir, "d", fmt.Sprint(i)), nil, 0o600)
	}
	rfs := &remoteFS{Filesystem: osfs.New(dir), dir: dir}
	_, addr := startServer(t, rfs, Options{})
	c := dialClient(t, addr)
	ctx := context.Background()
	root := c.Root()

	lk, err := c.Lookup(ctx, root, "f")
	if err != nil {
		t.Fatal(err)
	}
	h := lk.Handle
	sameAttrs(t, "LOOKUP", lk.Attr, remoteWant(t, f))
	a, err := c.Getattr(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "GETATTR", a, remoteWant(t, f))

	newA, newM := atime2001.Add(time.Minute), mtime2002.Add(time.Minute)
	wcc, err := c.Setattr(ctx, h, client.SetAttr{Atime: &newA, Mtime: &newM}, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := remoteWant(t, f)
	if !want.atime.Equal(newA) || !want.mtime.Equal(newM) {
		t.Fatalf("on disk after SETATTR: atime %v mtime %v", want.atime, want.mtime)
	}
	sameAttrs(t, "SETATTR post-op", wcc.After, want)
	wr, err := c.Write(ctx, h, 0, []byte("DATA"), client.FileSync)
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "WRITE post-op", wr.Wcc.After, remoteWant(t, f))

	id := a.FileID
	if _, _, err := c.Rename(ctx, root, "f", root, "g"); err != nil {
		t.Fatal(err)
	}
	g := filepath.Join(dir, "g")
	a, err = c.Getattr(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	sameAttrs(t, "GETATTR after rename", a, remoteWant(t, g))
	if a.FileID != id {
		t.Fatalf("fileid %d after rename, was %d", a.FileID, id)
	}

	dl, err := c.Lookup(ctx, root, "d")
	if err != nil {
		t.Fatal(err)
	}
	ents, _ := readDirPages(t, c, dl.Handle)
	n := 0
	for _, e := range ents {
		if e.Name != "." && e.Name != ".." {
			n++
			sameAttrs(t, "READDIRPLUS "+e.Name, e.Attr, remoteWant(t, filepath.Join(dir, "d", e.Name)))
		}
	}
	if n != 5 {
		t.Fatalf("listed %d entries, want 5", n)
	}

	// LINK through the HardLinker.
	fi, err := c.FSInfo(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Properties&fsfLink == 0 {
		t.Fatal("FSINFO does not advertise LINK")
	}
	la, _, err := c.Link(ctx, h, root, "hard")
	if err != nil {
		t.Fatalf("LINK: %v", err)
	}
	if rfs.links.Load() != 1 {
		t.Fatalf("HardLinker called %d times", rfs.links.Load())
	}
	sameAttrs(t, "LINK", la, remoteWant(t, g))
	if la.Nlink != 2 {
		t.Fatalf("nlink %d after LINK", la.Nlink)
	}
	hl, err := c.Lookup(ctx, root, "hard")
	if err != nil || hl.Attr.FileID != id {
		t.Fatalf("LOOKUP of the link: %v %+v", err, hl.Attr)
	}
	buf := make([]byte, 4)
	if r, err := c.Read(ctx, hl.Handle, 0, buf); err != nil || string(buf[:r.N]) != "DATA" {
		t.Fatalf("READ through the link: %v %q", err, buf)
	}

	// FSSTAT through the UsageReporter.
	st, err := c.FSStat(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	if st.TotalBytes != 1<<40 || st.FreeBytes != 1<<39 || st.AvailBytes != 1<<38 ||
		st.TotalFiles != 1000 || st.FreeFiles != 600 || st.AvailFiles != 500 {
		t.Fatalf("FSSTAT %+v, want the UsageReporter's figures", st)
	}
	sameAttrs(t, "FSSTAT", st.Attr, remoteWant(t, dir))
}

// The in-memory export reports stable, distinct fileids and its own
// atime and ctime.
func TestMemFSAttributes(t *testing.T) {
	_, addr := startServer(t, NewMemFS(), Options{})
	c := dialClient(t, addr)
	ctx := context.Background()
	root := c.Root()
	ids := map[uint64]string{}
	var handles []client.Handle
	for _, n := range []string{"a", "b", "c"} {
		r, err := c.Create(ctx, root, n, client.CreateHow{Mode: client.Unchecked})
		if err != nil {
			t.Fatal(err)
		}
		if prev, dup := ids[r.Attr.FileID]; dup || r.Attr.FileID == 0 {
			t.Fatalf("%s: fileid %d (also %q)", n, r.Attr.FileID, prev)
		}
		ids[r.Attr.FileID] = n
		handles = append(handles, r.Handle)
	}
	a0, err := c.Getattr(ctx, handles[0])
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Millisecond)
	wcc, err := c.Setattr(ctx, handles[0], client.SetAttr{Atime: &atime2001, Mtime: &mtime2002}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !wcc.Before.Ctime.Equal(a0.Ctime) {
		t.Fatalf("pre-op ctime %v, GETATTR said %v", wcc.Before.Ctime, a0.Ctime)
	}
	a, err := c.Getattr(ctx, handles[0])
	if err != nil {
		t.Fatal(err)
	}
	if !a.Atime.Equal(atime2001) || !a.Mtime.Equal(mtime2002) || !a.Ctime.After(a0.Ctime) {
		t.Fatalf("after SETATTR: atime %v mtime %v ctime %v (was %v)", a.Atime, a.Mtime, a.Ctime, a0.Ctime)
	}
	if _, _, err := c.Rename(ctx, root, "a", root, "z"); err != nil {
		t.Fatal(err)
	}
	lk, err := c.Lookup(ctx, root, "z")
	if err != nil {
		t.Fatal(err)
	}
	if lk.Attr.FileID != a.FileID || !lk.Attr.Atime.Equal(atime2001) || !lk.Attr.Mtime.Equal(mtime2002) {
		t.Fatalf("after rename: %+v, before %+v", lk.Attr, a)
	}
	ents, _ := readDirPages(t, c, root)
	for _, e := range ents {
		if e.Name == "z" && (e.Attr.FileID != a.FileID || !e.Attr.Atime.Equal(atime2001)) {
			t.Fatalf("READDIRPLUS z: %+v", e.Attr)
		}
	}
}

// patchReply walks every reply shape without panicking: a reply cut short
// anywhere is left unchanged.
func TestPatchReplyTruncated(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte("x"), 0o644)
	os.Chtimes(p, atime2001, mtime2002)
	fi, _ := os.Lstat(p)
	fattr := appendFattr(nil, fi, "f")
	// What go-nfs sends: atime and ctime equal to mtime.
	goNFS := append([]byte(nil), fattr...)
	copy(goNFS[60:68], goNFS[68:76])
	copy(goNFS[76:84], goNFS[68:76])
	be := binary.BigEndian
	hdr := appendAcceptedHeader(nil, 7, acceptSuccess)
	post := append(be.AppendUint32(nil, 1), goNFS...)
	wccAttr := be.AppendUint32(nil, 1)
	wccAttr = be.AppendUint64(wccAttr, uint64(fi.Size()))
	wccAttr = append(wccAttr, goNFS[68:76]...)
	wccAttr = append(wccAttr, goNFS[68:76]...)
	fh := be.AppendUint32(nil, 8)
	fh = append(fh, 1, 2, 3, 4, 5, 6, 7, 8)
	ok := be.AppendUint32(nil, 0)
	cat := func(parts ...[]byte) []byte {
		var b []byte
		for _, x := range parts {
			b = append(b, x...)
		}
		return b
	}
	entry := cat(be.AppendUint32(nil, 1), be.AppendUint64(nil, 9), be.AppendUint32(nil, 1), []byte{'f', 0, 0, 0}, be.AppendUint64(nil, 1), post, be.AppendUint32(nil, 1), fh)
	replies := map[uint32][]byte{
		ProcGetAttr:     cat(hdr, ok, goNFS),
		ProcSetAttr:     cat(hdr, ok, wccAttr, post),
		ProcLookup:      cat(hdr, ok, fh, post, post),
		ProcCreate:      cat(hdr, ok, be.AppendUint32(nil, 1), fh, post, wccAttr, post),
		ProcRename:      cat(hdr, ok, wccAttr, post, wccAttr, post),
		ProcReadDirPlus: cat(hdr, ok, post, make([]byte, 8), entry, entry, be.AppendUint32(nil, 0), be.AppendUint32(nil, 1)),
	}
	for proc, full := range replies {
		for n := 0; n <= len(full); n++ {
			var log attrLog
			log.add(fi)
			log.add(fi)
			r := append([]byte(nil), full[:n]...)
			err := patchReply(r, proc, &log)
			if err != nil && string(r) != string(full[:n]) {
				t.Fatalf("proc %d cut at %d: changed a reply it could not walk", proc, n)
			}
			if n == len(full) {
				if err != nil {
					t.Fatalf("proc %d: %v", proc, err)
				}
				want := statDisk(t, p)
				// Every fattr3 now carries the real atime and ctime.
				for i := 0; i+fattrLen <= len(r); i++ {
					if string(r[i:i+fattrLen]) == string(goNFS) {
						t.Fatalf("proc %d: fattr3 at %d left unpatched", proc, i)
					}
				}
				if x, _ := attrsOf(fi); !x.ctime.Equal(want.ctime) {
					t.Fatal("attrsOf disagrees with lstat")
				}
			}
		}
	}
}

// BenchmarkAttrPaths measures the calls whose replies carry attributes:
// READ and WRITE (the transport's fast path, fattr3 encoded by fileAttr)
// and GETATTR and LOOKUP (relayed to go-nfs, reply walked by patchReply).
// Run the same benchmark on the previous commit for the baseline.
func BenchmarkAttrPaths(b *testing.B) {
	dir := b.TempDir()
	fsys := osfs.New(dir, osfs.WithBoundOS())
	const size = 4 << 20
	if err := os.WriteFile(filepath.Join(dir, "f"), make([]byte, size), 0o644); err != nil {
		b.Fatal(err)
	}
	_, addr := startServer(b, fsys, Options{})
	ctx := context.Background()
	c, err := client.Dial(ctx, addr, client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	lk, err := c.Lookup(ctx, c.Root(), "f")
	if err != nil {
		b.Fatal(err)
	}
	h := lk.Handle
	for _, n := range []int{4 << 10, 1 << 20} {
		buf := make([]byte, n)
		b.Run(fmt.Sprintf("READ/%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(n))
			for i := 0; b.Loop(); i++ {
				if _, err := c.Read(ctx, h, uint64(i*n%size), buf); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("WRITE/%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(n))
			for i := 0; b.Loop(); i++ {
				if _, err := c.Write(ctx, h, uint64(i*n%size), buf, client.Unstable); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("GETATTR", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Getattr(ctx, h); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("LOOKUP", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Lookup(ctx, c.Root(), "f"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkAttrEncoding isolates the added CPU per reply: fileAttr
// against go-nfs's ToFileAttribute (the fast path's fattr3), and
// patchReply on a LOOKUP reply (two fattr3s) against the copy of the
// reply it patches.
func BenchmarkAttrEncoding(b *testing.B) {
	dir := b.TempDir()
	p := filepath.Join(dir, "f")
	os.WriteFile(p, []byte("x"), 0o644)
	fi, err := os.Lstat(p)
	if err != nil {
		b.Fatal(err)
	}
	dfi, _ := os.Lstat(dir)
	b.Run("ToFileAttribute", func(b *testing.B) {
		for b.Loop() {
			_ = nfs.ToFileAttribute(fi, "f")
		}
	})
	b.Run("fileAttr", func(b *testing.B) {
		for b.Loop() {
			_ = fileAttr(fi, "f")
		}
	})
	be := binary.BigEndian
	reply := appendAcceptedHeader(nil, 1, acceptSuccess)
	reply = be.AppendUint32(reply, 0)
	reply = be.AppendUint32(reply, 32)
	reply = append(reply, make([]byte, 32)...)
	reply = appendPostOpAttr(reply, fi, "f")
	reply = appendPostOpAttr(reply, dfi, "")
	work := make([]byte, len(reply))
	var log attrLog
	b.Run("copy", func(b *testing.B) {
		for b.Loop() {
			copy(work, reply)
		}
	})
	b.Run("copy+patchReply", func(b *testing.B) {
		for b.Loop() {
			copy(work, reply)
			log.add(dfi)
			log.add(fi)
			log.add(fi)
			if err := patchReply(work, ProcLookup, &log); err != nil {
				b.Fatal(err)
			}
			log.reset()
		}
	})
}
