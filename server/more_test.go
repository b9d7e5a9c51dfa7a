package server

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"
	nfs "github.com/willscott/go-nfs"
)

// Renaming a directory re-points the handles of everything below it.
func TestRenameDirectoryKeepsDescendantHandles(t *testing.T) {
	dir, fsys := diskFS(t)
	os.MkdirAll(filepath.Join(dir, "a/b"), 0o755)
	os.WriteFile(filepath.Join(dir, "a/b/f"), []byte("deep"), 0o644)
	os.WriteFile(filepath.Join(dir, "victim"), []byte("old"), 0o644)
	_, addr := startServer(t, fsys, Options{})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	a, _ := r.lookup(root, "a")
	b, _ := r.lookup(a, "b")
	f, _ := r.lookup(b, "f")
	victim, _ := r.lookup(root, "victim")
	if st := r.rename(root, "a", root, "z"); st != 0 {
		t.Fatalf("rename dir: %d", st)
	}
	if st, data := r.read(f, 0, 10); st != 0 || string(data) != "deep" {
		t.Fatalf("read via old handle after parent rename: %d %q", st, data)
	}
	if h, _ := r.lookup(b, "f"); !bytes.Equal(h, f) {
		t.Fatal("LOOKUP under renamed dir gave a new handle")
	}
	// A directory replaces an empty directory, as rename(2) does.
	if st := r.mkdir(root, "empty"); st != 0 {
		t.Fatal(st)
	}
	if st := r.rename(root, "z", root, "empty"); st != 0 {
		t.Fatalf("rename dir over empty dir: %d", st)
	}
	if _, err := os.Stat(filepath.Join(dir, "z")); !os.IsNotExist(err) {
		t.Fatalf("source still there: %v", err)
	}
	if st, data := r.read(f, 0, 10); st != 0 || string(data) != "deep" {
		t.Fatalf("read after second rename: %d %q", st, data)
	}
	// Rename a file over another: the overwritten file's handle is stale.
	if st := r.rename(b, "f", root, "victim"); st != 0 {
		t.Fatalf("rename over file: %d", st)
	}
	if st := r.getattr(victim); st != nfsStale {
		t.Fatalf("handle of overwritten file: %d, want STALE", st)
	}
	if st, data := r.read(f, 0, 10); st != 0 || string(data) != "deep" {
		t.Fatalf("moved file: %d %q", st, data)
	}
}

// A full filesystem reaches the client as NOSPC.
func TestWriteNoSpace(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Skipf("cannot mount a small tmpfs here (%v); TestStatusTable covers the mapping", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, 0) }) // after the server closes its files
	os.WriteFile(filepath.Join(dir, "f"), nil, 0o644)
	_, addr := startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{})
	r := dialRaw(t, addr)
	fh, _ := r.lookup(r.rootHandle(), "f")
	var st uint32
	for off := uint64(0); off < 1<<20 && st == 0; off += 32 << 10 {
		st, _, _ = r.write(fh, off, 2, make([]byte, 32<<10))
	}
	if st != 28 {
		t.Fatalf("write to a full filesystem: status %d, want NOSPC (28)", st)
	}
}

