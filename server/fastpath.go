package server

import (
	"encoding/binary"
	"errors"
	"io/fs"
	"os"
	"strings"
	"time"

	billy "github.com/go-git/go-billy/v5"
	nfs "github.com/willscott/go-nfs"
)

// xdrArgs decodes XDR (RFC 4506) call arguments; any short read sets bad.
type xdrArgs struct {
	b   []byte
	bad bool
}

func (x *xdrArgs) u32() uint32 {
	if len(x.b) < 4 {
		x.bad = true
		return 0
	}
	v := binary.BigEndian.Uint32(x.b)
	x.b = x.b[4:]
	return v
}

func (x *xdrArgs) u64() uint64 {
	return uint64(x.u32())<<32 | uint64(x.u32())
}

func (x *xdrArgs) opaque(max uint32) []byte {
	n := x.u32()
	if x.bad || n > max || uint64(len(x.b)) < uint64(n) {
		x.bad = true
		return nil
	}
	v := x.b[:n]
	pad := int(n+3) &^ 3
	if pad > len(x.b) {
		pad = len(x.b) // a missing final pad is tolerated
	}
	x.b = x.b[pad:]
	return v
}

const (
	fhSize = 64 // NFS3_FHSIZE

	stableUnstable = 0
	stableFileSync = 2

	fattrLen = 84 // fattr3 (RFC 1813 §2.5)

	fsfLink        = 0x01
	fsfSymlink     = 0x02
	fsfHomogeneous = 0x08
	fsfCanSetTime  = 0x10
)

// appendFattr encodes fattr3 as the relayed replies carry it (go-nfs's
// encoding with the real fileid, nlink, owner, atime and ctime: fileAttr),
// so clients see the same attributes whichever side answered.
func appendFattr(b []byte, info os.FileInfo, p string) []byte {
	a := fileAttr(info, p)
	be := binary.BigEndian
	b = be.AppendUint32(b, uint32(a.Type))
	b = be.AppendUint32(b, a.FileMode)
	b = be.AppendUint32(b, a.Nlink)
	b = be.AppendUint32(b, a.UID)
	b = be.AppendUint32(b, a.GID)
	b = be.AppendUint64(b, a.Filesize)
	b = be.AppendUint64(b, a.Used)
	b = be.AppendUint32(b, a.SpecData[0])
	b = be.AppendUint32(b, a.SpecData[1])
	b = be.AppendUint64(b, a.FSID)
	b = be.AppendUint64(b, a.Fileid)
	for _, t := range []nfs.FileTime{a.Atime, a.Mtime, a.Ctime} {
		b = be.AppendUint32(b, t.Seconds)
		b = be.AppendUint32(b, t.Nseconds)
	}
	return b
}

func appendPostOpAttr(b []byte, info os.FileInfo, p string) []byte {
	if info == nil {
		return binary.BigEndian.AppendUint32(b, 0)
	}
	return appendFattr(binary.BigEndian.AppendUint32(b, 1), info, p)
}

// appendPreOpAttr encodes wcc_attr (size, mtime, ctime).
func appendPreOpAttr(b []byte, info os.FileInfo, p string) []byte {
	be := binary.BigEndian
	if info == nil {
		return be.AppendUint32(b, 0)
	}
	a := fileAttr(info, p)
	b = be.AppendUint32(b, 1)
	b = be.AppendUint64(b, a.Filesize)
	b = be.AppendUint32(b, a.Mtime.Seconds)
	b = be.AppendUint32(b, a.Mtime.Nseconds)
	b = be.AppendUint32(b, a.Ctime.Seconds)
	return be.AppendUint32(b, a.Ctime.Nseconds)
}

// fileStatus maps errors of the fast path to nfsstat3; a file that
// vanished under a valid handle is STALE.
func fileStatus(err error) nfs.NFSStatus {
	if errors.Is(err, fs.ErrNotExist) {
		return nfs.NFSStatusStale
	}
	return statusOf(err)
}

// errReply is a header, a status and `zeros` bytes of empty attributes.
func errReply(xid uint32, st nfs.NFSStatus, zeros int) []byte {
	b := appendAcceptedHeader(make([]byte, 0, 28+zeros), xid, acceptSuccess)
	b = binary.BigEndian.AppendUint32(b, uint32(st))
	return append(b, make([]byte, zeros)...)
}

