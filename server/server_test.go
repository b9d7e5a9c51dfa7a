package server

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	"github.com/willscott/go-nfs-client/nfs"
)

func diskFS(t testing.TB) (string, *osfs.BoundOS) {
	dir := t.TempDir()
	return dir, osfs.New(dir, osfs.WithBoundOS()).(*osfs.BoundOS)
}

// Round trips with go-nfs-client on both kinds of export: data, mkdir,
// rename (the handle survives it), symlink, truncate, remove.
func TestClientRoundTrip(t *testing.T) {
	for _, kind := range []string{"mem", "disk"} {
		t.Run(kind, func(t *testing.T) {
			fsys := NewMemFS()
			if kind == "disk" {
				_, fsys = diskFS(t)
			}
			s, addr := startServer(t, fsys, Options{})
			v := mount(t, addr)
			if _, err := v.Mkdir("/d", 0o755); err != nil {
				t.Fatalf("mkdir: %v", err)
			}
			data := make([]byte, 3<<20+17)
			rand.Read(data)
			f, err := v.OpenFile("/d/f", 0o644)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(data); err != nil {
				t.Fatal(err)
			}
			f.Close()
			_, fh, err := v.Lookup("/d/f")
			if err != nil {
				t.Fatal(err)
			}
			if err := v.Rename("/d/f", "/d/g"); err != nil {
				t.Fatalf("rename: %v", err)
			}
			if _, err := v.GetAttr(fh); err != nil {
				t.Fatalf("handle after rename: %v", err)
			}
			r, err := v.Open("/d/g")
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(r)
			r.Close()
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read back %d bytes, err %v", len(got), err)
			}
			if err := v.Symlink("g", "/d/link"); err != nil {
				t.Fatalf("symlink: %v", err)
			}
			lf, err := v.Open("/d/link")
			if err != nil {
				t.Fatal(err)
			}
			if target, err := lf.Readlink(); err != nil || target != "g" {
				t.Fatalf("readlink = %q, %v", target, err)
			}
			if err := v.Setattr("/d/g", nfs.Sattr3{Size: nfs.SetSize{SetIt: true, Size: 1000}}); err != nil {
				t.Fatalf("truncate: %v", err)
			}
			attr, err := v.Getattr("/d/g")
			if err != nil || attr.Size() != 1000 {
				t.Fatalf("size after truncate = %v, %v", attr, err)
			}
			r, _ = v.Open("/d/g")
			got, _ = io.ReadAll(r)
			if !bytes.Equal(got, data[:1000]) {
				t.Fatalf("truncated content differs (%d bytes)", len(got))
			}
			for _, p := range []string{"/d/link", "/d/g"} {
				if err := v.Remove(p); err != nil {
					t.Fatalf("remove %s: %v", p, err)
				}
			}
			if err := v.RmDir("/d"); err != nil {
				t.Fatalf("rmdir: %v", err)
			}
			if _, err := v.GetAttr(fh); err == nil {
				t.Fatal("handle of removed file still valid")
			}
			st := s.Stats()
			if st.NFS[ProcWrite] == 0 || st.NFS[ProcRead] == 0 || st.BytesWritten != uint64(len(data)) {
				t.Fatalf("stats do not show the traffic: %+v", st)
			}
		})
	}
}

// Errors reach clients with the status RFC 1813 names, not go-nfs's IO.
func TestErrorStatuses(t *testing.T) {
	dir, fsys := diskFS(t)
	_, addr := startServer(t, fsys, Options{})
	os.MkdirAll(filepath.Join(dir, "full/sub"), 0o755)
	os.WriteFile(filepath.Join(dir, "file"), []byte("x"), 0o644)
	r := dialRaw(t, addr)
	root := r.rootHandle()
	file, st := r.lookup(root, "file")
	if st != nfsOK {
		t.Fatal(st)
	}
	full, _ := r.lookup(root, "full")
	cases := []struct {
		name string
		got  uint32
		want uint32
	}{
		{"rmdir non-empty", r.rmdir(root, "full"), nfsNotEmpty},
		{"mkdir over dir", r.mkdir(root, "full"), nfsExist},
		{"mkdir over file", r.mkdir(root, "file"), nfsExist},
		{"guarded create over file", r.create(root, "file"), nfsExist},
		{"remove missing", r.remove(root, "nope"), nfsNoEnt},
		{"remove a directory", r.remove(full, "sub"), nfsIsDir},
		{"rmdir a file", r.rmdir(root, "file"), nfsNotDir},
		{"rename dir over file", r.rename(root, "full", root, "file"), nfsNotDir},
		{"lookup in a file", func() uint32 { _, s := r.lookup(file, "x"); return s }(), nfsNotDir},
		{"read a directory", func() uint32 { s, _ := r.read(full, 0, 10); return s }(), nfsIsDir},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s: status %d, want %d", c.name, c.got, c.want)
		}
	}
	// A file removed behind the server's back: its handle is stale.
	os.Remove(filepath.Join(dir, "file"))
	if s, _ := r.read(file, 0, 1); s != nfsStale {
		t.Errorf("read of vanished file: %d, want STALE", s)
	}
}

