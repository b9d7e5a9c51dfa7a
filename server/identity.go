package server

import (
	"os"
	"syscall"
	"time"
)

// RemoteAttributes is what the server reads from os.FileInfo.Sys() of a
// file that does not live on a local disk (billyfs over an upstream NFS
// export, the in-memory filesystem). A *syscall.Stat_t is read directly;
// any other Sys() value that implements this interface supplies the
// attributes go-nfs cannot see (it copies ModTime into atime and ctime
// and hashes the path into the fileid, RFC 1813 §2.6 fattr3).
//
// NFSFileID must be stable for the life of the file: the same across
// renames and different from every other live file of the export (the
// Linux client checks it: "NFS: server ... error: fileid changed" →
// ESTALE). The server also stores it with the file's handle, so a handle
// stops resolving when the name is reused by another file.
//
// NFSAccessTime and NFSChangeTime are reported as fattr3 atime and ctime
// and as the ctime of wcc_attr (pre-operation attributes); SETATTR guards
// are checked against NFSChangeTime. Clients validate their caches with
// the ctime, so it should move with every change of data or metadata.
// The FileInfo's ModTime is the mtime, Size the size (attrs.go).
//
// Concurrency: implementations are read-only values; the server calls
// them from many goroutines.
type RemoteAttributes interface {
	NFSFileID() uint64
	NFSLinkCount() uint32
	NFSOwner() (uid, gid uint32)
	NFSAccessTime() time.Time
	NFSChangeTime() time.Time
}

// HardLinker is implemented by exported filesystems that can make hard
// links (RFC 1813 §3.3.15 LINK). Paths are relative to the export root,
// as for every billy call; the semantics are os.Link's: link is a new name
// for the existing file target. Errors should carry a syscall.Errno
// (wrapped in *fs.PathError) so the reply gets the precise status. A disk
// export needs no implementation: the server links through os.Root.
type HardLinker interface {
	Link(target, link string) error
}

// UsageReporter is implemented by exported filesystems whose capacity is
// not that of a local directory (a re-exported upstream reports the
// upstream's FSSTAT, RFC 1813 §3.3.18: tbytes, fbytes, abytes, tfiles,
// ffiles, afiles, in that order). Without it the server reports statfs(2)
// of the exported directory, or fixed figures for memory. The results are
// plain integers so an implementation need not import this package.
type UsageReporter interface {
	NFSUsage() (totalBytes, freeBytes, availBytes, totalFiles, freeFiles, availFiles uint64, err error)
}

// fileIdentity is the fileid the server reports and stores with a handle:
// the inode number for local files, NFSFileID for RemoteAttributes;
// ok=false when the FileInfo carries neither (go-nfs then hashes the path).
func fileIdentity(fi os.FileInfo) (id uint64, ok bool) {
	switch s := fi.Sys().(type) {
	case *syscall.Stat_t:
		return s.Ino, true
	case RemoteAttributes:
		return s.NFSFileID(), true
	}
	return 0, false
}
