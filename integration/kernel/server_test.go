//go:build linux

package kernel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/server"
	nfs "github.com/willscott/go-nfs"
)

// runningServer is the server under test, serving one listener. Closing it
// also closes every accepted connection, so a restart looks to the kernel
// exactly like a server process that went away and came back.
type runningServer struct {
	addr  string
	l     net.Listener
	close func() error
	done  chan error

	mu    sync.Mutex
	conns []net.Conn
}

type trackingListener struct {
	net.Listener
	s *runningServer
}

func (l trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.s.mu.Lock()
		l.s.conns = append(l.s.conns, c)
		l.s.mu.Unlock()
	}
	return c, err
}

// startServer serves exportDir on addr ("127.0.0.1:0" the first time, the
// same address on a restart) with our server, its handle table in stateDir.
func startServer(t *testing.T, addr, exportDir, stateDir string, logger *slog.Logger) *runningServer {
	t.Helper()
	srv, err := server.New(osfs.New(exportDir, osfs.WithBoundOS()), server.Options{StateDir: stateDir, Logger: logger})
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		srv.Close()
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &runningServer{addr: l.Addr().String(), l: l, done: make(chan error, 1), close: srv.Close}
	go func() { s.done <- srv.Serve(trackingListener{l, s}) }()
	logger.Info("server started", "addr", s.addr)
	return s
}

// startProxy serves, on addr, our server over billyfs (with its local cache
// in cacheDir) whose upstream is upstreamAddr: nfsd-cache proxy in-process.
// Closing it closes the server, then flushes billyfs to the upstream.
func startProxy(t *testing.T, addr, upstreamAddr, cacheDir, stateDir string, logger *slog.Logger) *runningServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fsys, err := billyfs.New(ctx, billyfs.Options{Addr: upstreamAddr, CacheDir: cacheDir, Logger: logger})
	if err != nil {
		t.Fatalf("billyfs.New: %v", err)
	}
	srv, err := server.New(fsys, server.Options{StateDir: stateDir, Logger: logger})
	if err != nil {
		fsys.Close()
		t.Fatalf("server.New: %v", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		srv.Close()
		fsys.Close()
		t.Fatalf("listen %s: %v", addr, err)
	}
	s := &runningServer{addr: l.Addr().String(), l: l, done: make(chan error, 1),
		close: func() error { return errors.Join(srv.Close(), fsys.Close()) }}
	go func() { s.done <- srv.Serve(trackingListener{l, s}) }()
	logger.Info("proxy started", "addr", s.addr, "upstream", upstreamAddr)
	return s
}

// knownSet is what one variant of the test is known to fail. Keys of
// failures are "phase/check" with phase write, verify (the guest's boots)
// or host (checks the host makes). A listed check that fails is logged as
// a KNOWN FAILURE instead of failing the test; one that passes is logged
// too, so the entry can be removed. Every entry says what the kernel sent
// and what went wrong (measured with the relay in sniffer_test.go). Remove
// an entry when the server is fixed: the check then fails the test again
// on any regression.
type knownSet struct {
	failures      map[string]string // "phase/check" → why
	unimplemented map[string]string // relay count key ("NFS3 LINK → NFS3ERR_NOTSUPP") → why
}

// knownServe: our server over a directory. Empty: every check passes.
var knownServe = knownSet{
	failures:      map[string]string{},
	unimplemented: map[string]string{},
}

// knownProxy: our server over billyfs over our server. Empty: every check
// passes.
var knownProxy = knownSet{
	failures:      map[string]string{},
	unimplemented: map[string]string{},
}

// stop closes the listener and every connection and waits for Serve to return.
func (s *runningServer) stop() error {
	errC := s.close()
	errL := s.l.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	serveErr := <-s.done
	if errors.Is(serveErr, net.ErrClosed) {
		serveErr = nil
	}
	return errors.Join(errC, serveErr, ignoreClosed(errL))
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// nfsLogger forwards go-nfs's package logger (nfs.Log, where it reports
// "No handler for PROG.PROC") to slog, so the test sees it with the
// server's own log.
type nfsLogger struct {
	l     *slog.Logger
	level nfs.LogLevel
}

func (n *nfsLogger) SetLevel(level nfs.LogLevel) { n.level = level }
func (n *nfsLogger) GetLevel() nfs.LogLevel      { return n.level }
func (n *nfsLogger) ParseLevel(s string) (nfs.LogLevel, error) {
	return (&nfs.DefaultLogger{}).ParseLevel(s)
}

func (n *nfsLogger) log(level nfs.LogLevel, msg string) {
	if level > n.level {
		return
	}
	switch {
	case level <= nfs.ErrorLevel:
		n.l.Error(msg, "from", "go-nfs")
	case level == nfs.WarnLevel:
		n.l.Warn(msg, "from", "go-nfs")
	case level == nfs.InfoLevel:
		n.l.Info(msg, "from", "go-nfs")
	default:
		n.l.Debug(msg, "from", "go-nfs")
	}
}

func (n *nfsLogger) Panic(args ...any) { n.log(nfs.PanicLevel, fmt.Sprint(args...)) }
func (n *nfsLogger) Fatal(args ...any) { n.log(nfs.FatalLevel, fmt.Sprint(args...)) }
func (n *nfsLogger) Error(args ...any) { n.log(nfs.ErrorLevel, fmt.Sprint(args...)) }
func (n *nfsLogger) Warn(args ...any)  { n.log(nfs.WarnLevel, fmt.Sprint(args...)) }
func (n *nfsLogger) Info(args ...any)  { n.log(nfs.InfoLevel, fmt.Sprint(args...)) }
func (n *nfsLogger) Debug(args ...any) { n.log(nfs.DebugLevel, fmt.Sprint(args...)) }
func (n *nfsLogger) Trace(args ...any) { n.log(nfs.TraceLevel, fmt.Sprint(args...)) }
func (n *nfsLogger) Print(args ...any) { n.log(nfs.InfoLevel, fmt.Sprint(args...)) }
func (n *nfsLogger) Panicf(format string, args ...any) {
	n.log(nfs.PanicLevel, fmt.Sprintf(format, args...))
}
func (n *nfsLogger) Fatalf(format string, args ...any) {
	n.log(nfs.FatalLevel, fmt.Sprintf(format, args...))
}
func (n *nfsLogger) Errorf(format string, args ...any) {
	n.log(nfs.ErrorLevel, fmt.Sprintf(format, args...))
}
func (n *nfsLogger) Warnf(format string, args ...any) {
	n.log(nfs.WarnLevel, fmt.Sprintf(format, args...))
}
func (n *nfsLogger) Infof(format string, args ...any) {
	n.log(nfs.InfoLevel, fmt.Sprintf(format, args...))
}
func (n *nfsLogger) Debugf(format string, args ...any) {
	n.log(nfs.DebugLevel, fmt.Sprintf(format, args...))
}
func (n *nfsLogger) Tracef(format string, args ...any) {
	n.log(nfs.TraceLevel, fmt.Sprintf(format, args...))
}
func (n *nfsLogger) Printf(format string, args ...any) {
	n.log(nfs.InfoLevel, fmt.Sprintf(format, args...))
}
