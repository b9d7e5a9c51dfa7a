package server

import (
	"errors"
	"io/fs"
	"os"
	"syscall"

	nfs "github.com/willscott/go-nfs"
)

// statusOf is the one errno → nfsstat3 table (RFC 1813 §2.6) of this
// package. It unwraps %w chains, which go-nfs's os.IsNotExist checks do not.
func statusOf(err error) nfs.NFSStatus {
	if err == nil {
		return nfs.NFSStatusOk
	}
	var st *nfs.NFSStatusError
	if errors.As(err, &st) {
		return st.NFSStatus
	}
	switch {
	case errors.Is(err, errBadHandle):
		return nfs.NFSStatusBadHandle
	case errors.Is(err, errStaleHandle):
		return nfs.NFSStatusStale
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EPERM:
			return nfs.NFSStatusPerm
		case syscall.ENOENT:
			return nfs.NFSStatusNoEnt
		case syscall.ENXIO:
			return nfs.NFSStatusNXIO
		case syscall.EACCES:
			return nfs.NFSStatusAccess
		case syscall.EEXIST:
			return nfs.NFSStatusExist
		case syscall.EXDEV:
			return nfs.NFSStatusXDev
		case syscall.ENODEV:
			return nfs.NFSStatusNoDev
		case syscall.ENOTDIR, syscall.ELOOP:
			return nfs.NFSStatusNotDir
		case syscall.EISDIR:
			return nfs.NFSStatusIsDir
		case syscall.EINVAL:
			return nfs.NFSStatusInval
		case syscall.EFBIG:
			return nfs.NFSStatusFBig
		case syscall.ENOSPC:
			return nfs.NFSStatusNoSPC
		case syscall.EROFS:
			return nfs.NFSStatusROFS
		case syscall.EMLINK:
			return nfs.NFSStatusMlink
		case syscall.ENAMETOOLONG:
			return nfs.NFSStatusNameTooLong
		case syscall.ENOTEMPTY:
			return nfs.NFSStatusNotEmpty
		case syscall.EDQUOT:
			return nfs.NFSStatusDQuot
		case syscall.ESTALE:
			return nfs.NFSStatusStale
		case syscall.ENOTSUP:
			return nfs.NFSStatusNotSupp
		}
		return nfs.NFSStatusIO
	}
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nfs.NFSStatusNoEnt
	case errors.Is(err, fs.ErrExist):
		return nfs.NFSStatusExist
	case errors.Is(err, fs.ErrPermission):
		return nfs.NFSStatusAccess
	case errors.Is(err, fs.ErrInvalid):
		return nfs.NFSStatusInval
	}
	return nfs.NFSStatusIO
}

// pathErr builds the error shape go-nfs understands at the billy boundary:
// a *fs.PathError holding a syscall.Errno (os.IsNotExist and friends look
// only one PathError deep).
func pathErr(op, p string, errno syscall.Errno) error {
	return &os.PathError{Op: op, Path: p, Err: errno}
}
