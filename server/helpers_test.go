package server

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
)

// startServer runs a Server for fsys on 127.0.0.1:0 until the test ends.
func startServer(t testing.TB, fsys billy.Filesystem, opts Options) (*Server, string) {
	t.Helper()
	s, err := New(fsys, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, l.Addr().String()
}

// mount dials addr with go-nfs-client and mounts "/".
func mount(t testing.TB, addr string) *nfs.Target {
	t.Helper()
	// go-nfs-client binds a source port drawn from a time-seeded RNG, so
	// clients dialing at the same instant can collide: retry those.
	var c *rpc.Client
	var err error
	for range 20 {
		if c, err = rpc.DialTCP("tcp", addr, false); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	m := &nfs.Mount{Client: c}
	v, err := m.Mount("/", rpc.AuthNull)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return v
}
