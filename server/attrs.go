package server

import (
	"encoding/binary"
	"errors"
	"os"
	"syscall"
	"time"

	nfs "github.com/willscott/go-nfs"
	"github.com/willscott/go-nfs/file"
)

// Attribute fidelity (RFC 1813 §2.6 fattr3, §2.6 wcc_attr).
//
// go-nfs's ToFileAttribute copies ModTime into atime and ctime, and for a
// FileInfo whose Sys() is neither *syscall.Stat_t nor its own
// *file.FileInfo it hashes the path into the fileid and reports nlink 1,
// uid/gid 0. The server fixes this in three places:
//
//   - exportFS (what go-nfs operates on) hands go-nfs FileInfos whose Sys()
//     is a *file.FileInfo built from RemoteAttributes, so go-nfs itself
//     encodes the right fileid, nlink, uid and gid;
//   - every FileInfo go-nfs obtains during one relayed call is logged on
//     the lane (attrLog); the reply is then walked per procedure
//     (patchReply) and each fattr3 whose fileid, size and mtime match a
//     logged FileInfo gets that FileInfo's real atime and ctime; each
//     wcc_attr (pre-op attributes, no fileid) gets the ctime of the first
//     unused logged FileInfo with the same size and mtime, in call order;
//   - the transport's own replies (READ, WRITE, COMMIT, FSINFO, LINK,
//     CREATE EXCLUSIVE) encode with fileAttr, which reads the same sources.
//
// A reply that cannot be walked is relayed unchanged.

// extraAttrs are the attributes go-nfs cannot derive from os.FileInfo.
type extraAttrs struct {
	fileid       uint64
	nlink        uint32
	uid, gid     uint32
	atime, ctime time.Time
}

// attrsOf reads the extra attributes of fi: from *syscall.Stat_t for a
// local file, from RemoteAttributes (possibly under exportFS's wrapper)
// for others. ok=false: fi carries neither.
func attrsOf(fi os.FileInfo) (extraAttrs, bool) {
	if r, ok := fi.(remoteInfo); ok {
		return remoteAttrs(r.ra), true
	}
	switch s := fi.Sys().(type) {
	case *syscall.Stat_t:
		return extraAttrs{
			fileid: s.Ino,
			nlink:  uint32(s.Nlink),
			uid:    s.Uid,
			gid:    s.Gid,
			atime:  time.Unix(s.Atim.Sec, s.Atim.Nsec),
			ctime:  time.Unix(s.Ctim.Sec, s.Ctim.Nsec),
		}, true
	case RemoteAttributes:
		return remoteAttrs(s), true
	}
	return extraAttrs{}, false
}

func remoteAttrs(ra RemoteAttributes) extraAttrs {
	uid, gid := ra.NFSOwner()
	return extraAttrs{
		fileid: ra.NFSFileID(),
		nlink:  ra.NFSLinkCount(),
		uid:    uid,
		gid:    gid,
		atime:  ra.NFSAccessTime(),
		ctime:  ra.NFSChangeTime(),
	}
}

// remoteInfo is a FileInfo of a non-disk file as exportFS hands it to
// go-nfs: Sys() is go-nfs's own *file.FileInfo (fileid, nlink, owner),
// the only non-Stat_t type go-nfs reads.
type remoteInfo struct {
	os.FileInfo
	sys *file.FileInfo
	ra  RemoteAttributes
}

func (r remoteInfo) Sys() any { return r.sys }

// forGoNFS wraps fi for go-nfs if its attributes are RemoteAttributes.
func forGoNFS(fi os.FileInfo) os.FileInfo {
	if fi == nil {
		return nil
	}
	ra, ok := fi.Sys().(RemoteAttributes)
	if !ok {
		return fi
	}
	if _, disk := fi.Sys().(*syscall.Stat_t); disk {
		return fi
	}
	a := remoteAttrs(ra)
	return remoteInfo{FileInfo: fi, ra: ra, sys: &file.FileInfo{Nlink: a.nlink, UID: a.uid, GID: a.gid, Fileid: a.fileid}}
}

