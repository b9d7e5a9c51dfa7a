package billyfs_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/server"
)

// What a server re-exporting billyfs relies on (server/identity.go).
var (
	_ server.RemoteAttributes = (*billyfs.RemoteAttr)(nil)
	_ server.HardLinker       = (*billyfs.FS)(nil)
	_ server.UsageReporter    = (*billyfs.FS)(nil)
)

// upstreamAttr is the upstream's own answer for name (GETATTR by a separate
// client), to compare billyfs's FileInfo.Sys against.
func upstreamAttr(t *testing.T, srv *testServer, name string) client.Attr {
	t.Helper()
	ctx := context.Background()
	c, err := client.Dial(ctx, srv.Addr, client.Options{})
	must(t, err)
	defer c.Close()
	r, err := c.LookupPath(ctx, c.Root(), name)
	must(t, err)
	a, err := c.Getattr(ctx, r.Handle)
	must(t, err)
	return *a
}

func remoteAttr(t *testing.T, fi os.FileInfo) server.RemoteAttributes {
	t.Helper()
	ra, ok := fi.Sys().(server.RemoteAttributes)
	if !ok {
		t.Fatalf("%s: Sys() is %T, not server.RemoteAttributes", fi.Name(), fi.Sys())
	}
	return ra
}

// Every FileInfo (Stat, Lstat, ReadDir) carries the upstream's fileid,
// nlink, owner, atime and ctime, and the fileid survives a rename through
// billyfs (the Linux client would see "fileid changed" otherwise).
func TestRemoteAttrFileIDStableAcrossRename(t *testing.T) {
	srv := startServer(t)
	for _, cache := range []bool{false, true} {
		opts := billyfs.Options{}
		if cache {
			opts.CacheDir = t.TempDir()
		}
		fsys := mount(t, srv, opts)
		dir := "c"
		if !cache {
			dir = "n"
		}
		writeFile(t, fsys, dir+"/a", []byte("identity"))
		up := upstreamAttr(t, srv, dir+"/a")
		var st syscall.Stat_t
		must(t, syscall.Stat(filepath.Join(srv.Dir, dir, "a"), &st))
		if up.FileID != st.Ino {
			t.Fatalf("upstream reports fileid %d, inode is %d", up.FileID, st.Ino)
		}
		fi, err := fsys.Stat(dir + "/a")
		must(t, err)
		ra := remoteAttr(t, fi)
		if ra.NFSFileID() != up.FileID || ra.NFSLinkCount() != up.Nlink || !ra.NFSChangeTime().Equal(up.Ctime) || !ra.NFSAccessTime().Equal(up.Atime) {
			t.Fatalf("Stat: fileid %d nlink %d ctime %v atime %v; upstream %d %d %v %v",
				ra.NFSFileID(), ra.NFSLinkCount(), ra.NFSChangeTime(), ra.NFSAccessTime(), up.FileID, up.Nlink, up.Ctime, up.Atime)
		}
		if uid, gid := ra.NFSOwner(); uid != up.UID || gid != up.GID {
			t.Fatalf("owner %d:%d, upstream %d:%d", uid, gid, up.UID, up.GID)
		}
		must(t, fsys.Rename(dir+"/a", dir+"/b"))
		for _, get := range []func() (os.FileInfo, error){
			func() (os.FileInfo, error) { return fsys.Stat(dir + "/b") },
			func() (os.FileInfo, error) { return fsys.Lstat(dir + "/b") },
			func() (os.FileInfo, error) {
				fis, err := fsys.ReadDir(dir)
				if err != nil || len(fis) != 1 {
					return nil, errors.Join(err, errors.New("want one entry"))
				}
				return fis[0], nil
			},
		} {
			fi, err := get()
			must(t, err)
			if id := remoteAttr(t, fi).NFSFileID(); id != st.Ino {
				t.Fatalf("after rename %s has fileid %d, want %d (the upstream's, unchanged)", fi.Name(), id, st.Ino)
			}
		}
		if id := upstreamAttr(t, srv, dir+"/b").FileID; id != st.Ino {
			t.Fatalf("upstream fileid after rename %d, want %d", id, st.Ino)
		}
	}
}

