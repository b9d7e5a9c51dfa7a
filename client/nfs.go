package client

import (
	"context"
	"fmt"
	"strings"
	"time"
)

func encodeDirOp(e *encoder, dir Handle, name string) {
	e.opaque(dir)
	e.str(name)
}

// Getattr returns the attributes of h (GETATTR, RFC 1813 §3.3.1).
func (c *Client) Getattr(ctx context.Context, h Handle) (*Attr, error) {
	d, st, err := c.nfsCall(ctx, procGetattr, func(e *encoder) { e.opaque(h) }, true)
	if err != nil {
		return nil, err
	}
	var a *Attr
	if st == StatusOK {
		a = decodeFattr(d)
	}
	return a, check(procGetattr, d, st)
}

// Setattr changes attributes of h (SETATTR, §3.3.2). If guardCtime is set the
// server applies the change only if h's ctime still equals it.
func (c *Client) Setattr(ctx context.Context, h Handle, sa SetAttr, guardCtime *time.Time) (Wcc, error) {
	d, st, err := c.nfsCall(ctx, procSetattr, func(e *encoder) {
		e.opaque(h)
		encodeSetAttr(e, sa)
		e.boolean(guardCtime != nil)
		if guardCtime != nil {
			encodeTime(e, *guardCtime)
		}
	}, true)
	if err != nil {
		return Wcc{}, err
	}
	w := decodeWcc(d)
	return w, check(procSetattr, d, st)
}

// LookupResult is LOOKUP3resok.
type LookupResult struct {
	Handle  Handle
	Attr    *Attr // may be nil
	DirAttr *Attr // may be nil
}

// Lookup finds name in dir (LOOKUP, §3.3.3).
func (c *Client) Lookup(ctx context.Context, dir Handle, name string) (LookupResult, error) {
	d, st, err := c.nfsCall(ctx, procLookup, func(e *encoder) { encodeDirOp(e, dir, name) }, true)
	if err != nil {
		return LookupResult{}, err
	}
	var r LookupResult
	if st == StatusOK {
		r.Handle = decodeHandle(d)
		r.Attr = decodePostOpAttr(d)
	}
	r.DirAttr = decodePostOpAttr(d)
	return r, check(procLookup, d, st)
}

// Access asks which of the Access* bits in mask the caller's credentials
// are granted on h (ACCESS, §3.3.4).
func (c *Client) Access(ctx context.Context, h Handle, mask uint32) (granted uint32, attr *Attr, err error) {
	d, st, err := c.nfsCall(ctx, procAccess, func(e *encoder) { e.opaque(h); e.u32(mask) }, true)
	if err != nil {
		return 0, nil, err
	}
	attr = decodePostOpAttr(d)
	if st == StatusOK {
		granted = d.u32()
	}
	return granted, attr, check(procAccess, d, st)
}

// Readlink returns the target of symbolic link h (READLINK, §3.3.5).
func (c *Client) Readlink(ctx context.Context, h Handle) (string, *Attr, error) {
	d, st, err := c.nfsCall(ctx, procReadlink, func(e *encoder) { e.opaque(h) }, true)
	if err != nil {
		return "", nil, err
	}
	attr := decodePostOpAttr(d)
	var target string
	if st == StatusOK {
		target = d.str(4096)
	}
	return target, attr, check(procReadlink, d, st)
}

// ReadResult is READ3resok without the data, which went into the caller's buffer.
type ReadResult struct {
	N    int
	EOF  bool
	Attr *Attr // post-op attributes, may be nil
}

