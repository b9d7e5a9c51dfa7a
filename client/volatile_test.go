package client_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nfscache/nfscache/client"
)

// volatileServer is a fault injector in front of a real NFS server: it
// behaves like a server with a volatile write cache. UNSTABLE WRITEs are
// acknowledged (with its own write verifier) but only kept in memory; a
// COMMIT first writes the handle's cached data to the real server
// (FILE_SYNC), then forwards the COMMIT. crash() drops every connection and
// the cache and changes the verifier, exactly what a server reboot does to
// uncommitted data. Everything else is forwarded unchanged.
type volatileServer struct {
	ln      net.Listener
	backend string
	flush   *client.Client // writes cached data to the real server

	mu          sync.Mutex
	verf        [8]byte
	cache       map[string][]cachedWrite // by file handle
	conns       []net.Conn
	writes      int // UNSTABLE writes acknowledged since start
	crashAfter  int // crash when writes reaches this (0 = never)
	crashed     chan struct{}
	crashedOnce sync.Once
}

type cachedWrite struct {
	off  uint64
	data []byte
}

func startVolatile(t *testing.T, backend string) *volatileServer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	v := &volatileServer{ln: ln, backend: backend, cache: map[string][]cachedWrite{},
		verf: [8]byte{1}, crashed: make(chan struct{})}
	v.flush = dial(t, backend, client.Options{})
	go v.accept()
	t.Cleanup(func() { ln.Close(); v.crash() })
	return v
}

func (v *volatileServer) accept() {
	for {
		c, err := v.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", v.backend)
		if err != nil {
			c.Close()
			continue
		}
		v.mu.Lock()
		v.conns = append(v.conns, c, b)
		v.mu.Unlock()
		var wmu sync.Mutex // serialises records written to c
		commits := &sync.Map{}
		go v.fromClient(c, b, &wmu, commits)
		go v.fromServer(b, c, &wmu, commits)
	}
}

// crash: connections and cached data gone, new verifier.
func (v *volatileServer) crash() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, c := range v.conns {
		c.Close()
	}
	v.conns = nil
	v.cache = map[string][]cachedWrite{}
	v.verf[0]++
	v.crashedOnce.Do(func() { close(v.crashed) })
}

func readRecord(r io.Reader) ([]byte, error) {
	var rec []byte
	for {
		var h [4]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return nil, err
		}
		n := binary.BigEndian.Uint32(h[:])
		frag := make([]byte, n&0x7fffffff)
		if _, err := io.ReadFull(r, frag); err != nil {
			return nil, err
		}
		rec = append(rec, frag...)
		if n&0x80000000 != 0 {
			return rec, nil
		}
	}
}

func writeRecord(w io.Writer, mu *sync.Mutex, rec []byte) error {
	mu.Lock()
	defer mu.Unlock()
	var h [4]byte
	binary.BigEndian.PutUint32(h[:], uint32(len(rec))|0x80000000)
	_, err := w.Write(append(h[:], rec...))
	return err
}

