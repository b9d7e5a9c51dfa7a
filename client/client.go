package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// RPC program numbers.
const (
	progPortmap = 100000
	progNFS     = 100003
	progMount   = 100005
	nfsVersion  = 3
	mntVersion  = 3
)

// Options configures Dial. The zero value is valid: export "/", one
// connection, AUTH_SYS as uid 0/gid 0, 60 s per call.
type Options struct {
	// Export is the MOUNT dirpath; default "/".
	Export string
	// Portmap: addr is a host (port optional and ignored) whose portmapper on
	// port 111 gives the MOUNT and NFS ports (nfs-ganesha, knfsd). Otherwise
	// addr is host:port serving both MOUNT and NFS (go-nfs style).
	Portmap bool
	// Connections is the number of TCP connections to the NFS port
	// (Linux's nconnect); calls are spread round-robin. Default 1.
	Connections int
	// UID, GID and GIDs are the AUTH_SYS credentials; MachineName defaults to
	// the host name.
	UID, GID    uint32
	GIDs        []uint32
	MachineName string
	// Timeout bounds each call (including waiting for a reconnection);
	// default 60 s.
	Timeout time.Duration
	// MaxIOSize caps rsize/wsize below what FSINFO advertises; default 1 MiB.
	MaxIOSize int
	// MaxInflight is how many READ/WRITE calls one ReadAt/WriteAt keeps in
	// flight; default 16.
	MaxInflight int
	// Dial opens connections; default net.Dialer. Tests use it to dial from
	// inside a network namespace.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Logger receives connection events; nil discards.
	Logger *slog.Logger
}

// Client is a connection to one NFSv3 export.
//
// Concurrency: all methods are safe for concurrent use; calls are pipelined
// (many in flight per connection, matched by xid). Lock order: Client.wmu,
// then writeState.mu, then conn.wmu, then conn.mu.
type Client struct {
	opts      Options
	log       *slog.Logger
	mountAddr string
	conns     []*conn
	next      atomic.Uint32
	xid       atomic.Uint32
	auth      []byte // encoded credential + verifier (AUTH_SYS, AUTH_NONE)
	root      Handle
	rsize     int
	wsize     int
	stats     stats

	wmu    sync.Mutex
	writes map[string]*writeState // uncommitted writes per handle
}

// Dial mounts opts.Export at addr and opens opts.Connections NFS
// connections. It reads FSINFO to choose rsize/wsize.
func Dial(ctx context.Context, addr string, opts Options) (*Client, error) {
	if opts.Export == "" {
		opts.Export = "/"
	}
	if opts.Connections <= 0 {
		opts.Connections = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 60 * time.Second
	}
	if opts.MaxIOSize <= 0 {
		opts.MaxIOSize = 1 << 20
	}
	if opts.MaxInflight <= 0 {
		opts.MaxInflight = 16
	}
	if opts.Dial == nil {
		opts.Dial = (&net.Dialer{}).DialContext
	}
	if opts.MachineName == "" {
		opts.MachineName, _ = os.Hostname()
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Client{opts: opts, log: log, writes: make(map[string]*writeState)}
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	c.xid.Store(binary.BigEndian.Uint32(seed[:]))
	c.auth = encodeAuthSys(opts)

	nfsAddr, mountAddr := addr, addr
	if opts.Portmap {
		host := addr
		if h, _, err := net.SplitHostPort(addr); err == nil {
			host = h
		}
		pm := net.JoinHostPort(host, "111")
		np, err := c.getport(ctx, pm, progNFS, nfsVersion)
		if err != nil {
			return nil, err
		}
		mp, err := c.getport(ctx, pm, progMount, mntVersion)
		if err != nil {
			return nil, err
		}
		nfsAddr = net.JoinHostPort(host, strconv.Itoa(int(np)))
		mountAddr = net.JoinHostPort(host, strconv.Itoa(int(mp)))
	}
	c.mountAddr = mountAddr

	root, err := c.mount(ctx)
	if err != nil {
		return nil, err
	}
	c.root = root
	for i := 0; i < opts.Connections; i++ {
		cn, err := newConn(ctx, nfsAddr, opts.Dial, log, opts.Timeout, true)
		if err != nil {
			c.closeConns()
			return nil, err
		}
		c.conns = append(c.conns, cn)
	}
	info, err := c.FSInfo(ctx, root)
	if err != nil {
		c.closeConns()
		return nil, fmt.Errorf("client: FSINFO of the export root: %w", err)
	}
	c.rsize = ioSize(info.RtPref, info.RtMax, opts.MaxIOSize)
	c.wsize = ioSize(info.WtPref, info.WtMax, opts.MaxIOSize)
	return c, nil
}

// ioSize picks the transfer size: the server's preference raised to our cap
// when its maximum allows (go-nfs prefers tiny sizes but accepts 1 GiB).
func ioSize(pref, max uint32, cap int) int {
	n := cap
	if max > 0 && int64(max) < int64(n) {
		n = int(max)
	}
	if n <= 0 {
		n = int(pref)
	}
	if n <= 0 {
		n = 32 << 10
	}
	return n
}

// Close unmounts (best effort) and closes every connection. Uncommitted
// writes are forgotten: call Commit first.
func (c *Client) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), min(c.opts.Timeout, 5*time.Second))
	defer cancel()
	err := c.unmount(ctx)
	c.closeConns()
	if err != nil {
		return fmt.Errorf("client: unmount: %w", err)
	}
	return nil
}