// Read reads up to len(p) bytes at off into p with one READ (§3.3.6). The
// data is decoded straight from the socket into p. A short count without EOF
// is legal; ReadAt handles it.
func (c *Client) Read(ctx context.Context, h Handle, off uint64, p []byte) (ReadResult, error) {
	e, xid := c.startCall(progNFS, nfsVersion, procRead, 96)
	e.opaque(h)
	e.u64(off)
	e.u32(uint32(len(p)))
	cl, err := c.roundTrip(ctx, request{cn: c.pick(), prog: progNFS, vers: nfsVersion, proc: procRead, name: "READ", idempotent: true, sink: p}, e, xid)
	if err != nil {
		return ReadResult{}, err
	}
	d := &decoder{b: cl.body}
	st := Status(d.u32())
	r := ReadResult{Attr: decodePostOpAttr(d)}
	if st == StatusOK {
		count := d.u32()
		r.EOF = d.boolean()
		r.N = cl.sinkN
		if d.err == nil && int(count) != cl.sinkN {
			return r, fmt.Errorf("READ: %w: count %d but %d data bytes", ErrProtocol, count, cl.sinkN)
		}
		c.stats.bytesRead.Add(uint64(r.N))
	}
	return r, check(procRead, d, st)
}

// WriteResult is WRITE3res.
type WriteResult struct {
	Count     int
	Committed Stable
	Verifier  Verifier
	Wcc       Wcc
}

// Write writes p at off with one WRITE (§3.3.7). p is sent without copying.
// This is the raw procedure: the data is not tracked for Commit; use WriteAt
// for that.
func (c *Client) Write(ctx context.Context, h Handle, off uint64, p []byte, stable Stable) (WriteResult, error) {
	e, xid := c.startCall(progNFS, nfsVersion, procWrite, 96)
	e.opaque(h)
	e.u64(off)
	e.u32(uint32(len(p)))
	e.u32(uint32(stable))
	e.u32(uint32(len(p))) // opaque length; the bytes follow as cl.data
	cl, err := c.roundTrip(ctx, request{cn: c.pick(), prog: progNFS, vers: nfsVersion, proc: procWrite, name: "WRITE", idempotent: true, data: p}, e, xid)
	if err != nil {
		return WriteResult{}, err
	}
	d := &decoder{b: cl.body}
	st := Status(d.u32())
	var r WriteResult
	r.Wcc = decodeWcc(d)
	if st == StatusOK {
		r.Count = int(d.u32())
		r.Committed = Stable(d.u32())
		d.fixed(r.Verifier[:])
		if d.err == nil && (r.Count > len(p) || r.Count < 0) {
			return r, fmt.Errorf("WRITE: %w: server acknowledged %d bytes of %d", ErrProtocol, r.Count, len(p))
		}
		if d.err == nil {
			c.stats.bytesWritten.Add(uint64(r.Count))
		}
	}
	return r, check(procWrite, d, st)
}

// commitRaw is the COMMIT procedure (§3.3.21) without verifier handling.
func (c *Client) commitRaw(ctx context.Context, h Handle, off uint64, count uint32) (Verifier, Wcc, error) {
	d, st, err := c.nfsCall(ctx, procCommit, func(e *encoder) { e.opaque(h); e.u64(off); e.u32(count) }, true)
	if err != nil {
		return Verifier{}, Wcc{}, err
	}
	w := decodeWcc(d)
	var v Verifier
	if st == StatusOK {
		d.fixed(v[:])
	}
	return v, w, check(procCommit, d, st)
}

// CreateMode is createmode3 (§3.3.8).
type CreateMode uint32

// Create modes.
const (
	Unchecked CreateMode = 0 // create or truncate-per-attributes an existing file
	Guarded   CreateMode = 1 // fail with EEXIST if the name exists
	Exclusive CreateMode = 2 // create once, identified by Verifier; safe to retransmit
)

// CreateHow selects the CREATE mode. Attr is used for Unchecked and Guarded;
// Exclusive uses Verifier (a random one when zero) and the caller sets
// attributes afterwards with Setattr, as RFC 1813 requires.
type CreateHow struct {
	Mode     CreateMode
	Attr     SetAttr
	Verifier Verifier
}

// DirOpResult is the result of CREATE, MKDIR and SYMLINK.
type DirOpResult struct {
	Handle Handle
	Attr   *Attr // may be nil
	DirWcc Wcc
}

