package billyfs

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/nfscache/nfscache/client"
)

// RemoteAttr is what every os.FileInfo of billyfs returns from Sys(): the
// upstream's fattr3 (RFC 1813 §2.3.5) as last fetched. Its methods give a
// server that re-exports billyfs the identity the upstream assigned: the
// fileid (stable across renames, which the Linux client checks — "fileid
// changed" → ESTALE), the link count, the owner and the access and change
// times. They match the server package's RemoteAttributes interface,
// which billyfs does not import (the package DAG points the other way).
//
// Concurrency: a RemoteAttr is a value copied out of billyfs's caches;
// reading it from many goroutines is safe.
type RemoteAttr struct {
	client.Attr
}

// NFSFileID is the upstream's fileid.
func (a *RemoteAttr) NFSFileID() uint64 { return a.FileID }

// NFSLinkCount is the upstream's nlink.
func (a *RemoteAttr) NFSLinkCount() uint32 { return a.Nlink }

// NFSOwner is the upstream's uid and gid.
func (a *RemoteAttr) NFSOwner() (uid, gid uint32) { return a.UID, a.GID }

// NFSAccessTime is the upstream's atime.
func (a *RemoteAttr) NFSAccessTime() time.Time { return a.Atime }

// NFSChangeTime is the upstream's ctime.
func (a *RemoteAttr) NFSChangeTime() time.Time { return a.Ctime }

// Link makes link a new name for the existing file target (LINK, RFC 1813
// §3.3.15), with os.Link semantics: a final symbolic link in target is not
// followed, link must not exist (EEXIST) and its parent must (ENOENT), a
// directory cannot be linked (EPERM). Paths are relative to this FS's root.
// The name, attribute and inode caches learn the new name and the target's
// post-operation attributes (its link count and ctime changed: adopting
// them keeps our own LINK from looking like a remote change at the next
// open). Errors are *fs.PathError with a syscall.Errno.
func (f *FS) Link(target, link string) error {
	s := f.s
	relTarget, err := cleanRel(target)
	if err != nil {
		return err
	}
	relLink, err := cleanRel(link)
	if err != nil {
		return err
	}
	ctx := s.ctx
	if s.isClosed() {
		return s.pathErr("link", link, errFSClosed)
	}
	src, err := f.resolve(ctx, relTarget, false)
	if err != nil {
		return s.pathErr("link", target, err)
	}
	if src.attr.Type == client.TypeDir {
		return s.pathErr("link", target, syscall.EPERM)
	}
	dir, name, err := f.resolveParent(ctx, relLink, false)
	if err != nil {
		return s.pathErr("link", link, err)
	}
	after, dirWcc, err := s.clnt.Link(ctx, src.fh, dir, name)
	s.dirUpdated(dir, dirWcc)
	if err != nil {
		// EEXIST changed nothing: the existing entry stays valid. Dropping
		// it makes the next lookup learn the upstream's own handle for
		// that name, which for a name we linked ourselves may differ from
		// ours (a server whose handles name paths): a second inode for
		// the same file. Other errors leave the name unknown.
		if errors.Is(err, syscall.EEXIST) {
			s.dropNegative(dir, name)
		} else {
			s.dropChild(dir, name)
			s.dropAttr(src.fh)
		}
		return s.pathErr("link", link, err)
	}
	s.putChild(dir, name, src.fh)
	if after == nil {
		if a, err := s.clnt.Getattr(ctx, src.fh); err == nil {
			after = a
		}
	}
	if ino := s.liveInode(src.fh); ino != nil {
		<-ino.ready
		ino.refreshAttr(ctx, after)
	} else {
		s.putAttr(src.fh, after)
	}
	return nil
}

// NFSUsage reports the upstream's FSSTAT (RFC 1813 §3.3.18): total, free
// and available bytes, then total, free and available file slots. A server
// re-exporting billyfs answers its clients' FSSTAT with it.
func (f *FS) NFSUsage() (totalBytes, freeBytes, availBytes, totalFiles, freeFiles, availFiles uint64, err error) {
	st, err := f.s.fsstat(f.s.ctx)
	if err != nil {
		return 0, 0, 0, 0, 0, 0, f.s.pathErr("fsstat", f.base, err)
	}
	return st.TotalBytes, st.FreeBytes, st.AvailBytes, st.TotalFiles, st.FreeFiles, st.AvailFiles, nil
}

func (s *state) fsstat(ctx context.Context) (client.FSStat, error) {
	if s.isClosed() {
		return client.FSStat{}, errFSClosed
	}
	var st client.FSStat
	err := s.revalidate(ctx, func(ctx context.Context) error {
		got, err := s.clnt.FSStat(ctx, s.clnt.Root())
		if err != nil {
			return err
		}
		st = got
		if s.serveStale() {
			s.mu.Lock()
			s.usage = &usageEntry{st: got, at: time.Now()}
			s.mu.Unlock()
		}
		return nil
	}, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.usage == nil || !s.staleOK(s.usage.at) {
			return false
		}
		st = s.usage.st
		return true
	})
	if err != nil {
		return client.FSStat{}, fmt.Errorf("billyfs: FSSTAT: %w", err)
	}
	return st, nil
}
