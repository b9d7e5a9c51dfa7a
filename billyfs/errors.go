package billyfs

import (
	"context"
	"errors"
	"io/fs"
	"syscall"

	"github.com/go-git/go-billy/v5"
	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/fscache"
)

// errnoOf reduces an error from client/fscache/writeback to the syscall.Errno
// a caller of the billy interface can test: go-nfs (and most code) checks
// os.IsNotExist, which looks only one level into a *fs.PathError.
func errnoOf(err error) syscall.Errno {
	var errno syscall.Errno
	switch {
	case errors.As(err, &errno):
		return errno
	case errors.Is(err, client.ErrClosed), errors.Is(err, fscache.ErrClosed), errors.Is(err, errFSClosed):
		return syscall.EBADF
	case errors.Is(err, context.DeadlineExceeded):
		return syscall.ETIMEDOUT
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}

var errFSClosed = errors.New("billyfs: filesystem closed")

// pathErr is the one way an error leaves billyfs: a *fs.PathError wrapping a
// syscall.Errno, except billy.ErrCrossedBoundary, which go-billy's callers
// compare by identity.
func (s *state) pathErr(op, name string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, billy.ErrCrossedBoundary) {
		return billy.ErrCrossedBoundary
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		if _, ok := pe.Err.(syscall.Errno); ok {
			return pe
		}
	}
	errno := errnoOf(err)
	if s.serveStale() && isConnErr(err) && !errors.Is(err, context.Canceled) {
		// Under ServeStale an unreachable upstream is one clear error,
		// whatever the call was waiting for when the bound ran out.
		s.noteErr(err)
		errno = syscall.EIO
		s.log.Debug("billyfs: upstream unreachable", "op", op, "path", name, "err", err)
	}
	if errno != syscall.ENOENT && errno != syscall.EEXIST {
		s.log.Debug("billyfs: operation failed", "op", op, "path", name, "err", err)
	}
	return &fs.PathError{Op: op, Path: name, Err: errno}
}