// Create creates the regular file name in dir (CREATE, §3.3.8). Unchecked and
// Guarded creates are not retransmitted after a dropped connection
// (ErrConnLost); Exclusive ones are, since the verifier makes them idempotent.
func (c *Client) Create(ctx context.Context, dir Handle, name string, how CreateHow) (DirOpResult, error) {
	if how.Mode == Exclusive && how.Verifier == (Verifier{}) {
		how.Verifier = randomVerifier()
	}
	return c.dirOp(ctx, procCreate, dir, name, how.Mode == Exclusive, func(e *encoder) {
		e.u32(uint32(how.Mode))
		if how.Mode == Exclusive {
			e.fixed(how.Verifier[:])
		} else {
			encodeSetAttr(e, how.Attr)
		}
	})
}

// Mkdir creates directory name in dir (MKDIR, §3.3.9).
func (c *Client) Mkdir(ctx context.Context, dir Handle, name string, sa SetAttr) (DirOpResult, error) {
	return c.dirOp(ctx, procMkdir, dir, name, false, func(e *encoder) { encodeSetAttr(e, sa) })
}

// Symlink creates symbolic link name in dir pointing at target (SYMLINK, §3.3.10).
func (c *Client) Symlink(ctx context.Context, dir Handle, name, target string, sa SetAttr) (DirOpResult, error) {
	return c.dirOp(ctx, procSymlink, dir, name, false, func(e *encoder) {
		encodeSetAttr(e, sa)
		e.str(target)
	})
}

func (c *Client) dirOp(ctx context.Context, proc uint32, dir Handle, name string, idempotent bool, args func(*encoder)) (DirOpResult, error) {
	d, st, err := c.nfsCall(ctx, proc, func(e *encoder) {
		encodeDirOp(e, dir, name)
		args(e)
	}, idempotent)
	if err != nil {
		return DirOpResult{}, err
	}
	var r DirOpResult
	if st == StatusOK {
		r.Handle = decodePostOpFH(d)
		r.Attr = decodePostOpAttr(d)
	}
	r.DirWcc = decodeWcc(d)
	if err := check(proc, d, st); err != nil {
		return r, err
	}
	if len(r.Handle) == 0 {
		// RFC 1813 lets the server omit the handle; find it like Linux does.
		lr, err := c.Lookup(ctx, dir, name)
		if err != nil {
			return r, fmt.Errorf("%s: %w: %w", procName(proc), errNoHandle, err)
		}
		r.Handle = lr.Handle
		if r.Attr == nil {
			r.Attr = lr.Attr
		}
	}
	return r, nil
}

// Remove removes the non-directory name from dir (REMOVE, §3.3.12).
func (c *Client) Remove(ctx context.Context, dir Handle, name string) (Wcc, error) {
	return c.wccOp(ctx, procRemove, dir, name)
}

// Rmdir removes the empty directory name from dir (RMDIR, §3.3.13).
func (c *Client) Rmdir(ctx context.Context, dir Handle, name string) (Wcc, error) {
	return c.wccOp(ctx, procRmdir, dir, name)
}

func (c *Client) wccOp(ctx context.Context, proc uint32, dir Handle, name string) (Wcc, error) {
	d, st, err := c.nfsCall(ctx, proc, func(e *encoder) { encodeDirOp(e, dir, name) }, false)
	if err != nil {
		return Wcc{}, err
	}
	w := decodeWcc(d)
	return w, check(proc, d, st)
}

// Rename moves fromDir/fromName to toDir/toName (RENAME, §3.3.14).
func (c *Client) Rename(ctx context.Context, fromDir Handle, fromName string, toDir Handle, toName string) (fromWcc, toWcc Wcc, err error) {
	d, st, err := c.nfsCall(ctx, procRename, func(e *encoder) {
		encodeDirOp(e, fromDir, fromName)
		encodeDirOp(e, toDir, toName)
	}, false)
	if err != nil {
		return Wcc{}, Wcc{}, err
	}
	fromWcc = decodeWcc(d)
	toWcc = decodeWcc(d)
	return fromWcc, toWcc, check(procRename, d, st)
}

// Link creates a hard link dir/name to h (LINK, §3.3.15). It returns h's
// post-op attributes and dir's wcc data.
func (c *Client) Link(ctx context.Context, h Handle, dir Handle, name string) (*Attr, Wcc, error) {
	d, st, err := c.nfsCall(ctx, procLink, func(e *encoder) {
		e.opaque(h)
		encodeDirOp(e, dir, name)
	}, false)
	if err != nil {
		return nil, Wcc{}, err
	}
	a := decodePostOpAttr(d)
	w := decodeWcc(d)
	return a, w, check(procLink, d, st)
}

