//go:build linux

package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/go-git/go-billy/v5/osfs"
	nfs "github.com/willscott/go-nfs"
	"github.com/willscott/go-nfs/helpers"
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
// same address on a restart).
//
// It runs stock go-nfs until our server package lands: the caching handler
// hands out handles that die at a restart, so the restart checks are
// expected to fail against it.
func startServer(t *testing.T, addr, exportDir, stateDir string, logger *slog.Logger) *runningServer {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	_ = stateDir // stock go-nfs keeps no state
	handler := helpers.NewCachingHandler(helpers.NewNullAuthHandler(osfs.New(exportDir)), 1<<16)
	s := &runningServer{addr: l.Addr().String(), l: l, done: make(chan error, 1)}
	s.close = func() error { return nil }
	go func() { s.done <- nfs.Serve(trackingListener{l, s}, handler) }()
	logger.Info("server started", "addr", s.addr)
	return s
}

// knownFailures lists, by "phase/check", the checks the server under test
// is known to fail, with the reason. The test logs them and fails if one of
// them passes (the list must stay true). Stock go-nfs v0.0.4 stands in for
// our server until it lands; these are the bugs our server exists to fix.
var knownFailures = map[string]string{
	"write/create":                "CREATE with a mode: go-nfs applies it through billy.Change, osfs refuses → NFS3ERR_IO (EIO)",
	"write/truncate":              "SETATTR size → NFS3ERR_NOTSUPP, which the kernel passes up as errno 524 (ENOTSUPP)",
	"write/chmod_utimes":          "CREATE with a mode → EIO (as create)",
	"write/hardlink":              "LINK not supported → EIO",
	"write/rename":                "RENAME invalidates the renamed file's handle → ESTALE on the open descriptor",
	"write/unlink_open":           "the kernel's sillyrename is a RENAME: the open file's handle dies → ESTALE",
	"write/mkdir_rmdir":           "RMDIR of a non-empty directory → NFS3ERR_IO instead of NOTEMPTY",
	"write/mmap":                  "SETATTR size → errno 524 (as truncate)",
	"write/excl_create":           "CREATE EXCLUSIVE refused → EIO",
	"write/restart_open_read":     "handles live in an in-memory LRU: ESTALE after a restart",
	"write/restart_open_write":    "ESTALE after a restart",
	"write/restart_cached_paths":  "ESTALE after a restart",
	"write/restart_create_rename": "ESTALE after a restart",
	"verify/create":               "what the write boot could not create",
	"verify/truncate":             "what the write boot could not truncate",
	"verify/chmod_utimes":         "what the write boot could not chmod",
	"verify/hardlink":             "what the write boot could not link",
	"verify/rename":               "what the write boot could not rename",
	"verify/unlink_open":          "the .nfsXXXX file of the failed sillyrename is left behind",
	"verify/mkdir_rmdir":          "the tree the write boot could not remove",
	"verify/mmap":                 "what the write boot could not write",
	"verify/excl_create":          "what the write boot could not create",
	"verify/restart_state":        "what the restart checks could not write",
}

// stop closes the listener and every connection and waits for Serve to return.
func (s *runningServer) stop() error {
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
	return errors.Join(s.close(), serveErr, ignoreClosed(errL))
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