func garbage(xid uint32) []byte { return appendAcceptedHeader(nil, xid, acceptGarbageArgs) }

// onRead answers READ (RFC 1813 §3.3.6): the data is read straight into
// the pooled reply buffer, after room for the headers, and sent with one
// write.
func (s *Server) onRead(cc *clientConn, call *rpcCall) error {
	x := xdrArgs{b: call.args}
	fh := x.opaque(fhSize)
	off := x.u64()
	count := x.u32()
	if x.bad {
		return cc.send(garbage(call.xid))
	}
	const errZeros = 4 // post_op_attr: none
	id, p, err := s.table.resolveData(fh)
	if err != nil {
		return cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	of, err := s.open.acquire(id, p, false)
	if err != nil {
		return cc.send(errReply(call.xid, fileStatus(err), errZeros))
	}
	defer s.open.release(of)
	count = min(count, MaxTransfer)
	// mark + header + status + post_op_attr + count + eof + opaque length
	const prefix = 4 + 24 + 4 + 4 + fattrLen + 4 + 4 + 4
	bp := s.bufs.get(prefix + int(count) + 4)
	defer s.bufs.put(bp)
	buf := *bp
	n, err := of.readAt(buf[prefix:prefix+int(count)], int64(off))
	if err != nil {
		return cc.send(errReply(call.xid, fileStatus(err), errZeros))
	}
	info, err := of.stat(s.core.base)
	if err != nil {
		return cc.send(errReply(call.xid, fileStatus(err), errZeros))
	}
	eof := uint32(0)
	if int64(off)+int64(n) >= info.Size() {
		eof = 1
	}
	h := appendAcceptedHeader(buf[4:4], call.xid, acceptSuccess)
	h = binary.BigEndian.AppendUint32(h, uint32(nfs.NFSStatusOk))
	h = appendPostOpAttr(h, info, p)
	h = binary.BigEndian.AppendUint32(h, uint32(n))
	h = binary.BigEndian.AppendUint32(h, eof)
	binary.BigEndian.AppendUint32(h, uint32(n))
	end := prefix + n
	for end%4 != 0 {
		buf[end] = 0
		end++
	}
	s.stats.bytesRead.Add(uint64(n))
	return cc.sendRecord(buf[:end])
}

// onWrite answers WRITE (RFC 1813 §3.3.7) from the request buffer. An
// UNSTABLE write is left in the page cache and answered UNSTABLE; COMMIT
// makes it durable. DATA_SYNC and FILE_SYNC are synced before replying.
func (s *Server) onWrite(cc *clientConn, call *rpcCall) error {
	x := xdrArgs{b: call.args}
	fh := x.opaque(fhSize)
	off := x.u64()
	count := x.u32()
	stable := x.u32()
	data := x.opaque(MaxTransfer)
	if x.bad || stable > stableFileSync {
		return cc.send(garbage(call.xid))
	}
	const errZeros = 8 // wcc_data: none
	if s.opts.ReadOnly {
		return cc.send(errReply(call.xid, nfs.NFSStatusROFS, errZeros))
	}
	if int(count) < len(data) {
		data = data[:count]
	}
	id, p, err := s.table.resolveData(fh)
	if err != nil {
		return cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	of, err := s.open.acquire(id, p, true)
	if err != nil {
		return cc.send(errReply(call.xid, fileStatus(err), errZeros))
	}
	defer s.open.release(of)
	pre, _ := of.stat(s.core.base)
	n, err := of.writeAt(data, int64(off))
	committed := uint32(stableUnstable)
	if err == nil && stable != stableUnstable {
		if !s.opts.Async {
			err = of.sync()
		}
		committed = stableFileSync
	}
	if err != nil {
		return cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	post, _ := of.stat(s.core.base)
	be := binary.BigEndian
	b := appendAcceptedHeader(make([]byte, 0, 256), call.xid, acceptSuccess)
	b = be.AppendUint32(b, uint32(nfs.NFSStatusOk))
	b = appendPreOpAttr(b, pre, p)
	b = appendPostOpAttr(b, post, p)
	b = be.AppendUint32(b, uint32(n))
	b = be.AppendUint32(b, committed)
	b = append(b, s.verifier[:]...)
	s.stats.bytesWritten.Add(uint64(n))
	return cc.send(b)
}

// onCommit answers COMMIT (RFC 1813 §3.3.21) with an fsync of the file
// and this server instance's write verifier.
func (s *Server) onCommit(cc *clientConn, call *rpcCall) error {
	x := xdrArgs{b: call.args}
	fh := x.opaque(fhSize)
	_ = x.u64() // offset and count: the whole file is synced
	_ = x.u32()
	if x.bad {
		return cc.send(garbage(call.xid))
	}
	const errZeros = 8
	id, p, err := s.table.resolveData(fh)
	if err != nil {
		return cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	of, err := s.open.acquire(id, p, false)
	if err != nil {
		return cc.send(errReply(call.xid, fileStatus(err), errZeros))
	}
	defer s.open.release(of)
	if err := of.sync(); err != nil {
		return cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	post, _ := of.stat(s.core.base)
	b := appendAcceptedHeader(make([]byte, 0, 160), call.xid, acceptSuccess)
	b = binary.BigEndian.AppendUint32(b, uint32(nfs.NFSStatusOk))
	b = appendPreOpAttr(b, nil, p)
	b = appendPostOpAttr(b, post, p)
	b = append(b, s.verifier[:]...)
	return cc.send(b)
}

// onFSInfo answers FSINFO (RFC 1813 §3.3.19) with the transfer sizes
// this transport really handles (go-nfs advertises 1 GiB).
func (s *Server) onFSInfo(cc *clientConn, call *rpcCall) error {
	x := xdrArgs{b: call.args}
	fh := x.opaque(fhSize)
	if x.bad {
		return cc.send(garbage(call.xid))
	}
	_, p, err := s.table.resolve(fh)
	if err != nil {
		return cc.send(errReply(call.xid, statusOf(err), 4))
	}
	info, _ := s.core.base.Lstat(basePath(p))
	be := binary.BigEndian
	b := appendAcceptedHeader(make([]byte, 0, 160), call.xid, acceptSuccess)
	b = be.AppendUint32(b, uint32(nfs.NFSStatusOk))
	b = appendPostOpAttr(b, info, p)
	b = be.AppendUint32(b, MaxTransfer) // rtmax
	b = be.AppendUint32(b, MaxTransfer) // rtpref
	b = be.AppendUint32(b, 4096)        // rtmult
	b = be.AppendUint32(b, MaxTransfer) // wtmax
	b = be.AppendUint32(b, MaxTransfer) // wtpref
	b = be.AppendUint32(b, 4096)        // wtmult
	b = be.AppendUint32(b, 64<<10)      // dtpref
	b = be.AppendUint64(b, 1<<63-1)     // maxfilesize
	b = be.AppendUint32(b, 0)           // time_delta: 1 ns
	b = be.AppendUint32(b, 1)
	props := uint32(fsfSymlink | fsfHomogeneous)
	if s.core.linker() != nil {
		props |= fsfLink
	}
	if !s.opts.ReadOnly {
		props |= fsfCanSetTime
	}
	b = be.AppendUint32(b, props)
	return cc.send(b)
}

// onLink answers LINK (RFC 1813 §3.3.15) through os.Root for a disk
// export, or through the exported filesystem's HardLinker (go-nfs v0.0.4
// decodes LINK3args wrongly). The new name is recorded as an alias of
// the file's handle (handleTable.linked), as knfsd's handles name inodes.
func (s *Server) onLink(cc *clientConn, call *rpcCall) error {
	x := xdrArgs{b: call.args}
	fh := x.opaque(fhSize)
	dirFH := x.opaque(fhSize)
	name := string(x.opaque(255))
	if x.bad {
		return cc.send(garbage(call.xid))
	}
	const errZeros = 12 // post_op_attr + wcc_data, all empty
	if s.opts.ReadOnly {
		return cc.send(errReply(call.xid, nfs.NFSStatusROFS, errZeros))
	}
	linker := s.core.linker()
	if linker == nil {
		return cc.send(errReply(call.xid, nfs.NFSStatusNotSupp, errZeros))
	}
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return cc.send(errReply(call.xid, nfs.NFSStatusInval, errZeros))
	}
	id, p, err := s.table.resolve(fh)
	if err != nil {
		return cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	_, dir, err := s.table.resolve(dirFH)
	if err != nil {
		return cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	target := rel(dir + "/" + name)
	pre, _ := s.core.base.Lstat(basePath(dir))
	if err := linker.Link(basePath(p), target); err != nil {
		return cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	if err := s.table.linked(id, target); err != nil {
		s.log.Warn("LINK: new name not recorded as an alias", "path", target, "err", err)
	}
	info, _ := s.core.base.Lstat(basePath(p))
	dinfo, _ := s.core.base.Lstat(basePath(dir))
	b := appendAcceptedHeader(make([]byte, 0, 256), call.xid, acceptSuccess)
	b = binary.BigEndian.AppendUint32(b, uint32(nfs.NFSStatusOk))
	b = appendPostOpAttr(b, info, p)
	b = appendPreOpAttr(b, pre, dir)
	b = appendPostOpAttr(b, dinfo, dir)
	return cc.send(b)
}

const createExclusive = 2

// onCreateExclusive answers CREATE in EXCLUSIVE mode (RFC 1813 §3.3.8),
// which go-nfs refuses: the file is created with O_EXCL and, on a disk
// export, the client's verifier is kept in its atime and mtime (as knfsd
// does), so a retransmitted CREATE finds its own file and succeeds. The
// client then sets mode and times with SETATTR. It reports false for the
// other modes, which go-nfs handles.
func (s *Server) onCreateExclusive(cc *clientConn, call *rpcCall) (bool, error) {
	x := xdrArgs{b: call.args}
	dirFH := x.opaque(fhSize)
	name := string(x.opaque(255))
	how := x.u32()
	if x.bad || how != createExclusive {
		return false, nil
	}
	verf := x.b
	if len(verf) < 8 {
		return true, cc.send(garbage(call.xid))
	}
	const errZeros = 8 // wcc_data
	if s.opts.ReadOnly {
		return true, cc.send(errReply(call.xid, nfs.NFSStatusROFS, errZeros))
	}
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return true, cc.send(errReply(call.xid, nfs.NFSStatusInval, errZeros))
	}
	_, dir, err := s.table.resolve(dirFH)
	if err != nil {
		return true, cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	p := rel(dir + "/" + name)
	atime := time.Unix(int64(binary.BigEndian.Uint32(verf[4:8])), 0)
	mtime := time.Unix(int64(binary.BigEndian.Uint32(verf[0:4])), 0)
	// An open that fails for want of descriptors gives back an idle one
	// of the open-file cache and tries again, as go-nfs's CREATE does
	// (exportFS.OpenFile). The kernel reserves the descriptor before it
	// creates the file, so a retry's O_EXCL does not find its own file.
	create := &exportFS{exportCore: s.core}
	f, err := create.retryFD(func() (billy.File, error) {
		return s.core.base.OpenFile(basePath(p), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	})
	switch {
	case err == nil:
		f.Close()
		if s.core.osRoot != nil {
			if err := s.core.osRoot.Chtimes(p, atime, mtime); err != nil {
				return true, cc.send(errReply(call.xid, statusOf(err), errZeros))
			}
		}
	case errors.Is(err, fs.ErrExist):
		// A retransmission of our own CREATE finds the verifier in place.
		info, lerr := s.core.base.Lstat(basePath(p))
		if s.core.osRoot == nil || lerr != nil || !info.Mode().IsRegular() || !info.ModTime().Equal(mtime) {
			return true, cc.send(errReply(call.xid, nfs.NFSStatusExist, errZeros))
		}
	default:
		return true, cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	h, err := s.table.assign(p)
	if err != nil {
		return true, cc.send(errReply(call.xid, nfs.NFSStatusServerFault, errZeros))
	}
	info, _ := s.core.base.Lstat(basePath(p))
	dinfo, _ := s.core.base.Lstat(basePath(dir))
	be := binary.BigEndian
	b := appendAcceptedHeader(make([]byte, 0, 256), call.xid, acceptSuccess)
	b = be.AppendUint32(b, uint32(nfs.NFSStatusOk))
	b = be.AppendUint32(b, 1) // post_op_fh3
	b = be.AppendUint32(b, uint32(len(h)))
	b = append(b, h...) // handleLen is a multiple of 4: no padding
	b = appendPostOpAttr(b, info, p)
	b = appendPreOpAttr(b, nil, dir)
	b = appendPostOpAttr(b, dinfo, dir)
	return true, cc.send(b)
}