// Random, tampered, truncated and oversized handles are refused with
// BADHANDLE or STALE on both the go-nfs path and the fast path.
func TestForgedHandles(t *testing.T) {
	dir, fsys := diskFS(t)
	os.WriteFile(filepath.Join(dir, "f"), []byte("secret"), 0o644)
	_, addr := startServer(t, fsys, Options{})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	good, _ := r.lookup(root, "f")
	if s, data := r.read(good, 0, 100); s != 0 || string(data) != "secret" {
		t.Fatalf("good handle: %d %q", s, data)
	}
	forged := [][]byte{{}, {1}, make([]byte, 64), bytes.Repeat([]byte{0xff}, 32)}
	for i := range 20 {
		h := make([]byte, i*3+1)
		rand.Read(h)
		forged = append(forged, h)
	}
	for i := range good { // flip each byte of a real handle
		h := append([]byte(nil), good...)
		h[i] ^= 0x5a
		forged = append(forged, h)
	}
	// A real MAC on a different id.
	other := append([]byte(nil), good...)
	binary.BigEndian.PutUint64(other[1:9], 999)
	forged = append(forged, other)
	for _, h := range forged {
		if s := r.getattr(h); s != nfsBadHandle && s != nfsStale {
			t.Fatalf("GETATTR %x: status %d", h, s)
		}
		if s, _ := r.read(h, 0, 10); s != nfsBadHandle && s != nfsStale {
			t.Fatalf("READ %x: status %d", h, s)
		}
		if s, _, _ := r.write(h, 0, 2, []byte("x")); s != nfsBadHandle && s != nfsStale {
			t.Fatalf("WRITE %x: status %d", h, s)
		}
	}
	if s := r.getattr(good); s != 0 {
		t.Fatalf("server no longer serves the real handle: %d", s)
	}
}

// A handle taken before a restart works after it with the same StateDir,
// and a renamed file keeps its handle across the restart too.
func TestHandlesSurviveRestart(t *testing.T) {
	dir, fsys := diskFS(t)
	state := t.TempDir()
	os.WriteFile(filepath.Join(dir, "f"), []byte("persist"), 0o644)
	s1, err := New(fsys, Options{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go s1.Serve(l)
	r := dialRaw(t, l.Addr().String())
	root := r.rootHandle()
	fh, _ := r.lookup(root, "f")
	if st := r.rename(root, "f", root, "g"); st != 0 {
		t.Fatalf("rename: %d", st)
	}
	_, _, verf1 := r.write(fh, 7, 2, []byte("!"))
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}

	_, addr := startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{StateDir: state})
	r2 := dialRaw(t, addr)
	if st := r2.getattr(fh); st != 0 {
		t.Fatalf("GETATTR after restart: %d", st)
	}
	st, data := r2.read(fh, 0, 100)
	if st != 0 || string(data) != "persist!" {
		t.Fatalf("READ after restart: %d %q", st, data)
	}
	if _, _, verf2 := r2.write(fh, 8, 0, []byte("?")); bytes.Equal(verf1, verf2) {
		t.Fatal("write verifier did not change across a restart")
	}
	if h, _ := r2.lookup(r2.rootHandle(), "g"); !bytes.Equal(h, fh) {
		t.Fatalf("LOOKUP after restart gave a different handle")
	}
}