// Link is os.Link over LINK: both names share content, nlink is 2 in
// billyfs and on the upstream, errors are *fs.PathError with an Errno.
func TestLink(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir()})
	data := randBytes(7, 300_000)
	writeFile(t, fsys, "d/orig", data)
	// Opened (and cached) before the link: the link's ctime change must
	// not cost the cached data.
	_ = readFile(t, fsys, "d/orig")
	must(t, fsys.MkdirAll("e", 0o755))
	must(t, fsys.Link("d/orig", "e/alias"))
	reads := srv.Reads()
	if got := readFile(t, fsys, "e/alias"); !bytes.Equal(got, data) {
		t.Fatal("content through the new name differs")
	}
	if n := srv.Reads() - reads; n != 0 {
		t.Fatalf("reading through the new name sent %d READs: our own LINK invalidated the cache", n)
	}
	fi, err := fsys.Stat("d/orig")
	must(t, err)
	if n := remoteAttr(t, fi).NFSLinkCount(); n != 2 {
		t.Fatalf("nlink after Link = %d, want 2", n)
	}
	fi2, err := fsys.Stat("e/alias")
	must(t, err)
	if remoteAttr(t, fi2).NFSFileID() != remoteAttr(t, fi).NFSFileID() {
		t.Fatal("the two names have different fileids")
	}
	var st syscall.Stat_t
	must(t, syscall.Stat(filepath.Join(srv.Dir, "e/alias"), &st))
	if st.Nlink != 2 {
		t.Fatalf("upstream nlink = %d, want 2", st.Nlink)
	}
	// Writing through one name shows through the other.
	f, err := fsys.OpenFile("e/alias", os.O_RDWR, 0)
	must(t, err)
	_, err = f.(io.WriterAt).WriteAt([]byte("SHARED"), 10)
	must(t, err)
	must(t, f.Close())
	copy(data[10:], "SHARED")
	if got := readFile(t, fsys, "d/orig"); !bytes.Equal(got, data) {
		t.Fatal("write through the link not visible through the original name")
	}
	if got, err := os.ReadFile(filepath.Join(srv.Dir, "d/orig")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("upstream content after writing through the link: %v", err)
	}
	// Removing one name leaves the other.
	must(t, fsys.Remove("d/orig"))
	if got := readFile(t, fsys, "e/alias"); !bytes.Equal(got, data) {
		t.Fatal("content lost after removing the other name")
	}

	for _, c := range []struct {
		target, link string
		want         syscall.Errno
	}{
		{"e/alias", "e/alias", syscall.EEXIST},
		{"missing", "e/x", syscall.ENOENT},
		{"e/alias", "nodir/x", syscall.ENOENT},
		{"e", "e2", syscall.EPERM},
	} {
		err := fsys.Link(c.target, c.link)
		var pe *fs.PathError
		if !errors.As(err, &pe) || pe.Err != c.want {
			t.Errorf("Link(%q, %q) = %#v, want *fs.PathError with %v", c.target, c.link, err, c.want)
		}
	}
}

// NFSUsage is the upstream's FSSTAT.
func TestNFSUsage(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{})
	ctx := context.Background()
	c, err := client.Dial(ctx, srv.Addr, client.Options{})
	must(t, err)
	defer c.Close()
	// Other processes write to the same disk: our answer must lie between
	// two of the upstream's taken around it.
	between := func(g, x, y uint64) bool { return min(x, y) <= g && g <= max(x, y) }
	for try := 0; ; try++ {
		before, err := c.FSStat(ctx, c.Root())
		must(t, err)
		tb, fb, ab, tf, ff, af, err := fsys.NFSUsage()
		must(t, err)
		after, err := c.FSStat(ctx, c.Root())
		must(t, err)
		if tb != 0 && tb == before.TotalBytes && tf == before.TotalFiles &&
			between(fb, before.FreeBytes, after.FreeBytes) && between(ab, before.AvailBytes, after.AvailBytes) &&
			between(ff, before.FreeFiles, after.FreeFiles) && between(af, before.AvailFiles, after.AvailFiles) {
			return
		}
		if try == 10 {
			t.Fatalf("NFSUsage = %d %d %d %d %d %d; upstream FSSTAT before %+v after %+v", tb, fb, ab, tf, ff, af, before, after)
		}
	}
}

// Our own RENAME (which changes the file's ctime on a Linux upstream) keeps
// the file's cached data: reading it under its new name sends no READ.
func TestRenameKeepsCache(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir()})
	data := randBytes(9, 200_000)
	writeFile(t, fsys, "tmp", data)
	must(t, fsys.Rename("tmp", "final"))
	reads := srv.Reads()
	if got := readFile(t, fsys, "final"); !bytes.Equal(got, data) {
		t.Fatal("content after rename differs")
	}
	if n := srv.Reads() - reads; n != 0 {
		t.Fatalf("reading the renamed file sent %d READs: our own RENAME invalidated the cache", n)
	}
}