// fileAttr is go-nfs's fattr3 for info with the extra attributes
// applied; every fattr3 the transport encodes itself comes from here.
func fileAttr(info os.FileInfo, p string) *nfs.FileAttribute {
	a := nfs.ToFileAttribute(info, p)
	if x, ok := attrsOf(info); ok {
		a.Fileid, a.Nlink, a.UID, a.GID = x.fileid, x.nlink, x.uid, x.gid
		a.Atime, a.Ctime = nfs.ToNFSTime(x.atime), nfs.ToNFSTime(x.ctime)
	}
	return a
}

// attrLog is the FileInfos go-nfs obtained through one lane's exportFS
// during one call, in order: single Stat/Lstat results and whole
// directory listings (from ReadDir or the listing cache).
//
// Concurrency: owned by the lane; written by the go-nfs goroutine while
// it serves the call and read by the forwarder after the reply arrived
// (the pipe orders the two).
type attrLog struct {
	infos []os.FileInfo
	used  []bool
	lists [][]os.FileInfo
	// cursor per list: READDIRPLUS entries come in listing order, so the
	// next match is usually right after the previous one.
	cursors []int
}

func (l *attrLog) reset() {
	clear(l.infos)
	clear(l.lists)
	l.infos, l.used, l.lists, l.cursors = l.infos[:0], l.used[:0], l.lists[:0], l.cursors[:0]
}

func (l *attrLog) add(fi os.FileInfo) {
	if fi != nil {
		l.infos = append(l.infos, fi)
		l.used = append(l.used, false)
	}
}

// addList logs a listing. A listing without extra attributes (judged by
// its first entry: a filesystem either provides them or not) is skipped,
// so unmatched lookups never scan it.
func (l *attrLog) addList(list []os.FileInfo) {
	if len(list) == 0 {
		return
	}
	if _, ok := attrsOf(list[0]); ok {
		l.lists = append(l.lists, list)
		l.cursors = append(l.cursors, 0)
	}
}

func (l *attrLog) empty() bool { return len(l.infos) == 0 && len(l.lists) == 0 }

// matches reports whether fi is the file go-nfs encoded as fileid, size,
// mtime, and returns its extra attributes.
func matches(fi os.FileInfo, fileid, size uint64, mtime nfs.FileTime) (extraAttrs, bool) {
	x, ok := attrsOf(fi)
	if !ok || x.fileid != fileid || uint64(fi.Size()) != size || nfs.ToNFSTime(fi.ModTime()) != mtime {
		return extraAttrs{}, false
	}
	return x, true
}

// forFattr finds the logged FileInfo a fattr3 was built from: the latest
// single result, else a listing entry.
func (l *attrLog) forFattr(fileid, size uint64, mtime nfs.FileTime) (extraAttrs, bool) {
	for i := len(l.infos) - 1; i >= 0; i-- {
		if x, ok := matches(l.infos[i], fileid, size, mtime); ok {
			return x, true
		}
	}
	for li, list := range l.lists {
		start := l.cursors[li]
		for k := range list {
			j := (start + k) % len(list)
			if x, ok := matches(list[j], fileid, size, mtime); ok {
				l.cursors[li] = j + 1
				return x, true
			}
		}
	}
	return extraAttrs{}, false
}

// forWcc finds the logged FileInfo a wcc_attr was built from: the first
// unused single result with that size and mtime (go-nfs stats the
// directories of RENAME in the order it reports them).
func (l *attrLog) forWcc(size uint64, mtime nfs.FileTime) (extraAttrs, bool) {
	for i, fi := range l.infos {
		if l.used[i] || uint64(fi.Size()) != size || nfs.ToNFSTime(fi.ModTime()) != mtime {
			continue
		}
		x, ok := attrsOf(fi)
		if !ok {
			continue
		}
		l.used[i] = true
		return x, true
	}
	return extraAttrs{}, false
}

var errShortReply = errors.New("reply shorter than its procedure's results")

// replyWalker finds the fattr3 and wcc_attr offsets of an NFSv3 reply.
type replyWalker struct {
	b      []byte
	off    int
	err    error
	fattrs []int
	wccs   []int
}

func (w *replyWalker) need(n int) bool {
	if w.err != nil {
		return false
	}
	if n < 0 || len(w.b)-w.off < n {
		w.err = errShortReply
		return false
	}
	return true
}

func (w *replyWalker) u32() uint32 {
	if !w.need(4) {
		return 0
	}
	v := binary.BigEndian.Uint32(w.b[w.off:])
	w.off += 4
	return v
}

