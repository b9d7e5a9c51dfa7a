package server

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	"github.com/willscott/go-nfs-client/nfs"
)

// The default of Options.MaxOpenFiles follows the soft RLIMIT_NOFILE.
func TestDefaultMaxOpenFiles(t *testing.T) {
	for _, c := range []struct {
		soft uint64
		want int
	}{{0, 8}, {10, 8}, {16, 8}, {64, 32}, {128, 64}, {512, 256}, {1 << 20, 256}, {^uint64(0), 256}} {
		if got := defaultMaxOpenFiles(c.soft); got != c.want {
			t.Errorf("defaultMaxOpenFiles(%d) = %d, want %d", c.soft, got, c.want)
		}
	}
}

// emfileFS injects the fault a low RLIMIT_NOFILE causes: an open beyond
// limit files open at once fails with EMFILE, as the kernel would.
type emfileFS struct {
	billy.Filesystem
	limit int

	mu    sync.Mutex
	open  int
	fails int
}

type countedFile struct {
	billy.File
	fs   *emfileFS
	once sync.Once
}

func (f *countedFile) Close() error {
	f.once.Do(func() {
		f.fs.mu.Lock()
		f.fs.open--
		f.fs.mu.Unlock()
	})
	return f.File.Close()
}

func (e *emfileFS) OpenFile(p string, flag int, perm os.FileMode) (billy.File, error) {
	e.mu.Lock()
	if e.open >= e.limit {
		e.fails++
		e.mu.Unlock()
		return nil, &os.PathError{Op: "open", Path: p, Err: syscall.EMFILE}
	}
	e.open++
	e.mu.Unlock()
	f, err := e.Filesystem.OpenFile(p, flag, perm)
	if err != nil {
		e.mu.Lock()
		e.open--
		e.mu.Unlock()
		return nil, err
	}
	return &countedFile{File: f, fs: e}, nil
}

// The open-file cache, allowed more files (100) than the process may
// open (4): a miss that hits EMFILE closes the least recently used idle
// file and succeeds; with every open file in use, it fails after a
// bounded number of retries with the EMFILE error (nothing hangs), and
// succeeds again once a file is released.
func TestOpenFilesEvictOnEMFILE(t *testing.T) {
	dir := t.TempDir()
	for i := range 6 {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), []byte{byte(i)}, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fsys := &emfileFS{Filesystem: osfs.New(dir, osfs.WithBoundOS()), limit: 4}
	o, err := newOpenFiles(fsys, 100, false)
	if err != nil {
		t.Fatal(err)
	}
	defer o.closeAll()
	use := func(id uint64, write bool) (*openFile, error) {
		return o.acquire(id, fmt.Sprint(id), write)
	}
	check := func(of *openFile, id uint64) {
		t.Helper()
		b := make([]byte, 1)
		if n, err := of.readAt(b, 0); err != nil || n != 1 || b[0] != byte(id) {
			t.Fatalf("read %d: %d %v %v", id, n, b, err)
		}
	}
	// Four files opened and released: idle in the cache, the fd budget full.
	for id := range uint64(4) {
		of, err := use(id, false)
		if err != nil {
			t.Fatalf("acquire %d: %v", id, err)
		}
		check(of, id)
		o.release(of)
	}
	of, err := use(4, true)
	if err != nil {
		t.Fatalf("acquire 4 with 4 idle files cached: %v", err)
	}
	check(of, 4)
	if _, err := of.writeAt([]byte{44}, 1); err != nil {
		t.Fatal(err)
	}
	o.release(of)
	if n := o.fdExhaustedCount(); n != 1 {
		t.Errorf("fdExhaustedCount = %d, want 1", n)
	}
	if n := o.open(); n != 4 {
		t.Errorf("cache holds %d fds, want 4", n)
	}
	// The oldest (id 0) went; the others are still cached and usable.
	if _, ok := o.lru.Peek(0); ok {
		t.Error("id 0, the least recently used, is still cached")
	}
	for id := uint64(1); id <= 4; id++ {
		of, err := use(id, false)
		if err != nil {
			t.Fatalf("acquire %d again: %v", id, err)
		}
		check(of, id)
		defer o.release(of) // all four stay in use
	}
	before := o.fdExhaustedCount()
	if _, err := use(5, false); !errors.Is(err, syscall.EMFILE) {
		t.Fatalf("acquire with every fd in use: %v, want EMFILE after retries", err)
	}
	if n := o.fdExhaustedCount() - before; n != fdRetries+1 {
		t.Errorf("%d EMFILE opens counted, want %d (first try + %d retries)", n, fdRetries+1, fdRetries)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "4")); !bytes.Equal(got, []byte{4, 44}) {
		t.Errorf("file 4 holds %v, want [4 44]", got)
	}
	fsys.mu.Lock()
	open := fsys.open
	fsys.mu.Unlock()
	if open != 4 {
		t.Errorf("%d files open in the filesystem, want 4", open)
	}
}

