package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
	"github.com/willscott/go-nfs-client/nfs/xdr"

	"github.com/nfscache/nfscache/client"
)

// Client names, in table order.
const (
	ClientOS     = "os"
	ClientOurs   = "nfscache/client"
	ClientGoNFS  = "go-nfs-client"
	ClientLibnfs = "libnfs"
)

// nfsClient runs the workloads against one endpoint. Each call connects
// (outside the timed part where it can) and disconnects.
type nfsClient interface {
	// skip says why the pair makes no sense ("" when it does).
	skip(t string, w string) string
	// open connects; the returned session is used for one workload.
	open(ctx context.Context, ep endpoint) (session, error)
}

// session is one connected client. Its methods are the timed parts.
type session interface {
	read(ctx context.Context, name string) (int64, error)
	write(ctx context.Context, name string, size int64, pat *pattern) error
	smallFiles(ctx context.Context, dir, prefix string, n int) error
	list(ctx context.Context, dir string) (int, error)
	close()
}

// pattern is the content of every big file: a random 1 MiB block
// repeated, so no file-sized buffer is ever needed.
type pattern struct{ block []byte }

const blockSize = 1 << 20

func (p *pattern) ReadAt(b []byte, off int64) (int, error) {
	for i := 0; i < len(b); {
		o := int((off + int64(i)) % blockSize)
		i += copy(b[i:], p.block[o:])
	}
	return len(b), nil
}

// chunk returns n bytes of the pattern starting at a block boundary.
func (p *pattern) chunk(n int) []byte {
	b := make([]byte, n)
	_, _ = p.ReadAt(b, 0)
	return b
}

// discard hides io.Discard's ReaderFrom so every Read asks for the
// buffer's size (1 MiB calls for go-nfs-client).
type discard struct{ io.Writer }

func osSkip(t, _ string) string {
	if t != TargetLocal {
		return "the os client reads the local disk only"
	}
	return ""
}

func nfsSkip(t, _ string) string {
	if t == TargetLocal {
		return "local disk is read with os"
	}
	return ""
}

// osClient is the physical limit: the same work with package os on the
// export directory.
type osClient struct{}

func (osClient) skip(t, w string) string { return osSkip(t, w) }
func (osClient) open(_ context.Context, ep endpoint) (session, error) {
	return osSession{dir: ep.local}, nil
}

type osSession struct{ dir string }

func (s osSession) read(_ context.Context, name string) (int64, error) {
	f, err := os.Open(filepath.Join(s.dir, name))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.CopyBuffer(discard{io.Discard}, struct{ io.Reader }{f}, make([]byte, blockSize))
}

func (s osSession) write(_ context.Context, name string, size int64, pat *pattern) error {
	f, err := os.Create(filepath.Join(s.dir, name))
	if err != nil {
		return err
	}
	buf := pat.chunk(blockSize)
	for off := int64(0); off < size; off += blockSize {
		if _, err := f.Write(buf[:min(blockSize, size-off)]); err != nil {
			f.Close()
			return err
		}
	}
	// fsync: what COMMIT asks of an NFS server.
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (s osSession) smallFiles(_ context.Context, dir, prefix string, n int) error {
	data := bytes.Repeat([]byte{'s'}, 4096)
	buf := make([]byte, 4096)
	for i := range n {
		p := filepath.Join(s.dir, dir, prefix+strconv.Itoa(i))
		f, err := os.Create(p)
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return err
		}
		// fsync: what a FILE_SYNC WRITE asks of an NFS server.
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		f.Close()
		if _, err := os.Stat(p); err != nil {
			return err
		}
		if err := readSmall(p, buf); err != nil {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
	}
	return nil
}

func readSmall(p string, buf []byte) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.ReadFull(f, buf)
	return err
}

func (s osSession) list(_ context.Context, dir string) (int, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, dir))
	if err != nil {
		return 0, err
	}
	// READDIRPLUS returns attributes too: stat every entry.
	for _, e := range ents {
		if _, err := e.Info(); err != nil {
			return 0, err
		}
	}
	return len(ents), nil
}

func (s osSession) close() {}

// oursClient is this project's pipelined client (package client).
type oursClient struct{}

func (oursClient) skip(t, w string) string { return nfsSkip(t, w) }
func (oursClient) open(ctx context.Context, ep endpoint) (session, error) {
	addr := ep.addr
	if ep.portmap {
		addr = "127.0.0.1"
	}
	c, err := client.Dial(ctx, addr, client.Options{Export: ep.export, Portmap: ep.portmap, Dial: ep.dial, Timeout: 2 * time.Minute})
	if err != nil {
		return nil, err
	}
	return &oursSession{c: c}, nil
}

type oursSession struct{ c *client.Client }

func (s *oursSession) lookup(ctx context.Context, path string) (client.Handle, error) {
	h := s.c.Root()
	for _, part := range strings.Split(strings.Trim(path, "/"), "/") {
		r, err := s.c.Lookup(ctx, h, part)
		if err != nil {
			return nil, fmt.Errorf("lookup %s: %w", path, err)
		}
		h = r.Handle
	}
	return h, nil
}

