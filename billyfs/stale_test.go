package billyfs_test

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/server"
)

// restartable is our server on a fixed port with a persistent state dir:
// Stop and Start are an upstream outage (same handles afterwards).
type restartable struct {
	Dir, state, Addr string
	mu               sync.Mutex
	srv              *server.Server
	done             chan struct{}
}

func startRestartable(t *testing.T) *restartable {
	t.Helper()
	u := &restartable{Dir: t.TempDir(), state: t.TempDir(), Addr: "127.0.0.1:0"}
	must(t, u.Start())
	t.Cleanup(u.Stop)
	return u
}

func (u *restartable) Start() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	srv, err := server.New(osfs.New(u.Dir, osfs.WithBoundOS()), server.Options{StateDir: u.state})
	if err != nil {
		return err
	}
	var l net.Listener
	for range 100 { // the old port may take a moment to free
		if l, err = net.Listen("tcp", u.Addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		srv.Close()
		return err
	}
	u.Addr = l.Addr().String()
	u.srv, u.done = srv, make(chan struct{})
	done := u.done
	go func() { defer close(done); _ = srv.Serve(l) }()
	return nil
}

func (u *restartable) Stop() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.srv == nil {
		return
	}
	u.srv.Close()
	<-u.done
	u.srv = nil
}

func errnoIs(err error, want syscall.Errno) bool {
	var pe *fs.PathError
	return errors.As(err, &pe) && pe.Err == want
}

