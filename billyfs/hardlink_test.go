package billyfs_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/client"
)

// A write through one open name of a hard-linked file after another name
// was removed reaches the server (issue 3: Remove forgot the inode while
// another link kept the file, and the write was dropped with Write and
// Close returning nil).
func TestRemoveOtherLinkKeepsWrites(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir()})
	writeFile(t, fsys, "h/a", []byte("linked"))
	must(t, fsys.Link("h/a", "h/b"))
	f, err := fsys.OpenFile("h/b", os.O_RDWR, 0)
	must(t, err)
	must(t, fsys.Remove("h/a"))
	_, err = f.Write([]byte("!"))
	must(t, err)
	must(t, f.Close())
	must(t, fsys.Sync())
	b, err := os.ReadFile(filepath.Join(srv.Dir, "h/b"))
	must(t, err)
	if string(b) != "!inked" {
		t.Fatalf("upstream h/b = %q, want %q", b, "!inked")
	}
	// The surviving name reports the upstream's new link count.
	fi, err := fsys.Stat("h/b")
	must(t, err)
	if n := remoteAttr(t, fi).NFSLinkCount(); n != 1 {
		t.Fatalf("nlink of h/b after removing h/a = %d, want 1", n)
	}
}

// Data written through an open name that is then removed, while another
// link keeps the file, reaches the server at close (unlink of one name of
// an open file: the inode lives on while any link does).
func TestRemoveOpenLinkKeepsWrites(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir()})
	writeFile(t, fsys, "h/a", []byte("before"))
	must(t, fsys.Link("h/a", "h/b"))
	f, err := fsys.OpenFile("h/a", os.O_RDWR, 0)
	must(t, err)
	_, err = f.Write([]byte("after!")) // dirty in the cache
	must(t, err)
	must(t, fsys.Remove("h/a"))
	must(t, f.Close())
	must(t, fsys.Sync())
	b, err := os.ReadFile(filepath.Join(srv.Dir, "h/b"))
	must(t, err)
	if string(b) != "after!" {
		t.Fatalf("upstream h/b = %q, want %q", b, "after!")
	}
	if got := readFile(t, fsys, "h/b"); string(got) != "after!" {
		t.Fatalf("h/b through billyfs = %q, want %q", got, "after!")
	}
}

// Removing a file with a single link costs the REMOVE alone: the post-remove
// GETATTR is only sent when the file had other links.
func TestRemoveSingleLinkOneRPC(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir()})
	writeFile(t, fsys, "r/one", []byte("x"))
	writeFile(t, fsys, "r/two", []byte("y"))
	must(t, fsys.Link("r/two", "r/two2"))
	_, err := fsys.Stat("r/one") // names and attributes cached
	must(t, err)
	_, err = fsys.Stat("r/two")
	must(t, err)

	before := fsys.Stats().RPC.Procs
	must(t, fsys.Remove("r/one"))
	after := fsys.Stats().RPC.Procs
	if n := after["REMOVE"].Calls - before["REMOVE"].Calls; n != 1 {
		t.Fatalf("Remove of a single-link file sent %d REMOVEs, want 1", n)
	}
	if n := totalCalls(after) - totalCalls(before); n != 1 {
		t.Fatalf("Remove of a single-link file sent %d RPCs, want 1 (%v)", n, after)
	}

	// The first REMOVE's wcc_data gave the directory's new attributes:
	// the second walk through it needs no GETATTR of it.
	before = after
	must(t, fsys.Remove("r/two"))
	after = fsys.Stats().RPC.Procs
	if n := after["GETATTR"].Calls - before["GETATTR"].Calls; n != 1 {
		t.Fatalf("Remove of a linked file sent %d GETATTRs, want 1 (the file's, after the REMOVE)", n)
	}
	if n := totalCalls(after) - totalCalls(before); n != 2 {
		t.Fatalf("Remove of a linked file sent %d RPCs, want 2 (REMOVE, GETATTR)", n)
	}
	if _, err := os.Stat(filepath.Join(srv.Dir, "r/one")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("upstream r/one after Remove: %v", err)
	}
	if got := readFile(t, fsys, "r/two2"); string(got) != "y" {
		t.Fatalf("r/two2 = %q", got)
	}
}

func totalCalls(procs map[string]client.ProcStats) uint64 {
	var n uint64
	for _, p := range procs {
		n += p.Calls
	}
	return n
}

// A LINK refused with EEXIST changed nothing: the existing name keeps its
// cached entry, so both names still reach one inode (issue 7: the name was
// dropped, the next lookup learnt another handle for it, and the same file
// got a second inode whose cached data went out of step with the first).
func TestLinkEEXISTKeepsName(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir()})
	writeFile(t, fsys, "l/a", []byte("one file"))
	must(t, fsys.Link("l/a", "l/b"))
	err := fsys.Link("l/a", "l/b")
	var pe *fs.PathError
	if !errors.As(err, &pe) || pe.Err != syscall.EEXIST {
		t.Fatalf("second Link = %#v, want *fs.PathError with EEXIST", err)
	}
	// The refused LINK kept l/b's cached name: no LOOKUP to reach it.
	lookups := fsys.Stats().RPC.Procs["LOOKUP"].Calls
	_, err = fsys.Stat("l/b")
	must(t, err)
	if n := fsys.Stats().RPC.Procs["LOOKUP"].Calls - lookups; n != 0 {
		t.Fatalf("Stat of l/b after the refused LINK sent %d LOOKUPs, want 0 (name cache entry dropped)", n)
	}
	fa, err := fsys.OpenFile("l/a", os.O_RDWR, 0)
	must(t, err)
	defer fa.Close()
	fb, err := fsys.OpenFile("l/b", os.O_RDWR, 0)
	must(t, err)
	defer fb.Close()
	if n := fsys.Stats().Inodes; n != 1 {
		t.Fatalf("two names of one file have %d inodes, want 1", n)
	}
	_, err = fa.Write([]byte("ONE"))
	must(t, err)
	got := make([]byte, 8)
	_, err = fb.ReadAt(got, 0)
	must(t, err)
	if string(got) != "ONE file" {
		t.Fatalf("read through l/b after writing through l/a = %q, want %q", got, "ONE file")
	}
}
