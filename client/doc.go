// Package client is an NFSv3 (RFC 1813) and MOUNT v3 (RFC 1813 Appendix I)
// client: ONC RPC (RFC 5531) over TCP, pipelined, with its own XDR (RFC 4506)
// encoding. It does no caching; billyfs and the proxy build that on top.
//
// # Transport
//
// Each TCP connection carries many calls at once, matched to replies by xid;
// Options.Connections opens several connections (Linux's nconnect) and
// spreads calls round-robin. Replies use record marking (RFC 5531 §11) and
// may arrive in several fragments, which are reassembled. One reader
// goroutine per connection decodes replies: READ data is read from the socket
// straight into the caller's buffer (no intermediate copy or allocation), and
// WRITE data is sent from the caller's buffer with a vectored write. Replies
// are bounds-checked: a reply with more data than asked, a short or garbage
// record fails that call with ErrProtocol and never panics (see the fuzz
// targets).
//
// Every call has a timeout (Options.Timeout, *TimeoutError unwrapping to
// ETIMEDOUT) and honours its context; a cancelled READ never writes into the
// caller's buffer after returning.
//
// # Reconnection and retransmission policy
//
// When a connection drops, its reader fails all calls in flight and redials
// with backoff (10 ms … 1 s). Calls then go as follows:
//   - idempotent procedures (GETATTR, SETATTR, LOOKUP, ACCESS, READLINK,
//     READ, WRITE, READDIRPLUS, FSSTAT, FSINFO, PATHCONF, COMMIT and
//     exclusive CREATE, whose verifier makes a repeat harmless) are
//     retransmitted on the new connection under the same xid;
//   - a call that had not been written yet is sent on the new connection;
//   - a non-idempotent call (unchecked/guarded CREATE, MKDIR, SYMLINK,
//     REMOVE, RMDIR, RENAME, LINK) that had been written fails with
//     ErrConnLost. We do not assume the server keeps a duplicate request
//     cache, so a blind retransmission could, e.g., turn a successful REMOVE
//     into NFS3ERR_NOENT or remove a file created meanwhile; the caller knows
//     what it wanted and can LOOKUP to find out what happened.
//
// # Writes, COMMIT and the write verifier
//
// WriteAt sends UNSTABLE WRITEs (RFC 1813 §3.3.7) concurrently. The server may
// keep such data in volatile memory until a COMMIT (§3.3.21); each WRITE and
// COMMIT reply carries the server's write verifier, which changes when the
// server restarts. The client therefore remembers every acknowledged UNSTABLE
// write until a COMMIT covering it succeeds, together with the verifier it
// was acknowledged under. Commit compares: writes acknowledged under the
// COMMIT's verifier are stable; the others were lost by a restart and are
// written again (FILE_SYNC) before Commit returns — the behaviour of Linux's
// nfs_commit_release_pages / nfs_writeback_done. The bytes to resend come
// either from a copy the client keeps (WriteAt) or from the caller
// (WriteAtFrom with an io.ReaderAt, e.g. a cache file, so large writes are not
// held twice in memory). Writes a server answers FILE_SYNC (stock go-nfs
// always does) need nothing kept.
//
// # Errors
//
// A non-OK NFS status is a *Error{Proc, Status}; errors.Is(err,
// syscall.ENOENT) works through Unwrap, from the one NFS3ERR ↔ errno table in
// errors.go (Status.Errno, StatusFromErrno). NFS3ERR_JUKEBOX is retried
// (fresh xid, 100 ms doubling to 2 s) until Options.Timeout, then returned.
//
// # Statistics
//
// Stats reports per-procedure call counts, errors and summed latency, bytes
// read, written and resent, retransmissions and reconnections.
//
// # How it is tested
//
// Against real servers on 127.0.0.1: this project's server (in-process,
// including a restart on the same port and state directory in the middle of
// a WriteAt), stock go-nfs, and nfs-ganesha (internal/ganeshatest, including
// a restart between WRITE and COMMIT). Faults are injected by a volatile
// write-cache proxy in front of a real server (it acknowledges UNSTABLE
// writes, loses them in a "crash" and changes its verifier) and by scripted
// in-memory servers (1-byte fragments, oversized READ data, a connection
// that drops after a call was sent). FuzzReply feeds arbitrary replies to
// every decoder; its corpus in testdata/fuzz runs in every go test.
// BenchmarkSequential and BenchmarkSequentialOurs compare 256 MiB sequential
// reads and writes with go-nfs-client against the same servers.
package client