// DirEntry is entryplus3.
type DirEntry struct {
	FileID uint64
	Name   string
	Cookie uint64
	Attr   *Attr  // may be nil
	Handle Handle // may be nil
}

// ReadDirPlusResult is one READDIRPLUS reply.
type ReadDirPlusResult struct {
	DirAttr    *Attr
	CookieVerf Verifier
	Entries    []DirEntry
	EOF        bool
}

// maxDirReply is the maxcount we ask READDIRPLUS replies to fit in. dircount
// (names and cookies only) is set to the same value: servers that count
// whole entries against dircount (go-nfs) would otherwise return few entries
// per call, and every call costs them a directory read.
const maxDirReply = 128 << 10

// ReadDirPlus reads one batch of dir's entries starting after cookie
// (READDIRPLUS, §3.3.17). Pass cookie 0 and a zero verifier to start; pass
// the last entry's Cookie and the returned CookieVerf to continue.
func (c *Client) ReadDirPlus(ctx context.Context, dir Handle, cookie uint64, verf Verifier) (ReadDirPlusResult, error) {
	d, st, err := c.nfsCall(ctx, procReaddirplus, func(e *encoder) {
		e.opaque(dir)
		e.u64(cookie)
		e.fixed(verf[:])
		e.u32(maxDirReply) // dircount
		e.u32(maxDirReply) // maxcount: the whole reply
	}, true)
	if err != nil {
		return ReadDirPlusResult{}, err
	}
	var r ReadDirPlusResult
	r.DirAttr = decodePostOpAttr(d)
	if st == StatusOK {
		d.fixed(r.CookieVerf[:])
		for d.boolean() {
			var en DirEntry
			en.FileID = d.u64()
			en.Name = d.str(4096)
			en.Cookie = d.u64()
			en.Attr = decodePostOpAttr(d)
			en.Handle = decodePostOpFH(d)
			if d.err != nil {
				break
			}
			r.Entries = append(r.Entries, en)
		}
		r.EOF = d.boolean()
	}
	return r, check(procReaddirplus, d, st)
}

// ReadDirAll lists all of dir with READDIRPLUS, following cookies and the
// cookie verifier until EOF. "." and ".." are left out. If the server says
// the cookie went stale (NFS3ERR_BAD_COOKIE, the directory changed) the
// listing restarts from the beginning, up to three times.
func (c *Client) ReadDirAll(ctx context.Context, dir Handle) ([]DirEntry, error) {
	for restarts := 0; ; restarts++ {
		var (
			out    []DirEntry
			cookie uint64
			verf   Verifier
		)
		seen := make(map[uint64]bool)
		for {
			r, err := c.ReadDirPlus(ctx, dir, cookie, verf)
			if err != nil {
				if e, ok := err.(*Error); ok && e.Status == StatusBadCookie && restarts < 3 {
					break
				}
				return nil, err
			}
			for _, en := range r.Entries {
				if en.Name != "." && en.Name != ".." {
					out = append(out, en)
				}
			}
			if r.EOF {
				return out, nil
			}
			if len(r.Entries) == 0 {
				return nil, fmt.Errorf("READDIRPLUS: %w: no entries and no EOF", ErrProtocol)
			}
			cookie, verf = r.Entries[len(r.Entries)-1].Cookie, r.CookieVerf
			if seen[cookie] {
				return nil, fmt.Errorf("READDIRPLUS: %w: cookie %d repeated", ErrProtocol, cookie)
			}
			seen[cookie] = true
		}
	}
}

// FSStat is FSSTAT3resok (§3.3.18).
type FSStat struct {
	Attr                              *Attr
	TotalBytes, FreeBytes, AvailBytes uint64
	TotalFiles, FreeFiles, AvailFiles uint64
	Invarsec                          uint32
}