func (w *replyWalker) skip(n int) {
	if w.need(n) {
		w.off += n
	}
}

func (w *replyWalker) opaque(max uint32) {
	n := w.u32()
	if n > max {
		if w.err == nil {
			w.err = errShortReply
		}
		return
	}
	w.skip(int(n+3) &^ 3)
}

func (w *replyWalker) fattr() {
	if w.need(fattrLen) {
		w.fattrs = append(w.fattrs, w.off)
		w.off += fattrLen
	}
}

func (w *replyWalker) postOpAttr() {
	if w.u32() != 0 {
		w.fattr()
	}
}

func (w *replyWalker) wcc() {
	if w.u32() != 0 && w.need(24) {
		w.wccs = append(w.wccs, w.off)
		w.off += 24
	}
	w.postOpAttr()
}

func (w *replyWalker) postOpFH() {
	if w.u32() != 0 {
		w.opaque(fhSize)
	}
}

// maxNameLen bounds entry names while walking READDIRPLUS.
const maxNameLen = 1 << 16

// walk records the attribute offsets of the results of proc (RFC 1813
// §3.3.1-21, both arms of each result union).
func (w *replyWalker) walk(proc uint32) error {
	// RPC reply header (RFC 5531 §9): xid, REPLY, MSG_ACCEPTED, verifier,
	// accept_stat; anything but an accepted SUCCESS carries no results.
	w.skip(4)
	if w.u32() != msgReply || w.u32() != msgAccepted {
		return w.err
	}
	w.skip(4) // verifier flavor
	w.opaque(maxAuthLen)
	if w.u32() != acceptSuccess || w.err != nil {
		return w.err
	}
	ok := w.u32() == uint32(nfs.NFSStatusOk)
	switch proc {
	case ProcGetAttr:
		if ok {
			w.fattr()
		}
	case ProcSetAttr, ProcRemove, ProcRmdir, ProcWrite, ProcCommit:
		w.wcc()
	case ProcLookup:
		if ok {
			w.opaque(fhSize)
			w.postOpAttr()
		}
		w.postOpAttr()
	case ProcAccess, ProcReadlink, ProcRead, ProcReadDir, ProcFSStat, ProcFSInfo, ProcPathConf:
		w.postOpAttr()
	case ProcCreate, ProcMkdir, ProcSymlink, ProcMknod:
		if ok {
			w.postOpFH()
			w.postOpAttr()
		}
		w.wcc()
	case ProcRename:
		w.wcc()
		w.wcc()
	case ProcLink:
		w.postOpAttr()
		w.wcc()
	case ProcReadDirPlus:
		w.postOpAttr()
		if !ok {
			break
		}
		w.skip(8) // cookieverf
		for w.err == nil && w.u32() != 0 {
			w.skip(8) // fileid
			w.opaque(maxNameLen)
			w.skip(8) // cookie
			w.postOpAttr()
			w.postOpFH()
		}
	}
	return w.err
}

// patchReply gives every fattr3 and wcc_attr of a relayed go-nfs reply
// the atime and ctime of the FileInfo it was built from (go-nfs encodes
// both as the mtime). It patches in place; a reply it cannot walk is left
// unchanged and the error returned.
func patchReply(reply []byte, proc uint32, log *attrLog) error {
	if log.empty() {
		return nil
	}
	w := replyWalker{b: reply}
	if err := w.walk(proc); err != nil {
		return err
	}
	be := binary.BigEndian
	for _, off := range w.fattrs {
		f := reply[off : off+fattrLen]
		mtime := nfs.FileTime{Seconds: be.Uint32(f[68:]), Nseconds: be.Uint32(f[72:])}
		x, ok := log.forFattr(be.Uint64(f[52:]), be.Uint64(f[20:]), mtime)
		if !ok {
			continue
		}
		putTime(f[60:], x.atime)
		putTime(f[76:], x.ctime)
	}
	for _, off := range w.wccs {
		a := reply[off : off+24]
		mtime := nfs.FileTime{Seconds: be.Uint32(a[8:]), Nseconds: be.Uint32(a[12:])}
		x, ok := log.forWcc(be.Uint64(a[0:]), mtime)
		if !ok {
			continue
		}
		putTime(a[16:], x.ctime)
	}
	return nil
}

