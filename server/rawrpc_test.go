package server

import (
	"bufio"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// rawClient speaks ONC RPC by hand, to send what well-behaved clients
// never send (forged handles, garbage) and to read exact status codes.
type rawClient struct {
	t   testing.TB
	c   net.Conn
	br  *bufio.Reader
	xid uint32
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

type xdrBuf []byte

func (b xdrBuf) u32(v uint32) xdrBuf { return binary.BigEndian.AppendUint32(b, v) }
func (b xdrBuf) u64(v uint64) xdrBuf { return binary.BigEndian.AppendUint64(b, v) }
func (b xdrBuf) opaque(v []byte) xdrBuf {
	b = b.u32(uint32(len(v)))
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// call sends one call and returns accept_stat and the reply body after it.
func (r *rawClient) call(prog, vers, proc uint32, args []byte) (uint32, []byte) {
	r.t.Helper()
	r.xid++
	msg := xdrBuf(nil).u32(r.xid).u32(0).u32(2).u32(prog).u32(vers).u32(proc).u32(0).u32(0).u32(0).u32(0)
	msg = append(msg, args...)
	rec := xdrBuf(nil).u32(uint32(len(msg)) | 1<<31)
	rec = append(rec, msg...)
	_ = r.c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := r.c.Write(rec); err != nil {
		r.t.Fatalf("write call: %v", err)
	}
	reply, err := readRecord(r.br, nil, nil, 8<<20)
	if err != nil {
		r.t.Fatalf("read reply: %v", err)
	}
	if len(reply) < 24 || binary.BigEndian.Uint32(reply) != r.xid {
		r.t.Fatalf("bad reply %x", reply)
	}
	return binary.BigEndian.Uint32(reply[20:]), reply[24:]
}

// nfsStatus calls an NFS procedure and returns its nfsstat3.
func (r *rawClient) nfsStatus(proc uint32, args []byte) (uint32, []byte) {
	r.t.Helper()
	acc, body := r.call(progNFS, 3, proc, args)
	if acc != acceptSuccess || len(body) < 4 {
		r.t.Fatalf("proc %d: accept_stat %d", proc, acc)
	}
	return binary.BigEndian.Uint32(body), body[4:]
}

// rootHandle mounts "/" and returns the root file handle.
func (r *rawClient) rootHandle() []byte {
	r.t.Helper()
	acc, body := r.call(progMount, 3, MountProcMnt, xdrBuf(nil).opaque([]byte("/")))
	if acc != 0 || binary.BigEndian.Uint32(body) != 0 {
		r.t.Fatalf("mount: accept %d body %x", acc, body)
	}
	n := binary.BigEndian.Uint32(body[4:])
	return append([]byte(nil), body[8:8+n]...)
}

// lookup returns the handle of name in dir, or the status.
func (r *rawClient) lookup(dir []byte, name string) ([]byte, uint32) {
	r.t.Helper()
	st, body := r.nfsStatus(ProcLookup, xdrBuf(nil).opaque(dir).opaque([]byte(name)))
	if st != 0 {
		return nil, st
	}
	n := binary.BigEndian.Uint32(body)
	return append([]byte(nil), body[4:4+n]...), 0
}

func (r *rawClient) getattr(fh []byte) uint32 {
	r.t.Helper()
	st, _ := r.nfsStatus(ProcGetAttr, xdrBuf(nil).opaque(fh))
	return st
}

// sattrNone is an empty sattr3: nothing set.
var sattrNone = xdrBuf(nil).u32(0).u32(0).u32(0).u32(0).u32(0).u32(0)

func (r *rawClient) mkdir(dir []byte, name string) uint32 {
	st, _ := r.nfsStatus(ProcMkdir, append(xdrBuf(nil).opaque(dir).opaque([]byte(name)), sattrNone...))
	return st
}

func (r *rawClient) create(dir []byte, name string) uint32 {
	st, _ := r.nfsStatus(ProcCreate, append(xdrBuf(nil).opaque(dir).opaque([]byte(name)).u32(1), sattrNone...))
	return st
}

func (r *rawClient) remove(dir []byte, name string) uint32 {
	st, _ := r.nfsStatus(ProcRemove, xdrBuf(nil).opaque(dir).opaque([]byte(name)))
	return st
}

func (r *rawClient) rmdir(dir []byte, name string) uint32 {
	st, _ := r.nfsStatus(ProcRmdir, xdrBuf(nil).opaque(dir).opaque([]byte(name)))
	return st
}

func (r *rawClient) rename(fromDir []byte, from string, toDir []byte, to string) uint32 {
	st, _ := r.nfsStatus(ProcRename, xdrBuf(nil).opaque(fromDir).opaque([]byte(from)).opaque(toDir).opaque([]byte(to)))
	return st
}

// read returns status and data.
func (r *rawClient) read(fh []byte, off uint64, count uint32) (uint32, []byte) {
	st, body := r.nfsStatus(ProcRead, xdrBuf(nil).opaque(fh).u64(off).u32(count))
	if st != 0 {
		return st, nil
	}
	// post_op_attr(4+84) count eof len data
	if binary.BigEndian.Uint32(body) == 1 {
		body = body[4+fattrLen:]
	} else {
		body = body[4:]
	}
	n := binary.BigEndian.Uint32(body[8:])
	return st, append([]byte(nil), body[12:12+n]...)
}

// write returns status, committed and verifier.
func (r *rawClient) write(fh []byte, off uint64, stable uint32, data []byte) (uint32, uint32, []byte) {
	st, body := r.nfsStatus(ProcWrite, xdrBuf(nil).opaque(fh).u64(off).u32(uint32(len(data))).u32(stable).opaque(data))
	if st != 0 {
		return st, 0, nil
	}
	// wcc_data: pre (1 + 24) post (1 + 84)
	if binary.BigEndian.Uint32(body) == 1 {
		body = body[4+24:]
	} else {
		body = body[4:]
	}
	if binary.BigEndian.Uint32(body) == 1 {
		body = body[4+fattrLen:]
	} else {
		body = body[4:]
	}
	return st, binary.BigEndian.Uint32(body[4:]), append([]byte(nil), body[8:16]...)
}

const (
	nfsOK        = 0
	nfsNoEnt     = 2
	nfsExist     = 17
	nfsNotDir    = 20
	nfsIsDir     = 21
	nfsROFS      = 30
	nfsNotEmpty  = 66
	nfsStale     = 70
	nfsBadHandle = 10001
)