// The errno → nfsstat3 table, including wrapped errors go-nfs would miss.
func TestStatusTable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want nfs.NFSStatus
	}{
		{fmt.Errorf("x: %w", &os.PathError{Err: syscall.ENOENT}), nfs.NFSStatusNoEnt},
		{syscall.ENOSPC, nfs.NFSStatusNoSPC},
		{syscall.ENOTEMPTY, nfs.NFSStatusNotEmpty},
		{syscall.EEXIST, nfs.NFSStatusExist},
		{syscall.ENOTDIR, nfs.NFSStatusNotDir},
		{syscall.EISDIR, nfs.NFSStatusIsDir},
		{syscall.EROFS, nfs.NFSStatusROFS},
		{syscall.EDQUOT, nfs.NFSStatusDQuot},
		{syscall.EACCES, nfs.NFSStatusAccess},
		{fmt.Errorf("wrapped: %w", errStaleHandle), nfs.NFSStatusStale},
		{errBadHandle, nfs.NFSStatusBadHandle},
		{os.ErrExist, nfs.NFSStatusExist},
		{fmt.Errorf("opaque"), nfs.NFSStatusIO},
	} {
		if got := statusOf(c.err); got != c.want {
			t.Errorf("statusOf(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// READ of a FIFO is refused instead of blocking the server on open.
func TestReadSpecialFileRefused(t *testing.T) {
	dir, fsys := diskFS(t)
	if err := exec.Command("mkfifo", filepath.Join(dir, "fifo")).Run(); err != nil {
		if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
			t.Fatalf("mkfifo: %v", err)
		}
	}
	_, addr := startServer(t, fsys, Options{})
	r := dialRaw(t, addr)
	h, st := r.lookup(r.rootHandle(), "fifo")
	if st != 0 {
		t.Fatal(st)
	}
	if st, _ := r.read(h, 0, 10); st != 22 {
		t.Fatalf("READ of a FIFO: status %d, want INVAL", st)
	}
	// SETATTR size would open the FIFO for writing (go-nfs) and block.
	sattrSize := xdrBuf(nil).u32(0).u32(0).u32(0).u32(1).u64(0).u32(0).u32(0).u32(0)
	if st, _ := r.nfsStatus(ProcSetAttr, append(xdrBuf(nil).opaque(h), sattrSize...)); st != 22 {
		t.Fatalf("SETATTR size of a FIFO: status %d, want INVAL", st)
	}
}

// LINK makes a hard link on a disk export (go-nfs's own LINK is broken).
func TestHardLink(t *testing.T) {
	dir, fsys := diskFS(t)
	os.WriteFile(filepath.Join(dir, "a"), []byte("linked"), 0o644)
	_, addr := startServer(t, fsys, Options{})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	a, _ := r.lookup(root, "a")
	link := func(name string) uint32 {
		st, _ := r.nfsStatus(ProcLink, xdrBuf(nil).opaque(a).opaque(root).opaque([]byte(name)))
		return st
	}
	if st := link("b"); st != 0 {
		t.Fatalf("LINK: %d", st)
	}
	if st := link("b"); st != nfsExist {
		t.Fatalf("LINK over existing name: %d, want EXIST", st)
	}
	if st := link("../out"); st != 13 {
		t.Fatalf("LINK ../out: %d, want ACCES (a name with '/', as knfsd)", st)
	}
	sa, _ := os.Stat(filepath.Join(dir, "a"))
	sb, err := os.Stat(filepath.Join(dir, "b"))
	if err != nil || !os.SameFile(sa, sb) {
		t.Fatalf("b is not a hard link of a: %v", err)
	}
	b, _ := r.lookup(root, "b")
	if st, data := r.read(b, 0, 10); st != 0 || string(data) != "linked" {
		t.Fatalf("read via link: %d %q", st, data)
	}
}

// FSINFO advertises what the transport handles; FSSTAT is statfs of the
// exported directory.
func TestFSInfoAndFSStat(t *testing.T) {
	dir, fsys := diskFS(t)
	_, addr := startServer(t, fsys, Options{})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	st, body := r.nfsStatus(ProcFSInfo, xdrBuf(nil).opaque(root))
	if st != 0 || binary.BigEndian.Uint32(body) != 1 {
		t.Fatalf("FSINFO: %d", st)
	}
	info := body[4+fattrLen:]
	rtmax, rtpref, wtmax := binary.BigEndian.Uint32(info), binary.BigEndian.Uint32(info[4:]), binary.BigEndian.Uint32(info[12:])
	if rtmax != MaxTransfer || rtpref != MaxTransfer || wtmax != MaxTransfer {
		t.Fatalf("FSINFO rtmax %d rtpref %d wtmax %d", rtmax, rtpref, wtmax)
	}
	st, body = r.nfsStatus(ProcFSStat, xdrBuf(nil).opaque(root))
	if st != 0 || binary.BigEndian.Uint32(body) != 1 {
		t.Fatalf("FSSTAT: %d", st)
	}
	stat := body[4+fattrLen:]
	tbytes, abytes, tfiles := binary.BigEndian.Uint64(stat), binary.BigEndian.Uint64(stat[16:]), binary.BigEndian.Uint64(stat[24:])
	var sf syscall.Statfs_t
	if err := syscall.Statfs(dir, &sf); err != nil {
		t.Fatal(err)
	}
	if want := sf.Blocks * uint64(sf.Bsize); tbytes != want {
		t.Fatalf("FSSTAT tbytes %d, statfs says %d", tbytes, want)
	}
	if tfiles != sf.Files || abytes == 0 || abytes > tbytes {
		t.Fatalf("FSSTAT tfiles %d (statfs %d) abytes %d", tfiles, sf.Files, abytes)
	}
}

// CREATE EXCLUSIVE creates once; a retransmission with the same verifier
// succeeds with the same handle, another verifier gets EXIST.
func TestCreateExclusive(t *testing.T) {
	for _, kind := range []string{"disk", "mem"} {
		t.Run(kind, func(t *testing.T) {
			fsys := NewMemFS()
			if kind == "disk" {
				_, fsys = diskFS(t)
			}
			_, addr := startServer(t, fsys, Options{})
			r := dialRaw(t, addr)
			root := r.rootHandle()
			create := func(verf uint64) (uint32, []byte) {
				st, body := r.nfsStatus(ProcCreate, xdrBuf(nil).opaque(root).opaque([]byte("x")).u32(2).u64(verf))
				if st != 0 {
					return st, nil
				}
				n := binary.BigEndian.Uint32(body[4:])
				return st, body[8 : 8+n]
			}
			st, h1 := create(0x1122334455667788)
			if st != 0 {
				t.Fatalf("CREATE EXCLUSIVE: %d", st)
			}
			if kind == "disk" {
				st, h2 := create(0x1122334455667788)
				if st != 0 || !bytes.Equal(h1, h2) {
					t.Fatalf("retransmitted CREATE EXCLUSIVE: %d", st)
				}
			}
			if st, _ := create(0x99); st != nfsExist {
				t.Fatalf("CREATE EXCLUSIVE over another's file: %d, want EXIST", st)
			}
			if st := r.getattr(h1); st != 0 {
				t.Fatalf("GETATTR of created file: %d", st)
			}
		})
	}
}

// Stats.Handles follows assignments, removals and restarts.
func TestHandleCount(t *testing.T) {
	dir, fsys := diskFS(t)
	state := t.TempDir()
	os.WriteFile(filepath.Join(dir, "a"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "b"), nil, 0o644)
	s, addr := startServer(t, fsys, Options{StateDir: state})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	r.lookup(root, "a")
	r.lookup(root, "b")
	r.lookup(root, "a")
	if n := s.Stats().Handles; n != 3 { // root, a, b
		t.Fatalf("handles = %d, want 3", n)
	}
	if st := r.remove(root, "b"); st != 0 {
		t.Fatal(st)
	}
	if n := s.Stats().Handles; n != 2 {
		t.Fatalf("handles after remove = %d, want 2", n)
	}
	s.Close()
	s2, _ := startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{StateDir: state})
	if n := s2.Stats().Handles; n != 2 {
		t.Fatalf("handles after restart = %d, want 2", n)
	}
}
