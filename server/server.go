package server

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	lru "github.com/hashicorp/golang-lru/v2"
)

// Options configures a Server. The zero value serves a private,
// read-write export to loopback clients. New copies it; changing it later
// has no effect.
type Options struct {
	// StateDir holds the persistent handle table and the export's secret
	// handle key (a bbolt file). Handles stay valid across restarts that
	// use the same StateDir. Empty: a temporary state removed at Close.
	StateDir string
	// ReadOnly refuses every change with NFS3ERR_ROFS.
	ReadOnly bool
	// Allow lists the client networks that may connect. Empty: loopback
	// only (127.0.0.0/8 and ::1).
	Allow []netip.Prefix
	// Async acknowledges DATA_SYNC/FILE_SYNC writes without syncing them,
	// like knfsd's "async" export option (and like stock go-nfs, which
	// never syncs): much faster for clients that only send stable writes,
	// but a host crash loses data the client was told was on disk.
	// UNSTABLE writes and COMMIT are unaffected.
	Async bool
	// MaxOpenFiles bounds the files kept open for READ/WRITE reuse.
	// Zero: half the process's soft RLIMIT_NOFILE as New finds it,
	// within [8, 256] (64 under `ulimit -n 128`); the other half is left
	// for connections, the state db and go-nfs's own opens. Whatever the
	// bound, an open that finds no descriptor free (EMFILE/ENFILE) closes
	// an idle cached file and retries rather than failing the call.
	MaxOpenFiles int
	// Logger receives connection and error events. Nil: discarded.
	Logger *slog.Logger
}

// Transfer sizes advertised by FSINFO (RFC 1813 §3.3.19).
const (
	MaxTransfer  = 1 << 20
	maxRecord    = MaxTransfer + 64<<10 // a WRITE's data plus its header
	lanes        = 8
	maxInFlight  = 16
	defaultFiles = 256
)

// Server is an NFSv3 + MOUNT server for one billy.Filesystem export.
//
// Concurrency: all methods are safe for concurrent use. Serve may be
// called for several listeners. Lock order: Server.mu is never held while
// calling anything that blocks on the network.
type Server struct {
	opts     Options
	log      *slog.Logger
	allow    []netip.Prefix
	core     *exportCore
	table    *handleTable
	open     *openFiles
	verifier [8]byte
	statfs   string // directory whose statfs FSSTAT reports; "" = memory
	tmpState string

	lanes chan *lane
	all   []*lane
	dirs  *lru.Cache[uint64, dirSnapshot]

	stats counters
	bufs  bufPool

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
}

// New builds a server exporting fsys. For a directory on disk pass
// osfs.New(dir, osfs.WithBoundOS()) so symlinks cannot lead out of it.
func New(fsys billy.Filesystem, opts Options) (*Server, error) {
	if fsys == nil {
		return nil, errors.New("server: nil filesystem")
	}
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		allow:     opts.Allow,
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(s.allow) == 0 {
		s.allow = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	}
	if opts.MaxOpenFiles <= 0 {
		opts.MaxOpenFiles = processMaxOpenFiles()
		s.opts.MaxOpenFiles = opts.MaxOpenFiles
	}
	if _, err := rand.Read(s.verifier[:]); err != nil {
		return nil, fmt.Errorf("server: write verifier: %w", err)
	}
	dir := opts.StateDir
	if dir == "" {
		d, err := os.MkdirTemp("", "nfscache-state-")
		if err != nil {
			return nil, fmt.Errorf("server: temp state: %w", err)
		}
		dir, s.tmpState = d, d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("server: state dir: %w", err)
	}
	t, err := openHandleTable(dir)
	if err != nil {
		s.removeTmp()
		return nil, fmt.Errorf("server: %w", err)
	}
	s.table = t
	if s.open, err = newOpenFiles(fsys, opts.MaxOpenFiles, opts.ReadOnly); err != nil {
		t.close()
		s.removeTmp()
		return nil, fmt.Errorf("server: %w", err)
	}
	s.core = &exportCore{base: fsys, table: t, open: s.open, readOnly: opts.ReadOnly}
	if b, ok := fsys.(*osfs.BoundOS); ok {
		s.statfs = b.Root()
		if r, err := os.OpenRoot(b.Root()); err == nil {
			s.core.osRoot = r
		}
	}
	s.table.attach(s.core)
	s.dirs = newDirCache()
	s.lanes = make(chan *lane, lanes)
	for range lanes {
		ln := s.newLane()
		s.all = append(s.all, ln)
		s.lanes <- ln
	}
	return s, nil
}

func (s *Server) removeTmp() {
	if s.tmpState != "" {
		_ = os.RemoveAll(s.tmpState)
	}
}

// Serve accepts NFS and MOUNT connections on l until Close, and closes
// l. It returns nil once the server is closed (also when called after
// Close), or the listener's error.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ECONNABORTED) {
				// Out of fds or a client gave up: keep serving the others.
				s.log.Warn("accept", "err", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return fmt.Errorf("server: accept: %w", err)
		}
		if !s.allowed(c.RemoteAddr()) {
			s.stats.rejected.Add(1)
			s.log.Warn("connection refused by allow-list", "remote", c.RemoteAddr().String())
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.stats.conns.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(c)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

func (s *Server) allowed(a net.Addr) bool {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range s.allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Close stops every listener and connection, closes cached files and
// the handle table. It is safe to call more than once.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	for _, ln := range s.all {
		ln.close()
	}
	s.open.closeAll()
	err := s.table.close()
	if s.core.osRoot != nil {
		s.core.osRoot.Close()
	}
	s.removeTmp()
	return err
}
