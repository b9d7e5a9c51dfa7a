// Package server exports a billy.Filesystem over NFSv3 (RFC 1813) and
// MOUNT v3, on one TCP port and without a portmapper.
//
// It builds on github.com/willscott/go-nfs and adds what a real export
// needs:
//
//   - Persistent file handles (RFC 1813 §2.3.3, §4.4): a handle is
//     version | id | generation | HMAC-SHA256 (per-export secret), 32
//     bytes. The id↔path table and the secret live in a bbolt file in
//     Options.StateDir, so handles survive restarts; renames re-point ids
//     (a renamed file keeps its handle), removed ids are never reused, and
//     nothing is ever evicted. Forged or tampered handles fail the MAC
//     (NFS3ERR_BADHANDLE); handles of removed files are NFS3ERR_STALE.
//     The table also records each file's identity (inode + birth time
//     from statx for a disk export, RemoteAttributes' NFSFileID for any
//     other), so a name reused outside NFS (rm + create, rm -r + mkdir)
//     makes the old handles STALE and gets a fresh id, as knfsd's
//     inode + generation does. READ, WRITE and COMMIT act on cached fds
//     whose identity is checked when they are opened, and are STALE once
//     their inode has no link left. A name LINK makes (RFC 1813 §3.3.15)
//     shares the file's handle, which lives while any of its names does;
//     links made outside NFS get their own handle per name.
//   - Confinement: every path is cleaned lexically under the root; for
//     disk exports pass osfs.New(dir, osfs.WithBoundOS()), and Remove,
//     Rename and the Change calls go through os.Root, so neither "..",
//     absolute symlinks nor symlinks pointing out leave the directory.
//   - Names (RFC 1813 §3.3, filename3 is one component): before a
//     directory procedure reaches go-nfs, which would join a name into a
//     path, the transport refuses as fs/nfsd does: '/' ACCES, NUL INVAL,
//     over 255 bytes NAMETOOLONG, "." / ".." / "" EXIST, ACCES or PERM
//     (LOOKUP "." is the directory itself); a directory handle naming a
//     non-directory (a symlink would be followed) is NOTDIR.
//   - Error mapping: go-nfs maps errors with os.IsNotExist and friends
//     (which do not unwrap) and reports most failures as IO or ACCES, and
//     any failing Lstat of LOOKUP as NOENT. Each in-process go-nfs
//     connection ("lane") has its own filesystem view that records the
//     errno of a failing change, and of a failing Lstat, Stat, ReadDir or
//     Readlink in any procedure; the transport rewrites the reply to the
//     precise status (NOTEMPTY, EXIST, NOTDIR, ISDIR, ROFS, NOSPC, ...;
//     EIO is IO, not NOENT, so an exported filesystem whose upstream is
//     down does not make clients cache negative entries; ETIMEDOUT and
//     EAGAIN are IO, not JUKEBOX, which hard mounts retry forever; ACCESS
//     of a file that cannot be stat'ed is that error, where go-nfs
//     granted it). A listing with an entry that cannot be stat'ed fails
//     whole (IO): leaving the entry out would claim the name does not
//     exist.
//   - Transport: the server owns TCP. It enforces the allow-list at
//     accept, parses record marking (RFC 5531 §11), answers MOUNT EXPORT,
//     and answers READ, WRITE, COMMIT and FSINFO itself: READ reads
//     straight into a pooled reply buffer sent with one write; WRITE
//     honours stable_how (UNSTABLE is answered UNSTABLE and made durable
//     by COMMIT; the write verifier changes with every server instance;
//     Options.Async is knfsd's "async"). It also answers what go-nfs gets
//     wrong: LINK (go-nfs misdecodes its arguments), CREATE EXCLUSIVE
//     (refused by go-nfs; here the verifier is kept in atime/mtime), and
//     READDIR/READDIRPLUS (go-nfs charges 512 bytes per entry, so a
//     64 KiB reply held ~127 entries; see onReadDir).
//     Up to 16 calls of one connection are in flight. Every other call is
//     relayed to go-nfs over in-process net.Pipe connections and its reply
//     relayed back (replies are matched by xid, so order does not matter).
//     A malformed record closes only its connection.
//   - Attributes (RFC 1813 §2.6 fattr3 and wcc_attr): every reply carries
//     the file's real fileid, nlink, owner, atime, mtime and ctime, from
//     *syscall.Stat_t for a disk file and from RemoteAttributes (see
//     identity.go) for any other (go-nfs alone copies the mtime into atime
//     and ctime and hashes the path into the fileid, which changes on
//     rename: the Linux client's ESTALE). go-nfs is given FileInfos whose
//     Sys() is its own *file.FileInfo built from RemoteAttributes; the
//     FileInfos it obtained are logged per call, and its reply is walked
//     per procedure to put each one's atime and ctime into the fattr3s
//     (matched by fileid, size and mtime) and wcc_attrs (size and mtime,
//     in call order) built from it (attrs.go). SETATTR sets only the
//     times the client asked for (go-nfs would move the atime of an
//     mtime-only change to the old mtime), and its guard is checked
//     against the real ctime. LINK goes through os.Root or a HardLinker,
//     FSSTAT through a UsageReporter when the export implements one.
//   - Directory listings (RFC 1813 §3.3.16-17) are kept per cookie
//     verifier (a small LRU), so the pages of a walk do not re-read the
//     directory. Each reply is filled with entries by their exact XDR
//     size up to count / maxcount, and their fileid, name and cookie up
//     to dircount (Linux sends maxcount/8), never over either; entries
//     carry the same fattr3 as GETATTR and the handle LOOKUP gives.
//     Cookies are positions + 1 ("." is 1, ".." 2), so none is 0; a
//     cookie under a verifier neither current nor remembered is
//     BAD_COOKIE. The handles of a READDIRPLUS page's new names are made in one
//     bbolt transaction (handleTable.assignAll), committed before the
//     reply is sent. The table is opened NoSync (synced at Close): a
//     handle handed out just before an operating-system crash (not a
//     process crash) can come back STALE after it.
//   - Open-file reuse: READ/WRITE/COMMIT use an LRU (golang-lru) of open
//     files keyed by file id, bounded by Options.MaxOpenFiles (a hard
//     bound: a miss waits when every cached file is in use), closed on
//     eviction (once no request uses them), on remove or rename, and at
//     Close. FIFOs and devices are never opened. An open that fails with
//     EMFILE/ENFILE (a cache miss, CREATE, a directory listing) closes an
//     idle cached file and tries again (openRetrying).
//
// Known limits: a panic inside go-nfs would stop the process (it runs
// the relayed procedures); hard links made outside NFS get one handle per
// name (the table learns of links only through LINK), so removing the
// name a handle was issued for makes it STALE although the file has
// another name (knfsd would keep it); after a LINKed file's primary name
// is removed outside NFS, READ/WRITE/COMMIT missing the open-file cache
// answer STALE until a procedure that resolves (GETATTR, ACCESS, ...)
// re-points the handle (see handleTable); fattr3 used is the size
// (go-nfs's figure), not the allocated bytes.
//
// Lock order: Server.mu → (nothing); handleTable.mu → bbolt;
// openFiles.missMu → openFile.mu. handleTable.mu is released before
// openFiles is told of stale ids; openFiles.missMu may be held across a
// bbolt read. No lock is held while writing to a network connection
// except clientConn.wmu, which only serialises writes.
package server