// A use released later lets a waiting retry through: openRetrying
// pauses when nothing cached is idle, and an fd given back by another
// party (here: a file closed outside the cache) is picked up.
func TestOpenRetryingWaitsForAFreeFD(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsys := &emfileFS{Filesystem: osfs.New(dir, osfs.WithBoundOS()), limit: 1}
	o, err := newOpenFiles(fsys, 8, false)
	if err != nil {
		t.Fatal(err)
	}
	defer o.closeAll()
	other, err := fsys.OpenFile("f", os.O_RDONLY, 0) // held outside the cache
	if err != nil {
		t.Fatal(err)
	}
	var closed sync.WaitGroup
	closed.Add(1)
	go func() {
		defer closed.Done()
		// Close it once the cache has seen EMFILE at least once.
		for deadline := time.Now().Add(10 * time.Second); o.fdExhaustedCount() == 0 && time.Now().Before(deadline); {
			time.Sleep(100 * time.Microsecond)
		}
		other.Close()
	}()
	of, err := o.acquire(1, "f", false)
	closed.Wait()
	if err != nil {
		t.Fatalf("acquire after the other fd was closed: %v", err)
	}
	o.release(of)
	if o.fdExhaustedCount() == 0 {
		t.Error("the open never hit EMFILE: the wait was not exercised")
	}
}

// fdlimitChildEnv switches TestServerUnderFDLimit to the child's side:
// "default" or "oversized" (see the test).
const fdlimitChildEnv = "NFSCACHE_SERVER_FDLIMIT_CHILD"

const (
	fdlimitNofile  = 128
	fdlimitFiles   = 500
	fdlimitClients = 4
)

func fdlimitData(i int) []byte {
	b := make([]byte, 1+(i*7919)%(16<<10))
	for k := range b {
		b[k] = byte(i*31 + k*7)
	}
	return b
}

// TestServerUnderFDLimit runs a server in a child process (this test
// binary re-executed) whose RLIMIT_NOFILE is 128, set before the server
// opens anything, serving 4 go-nfs-client mounts in the same process
// (whose sockets count against the limit too) that work on 500 files,
// about 4× the limit:
//
//   - default: Options{} (MaxOpenFiles derived from the limit: 64). Each
//     client creates and writes (FILE_SYNC, then COMMIT) its quarter of
//     the files, then reads back all 500. No call fails, every byte
//     matches, no open ever hit EMFILE and the process stayed below 128
//     fds.
//   - oversized: MaxOpenFiles 1024, far above the limit, over 500
//     existing empty files (CREATE would make go-nfs open the file
//     itself, outside the open-file cache; see the report on
//     exportFS.OpenFile). Clients write and read them as above: the cache
//     fills every free descriptor, then each miss hits EMFILE, closes an
//     idle cached file and retries; no call fails, and Stats.FDExhausted
//     shows the path was taken.
func TestServerUnderFDLimit(t *testing.T) {
	if mode := os.Getenv(fdlimitChildEnv); mode != "" {
		fdlimitChild(t, mode)
		return
	}
	for _, mode := range []string{"default", "oversized"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^TestServerUnderFDLimit$", "-test.count=1", "-test.v")
			cmd.Env = append(os.Environ(), fdlimitChildEnv+"="+mode, "TMPDIR="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child (%s) failed: %v\n%s", mode, err, out)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "RESULT") {
					t.Log(strings.TrimSpace(l))
				}
			}
		})
	}
}