func (v *volatileServer) fromClient(c, b net.Conn, wmu *sync.Mutex, commits *sync.Map) {
	defer c.Close()
	defer b.Close()
	var bmu sync.Mutex
	for {
		rec, err := readRecord(c)
		if err != nil {
			return
		}
		xid := rec[0:4]
		prog := binary.BigEndian.Uint32(rec[12:16])
		proc := binary.BigEndian.Uint32(rec[20:24])
		off := 24
		for i := 0; i < 2; i++ { // credential, verifier
			n := int(binary.BigEndian.Uint32(rec[off+4:]))
			off += 8 + (n+3)&^3
		}
		args := rec[off:]
		if prog == 100003 && (proc == 7 || proc == 21) {
			fhLen := int(binary.BigEndian.Uint32(args))
			fh := string(args[4 : 4+fhLen])
			a := args[4+(fhLen+3)&^3:]
			if proc == 7 && binary.BigEndian.Uint32(a[12:]) == uint32(client.Unstable) {
				offset := binary.BigEndian.Uint64(a)
				n := binary.BigEndian.Uint32(a[16:])
				data := append([]byte(nil), a[20:20+n]...)
				v.mu.Lock()
				v.cache[fh] = append(v.cache[fh], cachedWrite{offset, data})
				v.writes++
				crash := v.crashAfter > 0 && v.writes == v.crashAfter
				verf := v.verf
				v.mu.Unlock()
				if crash {
					v.crash()
					return // the acknowledgement is lost with the server
				}
				// Reply: ACCEPTED SUCCESS, NFS3_OK, empty wcc_data, count, UNSTABLE, verifier.
				var e bytes.Buffer
				e.Write(xid)
				for _, w := range []uint32{1, 0, 0, 0, 0, 0, 0, 0, n, 0} {
					binary.Write(&e, binary.BigEndian, w)
				}
				e.Write(verf[:])
				if writeRecord(c, wmu, e.Bytes()) != nil {
					return
				}
				continue
			}
			if proc == 21 {
				v.mu.Lock()
				pending := v.cache[fh]
				delete(v.cache, fh)
				v.mu.Unlock()
				for _, w := range pending {
					if _, err := v.flush.Write(context.Background(), client.Handle(fh), w.off, w.data, client.FileSync); err != nil {
						return
					}
				}
				commits.Store(binary.BigEndian.Uint32(xid), true)
			}
		}
		if writeRecord(b, &bmu, rec) != nil {
			return
		}
	}
}

func (v *volatileServer) fromServer(b, c net.Conn, wmu *sync.Mutex, commits *sync.Map) {
	defer c.Close()
	for {
		rec, err := readRecord(b)
		if err != nil {
			return
		}
		if _, ok := commits.LoadAndDelete(binary.BigEndian.Uint32(rec[0:4])); ok && len(rec) >= 8 {
			v.mu.Lock()
			copy(rec[len(rec)-8:], v.verf[:]) // COMMIT3resok ends with the verifier
			v.mu.Unlock()
		}
		if writeRecord(c, wmu, rec) != nil {
			return
		}
	}
}

// TestServerCrashMidWrite: a server with a volatile write cache crashes in
// the middle of a WriteAt. The client reconnects and retransmits the WRITEs
// in flight; Commit sees the new verifier and resends everything acknowledged
// before the crash; afterwards every byte is on the real server's disk.
func TestServerCrashMidWrite(t *testing.T) {
	dir := t.TempDir()
	s := startStock(t, dir)
	v := startVolatile(t, s.Addr)
	c := dial(t, v.ln.Addr().String(), client.Options{MaxIOSize: 64 << 10, MaxInflight: 4, Timeout: 20 * time.Second})
	ctx := testCtx(t)
	f, err := c.Create(ctx, c.Root(), "f", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		t.Fatal(err)
	}

	// Part A: written and committed before the crash; must survive it.
	a := randomBytes(t, 1<<20)
	if _, err := c.WriteAt(ctx, f.Handle, a, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Commit(ctx, f.Handle, 0, 0); err != nil {
		t.Fatal(err)
	}
	// Part B: the server crashes after acknowledging some of its WRITEs.
	b := randomBytes(t, 2<<20)
	v.mu.Lock()
	v.crashAfter = v.writes + 12
	v.mu.Unlock()
	if _, err := c.WriteAt(ctx, f.Handle, b, int64(len(a))); err != nil {
		t.Fatalf("WriteAt across a crash: %v", err)
	}
	select {
	case <-v.crashed:
	default:
		t.Fatal("the server did not crash during the write")
	}
	res, err := c.Commit(ctx, f.Handle, 0, 0)
	if err != nil {
		t.Fatalf("Commit after crash: %v", err)
	}
	if res.Resent == 0 {
		t.Fatalf("writes acknowledged before the crash were lost; Commit should have resent them (%+v)", res)
	}
	got, err := os.ReadFile(filepath.Join(dir, "f"))
	want := append(append([]byte(nil), a...), b...)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("file on server differs after crash (len %d want %d, %v)", len(got), len(want), err)
	}
	st := c.Stats()
	if st.Reconnects == 0 || st.Retransmissions == 0 {
		t.Fatalf("expected a reconnection and retransmissions: %+v", st)
	}
	t.Logf("resent %d bytes after the crash; %d retransmissions", res.Resent, st.Retransmissions)
}
