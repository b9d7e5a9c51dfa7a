package integration

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	billy "github.com/go-git/go-billy/v5"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/server"
)

// faultFS wraps the exported billy.Filesystem and makes file writes,
// syncs and creates fail with an injected errno while armed, like a full
// or failing disk under the server. Everything else passes through.
//
// Concurrency: safe for concurrent use; the injected errors are atomics.
type faultFS struct {
	billy.Filesystem
	writeErr, syncErr, createErr atomic.Int64 // syscall.Errno, 0 = none
	injected                     atomic.Int64
}

func (f *faultFS) fail(which *atomic.Int64, op, name string) error {
	if e := syscall.Errno(which.Load()); e != 0 {
		f.injected.Add(1)
		return &os.PathError{Op: op, Path: name, Err: e}
	}
	return nil
}

func (f *faultFS) Create(name string) (billy.File, error) {
	return f.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
}

func (f *faultFS) Open(name string) (billy.File, error) {
	return f.OpenFile(name, os.O_RDONLY, 0)
}

func (f *faultFS) OpenFile(name string, flag int, perm os.FileMode) (billy.File, error) {
	if flag&os.O_CREATE != 0 {
		if _, err := f.Filesystem.Lstat(name); errors.Is(err, os.ErrNotExist) {
			if err := f.fail(&f.createErr, "open", name); err != nil {
				return nil, err
			}
		}
	}
	file, err := f.Filesystem.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}

// The server changes modes and times through billy.Change when present.
func (f *faultFS) Chmod(name string, mode os.FileMode) error {
	if c, ok := f.Filesystem.(billy.Change); ok {
		return c.Chmod(name, mode)
	}
	return nil
}
func (f *faultFS) Lchown(name string, uid, gid int) error {
	if c, ok := f.Filesystem.(billy.Change); ok {
		return c.Lchown(name, uid, gid)
	}
	return nil
}
func (f *faultFS) Chown(name string, uid, gid int) error {
	if c, ok := f.Filesystem.(billy.Change); ok {
		return c.Chown(name, uid, gid)
	}
	return nil
}
func (f *faultFS) Chtimes(name string, atime, mtime time.Time) error {
	if c, ok := f.Filesystem.(billy.Change); ok {
		return c.Chtimes(name, atime, mtime)
	}
	return nil
}

type faultFile struct {
	billy.File
	fs *faultFS
	mu sync.Mutex // serialises Seek+Write when the file has no WriteAt
}