func (c *Client) closeConns() {
	for _, cn := range c.conns {
		cn.close()
	}
}

// Root returns the handle of the mounted export's root directory.
func (c *Client) Root() Handle { return c.root }

// RSize and WSize are the READ and WRITE transfer sizes in use.
func (c *Client) RSize() int { return c.rsize }

// WSize is the WRITE transfer size in use.
func (c *Client) WSize() int { return c.wsize }

func encodeAuthSys(o Options) []byte {
	var body encoder
	body.u32(uint32(time.Now().Unix()))
	name := o.MachineName
	if len(name) > 255 {
		name = name[:255]
	}
	body.str(name)
	body.u32(o.UID)
	body.u32(o.GID)
	gids := o.GIDs
	if len(gids) > 16 {
		gids = gids[:16]
	}
	body.u32(uint32(len(gids)))
	for _, g := range gids {
		body.u32(g)
	}
	var e encoder
	e.u32(authSys)
	e.opaque(body.b)
	e.u32(authNone) // verifier
	e.u32(0)
	return e.b
}

// idempotent reports whether an NFS procedure may be retransmitted after a
// dropped connection without a server duplicate request cache. WRITE at an
// offset and SETATTR to absolute values are; CREATE is handled per call
// (exclusive CREATE carries a verifier, so it is).
var nfsIdempotent = [...]bool{
	procNull: true, procGetattr: true, procSetattr: true, procLookup: true,
	procAccess: true, procReadlink: true, procRead: true, procWrite: true,
	procReaddirplus: true, procFSStat: true, procFSInfo: true,
	procPathconf: true, procCommit: true,
}

// request describes one call to build and send.
type request struct {
	cn         *conn
	prog, vers uint32
	proc       uint32
	name       string
	idempotent bool
	data       []byte // trailing payload (WRITE)
	sink       []byte // READ destination
}

// startCall builds the RPC header into an encoder; the caller appends the
// arguments and passes it to finishCall.
func (c *Client) startCall(prog, vers, proc uint32, argHint int) (*encoder, uint32) {
	xid := c.xid.Add(1)
	e := &encoder{b: make([]byte, 0, 44+len(c.auth)+argHint)}
	e.u32(0) // record marker, patched in finishCall
	e.u32(xid)
	e.u32(msgCall)
	e.u32(rpcVersion)
	e.u32(prog)
	e.u32(vers)
	e.u32(proc)
	e.b = append(e.b, c.auth...)
	return e, xid
}

