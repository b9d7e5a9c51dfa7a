package server

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	billy "github.com/go-git/go-billy/v5"
	nfs "github.com/willscott/go-nfs"
)

// A lane is one in-process connection to a go-nfs server: every call the
// transport does not answer itself is relayed over a free lane, one call
// at a time, so go-nfs's one-request-per-connection loop runs on several
// lanes in parallel. Each lane has its own exportFS whose recorder keeps
// the errno of the last failing change, which the transport uses to
// restore the exact NFS status go-nfs reduces to IO or ACCES.
//
// Concurrency: a lane is owned by one forwarder at a time (taken from
// Server.lanes). proc and lastErr are handed between the forwarder and
// the go-nfs goroutine through the pipe, which orders them.
type lane struct {
	srv  *Server
	l    *pipeListener
	fs   *exportFS
	conn net.Conn
	br   *bufio.Reader

	proc    uint32
	lastErr error
	// lookupErr is the error of a failing Lstat/Stat/ReadDir/Readlink
	// during the call (see recordLookup).
	lookupErr error
	// attrs logs the FileInfos go-nfs obtained during the call, for
	// patchReply; times is what the call's sattr3 asks for atime/mtime.
	attrs attrLog
	times sattrTimes
}

func (ln *lane) record(err error) { ln.lastErr = err }

// recordLookup keeps the first failure of a non-mutating access other
// than ENOENT, else the ENOENT: a call may probe several names (LOOKUP
// stats the directory, then the name), and a missing name after an I/O
// error is a consequence, not the cause.
func (ln *lane) recordLookup(err error) {
	if ln.lookupErr == nil || (errors.Is(ln.lookupErr, fs.ErrNotExist) && !errors.Is(err, fs.ErrNotExist)) {
		ln.lookupErr = err
	}
}
func (ln *lane) procedure() uint32           { return ln.proc }
func (ln *lane) seen(fi os.FileInfo)         { ln.attrs.add(fi) }
func (ln *lane) seenList(list []os.FileInfo) { ln.attrs.addList(list) }
func (ln *lane) sattrTimes() sattrTimes      { return ln.times }

func (s *Server) newLane() *lane {
	ln := &lane{srv: s, l: newPipeListener()}
	ln.fs = &exportFS{exportCore: s.core, rec: ln}
	srv := &nfs.Server{Handler: loggingHandler{&laneHandler{srv: s, ln: ln}}, ID: s.verifier}
	go func() { _ = srv.Serve(ln.l) }()
	ln.connect()
	return ln
}

func (ln *lane) connect() {
	a, b := net.Pipe()
	ln.conn, ln.br = a, bufio.NewReaderSize(a, 64<<10)
	ln.l.push(b)
}

func (ln *lane) close() {
	ln.l.Close()
	ln.conn.Close()
}

// forwardTimeout bounds how long go-nfs may take for one call.
const forwardTimeout = 2 * time.Minute

// forward relays one call record to go-nfs and returns its reply record
// (without record mark).
func (s *Server) forward(call *rpcCall) ([]byte, error) {
	ln := <-s.lanes
	defer func() { s.lanes <- ln }()
	ln.lastErr, ln.lookupErr = nil, nil
	ln.proc = ^uint32(0)
	ln.times = sattrTimes{}
	ln.attrs.reset()
	if call.prog == progNFS {
		ln.proc = call.proc
		ln.times = callSattrTimes(call.proc, call.args)
	}
	_ = ln.conn.SetDeadline(time.Now().Add(forwardTimeout))
	var mark [4]byte
	binary.BigEndian.PutUint32(mark[:], uint32(len(call.rec))|lastFragment)
	bufs := net.Buffers{mark[:], call.rec}
	_, err := bufs.WriteTo(ln.conn)
	var reply []byte
	if err == nil {
		reply, err = readRecord(ln.br, nil, nil, maxRecord+MaxTransfer)
	}
	if err != nil {
		// The lane's go-nfs connection is unusable: start a fresh one.
		ln.conn.Close()
		ln.connect()
		return nil, fmt.Errorf("relay %s to go-nfs: %w", call, err)
	}
	if call.prog != progNFS {
		return reply, nil
	}
	switch {
	case ln.lastErr != nil:
		reply = fixStatus(reply, call.proc, ln.lastErr)
	case ln.lookupErr != nil:
		reply = fixLookupStatus(reply, call.proc, ln.lookupErr)
	}
	if err := patchReply(reply, call.proc, &ln.attrs); err != nil {
		s.log.Debug("reply attributes left as go-nfs encoded them", "call", call.String(), "err", err)
	}
	ln.attrs.reset() // drop references to the FileInfos
	return reply, nil
}