func putTime(b []byte, t time.Time) {
	nt := nfs.ToNFSTime(t)
	binary.BigEndian.PutUint32(b, nt.Seconds)
	binary.BigEndian.PutUint32(b[4:], nt.Nseconds)
}

// Set-time modes of sattr3 (RFC 1813 §2.5.2 time_how).
const (
	dontChange      = 0
	setToServerTime = 1
	setToClientTime = 2
)

// sattrTimes is what a call's sattr3 asks for atime and mtime.
type sattrTimes struct {
	valid        bool
	atime, mtime uint32 // time_how
}

// sattrReader decodes sattr3 from call arguments.
type sattrReader struct{ xdrArgs }

// sattr decodes one sattr3 and returns its time modes.
func (x *sattrReader) sattr() sattrTimes {
	for range 3 { // mode, uid, gid
		if x.u32() != 0 {
			x.u32()
		}
	}
	if x.u32() != 0 { // size
		x.u64()
	}
	var st sattrTimes
	for _, how := range []*uint32{&st.atime, &st.mtime} {
		*how = x.u32()
		if *how == setToClientTime {
			x.u64()
		}
	}
	st.valid = !x.bad && st.atime <= setToClientTime && st.mtime <= setToClientTime
	return st
}

// callSattrTimes decodes the sattr3 time modes of a call that carries
// one (SETATTR, CREATE UNCHECKED/GUARDED, MKDIR, SYMLINK, MKNOD).
func callSattrTimes(proc uint32, args []byte) sattrTimes {
	x := sattrReader{xdrArgs{b: args}}
	x.opaque(fhSize)
	switch proc {
	case ProcSetAttr:
		return x.sattr()
	case ProcCreate:
		x.opaque(maxNameLen)
		if how := x.u32(); how == createExclusive {
			return sattrTimes{}
		}
	case ProcMkdir, ProcSymlink:
		x.opaque(maxNameLen)
	case ProcMknod:
		x.opaque(maxNameLen)
		switch x.u32() {
		case uint32(nfs.FileTypeCharacter), uint32(nfs.FileTypeBlock), uint32(nfs.FileTypeSocket), uint32(nfs.FileTypeFIFO):
		default:
			return sattrTimes{}
		}
	default:
		return sattrTimes{}
	}
	if x.bad {
		return sattrTimes{}
	}
	return x.sattr()
}

// checkSetAttrGuard handles SETATTR's guard (RFC 1813 §3.3.2: apply only
// if the object's ctime is still guard.obj_ctime). go-nfs compares the
// guard with its ctime, which is the mtime, so the server checks the real
// ctime here: a mismatch is answered NFS3ERR_NOT_SYNC; a match has its
// guard rewritten in place to the mtime, which go-nfs then checks again
// against the file as it applies the change. It reports whether it
// answered the call.
func (s *Server) checkSetAttrGuard(cc *clientConn, call *rpcCall) (bool, error) {
	x := sattrReader{xdrArgs{b: call.args}}
	fh := x.opaque(fhSize)
	x.sattr()
	guardAt := len(call.args) - len(x.b)
	if x.u32() == 0 || x.bad || len(x.b) < 8 {
		return false, nil // no guard, or malformed: go-nfs answers
	}
	_, p, err := s.table.resolve(fh)
	if err != nil {
		return false, nil
	}
	info, err := s.core.base.Lstat(basePath(p))
	if err != nil {
		return false, nil
	}
	xa, ok := attrsOf(info)
	if !ok {
		return false, nil // ctime unknown: go-nfs's mtime check stands
	}
	be := binary.BigEndian
	guard := nfs.FileTime{Seconds: be.Uint32(x.b), Nseconds: be.Uint32(x.b[4:])}
	if guard != nfs.ToNFSTime(xa.ctime) {
		b := appendAcceptedHeader(make([]byte, 0, 160), call.xid, acceptSuccess)
		b = be.AppendUint32(b, uint32(nfs.NFSStatusNotSync))
		b = appendPreOpAttr(b, info, p)
		b = appendPostOpAttr(b, info, p)
		return true, cc.send(b)
	}
	putTime(call.args[guardAt+4:], info.ModTime())
	return false, nil
}