func (s *oursSession) read(ctx context.Context, name string) (int64, error) {
	h, err := s.lookup(ctx, name)
	if err != nil {
		return 0, err
	}
	buf := make([]byte, 8<<20)
	var total int64
	for {
		n, err := s.c.ReadAt(ctx, h, buf, total)
		total += int64(n)
		if errors.Is(err, io.EOF) || (err == nil && n == 0) {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (s *oursSession) write(ctx context.Context, name string, size int64, pat *pattern) error {
	r, err := s.c.Create(ctx, s.c.Root(), name, client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		return err
	}
	const chunk = 8 << 20
	buf := pat.chunk(chunk)
	for off := int64(0); off < size; off += chunk {
		// WriteAtFrom: bytes to resend after a server restart come from
		// the pattern, so the client keeps no copy.
		if _, err := s.c.WriteAtFrom(ctx, r.Handle, buf[:min(chunk, size-off)], off, pat); err != nil {
			return err
		}
	}
	_, err = s.c.Commit(ctx, r.Handle, 0, 0)
	return err
}

func (s *oursSession) smallFiles(ctx context.Context, dir, prefix string, n int) error {
	dh, err := s.lookup(ctx, dir)
	if err != nil {
		return err
	}
	data := bytes.Repeat([]byte{'s'}, 4096)
	buf := make([]byte, 4096)
	for i := range n {
		name := prefix + strconv.Itoa(i)
		r, err := s.c.Create(ctx, dh, name, client.CreateHow{Mode: client.Unchecked})
		if err != nil {
			return err
		}
		if _, err := s.c.Write(ctx, r.Handle, 0, data, client.FileSync); err != nil {
			return err
		}
		if _, err := s.c.Getattr(ctx, r.Handle); err != nil {
			return err
		}
		if rr, err := s.c.Read(ctx, r.Handle, 0, buf); err != nil {
			return err
		} else if rr.N != len(data) {
			return fmt.Errorf("read %d of %d bytes of %s", rr.N, len(data), name)
		}
		if _, err := s.c.Remove(ctx, dh, name); err != nil {
			return err
		}
	}
	return nil
}

func (s *oursSession) list(ctx context.Context, dir string) (int, error) {
	dh, err := s.lookup(ctx, dir)
	if err != nil {
		return 0, err
	}
	ents, err := s.c.ReadDirAll(ctx, dh)
	return len(ents), err
}

func (s *oursSession) close() { _ = s.c.Close() }

// goNFSClient is github.com/willscott/go-nfs-client, with 1 MiB calls.
type goNFSClient struct{}

func (goNFSClient) skip(t, w string) string { return nfsSkip(t, w) }

// dialRPC dials like rpc.DialTCP, retrying the rare collision of the
// source port it picks, inside the target's namespace if it has one.
func dialRPC(ep endpoint, addr string) (*rpc.Client, error) {
	var c *rpc.Client
	dial := func() error {
		var err error
		for range 20 {
			if c, err = rpc.DialTCP("tcp", addr, false); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
				return err
			}
			time.Sleep(time.Millisecond)
		}
		return err
	}
	if ep.do != nil {
		return c, ep.do(dial)
	}
	return c, dial()
}

func (goNFSClient) open(_ context.Context, ep endpoint) (session, error) {
	if !ep.portmap {
		c, err := dialRPC(ep, ep.addr)
		if err != nil {
			return nil, err
		}
		v, err := (&nfsc.Mount{Client: c}).Mount(ep.export, rpc.AuthNull)
		if err != nil {
			c.Close()
			return nil, err
		}
		return &goNFSSession{v: v, conns: []*rpc.Client{c}}, nil
	}
	// MOUNT and NFS on different ports (ganesha): Mount.Mount would send
	// NFS calls to the MOUNT port, so ask MNT ourselves.
	mc, err := dialRPC(ep, ep.mountAddr)
	if err != nil {
		return nil, err
	}
	defer mc.Close()
	type mountArgs struct {
		rpc.Header
		Dirpath string
	}
	res, err := mc.Call(&mountArgs{rpc.Header{Rpcvers: 2, Prog: nfsc.MountProg, Vers: nfsc.MountVers,
		Proc: nfsc.MountProc3MNT, Cred: rpc.AuthNull, Verf: rpc.AuthNull}, ep.export})
	if err != nil {
		return nil, fmt.Errorf("MNT: %w", err)
	}
	if st, err := xdr.ReadUint32(res); err != nil || st != 0 {
		return nil, fmt.Errorf("MNT %s: status %d %v", ep.export, st, err)
	}
	fh, err := xdr.ReadOpaque(res)
	if err != nil {
		return nil, fmt.Errorf("MNT reply: %w", err)
	}
	nc, err := dialRPC(ep, ep.addr)
	if err != nil {
		return nil, err
	}
	v, err := nfsc.NewTargetWithClient(nc, rpc.AuthNull, fh, ep.export, 0)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &goNFSSession{v: v, conns: []*rpc.Client{nc}}, nil
}

type goNFSSession struct {
	v     *nfsc.Target
	conns []*rpc.Client
}

func (s *goNFSSession) read(_ context.Context, name string) (int64, error) {
	f, err := s.v.Open("/" + name)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return io.CopyBuffer(discard{io.Discard}, struct{ io.Reader }{f}, make([]byte, blockSize))
}

func (s *goNFSSession) write(_ context.Context, name string, size int64, pat *pattern) error {
	f, err := s.v.OpenFile("/"+name, 0o644)
	if err != nil {
		return err
	}
	buf := pat.chunk(blockSize)
	for off := int64(0); off < size; off += blockSize {
		if _, err := f.Write(buf[:min(blockSize, size-off)]); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

func (s *goNFSSession) smallFiles(_ context.Context, dir, prefix string, n int) error {
	data := bytes.Repeat([]byte{'s'}, 4096)
	buf := make([]byte, 4096)
	for i := range n {
		p := "/" + dir + "/" + prefix + strconv.Itoa(i)
		f, err := s.v.OpenFile(p, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		if _, err := s.v.Getattr(p); err != nil {
			return err
		}
		r, err := s.v.Open(p)
		if err != nil {
			return err
		}
		_, err = io.ReadFull(r, buf)
		r.Close()
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		if err := s.v.Remove(p); err != nil {
			return err
		}
	}
	return nil
}

func (s *goNFSSession) list(_ context.Context, dir string) (int, error) {
	ents, err := s.v.ReadDirPlus("/" + dir)
	n := 0
	for _, e := range ents {
		if name := e.Name(); name != "." && name != ".." {
			n++
		}
	}
	return n, err
}

func (s *goNFSSession) close() {
	for _, c := range s.conns {
		c.Close()
	}
}

// libnfsClient runs libnfs-utils' nfs-cat, nfs-cp and nfs-ls, one process
// per call (inside the target's namespace if it has one).
type libnfsClient struct {
	cat, cp, ls string
	// src is a local file of the big file's content, for nfs-cp uploads.
	src string
}

func (c libnfsClient) skip(t, w string) string {
	if r := nfsSkip(t, w); r != "" {
		return r
	}
	if w == WorkSmallFiles {
		return "one process per call would measure process start-up"
	}
	return ""
}

func (c libnfsClient) open(_ context.Context, ep endpoint) (session, error) {
	return libnfsSession{c: c, ep: ep}, nil
}

type libnfsSession struct {
	c  libnfsClient
	ep endpoint
}

// url is the libnfs URL of path (relative to the export).
func (s libnfsSession) url(path string) string {
	if s.ep.portmap {
		return "nfs://127.0.0.1" + s.ep.export + "/" + path + "?version=3"
	}
	_, port, _ := strings.Cut(s.ep.addr, ":")
	u := "nfs://127.0.0.1//" + path + "?version=3&nfsport=" + port + "&mountport=" + port
	if s.ep.stock {
		u += "&auto-traverse-mounts=0" // stock go-nfs has no MOUNT EXPORT
	}
	return u
}

func (s libnfsSession) command(ctx context.Context, prog string, args ...string) *exec.Cmd {
	if s.ep.ns != "" {
		return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", s.ep.ns, prog}, args...)...)
	}
	return exec.CommandContext(ctx, prog, args...)
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

func (s libnfsSession) run(cmd *exec.Cmd) error {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", filepath.Base(cmd.Args[0]), err, firstLine(stderr.String()))
	}
	return nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

func (s libnfsSession) read(ctx context.Context, name string) (int64, error) {
	var w countWriter
	cmd := s.command(ctx, s.c.cat, s.url(name))
	cmd.Stdout = &w
	err := s.run(cmd)
	return w.n, err
}

func (s libnfsSession) write(ctx context.Context, name string, _ int64, _ *pattern) error {
	return s.run(s.command(ctx, s.c.cp, s.c.src, s.url(name)))
}

func (s libnfsSession) smallFiles(context.Context, string, string, int) error {
	return errors.New("libnfs: small files not measured")
}

// list runs nfs-ls -R on the export root and counts the entries of dir:
// nfs-ls of a subdirectory URL mounts that path, which single-export
// servers (go-nfs, ours) do not export.
func (s libnfsSession) list(ctx context.Context, dir string) (int, error) {
	var out bytes.Buffer
	cmd := s.command(ctx, s.c.ls, "-R", s.url(""))
	cmd.Stdout = &out
	if err := s.run(cmd); err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, " "+dir+"/") || strings.Contains(line, "/"+dir+"/") {
			n++
		}
	}
	return n, nil
}

func (s libnfsSession) close() {}