// FSStat returns file system usage (FSSTAT, §3.3.18).
func (c *Client) FSStat(ctx context.Context, h Handle) (FSStat, error) {
	d, st, err := c.nfsCall(ctx, procFSStat, func(e *encoder) { e.opaque(h) }, true)
	if err != nil {
		return FSStat{}, err
	}
	var r FSStat
	r.Attr = decodePostOpAttr(d)
	if st == StatusOK {
		r.TotalBytes, r.FreeBytes, r.AvailBytes = d.u64(), d.u64(), d.u64()
		r.TotalFiles, r.FreeFiles, r.AvailFiles = d.u64(), d.u64(), d.u64()
		r.Invarsec = d.u32()
	}
	return r, check(procFSStat, d, st)
}

// FSInfo is FSINFO3resok (§3.3.19).
type FSInfo struct {
	Attr                  *Attr
	RtMax, RtPref, RtMult uint32
	WtMax, WtPref, WtMult uint32
	DtPref                uint32
	MaxFileSize           uint64
	TimeDelta             time.Duration
	Properties            uint32
}

// FSInfo returns static file system information (FSINFO, §3.3.19).
func (c *Client) FSInfo(ctx context.Context, h Handle) (FSInfo, error) {
	d, st, err := c.nfsCall(ctx, procFSInfo, func(e *encoder) { e.opaque(h) }, true)
	if err != nil {
		return FSInfo{}, err
	}
	var r FSInfo
	r.Attr = decodePostOpAttr(d)
	if st == StatusOK {
		r.RtMax, r.RtPref, r.RtMult = d.u32(), d.u32(), d.u32()
		r.WtMax, r.WtPref, r.WtMult = d.u32(), d.u32(), d.u32()
		r.DtPref = d.u32()
		r.MaxFileSize = d.u64()
		s, ns := d.u32(), d.u32()
		r.TimeDelta = time.Duration(s)*time.Second + time.Duration(ns)
		r.Properties = d.u32()
	}
	return r, check(procFSInfo, d, st)
}

// PathConf is PATHCONF3resok (§3.3.20).
type PathConf struct {
	Attr            *Attr
	LinkMax         uint32
	NameMax         uint32
	NoTrunc         bool
	ChownRestricted bool
	CaseInsensitive bool
	CasePreserving  bool
}

// PathConf returns POSIX pathconf information (PATHCONF, §3.3.20).
func (c *Client) PathConf(ctx context.Context, h Handle) (PathConf, error) {
	d, st, err := c.nfsCall(ctx, procPathconf, func(e *encoder) { e.opaque(h) }, true)
	if err != nil {
		return PathConf{}, err
	}
	var r PathConf
	r.Attr = decodePostOpAttr(d)
	if st == StatusOK {
		r.LinkMax, r.NameMax = d.u32(), d.u32()
		r.NoTrunc, r.ChownRestricted = d.boolean(), d.boolean()
		r.CaseInsensitive, r.CasePreserving = d.boolean(), d.boolean()
	}
	return r, check(procPathconf, d, st)
}

// Null pings the NFS server (NULL, §3.3.0).
func (c *Client) Null(ctx context.Context) error {
	e, xid := c.startCall(progNFS, nfsVersion, procNull, 0)
	_, err := c.roundTrip(ctx, request{cn: c.pick(), prog: progNFS, vers: nfsVersion, proc: procNull, name: "NULL", idempotent: true}, e, xid)
	return err
}

// LookupPath resolves a slash-separated path below dir with one LOOKUP per
// component; empty and "." components are skipped and symbolic links are
// not followed. An empty path returns dir itself (with GETATTR attributes).
func (c *Client) LookupPath(ctx context.Context, dir Handle, path string) (LookupResult, error) {
	r := LookupResult{Handle: dir}
	found := false
	for _, name := range strings.Split(path, "/") {
		if name == "" || name == "." {
			continue
		}
		lr, err := c.Lookup(ctx, r.Handle, name)
		if err != nil {
			return LookupResult{}, fmt.Errorf("lookup %q: %w", path, err)
		}
		r, found = lr, true
	}
	if !found {
		a, err := c.Getattr(ctx, dir)
		if err != nil {
			return LookupResult{}, err
		}
		r.Attr = a
	}
	return r, nil
}
