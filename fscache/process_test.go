package fscache

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfscache/nfscache/writeback"
)

// Tests in this file re-exec the test binary so that a process-wide
// setting (RLIMIT_NOFILE) or a process death does not touch other tests.
const childEnv = "FSCACHE_TEST_CHILD"

func runChild(t *testing.T, test, mode, dir string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, "FSCACHE_TEST_DIR="+dir)
	return cmd
}

// TestManyCookiesLowRlimit cycles 10 000 cookies through a cache with
// MaxOpenFiles=32 in a process whose RLIMIT_NOFILE is 256: the peak of
// open backing fds stays ≤ 32 (counter and /proc/self/fd), with in-use and
// pinned cookies mixed in, and a second pass reads the data back through
// reopened files.
func TestManyCookiesLowRlimit(t *testing.T) {
	if os.Getenv(childEnv) == "manycookies" {
		manyCookiesChild(t, os.Getenv("FSCACHE_TEST_DIR"))
		return
	}
	cmd := runChild(t, "TestManyCookiesLowRlimit", "manycookies", t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "manycookies: ok") {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "manycookies:") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

func manyCookiesChild(t *testing.T, dir string) {
	lim := syscall.Rlimit{Cur: 256, Max: 256}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("setrlimit: %v", err)
	}
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	if lim.Cur != 256 {
		t.Fatalf("RLIMIT_NOFILE is %d", lim.Cur)
	}
	const n, maxOpen = 10000, 32
	opts := testOptions()
	opts.MaxOpenFiles = maxOpen
	c := openTest(t, dir, opts)
	v := mustVolume(t, c, "vol")
	fs := &cacheFS{t: t, files: map[*writeback.Inode]*pinFile{}}
	type live struct {
		ino *writeback.Inode
		f   *pinFile
	}
	var window []live
	kept := map[int]*Cookie{}
	maxSeen := 0
	for i := 0; i < n; i++ {
		ino, f := newPinFile(t, fs, v, fmt.Sprint("c", i), 1024)
		ck := f.ck
		if err := ck.Use(true); err != nil {
			t.Fatal(err)
		}
		data := pattern(byte(i), 0, 1024)
		if _, err := ck.WriteAt(data, 0); err != nil {
			t.Fatalf("cookie %d: %v", i, err)
		}
		if i%8 == 0 { // a dirtied file: pinned until written back
			dirty(t, ino, f, 0, data)
		}
		window = append(window, live{ino, f})
		// More in-use cookies than fds for the first half (in-use unpinned
		// ones lose their fds), fewer for the second (unused cookies'
		// fds are evicted from the LRU).
		win := 20
		if i < n/2 {
			win = 48
		}
		for len(window) > win {
			// The oldest leaves: written back (unpinned) and closed; half
			// are relinquished, half stay acquired and unused, their fds
			// left to the LRU.
			old := window[0]
			window = window[1:]
			syncInode(t, fs, old.ino)
			if err := old.f.ck.Unuse(nil, -1); err != nil {
				t.Fatal(err)
			}
			var k int
			fmt.Sscanf(old.ino.Owner().(string), "c%d", &k)
			if k%4 != 0 {
				if err := old.f.ck.Relinquish(false); err != nil {
					t.Fatal(err)
				}
			} else {
				kept[k] = old.f.ck
			}
		}
		if i%250 == 0 {
			maxSeen = max(maxSeen, backingFDs(t, c))
		}
	}
	for _, l := range window {
		syncInode(t, fs, l.ino)
		l.f.ck.Unuse(nil, -1)
		l.f.ck.Relinquish(false)
	}
	// Second pass: every 10th cookie is acquired again and read back.
	for i := 0; i < n; i += 10 {
		ck, err := v.AcquireCookie([]byte(fmt.Sprint("c", i)), []byte("v1"), 1024)
		if errors.Is(err, ErrAlreadyAcquired) {
			ck = kept[i] // still acquired from the first pass: its fd is reopened
		} else if err != nil {
			t.Fatal(err)
		}
		ck.Use(false)
		if err := checkRead(ck, 0, pattern(byte(i), 0, 1024)); err != nil {
			t.Fatalf("cookie %d: %v", i, err)
		}
		ck.Unuse(nil, -1)
		ck.Relinquish(false)
		if i%500 == 0 {
			maxSeen = max(maxSeen, backingFDs(t, c))
		}
	}
	st := c.Stats()
	if st.PeakOpenFiles > maxOpen || maxSeen > maxOpen || st.WritebackReopens != 0 {
		t.Fatalf("peak %d, seen %d, writeback reopens %d", st.PeakOpenFiles, maxSeen, st.WritebackReopens)
	}
	if st.Pins < n/8 || st.LRUEvictions == 0 || st.Reopens == 0 || st.InUseEvictions == 0 || st.PeakOpenFiles != maxOpen {
		t.Fatalf("the bound was not exercised: %+v", st)
	}
	fmt.Printf("manycookies: ok cookies=%d peak_open=%d proc_fd_max_seen=%d opens=%d reopens=%d lru_evictions=%d inuse_evictions=%d pins=%d rlimit=%d\n",
		n, st.PeakOpenFiles, maxSeen, st.Opens, st.Reopens, st.LRUEvictions, st.InUseEvictions, st.Pins, lim.Cur)
}

