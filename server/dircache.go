package server

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"

	billy "github.com/go-git/go-billy/v5"
	lru "github.com/hashicorp/golang-lru/v2"
	nfs "github.com/willscott/go-nfs"
)

// dirSnapshot is one directory listing, kept so the later pages of a
// READDIR/READDIRPLUS walk (RFC 1813 §3.3.16-17: cookie + cookieverf) are
// served from the listing the first page came from instead of reading
// and sorting the whole directory again for every page (go-nfs's default,
// quadratic in the directory size).
type dirSnapshot struct {
	path string
	ents []fs.FileInfo
}

// dirCacheSize bounds the listings kept; a walk whose listing was evicted
// just reads the directory again (same contents give the same verifier).
const dirCacheSize = 64

func newDirCache() *lru.Cache[uint64, dirSnapshot] {
	c, _ := lru.New[uint64, dirSnapshot](dirCacheSize) // only fails for size <= 0
	return c
}

var _ nfs.CachingHandler = (*laneHandler)(nil)

// VerifierFor names a listing by a hash of its path and names, so an
// unchanged directory keeps its cookie verifier, and remembers it.
func (h *laneHandler) VerifierFor(p string, contents []fs.FileInfo) uint64 {
	return h.srv.remember(p, contents)
}

// DataForVerifier returns the remembered listing, or nil to re-read.
func (h *laneHandler) DataForVerifier(p string, v uint64) []fs.FileInfo {
	return h.srv.remembered(p, v)
}

// remember keeps the listing of p under its verifier, which it returns.
func (s *Server) remember(p string, contents []fs.FileInfo) uint64 {
	sum := sha256.New()
	sum.Write([]byte(p))
	for _, c := range contents {
		sum.Write([]byte{0})
		sum.Write([]byte(c.Name()))
	}
	v := binary.BigEndian.Uint64(sum.Sum(nil))
	if v == 0 {
		v = 1 // 0 means "no verifier" to clients
	}
	s.dirs.Add(v, dirSnapshot{path: p, ents: contents})
	return v
}

// remembered is the listing of p kept under v, or nil.
func (s *Server) remembered(p string, v uint64) []fs.FileInfo {
	if d, ok := s.dirs.Get(v); ok && d.path == p {
		return d.ents
	}
	return nil
}

// Sizes of the XDR pieces of READDIR3resok / READDIRPLUS3resok (RFC 1813
// §3.3.16-17), which maxcount and count bound "including all XDR
// overhead".
const (
	postOpAttrLen = 4 + fattrLen
	// status, dir_attributes, cookieverf, and the end of the list
	// (value_follows FALSE) with eof.
	dirReplyFixed = 4 + postOpAttrLen + 8 + 4 + 4
	// value_follows, fileid, name length, cookie (the name's padded bytes
	// are added per entry).
	entryFixed = 4 + 8 + 4 + 8
	// name_attributes and name_handle (post_op_fh3 with a handle).
	entryPlusExtra = postOpAttrLen + 4 + 4 + handleLen
)

func xdrPad(n int) int { return (n + 3) &^ 3 }

