package client

import (
	"encoding/hex"
	"time"
)

// Handle is an NFSv3 file handle (nfs_fh3, at most 64 bytes). It is opaque;
// string(h) is a valid map key.
type Handle []byte

func (h Handle) String() string { return hex.EncodeToString(h) }

const maxHandle = 64

// FileType is ftype3 (RFC 1813 §2.3.5).
type FileType uint32

// File types.
const (
	TypeReg  FileType = 1
	TypeDir  FileType = 2
	TypeBlk  FileType = 3
	TypeChr  FileType = 4
	TypeLnk  FileType = 5
	TypeSock FileType = 6
	TypeFIFO FileType = 7
)

// Attr is fattr3 (RFC 1813 §2.3.5).
type Attr struct {
	Type                FileType
	Mode                uint32 // permission bits only (07777)
	Nlink               uint32
	UID, GID            uint32
	Size, Used          uint64
	Rdev                [2]uint32
	FSID, FileID        uint64
	Atime, Mtime, Ctime time.Time
}

// fattrSize is the XDR size of fattr3.
const fattrSize = 84

// WccAttr is wcc_attr: the attributes a server reports from before an operation.
type WccAttr struct {
	Size         uint64
	Mtime, Ctime time.Time
}

// Wcc is wcc_data (RFC 1813 §2.6, weak cache consistency): attributes before
// and after a modifying operation; either may be nil when the server did not
// send them. A client that cached Before can keep its cache by adopting After.
type Wcc struct {
	Before *WccAttr
	After  *Attr
}

// SetAttr is sattr3: nil fields are left unchanged.
type SetAttr struct {
	Mode     *uint32
	UID, GID *uint32
	Size     *uint64
	// Atime/Mtime set a client time; AtimeNow/MtimeNow ask for the server's
	// time (SET_TO_SERVER_TIME) and take precedence.
	Atime, Mtime       *time.Time
	AtimeNow, MtimeNow bool
}

// Stable is stable_how (RFC 1813 §3.3.7).
type Stable uint32

// Write stability levels.
const (
	Unstable Stable = 0
	DataSync Stable = 1
	FileSync Stable = 2
)

// Verifier is writeverf3 / cookieverf3 / createverf3.
type Verifier [8]byte

// Access bits (RFC 1813 §3.3.4).
const (
	AccessRead    = 0x01
	AccessLookup  = 0x02
	AccessModify  = 0x04
	AccessExtend  = 0x08
	AccessDelete  = 0x10
	AccessExecute = 0x20
)

func decodeTime(d *decoder) time.Time {
	s := d.u32()
	ns := d.u32()
	return time.Unix(int64(s), int64(ns))
}

func encodeTime(e *encoder, t time.Time) {
	e.u32(uint32(t.Unix()))
	e.u32(uint32(t.Nanosecond()))
}

func decodeFattr(d *decoder) *Attr {
	a := &Attr{}
	a.Type = FileType(d.u32())
	a.Mode = d.u32()
	a.Nlink = d.u32()
	a.UID = d.u32()
	a.GID = d.u32()
	a.Size = d.u64()
	a.Used = d.u64()
	a.Rdev[0] = d.u32()
	a.Rdev[1] = d.u32()
	a.FSID = d.u64()
	a.FileID = d.u64()
	a.Atime = decodeTime(d)
	a.Mtime = decodeTime(d)
	a.Ctime = decodeTime(d)
	if d.err != nil {
		return nil
	}
	return a
}

func decodePostOpAttr(d *decoder) *Attr {
	if !d.boolean() {
		return nil
	}
	return decodeFattr(d)
}

func decodeWcc(d *decoder) Wcc {
	var w Wcc
	if d.boolean() {
		w.Before = &WccAttr{Size: d.u64(), Mtime: decodeTime(d), Ctime: decodeTime(d)}
	}
	w.After = decodePostOpAttr(d)
	return w
}

func decodeHandle(d *decoder) Handle {
	p := d.opaque(maxHandle)
	if p == nil {
		return nil
	}
	return Handle(append([]byte(nil), p...))
}

func decodePostOpFH(d *decoder) Handle {
	if !d.boolean() {
		return nil
	}
	return decodeHandle(d)
}

func encodeSetAttr(e *encoder, s SetAttr) {
	opt32 := func(v *uint32) {
		e.boolean(v != nil)
		if v != nil {
			e.u32(*v)
		}
	}
	opt32(s.Mode)
	opt32(s.UID)
	opt32(s.GID)
	e.boolean(s.Size != nil)
	if s.Size != nil {
		e.u64(*s.Size)
	}
	setTime := func(t *time.Time, now bool) {
		switch {
		case now:
			e.u32(1) // SET_TO_SERVER_TIME
		case t != nil:
			e.u32(2) // SET_TO_CLIENT_TIME
			encodeTime(e, *t)
		default:
			e.u32(0) // DONT_CHANGE
		}
	}
	setTime(s.Atime, s.AtimeNow)
	setTime(s.Mtime, s.MtimeNow)
}
