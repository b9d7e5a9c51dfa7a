package server

import (
	"bytes"

	nfs "github.com/willscott/go-nfs"
)

// go-nfs decodes arguments with readers that allocate whatever length an
// opaque claims before reading it, so one call claiming a 4 GiB name
// would exhaust memory. Every call relayed to go-nfs is first checked
// against its RFC 1813 argument layout (§3.3, §5.2): each variable-length
// field must fit its protocol limit and the bytes actually received.

const (
	maxName    = 255  // go-nfs PathNameMax; NFS3 names
	maxPath    = 4096 // symlink target (nfspath3)
	maxDirpath = 1024 // MNTPATHLEN
)

func (x *xdrArgs) diropargs() {
	x.opaque(fhSize)
	x.opaque(maxName)
}

func (x *xdrArgs) sattr3() {
	for range 3 { // mode, uid, gid
		if x.u32() != 0 {
			x.u32()
		}
	}
	if x.u32() != 0 { // size
		x.u64()
	}
	for range 2 { // atime, mtime: DONT_CHANGE, SERVER_TIME or CLIENT_TIME + nfstime3
		if x.u32() == 2 {
			x.u64()
		}
	}
}

// validArgs reports whether args decode as the arguments of prog/proc.
func validArgs(prog, proc uint32, args []byte) bool {
	x := xdrArgs{b: args}
	switch prog {
	case progMount:
		switch proc {
		case MountProcMnt, MountProcUmnt:
			x.opaque(maxDirpath)
		}
		return !x.bad
	case progNFS:
	default:
		return true
	}
	switch proc {
	case ProcNull:
	case ProcGetAttr, ProcReadlink, ProcFSStat, ProcFSInfo, ProcPathConf:
		x.opaque(fhSize)
	case ProcSetAttr:
		x.opaque(fhSize)
		x.sattr3()
		if x.u32() != 0 { // guard ctime
			x.u64()
		}
	case ProcLookup, ProcRemove, ProcRmdir:
		x.diropargs()
	case ProcAccess:
		x.opaque(fhSize)
		x.u32()
	case ProcCreate:
		x.diropargs()
		switch x.u32() {
		case 0, 1:
			x.sattr3()
		case createExclusive:
			x.u64()
		default:
			return false
		}
	case ProcMkdir:
		x.diropargs()
		x.sattr3()
	case ProcSymlink:
		x.diropargs()
		x.sattr3()
		x.opaque(maxPath)
	case ProcMknod:
		x.diropargs()
		switch x.u32() {
		case 3, 4: // NF3CHR, NF3BLK: sattr3 + specdata3
			x.sattr3()
			x.u64()
		case 6, 7: // NF3SOCK, NF3FIFO
			x.sattr3()
		}
	case ProcRename:
		x.diropargs()
		x.diropargs()
	case ProcLink:
		x.opaque(fhSize)
		x.diropargs()
	case ProcReadDir:
		x.opaque(fhSize)
		x.u64()
		x.u64()
		x.u32()
	case ProcReadDirPlus:
		x.opaque(fhSize)
		x.u64()
		x.u64()
		x.u32()
		x.u32()
	case ProcRead, ProcWrite, ProcCommit:
		// answered here, with their own checks
	default:
		return false
	}
	return !x.bad
}

// dirOp describes where the names (diropargs3) of a directory procedure
// sit in its arguments and how long its failure reply body is
// (post_op_attr / wcc_data, all "no attributes": 4 bytes each).
type dirOp struct {
	leadFH   bool // LINK: the file's handle comes before the diropargs
	names    int  // RENAME has two diropargs
	errZeros int
	creates  bool // the (second) name is created
}

var dirOps = map[uint32]dirOp{
	ProcLookup:  {names: 1, errZeros: 4},
	ProcCreate:  {names: 1, errZeros: 8, creates: true},
	ProcMkdir:   {names: 1, errZeros: 8, creates: true},
	ProcSymlink: {names: 1, errZeros: 8, creates: true},
	ProcMknod:   {names: 1, errZeros: 8, creates: true},
	ProcRemove:  {names: 1, errZeros: 8},
	ProcRmdir:   {names: 1, errZeros: 8},
	ProcRename:  {names: 2, errZeros: 16},
	ProcLink:    {leadFH: true, names: 1, errZeros: 12, creates: true},
}

// nameStatus is the refusal knfsd gives for a name component it will not
// pass to the filesystem (RFC 1813 §3.3: filename3 is one component), or
// NFS3_OK. go-nfs would join such a name into a path: "sub/x" would reach
// into sub/ and "../x" would be cleaned to the parent.
func nameStatus(proc uint32, name []byte) nfs.NFSStatus {
	switch {
	case len(name) > maxName:
		return nfs.NFSStatusNameTooLong
	case bytes.IndexByte(name, 0) >= 0:
		return nfs.NFSStatusInval
	case bytes.IndexByte(name, '/') >= 0:
		return nfs.NFSStatusAccess // knfsd: lookup_one_len refuses '/' with EACCES
	}
	dot := string(name) == "." || string(name) == ".."
	if len(name) != 0 && !dot {
		return nfs.NFSStatusOk
	}
	// Empty and dot names, as fs/nfsd/vfs.c answers them.
	switch proc {
	case ProcLookup:
		if dot {
			return nfs.NFSStatusOk // the directory itself / its parent (§3.3.3)
		}
		return nfs.NFSStatusAccess
	case ProcRemove, ProcRmdir:
		return nfs.NFSStatusAccess // nfsd_unlink
	case ProcRename:
		return nfs.NFSStatusPerm // nfsd_rename
	case ProcSymlink:
		if !dot {
			return nfs.NFSStatusNoEnt // nfsd_symlink
		}
	}
	if dot {
		return nfs.NFSStatusExist // nfsd_create, nfsd_link
	}
	return nfs.NFSStatusPerm
}

// dirRefusal checks the names and directories of a directory procedure
// before it is answered: it returns the failure reply to send, or nil.
// A name may be longer than maxName here (it is answered NAMETOOLONG, as
// filename3 is unbounded in the protocol) but never longer than the bytes
// actually received, so nothing is allocated for a claimed length. A
// directory handle that names something other than a directory (a
// symlink, above all, which go-nfs would follow) is answered NOTDIR.
func (s *Server) dirRefusal(call *rpcCall) []byte {
	op, ok := dirOps[call.proc]
	if !ok || (s.opts.ReadOnly && call.proc != ProcLookup) {
		return nil // a read-only export answers every change ROFS first
	}
	x := xdrArgs{b: call.args}
	if op.leadFH {
		x.opaque(fhSize)
	}
	st := nfs.NFSStatusOk
	var dirs [][]byte
	for range op.names {
		fh := x.opaque(fhSize)
		name := x.opaque(uint32(len(x.b)))
		if x.bad {
			return nil // validArgs answers GARBAGE_ARGS
		}
		dirs = append(dirs, fh)
		if st == nfs.NFSStatusOk {
			st = nameStatus(call.proc, name)
		}
	}
	if st == nfs.NFSStatusOk && call.proc != ProcLookup {
		for _, fh := range dirs {
			if _, p, err := s.table.resolve(fh); err == nil {
				if info, err := s.core.base.Lstat(basePath(p)); err == nil && !info.IsDir() {
					st = nfs.NFSStatusNotDir
					break
				}
			}
		}
	}
	if st == nfs.NFSStatusOk {
		return nil
	}
	return errReply(call.xid, st, op.errZeros)
}