// TestCrashConsistency kills a child process in the middle of writing —
// once exactly in the middle of a backing-file write (half the bytes
// written, then exit without Close), once by SIGKILL at a random moment —
// and checks the reopened cache: it opens, and every range it reports
// present holds exactly the bytes written there; the half-written range is
// not present.
func TestCrashConsistency(t *testing.T) {
	switch os.Getenv(childEnv) {
	case "crash-midwrite":
		crashChild(t, os.Getenv("FSCACHE_TEST_DIR"), true)
		return
	case "crash-loop":
		crashChild(t, os.Getenv("FSCACHE_TEST_DIR"), false)
		return
	}
	t.Run("midwrite", func(t *testing.T) {
		dir := t.TempDir()
		out, err := runChild(t, "TestCrashConsistency", "crash-midwrite", dir).CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 {
			t.Fatalf("child did not die mid-write: %v\n%s", err, out)
		}
		verifyCrashed(t, dir, true)
	})
	t.Run("sigkill", func(t *testing.T) {
		dir := t.TempDir()
		cmd := runChild(t, "TestCrashConsistency", "crash-loop", dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 4096)
		var seen []byte
		for !bytes.Contains(seen, []byte("crash: writing")) {
			n, err := stdout.Read(buf)
			if err != nil {
				t.Fatalf("child: %v %s", err, seen)
			}
			seen = append(seen, buf[:n]...)
		}
		time.Sleep(time.Duration(100+rand.IntN(200)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		verifyCrashed(t, dir, false)
	})
}

func crashChild(t *testing.T, dir string, midWrite bool) {
	opts := testOptions()
	opts.MaxOpenFiles = 8
	writes := 0
	opts.pwrite = func(f *os.File, p []byte, off int64) (int, error) {
		writes++
		if midWrite && writes == 200 {
			// Die in the middle of the write of "victim": half the bytes
			// reach the file, the call never returns.
			f.WriteAt(p[:len(p)/2], off)
			os.Exit(3)
		}
		return f.WriteAt(p, off)
	}
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, c, "vol")
	var cks []*Cookie
	for i := 0; i < 20; i++ {
		ck := mustCookie(t, v, fmt.Sprint("c", i), "v1", 0)
		ck.Use(true)
		cks = append(cks, ck)
	}
	victim := mustCookie(t, v, "victim", "v1", 0)
	victim.Use(true)
	fmt.Println("crash: writing")
	r := rand.New(rand.NewPCG(7, 7))
	for i := 0; ; i++ {
		if midWrite && writes == 199 {
			victim.WriteAt(pattern(1, 0, 64<<10), 0)
		}
		ck := cks[r.IntN(len(cks))]
		off := r.Int64N(1 << 20)
		n := 1 + r.IntN(64<<10)
		if _, err := ck.WriteAt(pattern(1, off, n), off); err != nil {
			t.Fatal(err)
		}
		if i%50 == 0 {
			// Other record kinds interleave: aux updates, invalidations.
			ck.Unuse([]byte("v1"), -1)
			ck.Use(true)
		}
	}
}

func verifyCrashed(t *testing.T, dir string, midWrite bool) {
	c := openTest(t, dir, testOptions())
	v := mustVolume(t, c, "vol")
	total := int64(0)
	for i := 0; i < 20; i++ {
		ck, err := v.AcquireCookie([]byte(fmt.Sprint("c", i)), []byte("v1"), 1<<20+64<<10)
		if err != nil {
			t.Fatal(err)
		}
		ck.Use(false)
		rs, _ := ck.Present(0, 1<<21)
		for _, r := range rs {
			if err := checkRead(ck, r.Off, pattern(1, r.Off, int(r.Len))); err != nil {
				t.Fatalf("c%d present %v: %v", i, r, err)
			}
			total += r.Len
		}
	}
	if total == 0 {
		t.Fatal("nothing survived the crash: the test proved nothing")
	}
	victim := mustCookie(t, v, "victim", "v1", 64<<10)
	victim.Use(false)
	rs, _ := victim.Present(0, 1<<20)
	if midWrite && len(rs) != 0 {
		t.Fatalf("half-written range served as present: %v", rs)
	}
	t.Logf("verified %d present bytes after crash (%s)", total, map[bool]string{true: "mid-write", false: "SIGKILL"}[midWrite])
}
