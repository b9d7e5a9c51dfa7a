package server

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
)

// ONC RPC constants (RFC 5531) and program numbers (RFC 1813).
const (
	progNFS   = 100003
	progMount = 100005

	lastFragment = 1 << 31

	msgCall     = 0
	msgReply    = 1
	msgAccepted = 0
	msgDenied   = 1

	acceptSuccess      = 0
	acceptProgUnavail  = 1
	acceptProgMismatch = 2
	acceptProcUnavail  = 3
	acceptGarbageArgs  = 4
	acceptSystemErr    = 5

	rejectRPCMismatch = 0
	maxAuthLen        = 400
)

var errMalformed = errors.New("malformed RPC call")

// rpcCall is one parsed call record.
type rpcCall struct {
	rec              []byte // the whole record, without record mark
	buf              *[]byte
	xid, rpcvers     uint32
	prog, vers, proc uint32
	args             []byte
}

func (c *rpcCall) String() string {
	return fmt.Sprintf("xid %#x prog %d vers %d proc %d", c.xid, c.prog, c.vers, c.proc)
}

// parseCall decodes the call header (RFC 5531 §9): xid, CALL, rpcvers,
// prog, vers, proc, cred and verf, each auth body at most 400 bytes.
func parseCall(rec []byte) (*rpcCall, error) {
	if len(rec) < 40 {
		return nil, errMalformed
	}
	be := binary.BigEndian
	c := &rpcCall{rec: rec, xid: be.Uint32(rec[0:])}
	if be.Uint32(rec[4:]) != msgCall {
		return nil, errMalformed
	}
	c.rpcvers, c.prog, c.vers, c.proc = be.Uint32(rec[8:]), be.Uint32(rec[12:]), be.Uint32(rec[16:]), be.Uint32(rec[20:])
	off := 24
	for range 2 { // cred, verf
		if len(rec) < off+8 {
			return nil, errMalformed
		}
		n := be.Uint32(rec[off+4:])
		if n > maxAuthLen {
			return nil, errMalformed
		}
		off += 8 + int(n+3)&^3
		if off > len(rec) {
			return nil, errMalformed
		}
	}
	c.args = rec[off:]
	return c, nil
}

// readRecord reads one RPC record (RFC 5531 §11 record marking),
// joining fragments, into a buffer from the pool (bp receives it) or a
// fresh one if bp is nil. Records over max are refused.
func readRecord(r *bufio.Reader, pool *bufPool, bp **[]byte, max int) ([]byte, error) {
	var hdr [4]byte
	var out []byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			if out != nil && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		h := binary.BigEndian.Uint32(hdr[:])
		n := int(h &^ lastFragment)
		if len(out)+n > max {
			return nil, fmt.Errorf("record of %d bytes over limit %d: %w", len(out)+n, max, errMalformed)
		}
		if out == nil && bp != nil {
			*bp = pool.get(n)
			out = (**bp)[:0]
		}
		start := len(out)
		if cap(out) < start+n {
			grown := make([]byte, start, start+n)
			copy(grown, out)
			if bp != nil && *bp != nil {
				pool.put(*bp)
				*bp = nil
			}
			out = grown
		}
		out = out[:start+n]
		if _, err := io.ReadFull(r, out[start:]); err != nil {
			return nil, fmt.Errorf("truncated record: %w", io.ErrUnexpectedEOF)
		}
		if h&lastFragment != 0 {
			return out, nil
		}
	}
}

// bufPool recycles record and reply buffers by size class, 4 KiB up to
// 2 MiB (a 1 MiB READ or WRITE plus headers).
//
// Concurrency: safe for concurrent use (sync.Pool).
type bufPool struct {
	pools [4]sync.Pool
}

var bufClasses = [4]int{4 << 10, 64 << 10, 256 << 10, 2 << 20}

func (p *bufPool) get(n int) *[]byte {
	for i, size := range bufClasses {
		if n <= size {
			if b, ok := p.pools[i].Get().(*[]byte); ok {
				return b
			}
			b := make([]byte, size)
			return &b
		}
	}
	b := make([]byte, n)
	return &b
}

func (p *bufPool) put(b *[]byte) {
	if b == nil {
		return
	}
	for i, size := range bufClasses {
		if cap(*b) == size {
			*b = (*b)[:size]
			p.pools[i].Put(b)
			return
		}
	}
}

// clientConn is one accepted TCP connection.
//
// Concurrency: replies are written by many goroutines under wmu; the
// reading goroutine owns br.
type clientConn struct {
	c   net.Conn
	wmu sync.Mutex
}

// send writes one reply record: mark + parts, in one vectored write.
func (cc *clientConn) send(parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	var mark [4]byte
	binary.BigEndian.PutUint32(mark[:], uint32(n)|lastFragment)
	bufs := make(net.Buffers, 0, len(parts)+1)
	bufs = append(bufs, mark[:])
	bufs = append(bufs, parts...)
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	_, err := bufs.WriteTo(cc.c)
	return err
}

// sendRecord writes rec whose first 4 bytes are room for the record mark.
func (cc *clientConn) sendRecord(rec []byte) error {
	binary.BigEndian.PutUint32(rec[:4], uint32(len(rec)-4)|lastFragment)
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	_, err := cc.c.Write(rec)
	return err
}