// onReadDir answers READDIR and READDIRPLUS (RFC 1813 §3.3.16-17) from
// the listing cache. go-nfs charges a fixed 512 bytes per entry against
// maxcount, so a Linux client asking for 64 KiB got about 127 entries
// per reply (and a listing of N names took N/127 round trips); here the
// reply is filled with the exact XDR size of each entry up to count
// (READDIR) or maxcount (READDIRPLUS), and the entries' directory
// information (fileid, name, cookie: what the RFC says dircount counts)
// up to dircount. The Linux client sends dircount = maxcount/8
// (nfs3xdr.c encode_readdirplus3args), which caps a 64 KiB READDIRPLUS at
// about 8 KiB of names (~290 names of 10 bytes); knfsd ignores dircount,
// but the RFC asks for it to be honoured.
//
// Cookies: "." is position 0, ".." 1, the i-th name of the sorted
// listing i+2; the cookie of position j is j+1, so no entry has cookie 0
// (which means "from the start") and a walk resumes right after the
// entry whose cookie it sends. The verifier names the listing (a hash of
// its names); a cookie with a verifier that is neither the listing's nor
// remembered is NFS3ERR_BAD_COOKIE, as go-nfs answered.
//
// Entry attributes and handles: the fattr3 of each entry is built from
// the listing's FileInfo like every other fattr3 (fileAttr: real fileid,
// nlink, owner, times); handles come from the handle table (assignAll:
// the ids of known names are checked against the files' identities, and
// the names of the reply that have none get them in one bbolt
// transaction, committed before the reply is sent). An entry whose handle
// cannot be made is sent without handle and attributes, which the RFC
// allows and knfsd does (post_op_fh3 FALSE).
func (s *Server) onReadDir(cc *clientConn, call *rpcCall) error {
	plus := call.proc == ProcReadDirPlus
	x := xdrArgs{b: call.args}
	fh := x.opaque(fhSize)
	cookie := x.u64()
	var verf [8]byte
	if len(x.b) >= 8 {
		copy(verf[:], x.b)
		x.b = x.b[8:]
	} else {
		x.bad = true
	}
	count := x.u32()
	dircount := count
	if plus {
		count = x.u32() // maxcount
	}
	if x.bad {
		return cc.send(garbage(call.xid))
	}
	// knfsd caps replies at its maximum payload too: a client asking for
	// 4 GiB must not make the server build the whole directory in memory.
	count, dircount = min(count, MaxTransfer), min(dircount, MaxTransfer)
	const errZeros = 4 // dir_attributes: none
	_, p, err := s.table.resolve(fh)
	if err != nil {
		return cc.send(errReply(call.xid, statusOf(err), errZeros))
	}
	dirInfo, err := s.core.base.Lstat(basePath(p))
	switch {
	case err != nil:
		return cc.send(errReply(call.xid, fileStatus(err), errZeros))
	case !dirInfo.IsDir():
		return cc.send(errReply(call.xid, nfs.NFSStatusNotDir, errZeros))
	}
	v := binary.BigEndian.Uint64(verf[:])
	var ents []fs.FileInfo
	if cookie != 0 && v != 0 {
		ents = s.remembered(p, v)
	}
	if ents == nil {
		list := &exportFS{exportCore: s.core}
		if ents, err = list.listDir(basePath(p)); err != nil {
			return cc.send(errReply(call.xid, statusOf(err), errZeros))
		}
		slices.SortFunc(ents, func(a, b fs.FileInfo) int { return strings.Compare(a.Name(), b.Name()) })
		nv := s.remember(p, ents)
		if cookie != 0 && v != 0 && nv != v {
			return cc.send(errReply(call.xid, nfs.NFSStatusBadCookie, errZeros))
		}
		v = nv
	}
	total := uint64(len(ents)) + 2
	if cookie > total {
		return cc.send(errReply(call.xid, nfs.NFSStatusBadCookie, errZeros))
	}

	be := binary.BigEndian
	size := dirReplyFixed
	dirBytes := 0
	// The reply is at most the RPC header and count bytes.
	bp := s.bufs.get(24 + int(count))
	defer s.bufs.put(bp)
	b := appendAcceptedHeader((*bp)[:0], call.xid, acceptSuccess)
	b = be.AppendUint32(b, uint32(nfs.NFSStatusOk))
	b = appendPostOpAttr(b, dirInfo, p)
	b = be.AppendUint64(b, v)
	// First the entries that fit, then their handles (READDIRPLUS: one
	// table transaction for the names that have none yet), then the
	// reply. An entry's size does not depend on its handle (all are
	// handleLen), so the handles are not needed to decide what fits.
	type dirEntry struct {
		pos         uint64
		name, child string
		info        fs.FileInfo
	}
	var page []dirEntry
	eof := true
	for pos := cookie; pos < total; pos++ {
		var name, child string
		var info fs.FileInfo
		switch pos {
		case 0:
			name, child, info = ".", p, dirInfo
		case 1:
			name, child = "..", path.Dir("/" + p)[1:]
			if p == "" {
				child = ""
			}
		default:
			info = ents[pos-2]
			name = info.Name()
			child = rel(p + "/" + name)
		}
		dirLen := 8 + 4 + xdrPad(len(name)) + 8
		need := entryFixed + xdrPad(len(name))
		if plus {
			need += entryPlusExtra
		}
		if size+need > int(count) || (plus && dirBytes+dirLen > int(dircount)) {
			eof = false
			break
		}
		if pos == 1 {
			if fi, err := s.core.base.Lstat(basePath(child)); err == nil {
				info = fi
			}
		}
		page = append(page, dirEntry{pos, name, child, info})
		size += need
		dirBytes += dirLen
	}
	var handles [][]byte
	if plus {
		// "." has the directory's handle; every other entry with
		// attributes gets one from the table.
		var want []string
		var at []int
		for k, d := range page {
			if d.pos != 0 && d.info != nil {
				want = append(want, d.child)
				at = append(at, k)
			}
		}
		hs, errs := s.table.assignAll(want)
		handles = make([][]byte, len(page))
		for j, k := range at {
			if errs[j] != nil {
				s.log.Warn("READDIRPLUS entry without handle", "path", want[j], "err", errs[j])
			}
			handles[k] = hs[j]
		}
		for k, d := range page {
			if d.pos == 0 {
				handles[k] = fh
			}
		}
	}
	n := len(page)
	for k, d := range page {
		var fileid uint64
		if d.info != nil {
			fileid = fileAttr(d.info, d.child).Fileid
		}
		b = be.AppendUint32(b, 1) // value_follows
		b = be.AppendUint64(b, fileid)
		b = appendXDRString(b, d.name)
		b = be.AppendUint64(b, d.pos+1)
		if plus {
			if h := handles[k]; h == nil {
				b = be.AppendUint32(b, 0) // name_attributes: none
				b = be.AppendUint32(b, 0) // name_handle: none
			} else {
				b = appendPostOpAttr(b, d.info, d.child)
				b = be.AppendUint32(b, 1)
				b = appendXDROpaque(b, h)
			}
		}
	}
	if n == 0 && !eof {
		// Not even one entry fits (RFC 1813: NFS3ERR_TOOSMALL).
		return cc.send(errReply(call.xid, nfs.NFSStatusTooSmall, errZeros))
	}
	b = be.AppendUint32(b, 0) // no more entries in this reply
	if eof {
		b = be.AppendUint32(b, 1)
	} else {
		b = be.AppendUint32(b, 0)
	}
	return cc.send(b)
}