func (f *faultFile) Write(p []byte) (int, error) {
	if err := f.fs.fail(&f.fs.writeErr, "write", f.Name()); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.fs.fail(&f.fs.writeErr, "write", f.Name()); err != nil {
		return 0, err
	}
	if w, ok := f.File.(io.WriterAt); ok {
		return w.WriteAt(p, off)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.File.Seek(off, io.SeekStart); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}

func (f *faultFile) Sync() error {
	if err := f.fs.fail(&f.fs.syncErr, "sync", f.Name()); err != nil {
		return err
	}
	if s, ok := f.File.(interface{ Sync() error }); ok {
		return s.Sync()
	}
	return nil
}

func (f *faultFile) Stat() (os.FileInfo, error) {
	if s, ok := f.File.(interface{ Stat() (os.FileInfo, error) }); ok {
		return s.Stat()
	}
	return f.fs.Filesystem.Stat(f.Name())
}

// TestExportFSFaults makes the exported filesystem fail: ENOSPC on write,
// EIO on fsync, ENOSPC on create. The client gets the precise error from
// WRITE, COMMIT and CREATE; the bytes on disk are those written before the
// fault; a second client on another connection is served throughout; once
// the disk recovers the same client finishes the job and nothing is lost.
func TestExportFSFaults(t *testing.T) {
	var ffs *faultFS
	s := relStart(t, server.Options{}, func(b billy.Filesystem) billy.Filesystem {
		ffs = &faultFS{Filesystem: b}
		return ffs
	})
	c := relDial(t, s.Addr, client.Options{MaxIOSize: 64 << 10})
	other := relDial(t, s.Addr, client.Options{})
	ctx := relCtx(t)
	path := filepath.Join(s.Dir, "f")
	first := relData(20, 1<<20)
	f, err := c.Create(ctx, c.Root(), "f", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(ctx, f.Handle, first, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Commit(ctx, f.Handle, 0, 0); err != nil {
		t.Fatal(err)
	}
	stillServing := func(stage string) {
		t.Helper()
		l, err := other.Lookup(ctx, other.Root(), "f")
		if err != nil {
			t.Fatalf("%s: the other client's LOOKUP: %v", stage, err)
		}
		got := make([]byte, len(first))
		if _, err := other.ReadAt(ctx, l.Handle, got, 0); err != nil || !bytes.Equal(got, first) {
			t.Fatalf("%s: the other client's READ: %v", stage, err)
		}
	}
	unchanged := func(stage string, want []byte) {
		t.Helper()
		sum, n := relFileSum(t, path)
		if n != len(want) || sum != sha256.Sum256(want) {
			t.Fatalf("%s: file on disk changed (%d bytes, want %d)", stage, n, len(want))
		}
	}

	// Disk full on WRITE: every WriteAt fails with ENOSPC, nothing lands.
	second := relData(21, 256<<10)
	ffs.writeErr.Store(int64(syscall.ENOSPC))
	for range 3 {
		_, err := c.WriteAt(ctx, f.Handle, second, int64(len(first)))
		var ne *client.Error
		if !errors.Is(err, syscall.ENOSPC) || !errors.As(err, &ne) || ne.Status != client.Status(28) {
			t.Fatalf("WRITE on a full disk: %v, want NFS3ERR_NOSPC", err)
		}
		if _, err := c.Write(ctx, f.Handle, uint64(len(first)), second[:4096], client.FileSync); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("FILE_SYNC WRITE on a full disk: %v", err)
		}
	}
	unchanged("after ENOSPC", first)
	stillServing("ENOSPC")
	ffs.writeErr.Store(0)

	// EIO from fsync: the UNSTABLE WRITEs succeed, COMMIT reports EIO
	// (the data is not known to be durable), repeatedly.
	ffs.syncErr.Store(int64(syscall.EIO))
	if _, err := c.WriteAt(ctx, f.Handle, second, int64(len(first))); err != nil {
		t.Fatalf("UNSTABLE WriteAt while fsync fails: %v", err)
	}
	for range 3 {
		if _, err := c.Commit(ctx, f.Handle, 0, 0); !errors.Is(err, syscall.EIO) {
			t.Fatalf("COMMIT while fsync fails: %v, want NFS3ERR_IO", err)
		}
	}
	if _, err := c.Write(ctx, f.Handle, 0, first[:4096], client.FileSync); !errors.Is(err, syscall.EIO) {
		t.Fatalf("FILE_SYNC WRITE while fsync fails: %v, want NFS3ERR_IO", err)
	}
	if c.Uncommitted(f.Handle) == 0 {
		t.Fatal("the client forgot writes whose COMMIT failed")
	}
	stillServing("EIO")
	ffs.syncErr.Store(0)

	// ENOSPC on CREATE: the right status, no file appears.
	ffs.createErr.Store(int64(syscall.ENOSPC))
	if _, err := c.Create(ctx, c.Root(), "new", client.CreateHow{Mode: client.Guarded}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("CREATE on a full disk: %v, want NFS3ERR_NOSPC", err)
	}
	if _, err := os.Lstat(filepath.Join(s.Dir, "new")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused CREATE left a file: %v", err)
	}
	ffs.createErr.Store(0)

	// Recovered: the same client commits, everything is there.
	if _, err := c.Commit(ctx, f.Handle, 0, 0); err != nil {
		t.Fatalf("COMMIT after recovery: %v", err)
	}
	unchanged("after recovery", append(append([]byte(nil), first...), second...))
	if c.Uncommitted(f.Handle) != 0 {
		t.Fatalf("%d bytes still uncommitted after a successful COMMIT", c.Uncommitted(f.Handle))
	}
	t.Logf("%d faults injected into the export, every one reported to the client, nothing lost", ffs.injected.Load())
}
