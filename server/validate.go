package server

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
