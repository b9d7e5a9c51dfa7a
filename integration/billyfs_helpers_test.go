package integration

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

	"github.com/nfscache/nfscache/billyfs"
)

// bfsServer is a live NFSv3 server on 127.0.0.1 exporting a directory, for
// the billyfs end-to-end tests.
type bfsServer struct {
	Addr  string
	Dir   string
	reads *atomic.Int64
}

// Reads counts the READ RPCs the server executed: go-nfs serves each READ
// with exactly one ReadAt on the exported file, which the wrapper counts.
func (s *bfsServer) Reads() int64 { return s.reads.Load() }

func bfsStartServer(t testing.TB) *bfsServer {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reads := new(atomic.Int64)
	fsys := &bfsCountingFS{Filesystem: osfs.New(dir), dir: dir, reads: reads}
	handler := nfshelper.NewCachingHandler(nfshelper.NewNullAuthHandler(fsys), 1<<16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = nfs.Serve(l, handler)
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return &bfsServer{Addr: l.Addr().String(), Dir: dir, reads: reads}
}

func bfsMount(t testing.TB, srv *bfsServer, opts billyfs.Options) *billyfs.FS {
	t.Helper()
	opts.Addr = srv.Addr
	fsys, err := billyfs.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fsys.Close() })
	return fsys
}

// bfsCountingFS counts data reads and adds billy.Change through package os
// (osfs's chroot helper has only Chmod; go-nfs needs all of billy.Change to
// apply CREATE/SETATTR attributes).
type bfsCountingFS struct {
	billy.Filesystem
	dir   string
	reads *atomic.Int64
}

func (c *bfsCountingFS) Open(name string) (billy.File, error) {
	f, err := c.Filesystem.Open(name)
	if err != nil {
		return nil, err
	}
	return &bfsCountingFile{File: f, reads: c.reads}, nil
}

func (c *bfsCountingFS) path(name string) string {
	return filepath.Join(c.dir, filepath.Clean("/"+name))
}

func (c *bfsCountingFS) Chmod(name string, mode os.FileMode) error {
	return os.Chmod(c.path(name), mode)
}

func (c *bfsCountingFS) Lchown(name string, uid, gid int) error {
	return os.Lchown(c.path(name), uid, gid)
}

func (c *bfsCountingFS) Chown(name string, uid, gid int) error {
	return os.Chown(c.path(name), uid, gid)
}

func (c *bfsCountingFS) Chtimes(name string, atime, mtime time.Time) error {
	return os.Chtimes(c.path(name), atime, mtime)
}

func (c *bfsCountingFS) Capabilities() billy.Capability { return billy.Capabilities(c.Filesystem) }

type bfsCountingFile struct {
	billy.File
	reads *atomic.Int64
}

func (f *bfsCountingFile) ReadAt(p []byte, off int64) (int, error) {
	f.reads.Add(1)
	return f.File.ReadAt(p, off)
}

// bfsOpenBackingFDs counts this process's open descriptors on files under
// dir (the cache's backing files).
func bfsOpenBackingFDs(dir string) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue
		}
		if rel, err := filepath.Rel(dir, target); err == nil && rel != ".." && !filepath.IsAbs(rel) && len(rel) > 0 && rel[0] != '.' {
			if st, err := os.Stat(target); err == nil && st.Mode().IsRegular() {
				n++
			}
		}
	}
	return n
}
