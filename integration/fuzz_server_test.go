package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/internal/faultproxy"
	"github.com/nfscache/nfscache/server"
)

// The server fuzz targets run against a live in-process server whose
// handle table is restored from testdata/fuzz/server-state (captured with
// the seeds), so the handles inside the captured calls are valid and the
// mutations reach deep into the procedures instead of stopping at
// BADHANDLE. A panic anywhere in the server kills the test binary, which
// the fuzzer reports.

var fuzzCapture = flag.Bool("fuzz.capture", false, "re-record the server fuzz seed corpus from a real client session (TestFuzzCaptureSeeds)")

const fuzzStateDir = "testdata/fuzz/server-state"

// fuzzExportTree creates the files the captured session started from.
func fuzzExportTree(t testing.TB, dir string) {
	t.Helper()
	for _, err := range []error{
		os.WriteFile(filepath.Join(dir, "f"), relData(77, 5000), 0o644),
		os.Mkdir(filepath.Join(dir, "d"), 0o755),
		os.WriteFile(filepath.Join(dir, "d", "g"), []byte("g"), 0o644),
		os.Symlink("f", filepath.Join(dir, "l")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// fuzzTarget is the live server of a fuzz target and a well-behaved client
// that must keep being served.
type fuzzTarget struct {
	addr    string
	good    *client.Client
	known   map[string]bool // handles issued to the session
	fileIDs map[uint64]bool // every object of the export
	srv     *server.Server
}

func startFuzzTarget(f testing.TB) *fuzzTarget {
	state := f.TempDir()
	ents, err := os.ReadDir(fuzzStateDir)
	if err != nil {
		f.Fatalf("seed state (re-create with -run TestFuzzCaptureSeeds -fuzz.capture): %v", err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(fuzzStateDir, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(state, e.Name()), b, 0o600); err != nil {
			f.Fatal(err)
		}
	}
	export := f.TempDir()
	fuzzExportTree(f, export)
	srv, err := server.New(osfs.New(export, osfs.WithBoundOS()), server.Options{StateDir: state, MaxOpenFiles: 16})
	if err != nil {
		f.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	f.Cleanup(func() { srv.Close(); <-done })
	ft := &fuzzTarget{addr: ln.Addr().String(), srv: srv, known: map[string]bool{}, fileIDs: map[uint64]bool{}}
	ft.good = relDial(f, ft.addr, client.Options{Timeout: 10 * time.Second})
	ctx := context.Background()
	var walk func(h client.Handle)
	walk = func(h client.Handle) {
		ft.known[string(h)] = true
		a, err := ft.good.Getattr(ctx, h)
		if err != nil {
			f.Fatal(err)
		}
		ft.fileIDs[a.FileID] = true
		if a.Type != client.TypeDir {
			return
		}
		ents, err := ft.good.ReadDirAll(ctx, h)
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range ents {
			if e.Name != "." && e.Name != ".." {
				l, err := ft.good.Lookup(ctx, h, e.Name)
				if err != nil {
					f.Fatal(err)
				}
				walk(l.Handle)
			}
		}
	}
	walk(ft.good.Root())
	return ft
}

// alive checks the well-behaved client is still served.
func (ft *fuzzTarget) alive(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := ft.good.Getattr(ctx, ft.good.Root()); err != nil {
		t.Fatalf("server stopped serving a well-behaved client: %v", err)
	}
}

// exchange writes b on a fresh connection and reads up to replies reply
// records, until the server closes the connection or goes quiet. It
// returns the first reply, if any.
func (ft *fuzzTarget) exchange(t testing.TB, b []byte, replies int) []byte {
	c, err := net.DialTimeout("tcp", ft.addr, 5*time.Second)
	if err != nil {
		t.Fatalf("server stopped accepting: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	_, _ = c.Write(b)
	br := bufio.NewReader(c)
	var first []byte
	for i := range replies {
		rec, err := rawReadRecord(br, 4<<20)
		if err != nil {
			break
		}
		if i == 0 {
			first = rec
		}
	}
	return first
}

// FuzzServerCall sends one mutated ONC RPC call (record-marked correctly)
// on its own connection. Seeds: every call of a real session of our client
// and go-nfs-client (testdata/fuzz/FuzzServerCall).
func FuzzServerCall(f *testing.F) {
	ft := startFuzzTarget(f)
	f.Add(rawCallRecord(1, progNFS, 3, 0, nil)[4:])
	f.Fuzz(func(t *testing.T, call []byte) {
		ft.exchange(t, append(xdr(nil).u32(uint32(len(call))|1<<31), call...), 1)
		ft.alive(t)
	})
}

// FuzzServerStream sends mutated raw bytes (record marks included), to
// exercise record reassembly. Seeds: the first calls of captured sessions.
func FuzzServerStream(f *testing.F) {
	ft := startFuzzTarget(f)
	f.Add(rawCallRecord(1, progNFS, 3, 0, nil))
	f.Fuzz(func(t *testing.T, stream []byte) {
		ft.exchange(t, stream, 64)
		ft.alive(t)
	})
}

// FuzzHandle sends GETATTR, READ and LOOKUP with a mutated handle. A
// handle the server did not issue must never resolve; if it does, it must
// at least be an object of the export (never outside). Seeds: the issued
// handles (testdata/fuzz/FuzzHandle).
func FuzzHandle(f *testing.F) {
	ft := startFuzzTarget(f)
	for h := range ft.known {
		f.Add([]byte(h))
	}
	var mu sync.Mutex
	var r *rawConn
	f.Fuzz(func(t *testing.T, h []byte) {
		mu.Lock()
		defer mu.Unlock()
		for _, proc := range []uint32{server.ProcGetAttr, server.ProcRead, server.ProcLookup} {
			args := xdr(nil).opaque(h)
			switch proc {
			case server.ProcRead:
				args = args.u64(0).u32(4096)
			case server.ProcLookup:
				args = args.str("g")
			}
			if r == nil {
				var err error
				if r, err = rawDial(ft.addr); err != nil {
					t.Fatalf("server stopped accepting: %v", err)
				}
			}
			rep, err := r.call(progNFS, 3, proc, args, 10*time.Second)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("proc %d with handle %x: no reply", proc, h)
				}
				r.Close() // closed for garbage (a handle over 64 bytes): fine
				r = nil
				continue
			}
			st := rep.status()
			valid := ft.known[string(h)]
			if st == 0 && !valid {
				if proc == server.ProcGetAttr && len(rep.body) >= 64 {
					id := binary.BigEndian.Uint64(rep.body[56:])
					if !ft.fileIDs[id] {
						t.Fatalf("forged handle %x resolved to fileid %d, outside the export", h, id)
					}
				}
				t.Fatalf("forged handle %x resolved (proc %d)", h, proc)
			}
			if !valid && rep.accept == 0 && !slices.Contains([]uint32{uint32(client.StatusBadHandle), uint32(client.StatusStale)}, st) {
				t.Fatalf("forged handle %x: proc %d answered status %d, want BADHANDLE or STALE", h, proc, st)
			}
		}
		ft.alive(t)
	})
}

// TestFuzzCaptureSeeds records the seed corpus: a real session of our
// client and go-nfs-client goes through a capturing faultproxy to a server
// whose state directory becomes testdata/fuzz/server-state. Every call
// becomes a FuzzServerCall seed, the start of each connection a
// FuzzServerStream seed. Run with -fuzz.capture; otherwise it checks the
// corpus is present and that every seed call gets a reply.
func TestFuzzCaptureSeeds(t *testing.T) {
	if !*fuzzCapture {
		ents, err := os.ReadDir("testdata/fuzz/FuzzServerCall")
		if err != nil || len(ents) < 20 {
			t.Fatalf("seed corpus missing (%d files, %v): re-create with -run TestFuzzCaptureSeeds -fuzz.capture", len(ents), err)
		}
		// The restored state makes the captured handles valid: most seed
		// calls succeed, so mutations start deep inside the procedures.
		ft := startFuzzTarget(t)
		ok := 0
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join("testdata/fuzz/FuzzServerCall", e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.SplitN(string(b), "\n", 3)
			q, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
			if err != nil {
				t.Fatalf("%s: %v", e.Name(), err)
			}
			rep := ft.exchange(t, append(xdr(nil).u32(uint32(len(q))|1<<31), q...), 1)
			if len(rep) < 24 {
				t.Fatalf("seed %s got no reply", e.Name())
			}
			if binary.BigEndian.Uint32(rep[20:]) == 0 && (len(rep) == 24 || binary.BigEndian.Uint32(rep[24:]) == 0) {
				ok++
			}
		}
		if ok < len(ents)*2/3 {
			t.Fatalf("only %d of %d seed calls were accepted", ok, len(ents))
		}
		t.Logf("%d of %d seed calls accepted by the server restored from the seed state", ok, len(ents))
		return
	}
	_ = os.RemoveAll(fuzzStateDir)
	for _, d := range []string{"FuzzServerCall", "FuzzServerStream", "FuzzHandle"} {
		_ = os.RemoveAll(filepath.Join("testdata/fuzz", d))
		if err := os.MkdirAll(filepath.Join("testdata/fuzz", d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	export := t.TempDir()
	fuzzExportTree(t, export)
	srv, err := server.New(osfs.New(export, osfs.WithBoundOS()), server.Options{StateDir: fuzzStateDir})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	var mu sync.Mutex
	streams := map[int64]*bytes.Buffer{}
	p, err := faultproxy.New(ln.Addr().String(), faultproxy.Options{Tap: func(conn int64, dir faultproxy.Direction, b []byte) {
		if dir != faultproxy.ToServer {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if streams[conn] == nil {
			streams[conn] = &bytes.Buffer{}
		}
		streams[conn].Write(b)
	}})
	if err != nil {
		t.Fatal(err)
	}
	fuzzSession(t, p.Addr())
	p.Close()
	srv.Close()
	ln.Close()
	handles := map[string]bool{}
	for conn, s := range streams {
		b := s.Bytes()
		writeSeed(t, "FuzzServerStream", b[:min(len(b), 2048)])
		for len(b) >= 4 {
			mark := binary.BigEndian.Uint32(b)
			n := int(mark &^ (1 << 31))
			if 4+n > len(b) {
				break
			}
			rec := b[4 : 4+n]
			b = b[4+n:]
			if len(rec) <= 8<<10 {
				writeSeed(t, "FuzzServerCall", rec)
			}
			if h := callHandle(rec); h != nil {
				handles[string(h)] = true
			}
		}
		_ = conn
	}
	for h := range handles {
		writeSeed(t, "FuzzHandle", []byte(h))
	}
	t.Logf("captured %d connections, %d handles", len(streams), len(handles))
}

// callHandle is the first argument of an NFSv3 call if it is a handle.
func callHandle(rec []byte) []byte {
	if len(rec) < 40 || binary.BigEndian.Uint32(rec[12:]) != progNFS {
		return nil
	}
	p := 24
	for range 2 { // credential, verifier
		if p+8 > len(rec) {
			return nil
		}
		p += 8 + int((binary.BigEndian.Uint32(rec[p+4:])+3)&^3)
	}
	if p+4 > len(rec) {
		return nil
	}
	n := int(binary.BigEndian.Uint32(rec[p:]))
	if n == 0 || n > 64 || p+4+n > len(rec) {
		return nil
	}
	return rec[p+4 : p+4+n]
}

func writeSeed(t *testing.T, target string, b []byte) {
	sum := sha256.Sum256(b)
	name := filepath.Join("testdata/fuzz", target, fmt.Sprintf("%x", sum[:8]))
	if err := os.WriteFile(name, fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fuzzSession exercises every procedure with both clients.
func fuzzSession(t *testing.T, addr string) {
	ctx := relCtx(t)
	c := relDial(t, addr, client.Options{MaxIOSize: 4096, Timeout: 10 * time.Second})
	root := c.Root()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Exports(ctx)
	must(err)
	must(c.Null(ctx))
	_, err = c.FSInfo(ctx, root)
	must(err)
	_, err = c.FSStat(ctx, root)
	must(err)
	_, err = c.PathConf(ctx, root)
	must(err)
	_, _, err = c.Access(ctx, root, 0x3f)
	must(err)
	f, err := c.Lookup(ctx, root, "f")
	must(err)
	buf := make([]byte, 5000)
	_, err = c.ReadAt(ctx, f.Handle, buf, 0)
	must(err)
	d, err := c.Lookup(ctx, root, "d")
	must(err)
	_, err = c.Lookup(ctx, d.Handle, "g")
	must(err)
	l, err := c.Lookup(ctx, root, "l")
	must(err)
	_, _, err = c.Readlink(ctx, l.Handle)
	must(err)
	_, err = c.ReadDirAll(ctx, root)
	must(err)
	n, err := c.Create(ctx, root, "new", client.CreateHow{Mode: client.Guarded})
	must(err)
	_, err = c.Write(ctx, n.Handle, 0, []byte("unstable data"), client.Unstable)
	must(err)
	_, err = c.Write(ctx, n.Handle, 13, []byte("sync data"), client.FileSync)
	must(err)
	_, err = c.Commit(ctx, n.Handle, 0, 0)
	must(err)
	size, mode := uint64(4), uint32(0o600)
	_, err = c.Setattr(ctx, n.Handle, client.SetAttr{Size: &size, Mode: &mode}, nil)
	must(err)
	_, err = c.Mkdir(ctx, root, "nd", client.SetAttr{})
	must(err)
	_, err = c.Symlink(ctx, root, "nl", "new", client.SetAttr{})
	must(err)
	_, _, err = c.Link(ctx, f.Handle, root, "hard")
	_ = err // go-nfs may refuse LINK; the call is still a seed
	_, _, err = c.Rename(ctx, root, "new", d.Handle, "moved")
	must(err)
	_, err = c.Remove(ctx, d.Handle, "moved")
	must(err)
	_, err = c.Rmdir(ctx, root, "nd")
	must(err)
	_, err = c.Remove(ctx, root, "nl")
	must(err)
	_, err = c.Getattr(ctx, d.Handle)
	must(err)
	c.Close()

	// go-nfs-client: AUTH_NULL, its own encodings.
	var rc *rpc.Client
	for range 20 {
		if rc, err = rpc.DialTCP("tcp", addr, false); err == nil {
			break
		}
		time.Sleep(time.Millisecond)
	}
	must(err)
	defer rc.Close()
	v, err := (&nfsc.Mount{Client: rc}).Mount("/", rpc.AuthNull)
	must(err)
	_, err = v.ReadDirPlus("/")
	must(err)
	wf, err := v.OpenFile("/gnc", 0o644)
	must(err)
	_, err = wf.Write([]byte("from go-nfs-client"))
	must(err)
	must(wf.Close())
	rf, err := v.Open("/gnc")
	must(err)
	_, _ = rf.Read(buf)
	rf.Close()
	must(v.Rename("/gnc", "/gnc2"))
	must(v.Remove("/gnc2"))
	_, err = v.Mkdir("/gdir", 0o755)
	must(err)
	must(v.RmDir("/gdir"))
}
