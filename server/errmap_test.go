package server

import (
	"os"
	"path"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	"github.com/nfscache/nfscache/client"
)

// faultFS is an exported filesystem whose upstream fails for one name:
// Lstat, Stat and Readlink of it, and any listing of its directory,
// return *fs.PathError{Err: errno} while fault is set, as billyfs does
// for a name it never saw when its upstream is down. It is a fake only to
// inject the fault; everything else is osfs on a real directory.
type faultFS struct {
	billy.Filesystem
	name  string // base name that fails
	errno atomic.Value
}

func (f *faultFS) fault(p string) error {
	e, _ := f.errno.Load().(syscall.Errno)
	if e == 0 || path.Base(p) != f.name {
		return nil
	}
	return &os.PathError{Op: "lstat", Path: p, Err: e}
}

func (f *faultFS) Lstat(p string) (os.FileInfo, error) {
	if err := f.fault(p); err != nil {
		return nil, err
	}
	return f.Filesystem.Lstat(p)
}

func (f *faultFS) Stat(p string) (os.FileInfo, error) {
	if err := f.fault(p); err != nil {
		return nil, err
	}
	return f.Filesystem.Stat(p)
}

func (f *faultFS) Readlink(p string) (string, error) {
	if err := f.fault(p); err != nil {
		return "", err
	}
	return f.Filesystem.Readlink(p)
}

// ReadDir fails like a listing that lstat's each name (osfs, billyfs).
func (f *faultFS) ReadDir(p string) ([]os.FileInfo, error) {
	ents, err := f.Filesystem.ReadDir(p)
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		if err := f.fault(path.Join(p, e.Name())); err != nil {
			return nil, err
		}
	}
	return ents, nil
}