// serveConn reads calls from one client and answers them, up to
// maxInFlight at a time. A malformed record closes this connection only.
func (s *Server) serveConn(c net.Conn) {
	cc := &clientConn{c: c}
	br := bufio.NewReaderSize(c, 64<<10)
	sem := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	defer func() {
		wg.Wait()
		c.Close()
	}()
	for {
		var bp *[]byte
		rec, err := readRecord(br, &s.bufs, &bp, maxRecord)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ECONNRESET) {
				s.stats.bad.Add(1)
				s.log.Warn("closing connection", "remote", c.RemoteAddr().String(), "err", err)
			}
			s.bufs.put(bp)
			return
		}
		call, err := parseCall(rec)
		if err != nil {
			s.stats.bad.Add(1)
			s.log.Warn("closing connection: malformed call", "remote", c.RemoteAddr().String(), "err", err)
			s.bufs.put(bp)
			return
		}
		call.buf = bp
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() {
				s.bufs.put(call.buf)
				<-sem
				wg.Done()
			}()
			if err := s.dispatch(cc, call); err != nil {
				s.log.Warn("closing connection", "remote", c.RemoteAddr().String(), "call", call.String(), "err", err)
				c.Close()
			}
		}()
	}
}

func appendAcceptedHeader(b []byte, xid, stat uint32) []byte {
	be := binary.BigEndian
	b = be.AppendUint32(b, xid)
	b = be.AppendUint32(b, msgReply)
	b = be.AppendUint32(b, msgAccepted)
	b = be.AppendUint32(b, 0) // verifier AUTH_NONE
	b = be.AppendUint32(b, 0)
	return be.AppendUint32(b, stat)
}

// dispatch answers one call: MOUNT EXPORT, READ, WRITE, COMMIT, FSINFO,
// READDIR and READDIRPLUS here, everything else through go-nfs. An error closes the connection.
func (s *Server) dispatch(cc *clientConn, call *rpcCall) error {
	if call.rpcvers != 2 {
		b := binary.BigEndian.AppendUint32(nil, call.xid)
		b = binary.BigEndian.AppendUint32(b, msgReply)
		b = binary.BigEndian.AppendUint32(b, msgDenied)
		b = binary.BigEndian.AppendUint32(b, rejectRPCMismatch)
		b = binary.BigEndian.AppendUint32(b, 2)
		b = binary.BigEndian.AppendUint32(b, 2)
		return cc.send(b)
	}
	switch call.prog {
	case progNFS:
		if call.vers != 3 {
			return cc.send(progMismatch(call.xid))
		}
		if call.proc >= numNFSProcs {
			// go-nfs would answer with its PROC_UNAVAIL, which its enum
			// puts on the wire as PROG_MISMATCH without the version range.
			return cc.send(appendAcceptedHeader(nil, call.xid, acceptProcUnavail))
		}
		s.stats.nfs[call.proc].Add(1)
		if reply := s.dirRefusal(call); reply != nil {
			return cc.send(reply)
		}
		switch call.proc {
		case ProcRead:
			return s.onRead(cc, call)
		case ProcWrite:
			return s.onWrite(cc, call)
		case ProcCommit:
			return s.onCommit(cc, call)
		case ProcFSInfo:
			return s.onFSInfo(cc, call)
		case ProcLink:
			return s.onLink(cc, call)
		case ProcReadDir, ProcReadDirPlus:
			if !s.core.relayReadDir {
				return s.onReadDir(cc, call)
			}
		case ProcCreate:
			if done, err := s.onCreateExclusive(cc, call); done {
				return err
			}
		case ProcSetAttr:
			if done, err := s.checkSetAttrGuard(cc, call); done {
				return err
			}
		}
	case progMount:
		if call.vers < 1 || call.vers > 3 {
			return cc.send(progMismatch(call.xid))
		}
		if call.proc >= numMountProcs {
			return cc.send(appendAcceptedHeader(nil, call.xid, acceptProcUnavail))
		}
		s.stats.mount[call.proc].Add(1)
		switch call.proc {
		case MountProcExport:
			return cc.send(exportList(call.xid))
		case MountProcDump:
			// RFC 1813 §5.2.2: no mount list is kept (MNT is stateless here).
			return cc.send(binary.BigEndian.AppendUint32(appendAcceptedHeader(nil, call.xid, acceptSuccess), 0))
		case MountProcUmntAll:
			return cc.send(appendAcceptedHeader(nil, call.xid, acceptSuccess))
		}
	default:
		return cc.send(appendAcceptedHeader(nil, call.xid, acceptProgUnavail))
	}
	if !validArgs(call.prog, call.proc, call.args) {
		return cc.send(appendAcceptedHeader(nil, call.xid, acceptGarbageArgs))
	}
	reply, err := s.forward(call)
	if err != nil {
		return err
	}
	return cc.send(reply)
}

func progMismatch(xid uint32) []byte {
	b := appendAcceptedHeader(nil, xid, acceptProgMismatch)
	b = binary.BigEndian.AppendUint32(b, 3)
	return binary.BigEndian.AppendUint32(b, 3)
}

// exportList answers MOUNTPROC3_EXPORT (RFC 1813 §5.2.5): one export, "/",
// with an empty group list (RFC: no groups means every client; the
// allow-list is enforced at connect time).
func exportList(xid uint32) []byte {
	be := binary.BigEndian
	b := appendAcceptedHeader(nil, xid, acceptSuccess)
	b = be.AppendUint32(b, 1) // value follows
	b = be.AppendUint32(b, 1) // dirpath length
	b = append(b, '/', 0, 0, 0)
	b = be.AppendUint32(b, 0)    // no groups
	return be.AppendUint32(b, 0) // no more exports
}
