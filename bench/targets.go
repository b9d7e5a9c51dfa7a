package bench

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/internal/ganesha"
	"github.com/nfscache/nfscache/server"
	nfs "github.com/willscott/go-nfs"
	nfshelper "github.com/willscott/go-nfs/helpers"
	"golang.org/x/sys/unix"
)

// Target names, in table order.
const (
	TargetLocal   = "local-disk"
	TargetGoNFS   = "go-nfs"
	TargetServe   = "serve"
	TargetProxy   = "proxy"
	TargetGanesha = "ganesha"
)

// endpoint is how clients reach a target.
type endpoint struct {
	// addr is host:port serving MOUNT and NFS (go-nfs style); with
	// portmap, the MOUNT and NFS ports are mountAddr and addr.
	addr, mountAddr string
	portmap         bool
	export          string
	// stock: libnfs must not ask MOUNT EXPORT (stock go-nfs lacks it).
	stock bool
	// ns: run commands with `ip netns exec ns`; dial/do create sockets there.
	ns   string
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	do   func(fn func() error) error
	// local: the directory for the os client (local-disk only).
	local string
}

// target is one server under test, exporting dir.
//
// Concurrency: used by one goroutine.
type target interface {
	// dir is the exported directory on this host (files are prepared there).
	dir() string
	// endpoint is valid until the next makeCold or close.
	endpoint() endpoint
	// makeCold drops what this target caches of name, so the next read
	// of it comes from the disk (and, for the proxy, from the upstream).
	makeCold(name string) error
	close()
}

// dropPageCache evicts a file's pages from the page cache with
// posix_fadvise(DONTNEED): only this file, nothing else on the machine.
func dropPageCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return err
	}
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

type localTarget struct{ d string }

func (t *localTarget) dir() string                { return t.d }
func (t *localTarget) endpoint() endpoint         { return endpoint{local: t.d} }
func (t *localTarget) makeCold(name string) error { return dropPageCache(filepath.Join(t.d, name)) }
func (t *localTarget) close()                     {}

type goNFSTarget struct {
	d string
	l net.Listener
}

func startGoNFS(dir string) (*goNFSTarget, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := nfshelper.NewCachingHandler(nfshelper.NewNullAuthHandler(osfs.New(dir)), 1024)
	go func() { _ = nfs.Serve(l, h) }()
	return &goNFSTarget{d: dir, l: l}, nil
}

func (t *goNFSTarget) dir() string { return t.d }
func (t *goNFSTarget) endpoint() endpoint {
	return endpoint{addr: t.l.Addr().String(), export: "/", stock: true}
}
func (t *goNFSTarget) makeCold(name string) error { return dropPageCache(filepath.Join(t.d, name)) }
func (t *goNFSTarget) close()                     { _ = t.l.Close() }

type serveTarget struct {
	d   string
	srv *server.Server
	l   net.Listener
}

func startServe(dir, stateDir string, log *slog.Logger) (*serveTarget, error) {
	srv, err := server.New(osfs.New(dir, osfs.WithBoundOS()), server.Options{StateDir: stateDir, Logger: log})
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		return nil, err
	}
	go func() { _ = srv.Serve(l) }()
	return &serveTarget{d: dir, srv: srv, l: l}, nil
}

func (t *serveTarget) dir() string                { return t.d }
func (t *serveTarget) endpoint() endpoint         { return endpoint{addr: t.l.Addr().String(), export: "/"} }
func (t *serveTarget) makeCold(name string) error { return dropPageCache(filepath.Join(t.d, name)) }
func (t *serveTarget) close()                     { _ = t.srv.Close() }

// proxyTarget is what `nfsd-cache proxy` is: a billyfs with a local cache
// over an upstream, re-served by server.New. makeCold restarts it with an
// empty cache.
type proxyTarget struct {
	upstream *serveTarget
	work     string
	log      *slog.Logger
	gen      int

	fsys *billyfs.FS
	srv  *server.Server
	l    net.Listener
}

func startProxy(upstream *serveTarget, work string, log *slog.Logger) (*proxyTarget, error) {
	t := &proxyTarget{upstream: upstream, work: work, log: log}
	return t, t.start()
}

func (t *proxyTarget) start() error {
	t.gen++
	base := filepath.Join(t.work, fmt.Sprintf("proxy%d", t.gen))
	fsys, err := billyfs.New(context.Background(), billyfs.Options{
		Addr: t.upstream.endpoint().addr, CacheDir: filepath.Join(base, "cache"), Logger: t.log,
	})
	if err != nil {
		return fmt.Errorf("billyfs on the upstream: %w", err)
	}
	srv, err := server.New(fsys, server.Options{StateDir: filepath.Join(base, "state"), Logger: t.log})
	if err != nil {
		fsys.Close()
		return err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		srv.Close()
		fsys.Close()
		return err
	}
	go func() { _ = srv.Serve(l) }()
	t.fsys, t.srv, t.l = fsys, srv, l
	return nil
}

func (t *proxyTarget) stop() {
	if t.srv != nil {
		_ = t.srv.Close()
		_ = t.fsys.Close()
		_ = os.RemoveAll(filepath.Join(t.work, fmt.Sprintf("proxy%d", t.gen)))
		t.srv, t.fsys = nil, nil
	}
}

func (t *proxyTarget) dir() string        { return t.upstream.d }
func (t *proxyTarget) endpoint() endpoint { return endpoint{addr: t.l.Addr().String(), export: "/"} }
func (t *proxyTarget) makeCold(name string) error {
	t.stop()
	if err := t.upstream.makeCold(name); err != nil {
		return err
	}
	return t.start()
}
func (t *proxyTarget) close() { t.stop() }

type ganeshaTarget struct{ g *ganesha.Server }

func (t *ganeshaTarget) dir() string { return t.g.Dir }
func (t *ganeshaTarget) endpoint() endpoint {
	return endpoint{addr: t.g.NFSAddr, mountAddr: t.g.MountAddr, portmap: true, export: ganesha.Export,
		ns: t.g.NS, dial: t.g.Dial, do: t.g.Do}
}
func (t *ganeshaTarget) makeCold(name string) error {
	return dropPageCache(filepath.Join(t.g.Dir, name))
}
func (t *ganeshaTarget) close() { t.g.Close() }
