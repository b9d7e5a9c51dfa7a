package integration

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nfscache/nfscache/client"
)

var bigFile = flag.Bool("bigfile", false, "TestServeMemoryBound streams 1 GiB instead of 256 MiB")

// vmHWM is the peak resident set size of a process, from /proc/PID/status.
func vmHWM(t testing.TB, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

// TestServeMemoryBound streams a file larger than the memory bound
// (256 MiB, 1 GiB with -bigfile) into and out of `nfsd-cache serve` (a
// child process exporting a directory), with 16 WRITEs/READs of 1 MiB in
// flight on each of 2 connections, and checks the server's peak RSS
// stays under 128 MiB: the server holds at most its in-flight requests
// (2 × 16 × 1 MiB buffers plus pooled reply buffers), never the file.
func TestServeMemoryBound(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: streams 256 MiB through a child server")
	}
	const bound = 128 << 20
	size := 256 << 20
	if *bigFile {
		size = 1 << 30
	}
	p := &serveProc{t: t, bin: buildNfsdCache(t), addr: freePort(t), root: t.TempDir(), stateDir: t.TempDir()}
	p.start()
	t.Cleanup(p.kill)
	startRSS := vmHWM(t, p.cmd.Process.Pid)
	c := relDial(t, p.addr, client.Options{Connections: 2, Timeout: time.Minute})
	ctx := relCtx(t)
	f, err := c.Create(ctx, c.Root(), "big", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		t.Fatal(err)
	}
	// Stream in 32 MiB pieces so the test process itself stays small.
	const piece = 32 << 20
	want := sha256.New()
	start := time.Now()
	for off := 0; off < size; off += piece {
		data := relData(uint64(off), piece)
		want.Write(data)
		if _, err := c.WriteAt(ctx, f.Handle, data, int64(off)); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Commit(ctx, f.Handle, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	wdur := time.Since(start)
	got := sha256.New()
	buf := make([]byte, piece)
	start = time.Now()
	for off := 0; off < size; off += piece {
		if _, err := c.ReadAt(ctx, f.Handle, buf, int64(off)); err != nil {
			t.Fatal(err)
		}
		got.Write(buf)
	}
	rdur := time.Since(start)
	if string(got.Sum(nil)) != string(want.Sum(nil)) {
		t.Fatal("streamed file differs")
	}
	peak := vmHWM(t, p.cmd.Process.Pid)
	t.Logf("streamed %d MiB in (%.0f MB/s) and out (%.0f MB/s) of nfsd-cache serve: peak RSS %d MiB (at start %d MiB), bound %d MiB",
		size>>20, float64(size)/wdur.Seconds()/1e6, float64(size)/rdur.Seconds()/1e6, peak>>20, startRSS>>20, bound>>20)
	if peak > bound {
		t.Fatalf("server peak RSS %d MiB over the %d MiB bound for a %d MiB file", peak>>20, bound>>20, size>>20)
	}
}