// A failing Lstat/Stat/Readlink/ReadDir of the exported filesystem gives
// the status of its errno (RFC 1813 §2.6), where go-nfs alone answers
// LOOKUP NOENT (clients cache that as a negative entry), READDIR NOTDIR
// and READLINK ACCES, and grants ACCESS to a file it cannot reach; a
// name that really is missing is still NOENT.
func TestLookupErrorFidelity(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"flaky", "fine"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("fine", filepath.Join(dir, "sub", "flaky")); err != nil {
		t.Fatal(err)
	}
	fsys := &faultFS{Filesystem: osfs.New(dir, osfs.WithBoundOS()), name: "flaky"}
	_, addr := startServer(t, fsys, Options{StateDir: t.TempDir()})
	c, ctx := dialOurs(t, addr)
	raw := dialRaw(t, addr)
	root := c.Root()

	// Handles obtained while the upstream is healthy.
	flaky := lookupHandle(t, c, ctx, root, "flaky")
	sub := lookupHandle(t, c, ctx, root, "sub")
	link := lookupHandle(t, c, ctx, sub, "flaky")

	for _, tc := range []struct {
		errno syscall.Errno
		want  client.Status
	}{
		{syscall.EIO, client.StatusIO},
		{syscall.ETIMEDOUT, client.StatusIO}, // not JUKEBOX: see lookupStatus
		{syscall.EAGAIN, client.StatusIO},
		{syscall.EACCES, client.StatusAcces},
		{syscall.ESTALE, client.StatusStale},
		{syscall.ENAMETOOLONG, client.StatusNameTooLong},
		{syscall.ENOENT, client.StatusNoEnt},
	} {
		fsys.errno.Store(tc.errno)
		_, err := c.Lookup(ctx, root, "flaky")
		wantStatus(t, "LOOKUP flaky ("+tc.errno.Error()+")", err, tc.want)
		_, err = c.Getattr(ctx, flaky)
		if tc.errno == syscall.ENOENT {
			// A handle whose file is gone: go-nfs's NOENT is kept.
			wantStatus(t, "GETATTR flaky (ENOENT)", err, client.StatusNoEnt)
		} else {
			wantStatus(t, "GETATTR flaky ("+tc.errno.Error()+")", err, tc.want)
		}
		if tc.errno != syscall.ENOENT {
			_, _, err = c.Access(ctx, flaky, 0x3f)
			wantStatus(t, "ACCESS flaky ("+tc.errno.Error()+")", err, tc.want)
		}
		_, _, err = c.Readlink(ctx, link)
		wantStatus(t, "READLINK sub/flaky ("+tc.errno.Error()+")", err, tc.want)
		// The listing of a directory with a failing entry fails whole:
		// leaving the entry out would tell the client the name does not
		// exist, the very negative entry this fix is about.
		_, err = c.ReadDirPlus(ctx, sub, 0, client.Verifier{})
		wantStatus(t, "READDIRPLUS sub ("+tc.errno.Error()+")", err, tc.want)
		st, _ := raw.nfsStatus(ProcReadDir, xdrBuf(nil).opaque(sub).u64(0).u64(0).u32(8192))
		if client.Status(st) != tc.want {
			t.Fatalf("READDIR sub (%v): %d, want %v", tc.errno, st, tc.want)
		}

		// Other names are unaffected, and a missing one is still NOENT.
		if _, err := c.Lookup(ctx, root, "fine"); err != nil {
			t.Fatalf("LOOKUP fine during %v: %v", tc.errno, err)
		}
		_, err = c.Lookup(ctx, root, "absent")
		wantStatus(t, "LOOKUP absent", err, client.StatusNoEnt)
	}

	// Healthy again: everything answers.
	fsys.errno.Store(syscall.Errno(0))
	if _, err := c.Getattr(ctx, flaky); err != nil {
		t.Fatalf("GETATTR after recovery: %v", err)
	}
	if _, _, err := c.Access(ctx, flaky, 0x3f); err != nil {
		t.Fatalf("ACCESS after recovery: %v", err)
	}
	if target, _, err := c.Readlink(ctx, link); err != nil || target != "fine" {
		t.Fatalf("READLINK after recovery: %q %v", target, err)
	}
	if ents, _ := readDirPages(t, c, sub); len(ents) != 3 { // ".", "..", "flaky"
		t.Fatalf("READDIRPLUS after recovery: %d entries", len(ents))
	}
}

// The rewrite only touches error replies go-nfs got wrong: statuses it
// found itself and successful replies are kept byte for byte.
func TestFixLookupStatusKeepsOtherReplies(t *testing.T) {
	hdr := appendAcceptedHeader(nil, 7, acceptSuccess)
	ok := append(append([]byte(nil), hdr...), 0, 0, 0, 0, 0, 0, 0, 0)
	if got := fixLookupStatus(ok, ProcLookup, syscall.EIO); string(got) != string(ok) {
		t.Fatalf("successful reply rewritten: %x", got)
	}
	inval := append(append([]byte(nil), hdr...), 0, 0, 0, 22, 0, 0, 0, 0)
	if got := fixLookupStatus(inval, ProcReadlink, syscall.EIO); string(got) != string(inval) {
		t.Fatalf("INVAL reply rewritten: %x", got)
	}
	noent := append(append([]byte(nil), hdr...), 0, 0, 0, 2, 0, 0, 0, 0)
	// CREATE probes the new name expecting ENOENT: not a cause.
	create := append(append([]byte(nil), hdr...), 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
	if got := fixLookupStatus(create, ProcCreate, syscall.ENOENT); string(got) != string(create) {
		t.Fatalf("CREATE reply rewritten for an ENOENT probe: %x", got)
	}
	got := fixLookupStatus(noent, ProcLookup, &os.PathError{Op: "lstat", Path: "x", Err: syscall.EIO})
	want := append(append([]byte(nil), hdr...), 0, 0, 0, 5, 0, 0, 0, 0)
	if string(got) != string(want) {
		t.Fatalf("LOOKUP NOENT for EIO: %x, want %x", got, want)
	}
}
