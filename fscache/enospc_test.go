package fscache

import (
	"errors"
	"fmt"
	"os/exec"
	"syscall"
	"testing"
)

// TestRealENOSPC runs the cache on a real 2 MiB tmpfs with the real statfs:
// filling it makes backing writes fail with ENOSPC, which the cache turns
// into ErrCacheUnavailable (the caller goes to the server; nothing is
// recorded); culling then frees space by the cachefilesd thresholds and
// writes are accepted again, while the in-use object keeps its data.
// TestENOSPCStepsAside proves the same step-aside with an injected fault
// where mounting is not permitted.
func TestRealENOSPC(t *testing.T) {
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v: %s); TestENOSPCStepsAside covers ENOSPC by fault injection", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", mnt).Run() })
	opts := Options{CullInterval: -1} // real statfs
	c, err := Open(mnt+"/cache", opts)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v := mustVolume(t, c, "vol")
	keep := mustCookie(t, v, "keep", "x", 0)
	keep.Use(true)
	if _, err := keep.WriteAt(pattern(9, 0, 64<<10), 0); err != nil {
		t.Fatal(err)
	}
	var full error
	for i := 0; i < 100 && full == nil; i++ {
		ck := mustCookie(t, v, fmt.Sprint("f", i), "x", 0)
		ck.Use(true)
		_, full = ck.WriteAt(pattern(byte(i), 0, 64<<10), 0)
		ck.Unuse(nil, -1)
	}
	if !errors.Is(full, ErrCacheUnavailable) || !errors.Is(full, syscall.ENOSPC) {
		t.Fatalf("filling the cache filesystem: %v", full)
	}
	if c.Stats().NoSpace == 0 {
		t.Fatal("NoSpace not counted")
	}
	n, err := c.Cull()
	if err != nil || n == 0 {
		t.Fatalf("Cull: %d %v", n, err)
	}
	if c.stopped.Load() {
		t.Fatal("still stopped after culling to brun")
	}
	ck := mustCookie(t, v, "after", "x", 0)
	ck.Use(true)
	if _, err := ck.WriteAt(pattern(7, 0, 32<<10), 0); err != nil {
		t.Fatalf("write after cull: %v", err)
	}
	if err := checkRead(keep, 0, pattern(9, 0, 64<<10)); err != nil {
		t.Fatalf("in-use object lost data to culling: %v", err)
	}
	t.Logf("culled %d objects; %s", n, c.Stats())
}

// TestBackgroundCuller: a write that takes the cache past the MaxBytes cull
// threshold kicks the background culler, which culls without being asked.
func TestBackgroundCuller(t *testing.T) {
	opts := testOptions()
	opts.CullInterval = 1 << 40 // only kicks wake it
	opts.MaxBytes = 64 << 10
	c := openTest(t, t.TempDir(), opts)
	v := mustVolume(t, c, "vol")
	for i := 0; i < 16; i++ {
		ck := mustCookie(t, v, fmt.Sprint("f", i), "x", 0)
		ck.Use(true)
		ck.WriteAt(pattern(1, 0, 8<<10), 0)
		ck.Unuse(nil, -1)
	}
	for c.Stats().Culled == 0 {
		// The culler runs asynchronously; the test waits for its effect
		// (bounded by the test timeout), it does not time it.
		pause()
	}
	if st := c.Stats(); st.CullPasses == 0 || st.Culled == 0 {
		t.Fatalf("stats: %+v", st)
	}
}
