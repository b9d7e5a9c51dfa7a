package billyfs_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	nfs "github.com/willscott/go-nfs"
	nfshelper "github.com/willscott/go-nfs/helpers"

	. "gopkg.in/check.v1"

	"github.com/nfscache/nfscache/billyfs"
)

// testServer is a live NFSv3 server on 127.0.0.1 exporting a directory.
type testServer struct {
	Addr  string
	Dir   string
	reads *atomic.Int64
	stop  func()
}

// Reads counts READ RPCs the server executed (each READ reads its export
// file once with ReadAt).
func (s *testServer) Reads() int64 { return s.reads.Load() }

// startServer serves a fresh directory with go-nfs over osfs until the
// test ends.
func startServer(t testing.TB) *testServer {
	t.Helper()
	srv, err := newServer(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.stop)
	return srv
}

// startServerC is startServer for gopkg.in/check.v1 suites; the caller stops
// it.
func startServerC(c *C) *testServer {
	srv, err := newServer(c.MkDir())
	c.Assert(err, IsNil)
	return srv
}

func newServer(dir string) (*testServer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	reads := new(atomic.Int64)
	fsys := &countingFS{Filesystem: osfs.New(dir), dir: dir, reads: reads}
	handler := nfshelper.NewCachingHandler(nfshelper.NewNullAuthHandler(fsys), 1<<16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = nfs.Serve(l, handler)
	}()
	return &testServer{Addr: l.Addr().String(), Dir: dir, reads: reads, stop: func() {
		l.Close()
		<-done
	}}, nil
}

// mount returns a billyfs on srv, closed at cleanup.
func mount(t testing.TB, srv *testServer, opts billyfs.Options) *billyfs.FS {
	t.Helper()
	opts.Addr = srv.Addr
	fsys, err := billyfs.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	return fsys
}

// countingFS counts the data reads the server does for READ calls.
type countingFS struct {
	billy.Filesystem
	dir   string
	reads *atomic.Int64
}

func (c *countingFS) Open(name string) (billy.File, error) {
	f, err := c.Filesystem.Open(name)
	if err != nil {
		return nil, err
	}
	return &countingFile{File: f, reads: c.reads}, nil
}

type countingFile struct {
	billy.File
	reads *atomic.Int64
}

func (f *countingFile) ReadAt(p []byte, off int64) (int, error) {
	f.reads.Add(1)
	return f.File.ReadAt(p, off)
}

// The Change methods act on the exported directory directly: osfs's
// chroot helper has only Chmod, and go-nfs needs all of billy.Change to
// apply CREATE/SETATTR attributes.
func (c *countingFS) Chmod(name string, mode os.FileMode) error {
	return os.Chmod(c.path(name), mode)
}

func (c *countingFS) Lchown(name string, uid, gid int) error {
	return os.Lchown(c.path(name), uid, gid)
}

func (c *countingFS) Chown(name string, uid, gid int) error {
	return os.Chown(c.path(name), uid, gid)
}

func (c *countingFS) Chtimes(name string, atime, mtime time.Time) error {
	return os.Chtimes(c.path(name), atime, mtime)
}

func (c *countingFS) path(name string) string {
	return filepath.Join(c.dir, filepath.Clean("/"+name))
}

func (c *countingFS) Capabilities() billy.Capability { return billy.Capabilities(c.Filesystem) }
