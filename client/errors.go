package client

import (
	"fmt"
	"syscall"
)

// Status is an NFSv3 status code (nfsstat3, RFC 1813 §2.6).
type Status uint32

// NFSv3 status codes (RFC 1813 §2.6).
const (
	StatusOK          Status = 0
	StatusPerm        Status = 1
	StatusNoEnt       Status = 2
	StatusIO          Status = 5
	StatusNXIO        Status = 6
	StatusAcces       Status = 13
	StatusExist       Status = 17
	StatusXDev        Status = 18
	StatusNoDev       Status = 19
	StatusNotDir      Status = 20
	StatusIsDir       Status = 21
	StatusInval       Status = 22
	StatusFBig        Status = 27
	StatusNoSpc       Status = 28
	StatusROFS        Status = 30
	StatusMLink       Status = 31
	StatusNameTooLong Status = 63
	StatusNotEmpty    Status = 66
	StatusDQuot       Status = 69
	StatusStale       Status = 70
	StatusRemote      Status = 71
	StatusBadHandle   Status = 10001
	StatusNotSync     Status = 10002
	StatusBadCookie   Status = 10003
	StatusNotSupp     Status = 10004
	StatusTooSmall    Status = 10005
	StatusServerFault Status = 10006
	StatusBadType     Status = 10007
	StatusJukebox     Status = 10008
)

// statusTable is the one NFS3ERR ↔ errno table of the project. The errno
// choices follow Linux's nfs3 client (fs/nfs/nfs3proc.c → nfs_stat_to_errno)
// where it uses a kernel-internal errno, a user-visible neighbour is chosen.
var statusTable = []struct {
	status Status
	name   string
	errno  syscall.Errno
}{
	{StatusPerm, "NFS3ERR_PERM", syscall.EPERM},
	{StatusNoEnt, "NFS3ERR_NOENT", syscall.ENOENT},
	{StatusIO, "NFS3ERR_IO", syscall.EIO},
	{StatusNXIO, "NFS3ERR_NXIO", syscall.ENXIO},
	{StatusAcces, "NFS3ERR_ACCES", syscall.EACCES},
	{StatusExist, "NFS3ERR_EXIST", syscall.EEXIST},
	{StatusXDev, "NFS3ERR_XDEV", syscall.EXDEV},
	{StatusNoDev, "NFS3ERR_NODEV", syscall.ENODEV},
	{StatusNotDir, "NFS3ERR_NOTDIR", syscall.ENOTDIR},
	{StatusIsDir, "NFS3ERR_ISDIR", syscall.EISDIR},
	{StatusInval, "NFS3ERR_INVAL", syscall.EINVAL},
	{StatusFBig, "NFS3ERR_FBIG", syscall.EFBIG},
	{StatusNoSpc, "NFS3ERR_NOSPC", syscall.ENOSPC},
	{StatusROFS, "NFS3ERR_ROFS", syscall.EROFS},
	{StatusMLink, "NFS3ERR_MLINK", syscall.EMLINK},
	{StatusNameTooLong, "NFS3ERR_NAMETOOLONG", syscall.ENAMETOOLONG},
	{StatusNotEmpty, "NFS3ERR_NOTEMPTY", syscall.ENOTEMPTY},
	{StatusDQuot, "NFS3ERR_DQUOT", syscall.EDQUOT},
	{StatusStale, "NFS3ERR_STALE", syscall.ESTALE},
	{StatusRemote, "NFS3ERR_REMOTE", syscall.EREMOTE},
	{StatusBadHandle, "NFS3ERR_BADHANDLE", syscall.EBADF},
	{StatusNotSync, "NFS3ERR_NOT_SYNC", syscall.EIO},
	{StatusBadCookie, "NFS3ERR_BAD_COOKIE", syscall.ESTALE},
	{StatusNotSupp, "NFS3ERR_NOTSUPP", syscall.ENOTSUP},
	{StatusTooSmall, "NFS3ERR_TOOSMALL", syscall.EINVAL},
	{StatusServerFault, "NFS3ERR_SERVERFAULT", syscall.EREMOTEIO},
	{StatusBadType, "NFS3ERR_BADTYPE", syscall.EINVAL},
	{StatusJukebox, "NFS3ERR_JUKEBOX", syscall.EAGAIN},
}

// Errno maps s to a syscall.Errno; unknown codes map to EIO, OK to 0.
func (s Status) Errno() syscall.Errno {
	if s == StatusOK {
		return 0
	}
	for _, e := range statusTable {
		if e.status == s {
			return e.errno
		}
	}
	return syscall.EIO
}

func (s Status) String() string {
	if s == StatusOK {
		return "NFS3_OK"
	}
	for _, e := range statusTable {
		if e.status == s {
			return e.name
		}
	}
	return fmt.Sprintf("NFS3ERR_%d", uint32(s))
}

// StatusFromErrno is the reverse of Status.Errno, for servers: the first
// table row with that errno wins; unknown errnos map to NFS3ERR_IO.
func StatusFromErrno(errno syscall.Errno) Status {
	if errno == 0 {
		return StatusOK
	}
	for _, e := range statusTable {
		if e.errno == errno {
			return e.status
		}
	}
	return StatusIO
}

// Error is a non-OK NFS or MOUNT status returned by the server for one
// procedure. errors.Is(err, syscall.ENOENT) and friends work through Unwrap.
type Error struct {
	Proc   string // e.g. "LOOKUP"
	Status Status
}

func (e *Error) Error() string { return "nfs: " + e.Proc + ": " + e.Status.String() }

// Unwrap returns the syscall.Errno of the status.
func (e *Error) Unwrap() error { return e.Status.Errno() }
