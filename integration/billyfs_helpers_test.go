package integration

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/server"
)

// bfsServer is a live NFSv3 server (our server package) on 127.0.0.1
// exporting a directory, for the billyfs end-to-end tests.
type bfsServer struct {
	Addr string
	Dir  string
	srv  *server.Server
}

// Reads counts the READ RPCs the server answered.
func (s *bfsServer) Reads() int64 { return int64(s.srv.Stats().NFS[server.ProcRead]) }

func bfsStartServer(t testing.TB) *bfsServer {
	t.Helper()
	dir := t.TempDir()
	srv, err := server.New(osfs.New(dir, osfs.WithBoundOS()), server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(l)
	}()
	t.Cleanup(func() {
		srv.Close()
		l.Close()
		<-done
	})
	return &bfsServer{Addr: l.Addr().String(), Dir: dir, srv: srv}
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
