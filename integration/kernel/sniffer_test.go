//go:build linux

package kernel

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// rpcSniffer is a TCP relay between the guest and the server that decodes
// the ONC RPC records passing through (RFC 5531 record marking), so the
// test can say exactly what the kernel sent and what the server answered:
// calls per program and procedure, the reply status of each, and every
// READDIR/READDIRPLUS with its cookie, verifier and outcome. The server
// restarts behind it: when the server closes a connection the relay
// closes the guest's side too, as a real server restart would.
//
// Concurrency: safe for concurrent use; mu guards everything below it.
type rpcSniffer struct {
	l      net.Listener
	target func() string // the server's current address

	mu      sync.Mutex
	pending map[uint32]callInfo
	counts  map[string]int // "NFS3 READDIRPLUS NFS3ERR_BAD_COOKIE" → n
	readdir []string       // the latest READDIR(PLUS) exchanges, bounded
	failed  []string       // every reply other than OK/NOENT, in order, bounded
	orphans int            // replies whose call the relay did not see
	conns   []net.Conn
	// full, when tracing (NFSCACHE_KERNEL_TRACE), is every NFS exchange
	// with handles, names and the attributes in the reply. tracing is set
	// before the relay starts and never changes.
	tracing bool
	full    []string
}

type callInfo struct {
	prog, proc uint32
	detail     string
	args       string // tracing: handles, names, offsets
	at         time.Time
}

const (
	progNFS   = 100003
	progMount = 100005
	maxTrace  = 5000
)

var nfsProcNames = []string{"NULL", "GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READLINK", "READ", "WRITE",
	"CREATE", "MKDIR", "SYMLINK", "MKNOD", "REMOVE", "RMDIR", "RENAME", "LINK", "READDIR", "READDIRPLUS",
	"FSSTAT", "FSINFO", "PATHCONF", "COMMIT"}

var mountProcNames = []string{"NULL", "MNT", "DUMP", "UMNT", "UMNTALL", "EXPORT"}

var nfsStatNames = map[uint32]string{0: "OK", 1: "PERM", 2: "NOENT", 5: "IO", 6: "NXIO", 13: "ACCES", 17: "EXIST",
	18: "XDEV", 19: "NODEV", 20: "NOTDIR", 21: "ISDIR", 22: "INVAL", 27: "FBIG", 28: "NOSPC", 30: "ROFS",
	31: "MLINK", 63: "NAMETOOLONG", 66: "NOTEMPTY", 69: "DQUOT", 70: "STALE", 71: "REMOTE", 10001: "BADHANDLE",
	10002: "NOT_SYNC", 10003: "BAD_COOKIE", 10004: "NOTSUPP", 10005: "TOOSMALL", 10006: "SERVERFAULT",
	10007: "BADTYPE", 10008: "JUKEBOX"}

var acceptStatNames = []string{"SUCCESS", "PROG_UNAVAIL", "PROG_MISMATCH", "PROC_UNAVAIL", "GARBAGE_ARGS", "SYSTEM_ERR"}

// newRPCSniffer relays to target(); with tracing it records every NFS
// exchange in full (takeTrace).
func newRPCSniffer(target func() string, tracing bool) (*rpcSniffer, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &rpcSniffer{l: l, target: target, pending: map[uint32]callInfo{}, counts: map[string]int{}, tracing: tracing}
	go s.accept()
	return s, nil
}

func (s *rpcSniffer) addr() string { return s.l.Addr().String() }