func fdlimitChild(t *testing.T, mode string) {
	lim := syscall.Rlimit{Cur: fdlimitNofile, Max: fdlimitNofile}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("setrlimit: %v", err)
	}
	dir, fsys := diskFS(t)
	opts := Options{}
	if mode == "oversized" {
		opts.MaxOpenFiles = 1024
		for i := range fdlimitFiles {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	s, addr := startServer(t, fsys, opts)
	if mode == "default" && s.opts.MaxOpenFiles != fdlimitNofile/2 {
		t.Fatalf("default MaxOpenFiles under RLIMIT_NOFILE %d is %d, want %d", fdlimitNofile, s.opts.MaxOpenFiles, fdlimitNofile/2)
	}
	var peakMu sync.Mutex
	peak := 0
	// Counting needs a descriptor of its own: with MaxOpenFiles 1024 the
	// cache holds every free one by design, so the count is skipped then.
	sample := func() {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			return
		}
		n := len(ents)
		peakMu.Lock()
		peak = max(peak, n)
		peakMu.Unlock()
	}
	targets := make([]*nfs.Target, fdlimitClients)
	for c := range targets {
		targets[c] = mount(t, addr)
	}
	var wg sync.WaitGroup
	errs := make(chan error, fdlimitClients)
	for c, v := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < fdlimitFiles; i += fdlimitClients {
				if err := fdlimitWrite(v, i); err != nil {
					errs <- err
					return
				}
				if i%25 == 0 {
					sample()
				}
			}
		}()
	}
	wg.Wait()
	for c, v := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range fdlimitFiles {
				i := (k + c*fdlimitFiles/fdlimitClients) % fdlimitFiles
				if err := fdlimitRead(v, i); err != nil {
					errs <- err
					return
				}
				if k%25 == 0 {
					sample()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := s.Stats()
	if err := s.Close(); err != nil { // gives the cache's fds back for the check
		t.Fatal(err)
	}
	for i := range fdlimitFiles {
		got, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)))
		if err != nil || !bytes.Equal(got, fdlimitData(i)) {
			t.Fatalf("f%03d on disk: %d bytes (%v), want %d", i, len(got), err, len(fdlimitData(i)))
		}
	}
	fmt.Printf("RESULT %s: RLIMIT_NOFILE %d, MaxOpenFiles %d, peak %d fds in the process, cache holds %d, %d opens hit EMFILE\n",
		mode, fdlimitNofile, s.opts.MaxOpenFiles, peak, st.OpenFiles, st.FDExhausted)
	switch {
	case mode == "default" && peak >= fdlimitNofile:
		t.Errorf("process peaked at %d fds, the limit is %d", peak, fdlimitNofile)
	case mode == "default" && st.FDExhausted != 0:
		t.Errorf("%d opens hit EMFILE with the default MaxOpenFiles: it leaves too little headroom", st.FDExhausted)
	case mode == "oversized" && st.FDExhausted == 0:
		t.Error("no open hit EMFILE with MaxOpenFiles 1024 under a limit of 128: the eviction path was not exercised")
	}
}

// fdlimitWrite creates (or opens) file i through v, writes its content
// (FILE_SYNC WRITEs) and commits it.
func fdlimitWrite(v *nfs.Target, i int) error {
	name := fmt.Sprintf("/f%03d", i)
	f, err := v.OpenFile(name, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	if _, err := f.Write(fdlimitData(i)); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("commit %s: %w", name, err)
	}
	return nil
}

// fdlimitRead reads file i through v and compares it.
func fdlimitRead(v *nfs.Target, i int) error {
	name := fmt.Sprintf("/f%03d", i)
	f, err := v.Open(name)
	if err != nil {
		return fmt.Errorf("open %s: %w", name, err)
	}
	want := fdlimitData(i)
	got := make([]byte, len(want)+1)
	n, err := f.ReadAt(got, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if !bytes.Equal(got[:n], want) {
		return fmt.Errorf("read %s: %d bytes differ from the %d written", name, n, len(want))
	}
	return nil
}