// With ServeStale, an upstream outage leaves cached files readable (same
// bytes), names and listings answered, an uncached read failing with EIO
// within the bound, writes accepted into the cache and written back after
// the upstream returns; the outage is counted once.
func TestServeStaleOutage(t *testing.T) {
	up := startRestartable(t)
	a := randBytes(11, 700_000)
	b := randBytes(12, 50_000)
	must(t, os.MkdirAll(filepath.Join(up.Dir, "d"), 0o755))
	must(t, os.WriteFile(filepath.Join(up.Dir, "d/a"), a, 0o644))
	must(t, os.WriteFile(filepath.Join(up.Dir, "d/b"), b, 0o644))
	must(t, os.WriteFile(filepath.Join(up.Dir, "d/uncached"), b, 0o644))
	must(t, os.WriteFile(filepath.Join(up.Dir, "w"), []byte("before"), 0o644))
	must(t, os.Symlink("d/b", filepath.Join(up.Dir, "ln")))
	const bound = 2 * time.Second
	logs := &lockedBuffer{}
	fsys, err := billyfs.New(t.Context(), billyfs.Options{Addr: up.Addr, CacheDir: t.TempDir(),
		ServeStale: time.Minute, OutageDetect: 300 * time.Millisecond, Timeout: bound,
		AttrTimeout: 50 * time.Millisecond, Connections: 2, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	must(t, err)
	defer fsys.Close()
	if !bytes.Equal(readFile(t, fsys, "d/a"), a) || !bytes.Equal(readFile(t, fsys, "ln"), b) {
		t.Fatal("reads before the outage differ")
	}
	list, err := fsys.ReadDir("d")
	must(t, err)
	if len(list) != 3 {
		t.Fatalf("ReadDir before the outage: %d entries", len(list))
	}
	_, err = fsys.Stat("w")
	must(t, err)

	up.Stop()
	time.Sleep(100 * time.Millisecond) // past AttrTimeout: every answer needs revalidation
	for round := 0; round < 3; round++ {
		if !bytes.Equal(readFile(t, fsys, "d/a"), a) || !bytes.Equal(readFile(t, fsys, "d/b"), b) ||
			!bytes.Equal(readFile(t, fsys, "ln"), b) {
			t.Fatalf("round %d: cached reads during the outage differ", round)
		}
		if target, err := fsys.Readlink("ln"); err != nil || target != "d/b" {
			t.Fatalf("stale Readlink: %q, %v", target, err)
		}
		got, err := fsys.ReadDir("d")
		must(t, err)
		if len(got) != 3 || got[0].Name() != "a" || got[0].Size() != int64(len(a)) {
			t.Fatalf("stale ReadDir: %d entries", len(got))
		}
	}
	if st := fsys.Stats(); !st.UpstreamDown || st.Outages != 1 || st.StaleAnswers == 0 {
		t.Fatalf("stats during the outage: down %v outages %d stale answers %d", st.UpstreamDown, st.Outages, st.StaleAnswers)
	}
	// Not cached: EIO after waiting at most the bound (plus slack for
	// a loaded machine), not a hang.
	start := time.Now()
	f, err := fsys.Open("d/uncached")
	must(t, err) // the name and attributes are known
	_, err = f.Read(make([]byte, 10))
	f.Close()
	if !errnoIs(err, syscall.EIO) {
		t.Fatalf("read of uncached data during the outage: %v, want EIO", err)
	}
	if el := time.Since(start); el > 3*bound {
		t.Fatalf("uncached read failed after %v; bound %v", el, bound)
	}
	if _, err := fsys.Stat("d/never-seen"); !errnoIs(err, syscall.EIO) {
		t.Fatalf("Stat of an unknown name during the outage: %v, want EIO", err)
	}
	// A write goes into the cache; its Close (COMMIT) cannot reach the
	// upstream and says so; the data stays dirty.
	w, err := fsys.OpenFile("w", os.O_RDWR, 0)
	must(t, err)
	_, err = w.Write([]byte("during-outage"))
	must(t, err)
	if err := w.Close(); !errnoIs(err, syscall.EIO) {
		t.Fatalf("Close of a written file during the outage: %v, want EIO", err)
	}

	must(t, up.Start())
	deadline := time.Now().Add(20 * time.Second)
	for fsys.Stats().UpstreamDown {
		if time.Now().After(deadline) {
			t.Fatal("the FS did not see the upstream come back")
		}
		time.Sleep(50 * time.Millisecond)
	}
	must(t, fsys.Sync())
	if got, err := os.ReadFile(filepath.Join(up.Dir, "w")); err != nil || string(got) != "during-outage" {
		t.Fatalf("upstream after the outage: %q, %v", got, err)
	}
	if !bytes.Equal(readFile(t, fsys, "d/uncached"), b) {
		t.Fatal("read after the outage differs")
	}
	out := logs.String()
	if n, m := strings.Count(out, "billyfs: upstream unreachable:"), strings.Count(out, "upstream reachable again"); n != 1 || m != 1 {
		t.Fatalf("outage logged %d times, its end %d times; want once each:\n%s", n, m, out)
	}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// ServeStale bounds the age of what is served: once the last validation
// of an answer is older than ServeStale, the FS fails (EIO) instead of
// answering, until the upstream is back.
func TestServeStaleBound(t *testing.T) {
	up := startRestartable(t)
	a := randBytes(14, 100_000)
	must(t, os.WriteFile(filepath.Join(up.Dir, "a"), a, 0o644))
	const serveStale = 3 * time.Second
	fsys, err := billyfs.New(t.Context(), billyfs.Options{Addr: up.Addr, CacheDir: t.TempDir(),
		ServeStale: serveStale, OutageDetect: 200 * time.Millisecond, Timeout: time.Second,
		AttrTimeout: 50 * time.Millisecond, Connections: 1})
	must(t, err)
	defer fsys.Close()
	if !bytes.Equal(readFile(t, fsys, "a"), a) {
		t.Fatal("read differs")
	}
	validated := time.Now()
	up.Stop()
	time.Sleep(100 * time.Millisecond)
	if !bytes.Equal(readFile(t, fsys, "a"), a) {
		t.Fatal("stale read differs")
	}
	if time.Since(validated) >= serveStale {
		t.Fatalf("machine too slow: the stale read ended %v after validation (ServeStale %v)", time.Since(validated), serveStale)
	}
	time.Sleep(time.Until(validated.Add(serveStale + 200*time.Millisecond)))
	if _, err := fsys.Stat("a"); !errnoIs(err, syscall.EIO) {
		t.Fatalf("Stat %v after the last validation (ServeStale %v): %v, want EIO", time.Since(validated), serveStale, err)
	}
	if _, err := fsys.Open("a"); !errnoIs(err, syscall.EIO) {
		t.Fatalf("Open past ServeStale: %v, want EIO", err)
	}
	must(t, up.Start())
	deadline := time.Now().Add(20 * time.Second)
	for fsys.Stats().UpstreamDown && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !bytes.Equal(readFile(t, fsys, "a"), a) {
		t.Fatal("read after the outage differs")
	}
}

// Without ServeStale nothing is served stale: once the cached attributes
// expire, Stat and open wait for the upstream and fail with its timeout.
func TestServeStaleOff(t *testing.T) {
	up := startRestartable(t)
	a := randBytes(13, 100_000)
	must(t, os.WriteFile(filepath.Join(up.Dir, "a"), a, 0o644))
	const bound = 1 * time.Second
	fsys, err := billyfs.New(t.Context(), billyfs.Options{Addr: up.Addr, CacheDir: t.TempDir(),
		Timeout: bound, AttrTimeout: 50 * time.Millisecond, Connections: 1})
	must(t, err)
	defer fsys.Close()
	if !bytes.Equal(readFile(t, fsys, "a"), a) {
		t.Fatal("read differs")
	}
	up.Stop()
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if _, err := fsys.Open("a"); !errnoIs(err, syscall.ETIMEDOUT) {
		t.Fatalf("open during the outage without ServeStale: %v, want ETIMEDOUT", err)
	}
	if el := time.Since(start); el < bound/2 {
		t.Fatalf("open failed after %v: it did not wait for the upstream", el)
	}
	if _, err := fsys.Stat("a"); !errnoIs(err, syscall.ETIMEDOUT) {
		t.Fatalf("stat during the outage without ServeStale: %v, want ETIMEDOUT", err)
	}
	if st := fsys.Stats(); st.Outages != 0 || st.StaleAnswers != 0 {
		t.Fatalf("ServeStale off, yet outages %d stale answers %d", st.Outages, st.StaleAnswers)
	}
	must(t, up.Start())
	if !bytes.Equal(readFile(t, fsys, "a"), a) {
		t.Fatal("read after the outage differs")
	}
}