func (s *rpcSniffer) close() {
	s.l.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

func (s *rpcSniffer) accept() {
	for {
		down, err := s.l.Accept()
		if err != nil {
			return
		}
		go s.connect(down)
	}
}

// connect dials the server for one connection of the guest. While the
// server restarts it holds the kernel's new connection and keeps dialing:
// refusing it would make the kernel back off for seconds.
func (s *rpcSniffer) connect(down net.Conn) {
	var up net.Conn
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; {
		up, err = net.Dial("tcp", s.target())
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		down.Close()
		return
	}
	s.mu.Lock()
	s.conns = append(s.conns, down, up)
	s.mu.Unlock()
	go s.relay(down, up, true)
	s.relay(up, down, false)
}

// relay copies RPC records from src to dst, decoding each; either side
// ending closes both. A call is decoded before it is forwarded, so its
// reply can never arrive first.
func (s *rpcSniffer) relay(src, dst net.Conn, calls bool) {
	defer src.Close()
	defer dst.Close()
	var record, wire []byte
	hdr := make([]byte, 4)
	for {
		if _, err := io.ReadFull(src, hdr); err != nil {
			return
		}
		mark := binary.BigEndian.Uint32(hdr)
		frag := make([]byte, mark&0x7fffffff)
		if _, err := io.ReadFull(src, frag); err != nil {
			return
		}
		wire = append(append(wire, hdr...), frag...)
		record = append(record, frag...)
		if mark&0x80000000 == 0 {
			continue
		}
		if calls {
			s.onCall(record)
		}
		if _, err := dst.Write(wire); err != nil {
			return
		}
		if !calls {
			s.onReply(record)
		}
		record, wire = nil, nil
	}
}

// xdrReader decodes XDR; any read past the end sets err.
type xdrReader struct {
	b   []byte
	err error
}

func (x *xdrReader) u32() uint32 {
	if len(x.b) < 4 {
		x.err = io.ErrUnexpectedEOF
		x.b = nil
		return 0
	}
	v := binary.BigEndian.Uint32(x.b)
	x.b = x.b[4:]
	return v
}

func (x *xdrReader) u64() uint64 { return uint64(x.u32())<<32 | uint64(x.u32()) }

func (x *xdrReader) opaque() []byte {
	n := x.u32()
	p := (n + 3) &^ 3
	if uint32(len(x.b)) < p {
		x.err = io.ErrUnexpectedEOF
		x.b = nil
		return nil
	}
	v := x.b[:n]
	x.b = x.b[p:]
	return v
}

func (x *xdrReader) skip(n int) {
	if len(x.b) < n {
		x.err = io.ErrUnexpectedEOF
		x.b = nil
		return
	}
	x.b = x.b[n:]
}

func procName(prog, proc uint32) string {
	switch {
	case prog == progNFS && int(proc) < len(nfsProcNames):
		return "NFS3 " + nfsProcNames[proc]
	case prog == progMount && int(proc) < len(mountProcNames):
		return "MOUNT3 " + mountProcNames[proc]
	}
	return fmt.Sprintf("prog %d proc %d", prog, proc)
}

func (s *rpcSniffer) onCall(rec []byte) {
	x := &xdrReader{b: rec}
	xid := x.u32()
	if x.u32() != 0 { // not a call
		return
	}
	x.u32() // rpcvers
	prog, vers, proc := x.u32(), x.u32(), x.u32()
	x.u32()
	x.opaque() // credential
	x.u32()
	x.opaque() // verifier
	if x.err != nil {
		return
	}
	info := callInfo{prog: prog, proc: proc}
	if prog == progNFS && vers != 3 {
		info.detail = fmt.Sprintf("version %d", vers)
	}
	if s.tracing && prog == progNFS {
		info.args = traceArgs(proc, &xdrReader{b: x.b})
		info.at = time.Now()
	}
	if prog == progNFS && (proc == 16 || proc == 17) {
		x.opaque() // dir handle
		cookie := x.u64()
		verf := x.u64()
		count := x.u32()
		info.detail = fmt.Sprintf("cookie=%d verf=%016x count=%d", cookie, verf, count)
		if proc == 17 {
			info.detail += fmt.Sprintf(" maxcount=%d", x.u32())
		}
	}
	s.mu.Lock()
	s.pending[xid] = info
	s.mu.Unlock()
}

func (s *rpcSniffer) onReply(rec []byte) {
	x := &xdrReader{b: rec}
	xid := x.u32()
	if x.u32() != 1 { // not a reply
		return
	}
	s.mu.Lock()
	info, ok := s.pending[xid]
	delete(s.pending, xid)
	s.mu.Unlock()
	if !ok {
		s.mu.Lock()
		s.orphans++
		s.mu.Unlock()
		return
	}
	name := procName(info.prog, info.proc)
	var outcome string
	if x.u32() != 0 {
		outcome = "MSG_DENIED"
	} else {
		x.u32()
		x.opaque() // verifier
		as := x.u32()
		switch {
		case x.err != nil:
			outcome = "undecodable"
		case as != 0 && int(as) < len(acceptStatNames):
			outcome = acceptStatNames[as]
		case as != 0:
			outcome = fmt.Sprintf("accept_stat %d", as)
		case info.prog == progNFS && info.proc != 0:
			st := x.u32()
			outcome = "NFS3ERR_" + nfsStatNames[st]
			if st == 0 {
				outcome = "NFS3_OK"
			} else if nfsStatNames[st] == "" {
				outcome = fmt.Sprintf("nfsstat %d", st)
			}
		default:
			outcome = "SUCCESS"
		}
	}
	var res string
	if s.tracing && info.prog == progNFS && outcome == "NFS3_OK" {
		res = traceResult(info.proc, &xdrReader{b: x.b})
	}
	if info.prog == progNFS && (info.proc == 16 || info.proc == 17) && outcome == "NFS3_OK" {
		outcome += " " + readdirSummary(x, info.proc == 17)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tracing && info.prog == progNFS {
		s.full = append(s.full, fmt.Sprintf("%s %s %s → %s %s (%v)", info.at.Format("15:04:05.000"), name, info.args, outcome, res,
			time.Since(info.at).Round(100*time.Microsecond)))
	}
	key := name + " → " + strings.Fields(outcome)[0]
	if info.detail != "" && !strings.HasPrefix(info.detail, "cookie=") {
		key += " (" + info.detail + ")"
	}
	s.counts[key]++
	if o := strings.Fields(outcome)[0]; o != "NFS3_OK" && o != "SUCCESS" && o != "NFS3ERR_NOENT" && len(s.failed) < maxTrace {
		s.failed = append(s.failed, fmt.Sprintf("xid %08x %s %s → %s", xid, name, info.detail, outcome))
	}
	if info.proc == 16 || info.proc == 17 {
		if info.prog == progNFS {
			s.readdir = append(s.readdir, fmt.Sprintf("%s %s → %s", name, info.detail, outcome))
			if len(s.readdir) > maxTrace {
				s.readdir = s.readdir[len(s.readdir)-maxTrace:]
			}
		}
	}
}

// readdirSummary decodes the entries of a READDIR(PLUS) reply: how many,
// the first and last cookie, the verifier, and eof.
func readdirSummary(x *xdrReader, plus bool) string {
	if x.u32() != 0 { // dir post_op_attr
		x.skip(84)
	}
	verf := x.u64()
	n := 0
	var first, last uint64
	for x.err == nil && x.u32() != 0 {
		x.u64() // fileid
		x.opaque()
		c := x.u64()
		if n == 0 {
			first = c
		}
		last = c
		n++
		if plus {
			if x.u32() != 0 {
				x.skip(84)
			}
			if x.u32() != 0 {
				x.opaque()
			}
		}
	}
	eof := x.u32()
	if x.err != nil {
		return fmt.Sprintf("(undecodable after %d entries: %v)", n, x.err)
	}
	return fmt.Sprintf("entries=%d cookies=%d..%d verf=%016x eof=%d", n, first, last, verf, eof)
}

// aroundBadCookies returns the exchanges within a few lines of each
// NFS3ERR_BAD_COOKIE, and of each listing restart from cookie 0 next to
// one, at most limit lines.
func aroundBadCookies(trace []string, limit int) []string {
	keep := make([]bool, len(trace))
	for i, l := range trace {
		if strings.Contains(l, "BAD_COOKIE") {
			for j := max(0, i-3); j <= min(len(trace)-1, i+3); j++ {
				keep[j] = true
			}
		}
	}
	var out []string
	for i, l := range trace {
		if keep[i] {
			if len(out) > 0 && !keep[i-1] {
				out = append(out, "...")
			}
			out = append(out, l)
		}
		if len(out) >= limit {
			out = append(out, "... (more)")
			break
		}
	}
	return out
}

// report returns the call counts ("proc → status: n"), sorted, the
// latest READDIR exchanges and the failed calls; all reset for the next boot.
func (s *rpcSniffer) report() (counts, readdir, failed []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, n := range s.counts {
		counts = append(counts, fmt.Sprintf("%s: %d", k, n))
	}
	sort.Strings(counts)
	if s.orphans > 0 {
		counts = append(counts, fmt.Sprintf("replies to calls the relay did not see: %d", s.orphans))
	}
	readdir, failed = s.readdir, s.failed
	s.counts = map[string]int{}
	s.readdir, s.failed, s.orphans = nil, nil, 0
	return counts, readdir, failed
}

// takeTrace returns the full trace so far and starts a new one.
func (s *rpcSniffer) takeTrace() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.full
	s.full = nil
	return t
}

// fhID names a file handle in a trace: a short hash of its bytes.
func fhID(fh []byte) string {
	sum := sha256.Sum256(fh)
	return "fh:" + hex.EncodeToString(sum[:4])
}

// traceArgs decodes the arguments of an NFSv3 call for the trace.
func traceArgs(proc uint32, x *xdrReader) string {
	fh := fhID(x.opaque())
	var out string
	switch proc {
	case 3, 8, 9, 10, 11, 12, 13: // LOOKUP CREATE MKDIR SYMLINK MKNOD REMOVE RMDIR: diropargs
		out = fmt.Sprintf("%s/%q", fh, x.opaque())
	case 14: // RENAME
		from := x.opaque()
		to := fhID(x.opaque())
		out = fmt.Sprintf("%s/%q → %s/%q", fh, from, to, x.opaque())
	case 15: // LINK
		dir := fhID(x.opaque())
		out = fmt.Sprintf("%s as %s/%q", fh, dir, x.opaque())
	case 6, 7, 21: // READ WRITE COMMIT
		off := x.u64()
		out = fmt.Sprintf("%s off=%d count=%d", fh, off, x.u32())
		if proc == 7 {
			out += fmt.Sprintf(" stable=%d", x.u32())
		}
	default:
		out = fh
	}
	if x.err != nil {
		out += " (truncated)"
	}
	return out
}

// fattrString decodes a fattr3 (RFC 1813 §2.6) for the trace.
func fattrString(x *xdrReader) string {
	typ, mode, nlink := x.u32(), x.u32(), x.u32()
	x.u32()
	x.u32() // uid gid
	size := x.u64()
	x.u64()
	x.u64()
	x.u64() // used rdev fsid
	fileid := x.u64()
	t := func() string { s := x.u32(); n := x.u32(); return fmt.Sprintf("%d.%09d", s, n) }
	atime, mtime, ctime := t(), t(), t()
	if x.err != nil {
		return "(attr truncated)"
	}
	return fmt.Sprintf("{type=%d mode=%o nlink=%d size=%d fileid=%d atime=%s mtime=%s ctime=%s}", typ, mode, nlink, size, fileid, atime, mtime, ctime)
}

func postOpAttr(x *xdrReader) string {
	if x.u32() == 0 {
		return "-"
	}
	return fattrString(x)
}

func wccString(x *xdrReader) string {
	if x.u32() != 0 {
		x.skip(24) // wcc_attr: size, mtime, ctime
	}
	return postOpAttr(x)
}

// traceResult decodes the interesting part of an NFS3_OK reply (the
// status is already consumed).
func traceResult(proc uint32, x *xdrReader) string {
	switch proc {
	case 1: // GETATTR
		return fattrString(x)
	case 2, 21: // SETATTR COMMIT
		return "obj " + wccString(x)
	case 3: // LOOKUP
		fh := fhID(x.opaque())
		return fh + " " + postOpAttr(x)
	case 7: // WRITE
		return "obj " + wccString(x) + fmt.Sprintf(" count=%d committed=%d", x.u32(), x.u32())
	case 8, 9, 10: // CREATE MKDIR SYMLINK
		fh := "-"
		if x.u32() != 0 {
			fh = fhID(x.opaque())
		}
		return fh + " " + postOpAttr(x)
	case 12, 13: // REMOVE RMDIR
		return "dir " + wccString(x)
	case 15: // LINK
		return "obj " + postOpAttr(x)
	case 6: // READ
		return "obj " + postOpAttr(x)
	}
	return ""
}

// unimplemented returns the counted outcomes that mean the server lacks a
// program or procedure the kernel called.
func unimplemented(counts []string) []string {
	var bad []string
	for _, c := range counts {
		for _, w := range []string{"PROG_UNAVAIL", "PROC_UNAVAIL", "PROG_MISMATCH", "NFS3ERR_NOTSUPP"} {
			if strings.Contains(c, w) {
				bad = append(bad, c)
			}
		}
	}
	return bad
}

// xdrBuilder assembles XDR for the relay's own test.
type xdrBuilder []byte

func (b *xdrBuilder) u32(v uint32) *xdrBuilder { *b = binary.BigEndian.AppendUint32(*b, v); return b }
func (b *xdrBuilder) u64(v uint64) *xdrBuilder { *b = binary.BigEndian.AppendUint64(*b, v); return b }
func (b *xdrBuilder) opaque(p []byte) *xdrBuilder {
	b.u32(uint32(len(p)))
	*b = append(*b, p...)
	for len(*b)%4 != 0 {
		*b = append(*b, 0)
	}
	return b
}

func TestSnifferDecodesReaddir(t *testing.T) {
	s := &rpcSniffer{pending: map[uint32]callInfo{}, counts: map[string]int{}}
	call := func(xid, proc uint32, args func(*xdrBuilder)) {
		b := &xdrBuilder{}
		b.u32(xid).u32(0).u32(2).u32(progNFS).u32(3).u32(proc)
		b.u32(1).opaque(make([]byte, 20)) // AUTH_UNIX credential
		b.u32(0).opaque(nil)              // verifier
		args(b)
		s.onCall(*b)
	}
	reply := func(xid uint32, res func(*xdrBuilder)) {
		b := &xdrBuilder{}
		b.u32(xid).u32(1).u32(0).u32(0).opaque(nil).u32(0)
		res(b)
		s.onReply(*b)
	}
	call(7, 17, func(b *xdrBuilder) { b.opaque([]byte("fh")).u64(126).u64(0xabc).u32(65536).u32(65536) })
	reply(7, func(b *xdrBuilder) {
		b.u32(0) // NFS3_OK
		b.u32(1) // dir attributes follow: a fattr3 of 84 bytes
		*b = append(*b, make([]byte, 84)...)
		b.u64(0xabc) // cookie verifier
		for i := uint64(127); i <= 128; i++ {
			b.u32(1).u64(i).opaque([]byte("name")).u64(i)
			b.u32(0) // no attributes
			b.u32(1).opaque([]byte("handle"))
		}
		b.u32(0).u32(1) // no more entries, eof
	})
	call(8, 16, func(b *xdrBuilder) { b.opaque([]byte("fh")).u64(253).u64(0xabc).u32(4096) })
	reply(8, func(b *xdrBuilder) { b.u32(10003) })
	call(9, 11, func(b *xdrBuilder) {})
	b := &xdrBuilder{}
	b.u32(9).u32(1).u32(0).u32(0).opaque(nil).u32(3) // PROC_UNAVAIL
	s.onReply(*b)
	reply(99, func(b *xdrBuilder) { b.u32(0) }) // a reply without a call

	counts, readdir, failed := s.report()
	want := []string{
		"NFS3 MKNOD → PROC_UNAVAIL: 1",
		"NFS3 READDIR → NFS3ERR_BAD_COOKIE: 1",
		"NFS3 READDIRPLUS → NFS3_OK: 1",
		"replies to calls the relay did not see: 1",
	}
	if strings.Join(counts, "|") != strings.Join(want, "|") {
		t.Errorf("counts\n got %q\nwant %q", counts, want)
	}
	if len(readdir) != 2 ||
		readdir[0] != "NFS3 READDIRPLUS cookie=126 verf=0000000000000abc count=65536 maxcount=65536 → NFS3_OK entries=2 cookies=127..128 verf=0000000000000abc eof=1" ||
		readdir[1] != "NFS3 READDIR cookie=253 verf=0000000000000abc count=4096 → NFS3ERR_BAD_COOKIE" {
		t.Errorf("readdir trace:\n%s", strings.Join(readdir, "\n"))
	}
	if len(failed) != 2 {
		t.Errorf("failed calls: %q", failed)
	}
	if bad := unimplemented(counts); len(bad) != 1 || !strings.Contains(bad[0], "PROC_UNAVAIL") {
		t.Errorf("unimplemented: %q", bad)
	}
	if got := aroundBadCookies(readdir, 10); len(got) != 2 {
		t.Errorf("aroundBadCookies: %q", got)
	}
}

func TestSnifferTracesCallsAndAttributes(t *testing.T) {
	s := &rpcSniffer{pending: map[uint32]callInfo{}, counts: map[string]int{}, tracing: true}
	b := &xdrBuilder{}
	b.u32(5).u32(0).u32(2).u32(progNFS).u32(3).u32(3) // LOOKUP
	b.u32(0).opaque(nil).u32(0).opaque(nil)           // AUTH_NONE, no verifier
	b.opaque([]byte("dirhandle")).opaque([]byte("final"))
	s.onCall(*b)
	r := &xdrBuilder{}
	r.u32(5).u32(1).u32(0).u32(0).opaque(nil).u32(0)
	r.u32(0).opaque([]byte("filehandle"))    // NFS3_OK, object handle
	r.u32(1).u32(1).u32(0o644).u32(2)        // attributes follow: type, mode, nlink
	r.u32(0).u32(0).u64(20).u64(4096).u64(0) // uid gid size used rdev
	r.u64(7).u64(10129139)                   // fsid fileid
	r.u32(1).u32(2).u32(3).u32(4).u32(5).u32(6)
	r.u32(0) // no dir attributes
	s.onReply(*r)
	trace := s.takeTrace()
	if len(trace) != 1 {
		t.Fatalf("trace: %q", trace)
	}
	want := fmt.Sprintf("NFS3 LOOKUP %s/\"final\" → NFS3_OK %s {type=1 mode=644 nlink=2 size=20 fileid=10129139 atime=1.000000002 mtime=3.000000004 ctime=5.000000006}",
		fhID([]byte("dirhandle")), fhID([]byte("filehandle")))
	_, got, _ := strings.Cut(trace[0], " ")
	if got, _, _ = strings.Cut(got, " ("); got != want {
		t.Errorf("trace line\n got %s\nwant %s", got, want)
	}
	if s.takeTrace() != nil {
		t.Errorf("takeTrace did not start a new trace")
	}
}