// A READDIRPLUS of 3000 entries evicts nothing: earlier handles stay valid.
func TestLargeDirectoryKeepsHandles(t *testing.T) {
	dir, fsys := diskFS(t)
	os.Mkdir(filepath.Join(dir, "big"), 0o755)
	for i := range 3000 {
		os.WriteFile(filepath.Join(dir, "big", fmt.Sprintf("f%04d", i)), nil, 0o644)
	}
	os.WriteFile(filepath.Join(dir, "early"), []byte("e"), 0o644)
	_, addr := startServer(t, fsys, Options{})
	v := mount(t, addr)
	_, early, err := v.Lookup("/early")
	if err != nil {
		t.Fatal(err)
	}
	ents, err := v.ReadDirPlus("/big")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if e.FileName != "." && e.FileName != ".." {
			n++
		}
	}
	if n != 3000 {
		t.Fatalf("listed %d entries, want 3000", n)
	}
	if _, err := v.GetAttr(early); err != nil {
		t.Fatalf("early handle after listing: %v", err)
	}
	first := ents[0].Handle
	for _, e := range ents {
		if e.FileName == "f0000" {
			first = e.Handle
		}
	}
	if _, err := v.GetAttr(first.FH); err != nil || !first.IsSet {
		t.Fatalf("first listed handle: %v", err)
	}
}

// Nothing reaches outside the export: "..", absolute and relative
// symlinks pointing out, names with slashes.
func TestExportConfinement(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "export")
	os.Mkdir(dir, 0o755)
	os.WriteFile(filepath.Join(base, "outside"), []byte("OUTSIDE"), 0o644)
	os.Symlink(filepath.Join(base, "outside"), filepath.Join(dir, "abs"))
	os.Symlink("../outside", filepath.Join(dir, "rel"))
	os.Symlink("..", filepath.Join(dir, "up"))
	_, addr := startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	for _, name := range []string{"..", "../outside", "../../outside", "/outside", "up/outside"} {
		if h, st := r.lookup(root, name); st == 0 {
			if s, data := r.read(h, 0, 100); s == 0 && bytes.Contains(data, []byte("OUTSIDE")) {
				t.Fatalf("LOOKUP %q read outside data", name)
			}
		}
	}
	for _, name := range []string{"abs", "rel"} {
		h, st := r.lookup(root, name)
		if st != 0 {
			t.Fatalf("lookup %s: %d", name, st)
		}
		if s, data := r.read(h, 0, 100); s == 0 && bytes.Contains(data, []byte("OUTSIDE")) {
			t.Fatalf("reading through symlink %s escaped the export", name)
		}
	}
	up, _ := r.lookup(root, "up")
	if h, st := r.lookup(up, "outside"); st == 0 {
		if s, data := r.read(h, 0, 100); s == 0 && bytes.Contains(data, []byte("OUTSIDE")) {
			t.Fatal("lookup through symlink to .. escaped")
		}
	}
	for _, name := range []string{"../escaped", "../../escaped"} {
		r.create(root, name)
		r.mkdir(root, name+"dir")
	}
	if _, err := os.Stat(filepath.Join(base, "escaped")); err == nil {
		t.Fatal("CREATE ../escaped created a file outside the export")
	}
	if _, err := os.Stat(filepath.Join(base, "escapeddir")); err == nil {
		t.Fatal("MKDIR ../escapeddir created a directory outside the export")
	}
	if r.rename(root, "abs", root, "../moved") == 0 {
		if _, err := os.Lstat(filepath.Join(base, "moved")); err == nil {
			t.Fatal("RENAME moved a file outside the export")
		}
	}
	if b, _ := os.ReadFile(filepath.Join(base, "outside")); string(b) != "OUTSIDE" {
		t.Fatal("outside file changed")
	}
}

