package client_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	nfs "github.com/willscott/go-nfs"
	"github.com/willscott/go-nfs/helpers"

	"github.com/nfscache/nfscache/client"
)

// trackingListener remembers accepted connections so a test can cut them
// (simulating a network failure or a server crash) without stopping go-nfs.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

// cut closes every accepted connection; the listener keeps accepting.
func (l *trackingListener) cut() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.conns)
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
	return n
}

// stockServer is go-nfs v0.0.4 as shipped (osfs, null auth, caching
// handler) serving dir on 127.0.0.1.
type stockServer struct {
	Addr string
	Dir  string
	l    *trackingListener
}

func startStock(t testing.TB, dir string) *stockServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := &trackingListener{Listener: ln}
	// A handle cache big enough for the 10 000-entry directory test: go-nfs
	// evicts handles (→ NFS3ERR_STALE) beyond it.
	h := helpers.NewCachingHandler(helpers.NewNullAuthHandler(osfs.New(dir)), 50000)
	go func() { _ = nfs.Serve(tl, h) }()
	t.Cleanup(func() { tl.Close(); tl.cut() })
	return &stockServer{Addr: ln.Addr().String(), Dir: dir, l: tl}
}

func dial(t testing.TB, addr string, opts client.Options) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, addr, opts)
	if err != nil {
		t.Fatalf("Dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
