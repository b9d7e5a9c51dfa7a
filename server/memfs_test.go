package server

import (
	"os"
	"testing"
	"time"
)

// The in-memory export keeps modification times: writes, truncates and
// directory changes move them, Chtimes sets them, reads do not.
func TestMemFSModTimes(t *testing.T) {
	m := NewMemFS()
	f, err := m.Create("d/f")
	if err != nil {
		t.Fatal(err)
	}
	mt := func(p string) time.Time {
		fi, err := m.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.ModTime()
	}
	t0, d0 := mt("d/f"), mt("d")
	time.Sleep(2 * time.Millisecond)
	f.Write([]byte("x"))
	if !mt("d/f").After(t0) {
		t.Fatal("write did not move mtime")
	}
	t1 := mt("d/f")
	time.Sleep(2 * time.Millisecond)
	buf := make([]byte, 1)
	f.(interface {
		ReadAt([]byte, int64) (int, error)
	}).ReadAt(buf, 0)
	if !mt("d/f").Equal(t1) {
		t.Fatal("read moved mtime")
	}
	if mt("d").Equal(d0) && mt("d").Before(t0) {
		t.Fatal("directory mtime not set by create")
	}
	time.Sleep(2 * time.Millisecond)
	g, _ := m.Create("d/g")
	g.Close()
	if !mt("d").After(d0) {
		t.Fatal("create did not move the directory's mtime")
	}
	want := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
	if err := m.(interface {
		Chtimes(string, time.Time, time.Time) error
	}).Chtimes("d/f", want, want); err != nil {
		t.Fatal(err)
	}
	if !mt("d/f").Equal(want) {
		t.Fatalf("Chtimes: mtime %v", mt("d/f"))
	}
	if err := m.Rename("d", "e"); err != nil {
		t.Fatal(err)
	}
	if !mt("e/f").Equal(want) {
		t.Fatal("rename lost the mtime")
	}
	ents, _ := m.ReadDir("e")
	for _, e := range ents {
		if e.Name() == "f" && !e.ModTime().Equal(want) {
			t.Fatal("ReadDir reports another mtime")
		}
	}
	if _, err := m.OpenFile("e/f", os.O_RDWR|os.O_EXCL, 0); err != nil {
		t.Fatalf("O_EXCL without O_CREATE: %v", err)
	}
}

// NewMemFS's FileInfos carry RemoteAttributes: distinct fileids that stay
// with a file across renames (a directory's descendants too) and are
// never reused, and access and change times of their own.
func TestMemFSIdentity(t *testing.T) {
	m := NewMemFS()
	id := func(p string) uint64 {
		t.Helper()
		fi, err := m.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		ra, ok := fi.Sys().(RemoteAttributes)
		if !ok {
			t.Fatalf("%s: Sys() %T is not RemoteAttributes", p, fi.Sys())
		}
		return ra.NFSFileID()
	}
	f, err := m.Create("a/b/f") // memfs makes a and a/b too
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]string{}
	for _, p := range []string{"", "a", "a/b", "a/b/f"} {
		i := id(p)
		if prev, dup := seen[i]; dup || i == 0 {
			t.Fatalf("%q: fileid %d (also %q)", p, i, prev)
		}
		seen[i] = p
	}
	fid, bid := id("a/b/f"), id("a/b")
	if err := m.Rename("a", "z"); err != nil {
		t.Fatal(err)
	}
	if id("z/b/f") != fid || id("z/b") != bid {
		t.Fatal("rename of an ancestor changed fileids")
	}
	// A file opened before the rename changes the renamed file.
	time.Sleep(2 * time.Millisecond)
	before, _ := m.Lstat("z/b/f")
	f.Write([]byte("x"))
	after, _ := m.Lstat("z/b/f")
	if !after.ModTime().After(before.ModTime()) {
		t.Fatal("write through a file opened before the rename did not move its mtime")
	}
	ra := after.Sys().(RemoteAttributes)
	if !ra.NFSChangeTime().Equal(after.ModTime()) || !ra.NFSAccessTime().Before(after.ModTime()) {
		t.Fatalf("after write: atime %v mtime %v ctime %v", ra.NFSAccessTime(), after.ModTime(), ra.NFSChangeTime())
	}
	// Chtimes sets atime and mtime, moves ctime; a zero time is left alone.
	at := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	ch := m.(interface {
		Chtimes(string, time.Time, time.Time) error
	})
	if err := ch.Chtimes("z/b/f", at, time.Time{}); err != nil {
		t.Fatal(err)
	}
	fi, _ := m.Lstat("z/b/f")
	ra = fi.Sys().(RemoteAttributes)
	if !ra.NFSAccessTime().Equal(at) || !fi.ModTime().Equal(after.ModTime()) || !ra.NFSChangeTime().After(after.ModTime()) {
		t.Fatalf("Chtimes(atime only): atime %v mtime %v ctime %v", ra.NFSAccessTime(), fi.ModTime(), ra.NFSChangeTime())
	}
	// A removed file's fileid is not given to the next file.
	if err := m.Remove("z/b/f"); err != nil {
		t.Fatal(err)
	}
	g, _ := m.Create("z/b/f")
	g.Close()
	if id("z/b/f") == fid {
		t.Fatal("a new file got the removed file's fileid")
	}
	ents, _ := m.ReadDir("z/b")
	if len(ents) != 1 || ents[0].Sys().(RemoteAttributes).NFSFileID() != id("z/b/f") {
		t.Fatalf("ReadDir disagrees with Lstat: %v", ents)
	}
}