// A read-only export refuses every change with ROFS and still serves reads.
func TestReadOnly(t *testing.T) {
	dir, fsys := diskFS(t)
	os.WriteFile(filepath.Join(dir, "f"), []byte("ro"), 0o644)
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	_, addr := startServer(t, fsys, Options{ReadOnly: true})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	fh, _ := r.lookup(root, "f")
	sattrSize := xdrBuf(nil).u32(0).u32(0).u32(0).u32(1).u64(0).u32(0).u32(0)
	setattr, _ := r.nfsStatus(ProcSetAttr, append(xdrBuf(nil).opaque(fh), append(sattrSize, 0, 0, 0, 0)...))
	symlink, _ := r.nfsStatus(ProcSymlink, append(append(xdrBuf(nil).opaque(root).opaque([]byte("l")), sattrNone...), xdrBuf(nil).opaque([]byte("f"))...))
	write, _, _ := r.write(fh, 0, 2, []byte("x"))
	for name, st := range map[string]uint32{
		"create":  r.create(root, "new"),
		"mkdir":   r.mkdir(root, "nd"),
		"remove":  r.remove(root, "f"),
		"rmdir":   r.rmdir(root, "d"),
		"rename":  r.rename(root, "f", root, "g"),
		"write":   write,
		"setattr": setattr,
		"symlink": symlink,
	} {
		if st != nfsROFS {
			t.Errorf("%s on read-only export: status %d, want ROFS", name, st)
		}
	}
	if st, data := r.read(fh, 0, 10); st != 0 || string(data) != "ro" {
		t.Fatalf("read: %d %q", st, data)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "f")); string(b) != "ro" {
		t.Fatal("file changed")
	}
}

func countFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count fds: %v", err)
	}
	return len(ents)
}

// Reading 1000 files keeps the process's open fds within the bound.
func TestOpenFileBound(t *testing.T) {
	dir, fsys := diskFS(t)
	const files, bound = 1000, 16
	for i := range files {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), []byte(fmt.Sprint(i)), 0o644)
	}
	s, addr := startServer(t, fsys, Options{MaxOpenFiles: bound})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	baseline := countFDs(t)
	maxSeen := 0
	for i := range files {
		h, st := r.lookup(root, fmt.Sprintf("f%d", i))
		if st != 0 {
			t.Fatalf("lookup f%d: %d", i, st)
		}
		st, data := r.read(h, 0, 100)
		if st != 0 || string(data) != fmt.Sprint(i) {
			t.Fatalf("read f%d: %d %q", i, st, data)
		}
		if i%50 == 0 || i == files-1 {
			maxSeen = max(maxSeen, countFDs(t))
		}
	}
	if open := s.Stats().OpenFiles; open > bound {
		t.Fatalf("open-file cache holds %d files, bound %d", open, bound)
	}
	// One READ in flight at a time here, so the bound is exact; a little
	// slack for the runtime's own fds (netpoll, bbolt remap).
	if maxSeen > baseline+bound+2 {
		t.Fatalf("open fds reached %d, baseline %d + bound %d", maxSeen, baseline, bound)
	}
	if s.Stats().NFS[ProcRead] != files {
		t.Fatalf("READ count %d", s.Stats().NFS[ProcRead])
	}
}