// roundTrip sends the call and returns it with the reply body; it records
// statistics. An NFS reply of NFS3ERR_JUKEBOX ("try again later", RFC 1813
// §2.6) is retried like Linux's nfs3_rpc_wrapper does, with a fresh xid and
// a growing delay (jukeboxFirst … jukeboxMax), until Options.Timeout has
// passed since the first send; then the JUKEBOX status is returned (EAGAIN).
func (c *Client) roundTrip(ctx context.Context, r request, e *encoder, xid uint32) (*call, error) {
	size := len(e.b) - 4 + len(r.data) + padLen(len(r.data))
	binary.BigEndian.PutUint32(e.b[0:4], lastFragment|uint32(size))
	cl := &call{
		xid: xid, proc: r.name, idempotent: r.idempotent,
		msg: e.b, data: r.data, sink: r.sink, done: make(chan struct{}, 1),
	}
	first := time.Now()
	for delay := jukeboxFirst; ; delay = min(2*delay, jukeboxMax) {
		start := time.Now()
		err := r.cn.do(ctx, cl)
		c.stats.record(r.prog, r.proc, time.Since(start), err)
		if err != nil {
			return nil, err
		}
		if r.prog != progNFS || len(cl.body) < 4 || Status(binary.BigEndian.Uint32(cl.body)) != StatusJukebox ||
			time.Since(first)+delay > c.opts.Timeout {
			return cl, nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		cl.xid = c.xid.Add(1)
		binary.BigEndian.PutUint32(cl.msg[4:8], cl.xid)
		cl.body, cl.sinkN = nil, 0
	}
}

// Delays between retries of a call the server answered NFS3ERR_JUKEBOX.
const (
	jukeboxFirst = 100 * time.Millisecond
	jukeboxMax   = 2 * time.Second
)

func (c *Client) pick() *conn {
	if len(c.conns) == 1 {
		return c.conns[0]
	}
	return c.conns[int(c.next.Add(1))%len(c.conns)]
}

// nfsCall runs one NFS procedure. args encodes the arguments; the reply body
// is returned as a decoder positioned after the status, which is returned
// separately (non-OK statuses still carry wcc/post-op data to decode).
func (c *Client) nfsCall(ctx context.Context, proc uint32, args func(*encoder), idempotent bool) (*decoder, Status, error) {
	e, xid := c.startCall(progNFS, nfsVersion, proc, 128)
	args(e)
	cl, err := c.roundTrip(ctx, request{cn: c.pick(), prog: progNFS, vers: nfsVersion, proc: proc, name: procName(proc), idempotent: idempotent}, e, xid)
	if err != nil {
		return nil, 0, err
	}
	d := &decoder{b: cl.body}
	st := Status(d.u32())
	if d.err != nil {
		return nil, 0, fmt.Errorf("%s: %w: %w", procName(proc), ErrProtocol, d.err)
	}
	return d, st, nil
}

// check turns the end of a decode into the right error: a decode failure is
// ErrProtocol, a non-OK status is *Error.
// A failure status wins over a malformed trailer (some servers, stock go-nfs
// among them, send the wrong failure body).
func check(proc uint32, d *decoder, st Status) error {
	if st != StatusOK {
		return &Error{Proc: procName(proc), Status: st}
	}
	if d.err != nil {
		return fmt.Errorf("%s: %w: %w", procName(proc), ErrProtocol, d.err)
	}
	return nil
}

// oneShot runs a call on a fresh connection to addr (MOUNT, portmap).
func (c *Client) oneShot(ctx context.Context, addr string, prog, vers, proc uint32, name string, args func(*encoder)) (*decoder, error) {
	cn, err := newConn(ctx, addr, c.opts.Dial, c.log, c.opts.Timeout, false)
	if err != nil {
		return nil, err
	}
	defer cn.close()
	e, xid := c.startCall(prog, vers, proc, 64)
	if args != nil {
		args(e)
	}
	cl, err := c.roundTrip(ctx, request{cn: cn, prog: prog, vers: vers, proc: proc, name: name}, e, xid)
	if err != nil {
		return nil, err
	}
	return &decoder{b: cl.body}, nil
}

func (c *Client) getport(ctx context.Context, pmAddr string, prog, vers uint32) (uint32, error) {
	d, err := c.oneShot(ctx, pmAddr, progPortmap, 2, 3, "PMAPPROC_GETPORT", func(e *encoder) {
		e.u32(prog)
		e.u32(vers)
		e.u32(6) // IPPROTO_TCP
		e.u32(0)
	})
	if err != nil {
		return 0, fmt.Errorf("client: portmap %s: %w", pmAddr, err)
	}
	port := d.u32()
	if d.err != nil || port == 0 || port > 65535 {
		return 0, fmt.Errorf("client: portmap %s: program %d v%d not registered for TCP", pmAddr, prog, vers)
	}
	return port, nil
}

// randomVerifier makes an exclusive-create verifier.
func randomVerifier() Verifier {
	var v Verifier
	if _, err := io.ReadFull(rand.Reader, v[:]); err != nil {
		binary.BigEndian.PutUint64(v[:], uint64(time.Now().UnixNano()))
	}
	return v
}

var errNoHandle = errors.New("client: server returned no file handle")
