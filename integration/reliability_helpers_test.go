package integration

import (
	"context"
	"crypto/sha256"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/server"
)

// relServer is our server, in-process, on a disk export, restartable on
// the same port and state directory (a "crash": every connection drops,
// the write verifier changes, unstable data may be gone).
type relServer struct {
	t          testing.TB
	Dir, State string
	Addr       string
	opts       server.Options
	wrap       func(billy.Filesystem) billy.Filesystem // nil: the osfs export as is

	mu   sync.Mutex
	srv  *server.Server
	done chan error
}

func relStart(t testing.TB, opts server.Options, wrap func(billy.Filesystem) billy.Filesystem) *relServer {
	t.Helper()
	s := &relServer{t: t, Dir: t.TempDir(), State: t.TempDir(), opts: opts, wrap: wrap}
	s.opts.StateDir = s.State
	s.start("127.0.0.1:0")
	t.Cleanup(s.stop)
	return s
}

func (s *relServer) start(addr string) {
	var (
		ln  net.Listener
		err error
	)
	for range 200 { // the old instance's port may take a moment to free
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	var fsys billy.Filesystem = osfs.New(s.Dir, osfs.WithBoundOS())
	if s.wrap != nil {
		fsys = s.wrap(fsys)
	}
	srv, err := server.New(fsys, s.opts)
	if err != nil {
		s.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	s.mu.Lock()
	s.srv, s.done, s.Addr = srv, done, ln.Addr().String()
	s.mu.Unlock()
}

func (s *relServer) server() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

func (s *relServer) stop() {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
		if err := <-done; err != nil {
			s.t.Errorf("Serve: %v", err)
		}
	}
}

func (s *relServer) restart() {
	s.stop()
	s.start(s.Addr)
}

func relDial(t testing.TB, addr string, opts client.Options) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func relCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// relData is n pseudo-random bytes, different for every seed.
func relData(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n &^ 7; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

// relFileSum is the sha256 of a file on the export's disk.
func relFileSum(t testing.TB, path string) ([32]byte, int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read back %s: %v", path, err)
	}
	return sha256.Sum256(b), len(b)
}

// relWaitBytes waits until get() reaches n or the deadline passes.
func relWaitBytes(t testing.TB, get func() uint64, n uint64) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for get() < n {
		if time.Now().After(deadline) {
			t.Fatalf("progress stuck at %d of %d bytes", get(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