// fixStatus rewrites a go-nfs error reply whose status lost the real
// cause (go-nfs maps with os.IsNotExist etc., which do not unwrap, and
// returns some errors as RPC SYSTEM_ERR) to the status of the recorded
// errno. The error arms of these procedures carry only empty wcc data
// (RFC 1813 §3.3), so the reply is rebuilt whole.
func fixStatus(reply []byte, proc uint32, cause error) []byte {
	var body int
	switch proc {
	case ProcSetAttr, ProcCreate, ProcMkdir, ProcSymlink, ProcMknod, ProcRemove, ProcRmdir:
		body = 8 // wcc_data: no pre-op, no post-op attributes
	case ProcRename:
		body = 16
	case ProcLink:
		body = 12
	default:
		return reply
	}
	return rewriteStatus(reply, body, statusOf(cause), nfs.NFSStatusIO, nfs.NFSStatusAccess, nfs.NFSStatusServerFault)
}

// rewriteStatus replaces a go-nfs error reply whose status is one of
// lossy (or an RPC system error) by status st followed by body zero
// bytes (empty attributes). Successful replies and other statuses are
// left alone: go-nfs found those itself.
func rewriteStatus(reply []byte, body int, st nfs.NFSStatus, lossy ...nfs.NFSStatus) []byte {
	if st == nfs.NFSStatusOk || len(reply) < 24 || binary.BigEndian.Uint32(reply[8:12]) != msgAccepted {
		return reply
	}
	switch binary.BigEndian.Uint32(reply[20:24]) {
	case acceptSystemErr, goNFSSystemErr:
	case acceptSuccess:
		if len(reply) < 28 || !slices.Contains(lossy, nfs.NFSStatus(binary.BigEndian.Uint32(reply[24:28]))) {
			return reply
		}
	default:
		return reply
	}
	xid := binary.BigEndian.Uint32(reply[0:4])
	out := appendAcceptedHeader(make([]byte, 0, 28+body), xid, acceptSuccess)
	out = binary.BigEndian.AppendUint32(out, uint32(st))
	return append(out, make([]byte, body)...)
}

// fixLookupStatus gives a failed call the status of the errno that made
// one of its Lstat/Stat/ReadDir/Readlink calls fail. go-nfs answers any
// such failure of LOOKUP with NOENT (and of READDIR with NOTDIR, READLINK
// with ACCES): an exported filesystem whose upstream is down
// (*fs.PathError{Err: EIO}) made clients cache a negative entry for a
// file that may well exist. The error arms rebuilt here carry only an
// absent post_op_attr (RFC 1813 §3.3), GETATTR's nothing.
//
// In a changing procedure a failed probe is only trusted when it is not
// ENOENT: CREATE, MKDIR, SYMLINK... stat the new name expecting ENOENT.
func fixLookupStatus(reply []byte, proc uint32, cause error) []byte {
	var body int
	switch proc {
	case ProcGetAttr:
		body = 0
	case ProcLookup, ProcAccess, ProcReadlink, ProcReadDir, ProcReadDirPlus, ProcFSStat, ProcPathConf:
		body = 4
	case ProcSetAttr, ProcCreate, ProcMkdir, ProcSymlink, ProcMknod, ProcRemove, ProcRmdir:
		body = 8
	case ProcRename:
		body = 16
	default:
		return reply
	}
	if body >= 8 && errors.Is(cause, fs.ErrNotExist) {
		return reply
	}
	if proc == ProcAccess && !errors.Is(cause, fs.ErrNotExist) {
		// go-nfs grants ACCESS without looking at the file (its only
		// Lstat is for the optional attributes): a file the exported
		// filesystem cannot reach is an error, as knfsd's fh_verify makes
		// it. A vanished file keeps go-nfs's answer.
		return rewriteStatus(reply, body, lookupStatus(cause), nfs.NFSStatusOk)
	}
	return rewriteStatus(reply, body, lookupStatus(cause),
		nfs.NFSStatusNoEnt, nfs.NFSStatusNotDir, nfs.NFSStatusIO, nfs.NFSStatusAccess, nfs.NFSStatusServerFault)
}

// lookupStatus is statusOf for a failed non-mutating access, with the
// transient errnos spelled out. ETIMEDOUT and EAGAIN (an exported
// filesystem giving up on its upstream) are NFS3ERR_IO, not
// NFS3ERR_JUKEBOX: RFC 1813 §2.6 defines JUKEBOX as "the server initiated
// the request, but was not able to complete it in a timely fashion" and
// clients are to retry it; the Linux client retries JUKEBOX forever on a
// hard mount (nfs3_rpc_wrapper), which would turn the exported
// filesystem's bounded error into a hang of the application. IO lets the
// application see EIO and decide.
func lookupStatus(err error) nfs.NFSStatus {
	switch {
	case errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EAGAIN):
		return nfs.NFSStatusIO
	}
	return statusOf(err)
}

// goNFSSystemErr is what go-nfs v0.0.4 puts on the wire for its
// ResponseCodeSystemErr: its enum skips PROG_MISMATCH, so the value sent
// is RFC 5531's GARBAGE_ARGS.
const goNFSSystemErr = 4

// laneHandler is the nfs.Handler go-nfs calls for one lane.
//
// Concurrency: go-nfs calls it from the lane's connection goroutine only.
type laneHandler struct {
	srv *Server
	ln  *lane
}

var _ nfs.Handler = (*laneHandler)(nil)

