package client_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	gonfs "github.com/willscott/go-nfs-client/nfs"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/server"
)

// ourServer is this project's server, in-process, exporting Dir with its
// handle table in StateDir so that it can be restarted on the same port.
type ourServer struct {
	Addr, Dir, StateDir string
	t                   testing.TB
	mu                  sync.Mutex
	srv                 *server.Server
}

func startOurs(t testing.TB) *ourServer {
	s := &ourServer{Dir: t.TempDir(), StateDir: t.TempDir(), t: t}
	s.start("127.0.0.1:0")
	t.Cleanup(s.stop)
	return s
}

func (s *ourServer) start(addr string) {
	var (
		ln  net.Listener
		err error
	)
	for i := 0; i < 100; i++ { // the old listener's port may take a moment to free
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		s.t.Fatal(err)
	}
	srv, err := server.New(osfs.New(s.Dir, osfs.WithBoundOS()), server.Options{StateDir: s.StateDir})
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.srv, s.Addr = srv, ln.Addr().String()
	s.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (s *ourServer) stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// restart closes the server (every connection drops, unstable data and the
// write verifier are gone) and starts a new instance on the same port and
// state directory.
func (s *ourServer) restart() {
	s.stop()
	s.start(s.Addr)
}

func TestProceduresOurs(t *testing.T) {
	s := startOurs(t)
	c := dial(t, s.Addr, client.Options{})
	exerciseProcedures(t, c, s.Dir, quirks{})
	ex, err := c.Exports(testCtx(t))
	if err != nil || len(ex) == 0 {
		t.Fatalf("EXPORT: %+v %v", ex, err)
	}
}

func TestReadWriteAtOurs(t *testing.T) {
	s := startOurs(t)
	c := dial(t, s.Addr, client.Options{MaxIOSize: 64 << 10, Connections: 2})
	testReadWriteAt(t, c, s.Dir, 3<<20+12345)
}

func TestBigDirectoryOurs(t *testing.T) {
	s := startOurs(t)
	c := dial(t, s.Addr, client.Options{})
	testBigDir(t, c, mkdirFiles(t, s.Dir), *bigDir)
}

// TestServerRestartMidWrite restarts our server (same port, same state
// directory) while a WriteAt is in flight. The client reconnects and
// retransmits; Commit finds the new write verifier and resends everything
// acknowledged by the old instance; afterwards the file on the server's disk
// has exactly the bytes written.
func TestServerRestartMidWrite(t *testing.T) {
	s := startOurs(t)
	c := dial(t, s.Addr, client.Options{MaxIOSize: 32 << 10, MaxInflight: 4, Connections: 2, Timeout: 30 * time.Second})
	ctx := testCtx(t)
	f, err := c.Create(ctx, c.Root(), "f", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		t.Fatal(err)
	}
	a := randomBytes(t, 1<<20)
	if _, err := c.WriteAt(ctx, f.Handle, a, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Commit(ctx, f.Handle, 0, 0); err != nil {
		t.Fatal(err)
	}
	b := randomBytes(t, 4<<20)
	done := make(chan error, 1)
	go func() {
		_, err := c.WriteAt(ctx, f.Handle, b, int64(len(a)))
		done <- err
	}()
	// Restart once part of b has been acknowledged.
	var writeErr error
	finished := false
	for !finished && c.Stats().BytesWritten < uint64(len(a))+uint64(len(b))/4 {
		select {
		case writeErr = <-done:
			finished = true
		case <-time.After(time.Millisecond):
		}
	}
	if finished {
		t.Fatalf("WriteAt ended before the restart: %v", writeErr)
	}
	s.restart()
	if err := <-done; err != nil {
		t.Fatalf("WriteAt across a restart: %v", err)
	}
	res, err := c.Commit(ctx, f.Handle, 0, 0)
	if err != nil {
		t.Fatalf("Commit after restart: %v", err)
	}
	if res.Resent == 0 {
		t.Fatalf("the verifier changed with the restart, Commit must resend (%+v)", res)
	}
	got, err := os.ReadFile(filepath.Join(s.Dir, "f"))
	want := append(append([]byte(nil), a...), b...)
	if err != nil || sha256.Sum256(got) != sha256.Sum256(want) {
		t.Fatalf("file on server differs after restart (len %d want %d, %v)", len(got), len(want), err)
	}
	st := c.Stats()
	if st.Reconnects == 0 {
		t.Fatalf("expected reconnections: %+v", st)
	}
	t.Logf("resent %d bytes, %d retransmissions, %d reconnects", res.Resent, st.Retransmissions, st.Reconnects)
}

func oursTarget(b *testing.B) benchTarget {
	s := startOurs(b)
	return benchTarget{
		dir:      s.Dir,
		ours:     func(b *testing.B) *client.Client { return dial(b, s.Addr, oursOpts()) },
		baseline: func(b *testing.B) *gonfs.Target { return mountBaseline(b, s.Addr) },
	}
}

// BenchmarkSequentialOurs is BenchmarkSequential against our server.
func BenchmarkSequentialOurs(b *testing.B) {
	b.Run("read", func(b *testing.B) { benchRead(b, oursTarget(b)) })
	b.Run("write", func(b *testing.B) { benchWrite(b, oursTarget(b)) })
}

// TestPipelining runs many calls at once over a single connection: replies
// are matched to their callers by xid (every caller gets its own data).
func TestPipelining(t *testing.T) {
	s := startOurs(t)
	c := dial(t, s.Addr, client.Options{Connections: 1, MaxIOSize: 16 << 10})
	ctx := testCtx(t)
	const files = 8
	want := make([][]byte, files)
	handles := make([]client.Handle, files)
	for i := range want {
		want[i] = randomBytes(t, 200<<10+i)
		if err := os.WriteFile(filepath.Join(s.Dir, fmt.Sprint("p", i)), want[i], 0o644); err != nil {
			t.Fatal(err)
		}
		lr, err := c.Lookup(ctx, c.Root(), fmt.Sprint("p", i))
		if err != nil {
			t.Fatal(err)
		}
		handles[i] = lr.Handle
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4*files)
	for g := 0; g < 4*files; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			i := g % files
			buf := make([]byte, len(want[i]))
			if _, err := c.ReadAt(ctx, handles[i], buf, 0); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(buf, want[i]) {
				errs <- fmt.Errorf("goroutine %d got another file's data", g)
				return
			}
			if a, err := c.Getattr(ctx, handles[i]); err != nil || a.Size != uint64(len(want[i])) {
				errs <- fmt.Errorf("GETATTR %d: %+v %v", i, a, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
