package fscache

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

// TestFDExhaustionShrinksCache: the program around the cache holds most of
// the process's descriptors (RLIMIT_NOFILE 64, all but 6 taken after Open),
// so backing opens hit EMFILE long before MaxOpenFiles (32). Each such open
// closes an evictable fd of the cache and tries again: 300 cookies, up to 4
// in use at once, are written and read back without one ErrCacheUnavailable,
// and Stats.FDExhausted counts the EMFILEs. Before this, every EMFILE made
// the cache step aside for that file (the caller went to the server and
// the cached data was invalidated), so a program short of descriptors had
// practically no cache.
func TestFDExhaustionShrinksCache(t *testing.T) {
	if os.Getenv(childEnv) == "fdexhaust" {
		fdExhaustChild(t, os.Getenv("FSCACHE_TEST_DIR"))
		return
	}
	cmd := runChild(t, "TestFDExhaustionShrinksCache", "fdexhaust", t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fdexhaust: ok") {
		t.Fatalf("child failed: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "fdexhaust:") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

func fdExhaustChild(t *testing.T, dir string) {
	lim := syscall.Rlimit{Cur: 64, Max: 64}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("setrlimit: %v", err)
	}
	opts := testOptions()
	opts.MaxOpenFiles = 32
	c := openTest(t, dir, opts)
	v := mustVolume(t, c, "vol")
	// Take every descriptor left, then give 6 back.
	var hog []*os.File
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			if !errors.Is(err, syscall.EMFILE) {
				t.Fatal(err)
			}
			break
		}
		hog = append(hog, f)
	}
	for _, f := range hog[len(hog)-6:] {
		f.Close()
	}
	hog = hog[:len(hog)-6]
	defer func() {
		for _, f := range hog {
			f.Close()
		}
	}()

	const n, inUse = 300, 4
	cks := make([]*Cookie, n)
	var window []*Cookie
	for i := range n {
		ck := mustCookie(t, v, fmt.Sprint("c", i), "v1", 4096)
		cks[i] = ck
		if err := ck.Use(true); err != nil {
			t.Fatalf("cookie %d: Use: %v", i, err)
		}
		if _, err := ck.WriteAt(pattern(byte(i), 0, 4096), 0); err != nil {
			t.Fatalf("cookie %d: WriteAt with the process out of descriptors: %v", i, err)
		}
		window = append(window, ck)
		if len(window) > inUse {
			if err := window[0].Unuse(nil, -1); err != nil {
				t.Fatal(err)
			}
			window = window[1:]
		}
	}
	for _, ck := range window {
		ck.Unuse(nil, -1)
	}
	for i, ck := range cks {
		if err := ck.Use(false); err != nil {
			t.Fatal(err)
		}
		if err := checkRead(ck, 0, pattern(byte(i), 0, 4096)); err != nil {
			t.Fatalf("cookie %d: read back with the process out of descriptors: %v", i, err)
		}
		ck.Unuse(nil, -1)
	}
	st := c.Stats()
	if st.FDExhausted == 0 {
		t.Fatalf("no open hit EMFILE: the test did not exhaust the descriptors (%d held)", len(hog))
	}
	if st.NoSpace != 0 || st.ReadMisses != 0 {
		t.Fatalf("the cache stepped aside: %d writes refused, %d read misses", st.NoSpace, st.ReadMisses)
	}
	fmt.Printf("fdexhaust: ok cookies=%d hogged_fds=%d emfile_opens=%d peak_open=%d opens=%d evictions=%d+%d\n",
		n, len(hog), st.FDExhausted, st.PeakOpenFiles, st.Opens, st.LRUEvictions, st.InUseEvictions)
}