// Mount answers MOUNT MNT (RFC 1813 §5.2.1): the export is "/".
func (h *laneHandler) Mount(_ context.Context, _ net.Conn, req nfs.MountRequest) (nfs.MountStatus, billy.Filesystem, []nfs.AuthFlavor) {
	if p := path.Clean("/" + string(req.Dirpath)); p != "/" {
		return nfs.MountStatusErrNoEnt, nil, nil
	}
	return nfs.MountStatusOk, h.ln.fs, []nfs.AuthFlavor{nfs.AuthFlavorNull}
}

// loggingHandler is the handler go-nfs sees: laneHandler, plus the
// listings the cache hands back logged for patchReply (the later pages of
// a READDIRPLUS walk never call ReadDir).
type loggingHandler struct{ *laneHandler }

func (h loggingHandler) DataForVerifier(p string, v uint64) []fs.FileInfo {
	ents := h.laneHandler.DataForVerifier(p, v)
	h.ln.seenList(ents)
	return ents
}

func (h *laneHandler) Change(fs billy.Filesystem) billy.Change {
	if e, ok := fs.(*exportFS); ok {
		return e
	}
	return nil
}

func (h *laneHandler) FSStat(_ context.Context, _ billy.Filesystem, st *nfs.FSStat) error {
	return h.srv.fsstat(st)
}

// ToHandle gives the persistent handle of path, assigning an id on first
// sight. A path that does not exist gets an invalid handle and no id.
func (h *laneHandler) ToHandle(_ billy.Filesystem, p []string) []byte {
	r := rel(strings.Join(p, "/"))
	if hd, _, ok := h.srv.table.lookup(r); ok {
		return hd
	}
	if _, err := h.srv.core.base.Lstat(basePath(r)); err != nil {
		return make([]byte, handleLen)
	}
	hd, err := h.srv.table.assign(r)
	if err != nil {
		h.srv.log.Error("assign file handle", "path", r, "err", err)
		return make([]byte, handleLen)
	}
	return hd
}

func (h *laneHandler) FromHandle(fh []byte) (billy.Filesystem, []string, error) {
	_, p, err := h.srv.table.resolve(fh)
	if err != nil {
		return nil, nil, err
	}
	if p == "" {
		return h.ln.fs, []string{}, nil
	}
	return h.ln.fs, strings.Split(p, "/"), nil
}

// InvalidateHandle does nothing: Remove and Rename already updated the
// table (a renamed file keeps its handle).
func (h *laneHandler) InvalidateHandle(billy.Filesystem, []byte) error { return nil }

// HandleLimit is large: handles are never evicted, so go-nfs need not
// shorten READDIRPLUS replies to protect a cache.
func (h *laneHandler) HandleLimit() int { return math.MaxInt32 }

// fsstat fills FSSTAT (RFC 1813 §3.3.18) from the exported filesystem's
// UsageReporter, statfs of the exported directory, or from system memory
// for an in-memory export.
func (s *Server) fsstat(st *nfs.FSStat) error {
	if u, ok := s.core.base.(UsageReporter); ok {
		tb, fb, ab, tf, ff, af, err := u.NFSUsage()
		if err != nil {
			return &nfs.NFSStatusError{NFSStatus: statusOf(err), WrappedErr: err}
		}
		st.TotalSize, st.FreeSize, st.AvailableSize = tb, fb, ab
		st.TotalFiles, st.FreeFiles, st.AvailableFiles = tf, ff, af
	} else if s.statfs != "" {
		var sf syscall.Statfs_t
		if err := syscall.Statfs(s.statfs, &sf); err != nil {
			return &nfs.NFSStatusError{NFSStatus: statusOf(err), WrappedErr: err}
		}
		bs := uint64(sf.Bsize)
		st.TotalSize, st.FreeSize, st.AvailableSize = sf.Blocks*bs, sf.Bfree*bs, sf.Bavail*bs
		st.TotalFiles, st.FreeFiles, st.AvailableFiles = sf.Files, sf.Ffree, sf.Ffree
	} else {
		var si syscall.Sysinfo_t
		if err := syscall.Sysinfo(&si); err != nil {
			return &nfs.NFSStatusError{NFSStatus: statusOf(err), WrappedErr: err}
		}
		unit := uint64(si.Unit)
		st.TotalSize, st.FreeSize, st.AvailableSize = si.Totalram*unit, si.Freeram*unit, si.Freeram*unit
		st.TotalFiles, st.FreeFiles, st.AvailableFiles = 1<<32, 1<<32, 1<<32
	}
	if s.opts.ReadOnly {
		st.AvailableSize, st.AvailableFiles = 0, 0
	}
	st.CacheHint = 0
	return nil
}

// pipeListener is a net.Listener whose connections are net.Pipe ends
// pushed in by the transport.
//
// Concurrency: safe for concurrent use.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn, 1), done: make(chan struct{})}
}

func (p *pipeListener) push(c net.Conn) {
	select {
	case p.conns <- c:
	case <-p.done:
		c.Close()
	}
}

func (p *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.done:
		return nil, net.ErrClosed
	}
}

func (p *pipeListener) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

func (p *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "in-process" }
