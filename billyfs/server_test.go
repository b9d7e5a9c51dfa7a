package billyfs_test

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"

	. "gopkg.in/check.v1"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/server"
)

// testServer is a live NFSv3 server (our server package) on 127.0.0.1
// exporting a directory.
type testServer struct {
	Addr string
	Dir  string
	srv  *server.Server
	stop func()
}

// Reads counts the READ RPCs the server answered.
func (s *testServer) Reads() int64 { return int64(s.srv.Stats().NFS[server.ProcRead]) }

// startServer serves a fresh directory until the test ends.
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
	srv, err := server.New(osfs.New(dir, osfs.WithBoundOS()), server.Options{})
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	return &testServer{Addr: l.Addr().String(), Dir: dir, srv: srv, stop: func() {
		srv.Close()
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

// osChangeFS is go-billy's osfs plus billy.Change done with package os
// (osfs has only Chmod): the reference filesystem of the behaviour suite.
type osChangeFS struct {
	billy.Filesystem
	dir string
}

func (c *osChangeFS) Chmod(name string, mode os.FileMode) error {
	return os.Chmod(c.path(name), mode)
}

func (c *osChangeFS) Lchown(name string, uid, gid int) error {
	return os.Lchown(c.path(name), uid, gid)
}

func (c *osChangeFS) Chown(name string, uid, gid int) error {
	return os.Chown(c.path(name), uid, gid)
}

func (c *osChangeFS) Chtimes(name string, atime, mtime time.Time) error {
	return os.Chtimes(c.path(name), atime, mtime)
}

func (c *osChangeFS) path(name string) string {
	return filepath.Join(c.dir, filepath.Clean("/"+name))
}

func (c *osChangeFS) Capabilities() billy.Capability { return billy.Capabilities(c.Filesystem) }