// Malformed and truncated calls close that connection only.
func TestMalformedCallsCloseOnlyThatConnection(t *testing.T) {
	s, addr := startServer(t, NewMemFS(), Options{})
	good := dialRaw(t, addr)
	good.rootHandle()
	bad := [][]byte{
		{0x80, 0, 0, 4, 1, 2, 3, 4}, // too short for a call
		{0xff, 0xff, 0xff, 0xff},    // 2 GiB record
		{0x80, 0, 0, 40},            // truncated body
		append([]byte{0x80, 0, 0, 40}, make([]byte, 40)...)[:30], // cut mid-header
		append(xdrBuf(nil).u32(1<<31|48), xdrBuf(nil).u32(1).u32(0).u32(2).u32(progNFS).u32(3).u32(1).u32(0).u32(1000).u32(0).u32(0).u32(0).u32(0)...), // cred length 1000
	}
	for i, b := range bad {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(b)
		if i == 2 || i == 3 {
			c.(*net.TCPConn).CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if n, err := c.Read(make([]byte, 100)); err == nil {
			t.Errorf("malformed call %d answered with %d bytes", i, n)
		}
		c.Close()
	}
	// Garbage arguments to a real procedure get GARBAGE_ARGS, not a panic.
	if acc, _ := good.call(progNFS, 3, ProcRead, []byte{0, 0, 0, 200}); acc != acceptGarbageArgs {
		t.Fatalf("garbage READ args: accept_stat %d", acc)
	}
	// Unknown program and version.
	if acc, _ := good.call(100227, 3, 0, nil); acc != acceptProgUnavail {
		t.Fatalf("unknown program: accept_stat %d", acc)
	}
	if acc, _ := good.call(progNFS, 4, 0, nil); acc != acceptProgMismatch {
		t.Fatalf("NFSv4 call: accept_stat %d", acc)
	}
	if acc, _ := good.call(progNFS, 3, 22, nil); acc != acceptProcUnavail {
		t.Fatalf("NFS procedure 22: accept_stat %d", acc)
	}
	if acc, body := good.call(progMount, 3, MountProcDump, nil); acc != 0 || !bytes.Equal(body, []byte{0, 0, 0, 0}) {
		t.Fatalf("MOUNT DUMP: %d %x", acc, body)
	}
	if acc, _ := good.call(progMount, 3, MountProcUmntAll, nil); acc != 0 {
		t.Fatalf("MOUNT UMNTALL: %d", acc)
	}
	if st := good.getattr(good.rootHandle()); st != 0 {
		t.Fatalf("good connection broken: %d", st)
	}
	if s.Stats().Malformed == 0 {
		t.Fatal("malformed connections not counted")
	}
}

// MOUNT EXPORT lists "/"; MNT of another path is refused.
func TestMountExport(t *testing.T) {
	s, addr := startServer(t, NewMemFS(), Options{})
	r := dialRaw(t, addr)
	acc, body := r.call(progMount, 3, MountProcExport, nil)
	want := xdrBuf(nil).u32(1).opaque([]byte("/")).u32(0).u32(0)
	if acc != 0 || !bytes.Equal(body, want) {
		t.Fatalf("EXPORT: %d %x", acc, body)
	}
	acc, body = r.call(progMount, 3, MountProcMnt, xdrBuf(nil).opaque([]byte("/elsewhere")))
	if acc != 0 || binary.BigEndian.Uint32(body) != 2 {
		t.Fatalf("MNT /elsewhere: %d %x", acc, body)
	}
	if s.Stats().Mount[MountProcExport] != 1 {
		t.Fatal("EXPORT not counted")
	}
}

// UNSTABLE writes are answered UNSTABLE and COMMIT returns the same
// verifier; FILE_SYNC writes are answered FILE_SYNC.
func TestWriteStability(t *testing.T) {
	dir, fsys := diskFS(t)
	_, addr := startServer(t, fsys, Options{})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	if st := r.create(root, "w"); st != 0 {
		t.Fatal(st)
	}
	fh, _ := r.lookup(root, "w")
	st, committed, verf := r.write(fh, 0, 0, []byte("unstable "))
	if st != 0 || committed != 0 {
		t.Fatalf("UNSTABLE write: status %d committed %d", st, committed)
	}
	st, committed, verf2 := r.write(fh, 9, 2, []byte("sync"))
	if st != 0 || committed != 2 || !bytes.Equal(verf, verf2) {
		t.Fatalf("FILE_SYNC write: status %d committed %d", st, committed)
	}
	cst, body := r.nfsStatus(ProcCommit, xdrBuf(nil).opaque(fh).u64(0).u32(0))
	if cst != 0 || !bytes.Equal(body[len(body)-8:], verf) {
		t.Fatalf("COMMIT: %d, verifier %x want %x", cst, body[len(body)-8:], verf)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "w")); string(b) != "unstable sync" {
		t.Fatalf("file = %q", b)
	}
}

// Connections from outside the allow-list are closed unanswered.
func TestAllowList(t *testing.T) {
	s, addr := startServer(t, NewMemFS(), Options{Allow: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("refused client got data")
	}
	if s.Stats().Rejected != 1 {
		t.Fatalf("rejected = %d", s.Stats().Rejected)
	}
}

// Many clients on many connections write and read their own files at
// once on the in-memory export (memfs alone would panic here).
func TestConcurrentClients(t *testing.T) {
	s, addr := startServer(t, NewMemFS(), Options{})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := mount(t, addr)
			name := fmt.Sprintf("/c%d", i)
			data := bytes.Repeat([]byte{byte(i)}, 300<<10+i)
			for range 3 {
				f, err := v.OpenFile(name, 0o644)
				if err != nil {
					errs <- err
					return
				}
				if _, err := f.Write(data); err != nil {
					errs <- err
					return
				}
				f.Close()
				r, err := v.Open(name)
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(r)
				if err != nil || !bytes.Equal(got, data) {
					errs <- fmt.Errorf("client %d read %d bytes: %v", i, len(got), err)
					return
				}
				if _, err := v.Getattr(name); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s.Stats().Connections < 8 {
		t.Fatalf("connections = %d", s.Stats().Connections)
	}
}