func appendXDRString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, xdrPad(len(s))-len(s))...)
}

func appendXDROpaque(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
	b = append(b, v...)
	return append(b, make([]byte, xdrPad(len(v))-len(v))...)
}

// listDir lists the directory at the base path p for READDIR and
// READDIRPLUS. A listing is names (getdents) followed by one lstat per
// name; osfs fails the whole listing when a name vanishes between the
// two (os.DirEntry.Info answers ENOENT), and go-nfs then answers the
// directory NOTDIR: a client listing a directory while another renames or
// removes in it got NFS3ERR_NOTDIR for a perfectly good directory. Here a
// name that vanished in between is left out, as if the listing had been
// taken a moment later (READDIR is not atomic, RFC 1813 §3.3.16).
//
// A disk export lists through os.Root (the directory is opened inside the
// root, and each name is lstat'ed relative to it: one fstatat each);
// other filesystems are asked again while a name keeps vanishing.
//
// Opening the directory may fail for want of descriptors: the listing is
// retried through the open-file cache (retryFD), which gives back an idle
// one.
func (e *exportFS) listDir(p string) ([]os.FileInfo, error) {
	var ents []os.FileInfo
	if e.osRoot != nil {
		_, err := e.retryFD(func() (billy.File, error) {
			var err error
			ents, err = listRootDir(e.osRoot, p)
			return nil, err
		})
		return ents, err
	}
	var err error
	for range 8 {
		_, err = e.retryFD(func() (billy.File, error) {
			var err error
			ents, err = e.base.ReadDir(p)
			return nil, err
		})
		if err == nil || !errors.Is(err, fs.ErrNotExist) {
			return ents, err
		}
		// A name vanished during the listing, or the directory itself
		// is gone: only the first is worth another try.
		if fi, serr := e.base.Lstat(p); serr != nil || !fi.IsDir() {
			return nil, err
		}
	}
	return nil, err
}

func listRootDir(root *os.Root, p string) ([]os.FileInfo, error) {
	dir, err := root.OpenRoot(p)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	f, err := dir.Open(".")
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", p, err)
	}
	ents := make([]os.FileInfo, 0, len(names))
	for _, name := range names {
		fi, err := dir.Lstat(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // renamed or removed since getdents
		case err != nil:
			return nil, err
		}
		ents = append(ents, fi)
	}
	return ents, nil
}
