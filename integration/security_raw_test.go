package integration

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// rawConn speaks ONC RPC (RFC 5531) by hand, to send what well-behaved
// clients never send (forged handles, huge counts, bad names, garbage) and
// to read the exact status a server answers.
type rawConn struct {
	c   net.Conn
	br  *bufio.Reader
	xid uint32
}

func rawDial(addr string) (*rawConn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &rawConn{c: c, br: bufio.NewReader(c), xid: 0x5ec0000}, nil
}

func (r *rawConn) Close() error { return r.c.Close() }

type xdr []byte

func (b xdr) u32(v uint32) xdr { return binary.BigEndian.AppendUint32(b, v) }
func (b xdr) u64(v uint64) xdr { return binary.BigEndian.AppendUint64(b, v) }
func (b xdr) opaque(v []byte) xdr {
	b = b.u32(uint32(len(v)))
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
func (b xdr) str(s string) xdr { return b.opaque([]byte(s)) }

const (
	progNFS   = 100003
	progMount = 100005
)

// rawCallRecord is one complete call record: record mark, header with
// AUTH_UNIX root credentials, args.
func rawCallRecord(xid, prog, vers, proc uint32, args []byte) []byte {
	cred := xdr(nil).u32(0).str("fuzz").u32(0).u32(0).u32(0) // stamp, machine, uid, gid, gids
	msg := xdr(nil).u32(xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc).u32(1).opaque(cred).u32(0).u32(0)
	msg = append(msg, args...)
	return append(xdr(nil).u32(uint32(len(msg))|1<<31), msg...)
}

// rawReply is a parsed accepted reply.
type rawReply struct {
	accept uint32 // accept_stat (0 SUCCESS, 4 GARBAGE_ARGS, ...)
	body   []byte // after accept_stat: for NFS, nfsstat3 first
}

// status is the nfsstat3 of an NFS reply (or 1<<31 if absent).
func (r rawReply) status() uint32 {
	if r.accept != 0 || len(r.body) < 4 {
		return 1 << 31
	}
	return binary.BigEndian.Uint32(r.body)
}

var errRawClosed = errors.New("connection closed by server")

// call sends a call and reads its reply within the deadline.
func (r *rawConn) call(prog, vers, proc uint32, args []byte, d time.Duration) (rawReply, error) {
	r.xid++
	_ = r.c.SetDeadline(time.Now().Add(d))
	if _, err := r.c.Write(rawCallRecord(r.xid, prog, vers, proc, args)); err != nil {
		return rawReply{}, err
	}
	rec, err := rawReadRecord(r.br, 4<<20)
	if err != nil {
		return rawReply{}, err
	}
	if len(rec) < 24 || binary.BigEndian.Uint32(rec) != r.xid || binary.BigEndian.Uint32(rec[4:]) != 1 {
		return rawReply{}, fmt.Errorf("bad reply header %x", rec[:min(len(rec), 32)])
	}
	if binary.BigEndian.Uint32(rec[8:]) != 0 {
		return rawReply{}, fmt.Errorf("call rejected: %x", rec[8:min(len(rec), 24)])
	}
	vlen := binary.BigEndian.Uint32(rec[16:])
	p := 20 + int((vlen+3)&^3)
	if p+4 > len(rec) {
		return rawReply{}, fmt.Errorf("short reply %x", rec)
	}
	return rawReply{accept: binary.BigEndian.Uint32(rec[p:]), body: rec[p+4:]}, nil
}

// rawReadRecord reassembles one record-marked record of at most max bytes.
func rawReadRecord(br *bufio.Reader, max int) ([]byte, error) {
	var rec []byte
	for {
		var h [4]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			if errors.Is(err, io.EOF) {
				return nil, errRawClosed
			}
			return nil, err
		}
		n := binary.BigEndian.Uint32(h[:])
		size := int(n &^ (1 << 31))
		if len(rec)+size > max {
			return nil, fmt.Errorf("record of %d bytes over %d", len(rec)+size, max)
		}
		frag := make([]byte, size)
		if _, err := io.ReadFull(br, frag); err != nil {
			return nil, err
		}
		rec = append(rec, frag...)
		if n&(1<<31) != 0 {
			return rec, nil
		}
	}
}

type netipPrefix = netip.Prefix

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func binaryU32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
