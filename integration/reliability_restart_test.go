package integration

import (
	"bufio"
	"crypto/sha256"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/server"
)

var relSize = flag.Int("rel.size", 16<<20, "bytes of the large file written and read across server restarts")

// TestRestartDuringLargeWrite restarts the in-process server (Close, then
// New on the same port and StateDir) twice while one large WriteAt is in
// flight. The client reconnects, retransmits WRITEs under their xid, and
// Commit sees the new write verifier and resends everything the dead
// instances acknowledged UNSTABLE. The file on disk is byte-identical.
func TestRestartDuringLargeWrite(t *testing.T) {
	s := relStart(t, server.Options{}, nil)
	c := relDial(t, s.Addr, client.Options{MaxIOSize: 64 << 10, Connections: 2, Timeout: time.Minute})
	ctx := relCtx(t)
	f, err := c.Create(ctx, c.Root(), "big", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		t.Fatal(err)
	}
	data := relData(1, *relSize)
	done := make(chan error, 1)
	go func() {
		_, err := c.WriteAt(ctx, f.Handle, data, 0)
		done <- err
	}()
	for _, third := range []uint64{1, 2} { // after 1/3 and 2/3 of the data
		relWaitBytes(t, func() uint64 { return c.Stats().BytesWritten }, uint64(len(data))*third/3)
		s.restart()
	}
	if err := <-done; err != nil {
		t.Fatalf("WriteAt across two restarts: %v", err)
	}
	res, err := c.Commit(ctx, f.Handle, 0, 0)
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	if res.Resent == 0 {
		t.Fatalf("the verifier changed, Commit must resend data acknowledged before the restart: %+v", res)
	}
	sum, n := relFileSum(t, filepath.Join(s.Dir, "big"))
	if n != len(data) || sum != sha256.Sum256(data) {
		t.Fatalf("file on disk: %d bytes, checksum differs from the %d written", n, len(data))
	}
	st := c.Stats()
	t.Logf("2 restarts: resent %d bytes, %d retransmissions, %d reconnects", res.Resent, st.Retransmissions, st.Reconnects)
}

// TestRestartDuringLargeRead restarts the server while a large ReadAt is in
// flight: READ is idempotent, so the client retransmits and the caller gets
// every byte.
func TestRestartDuringLargeRead(t *testing.T) {
	s := relStart(t, server.Options{}, nil)
	data := relData(2, *relSize)
	if err := os.WriteFile(filepath.Join(s.Dir, "big"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	c := relDial(t, s.Addr, client.Options{MaxIOSize: 64 << 10, Connections: 2, Timeout: time.Minute})
	ctx := relCtx(t)
	l, err := c.Lookup(ctx, c.Root(), "big")
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	done := make(chan error, 1)
	go func() {
		n, err := c.ReadAt(ctx, l.Handle, got, 0)
		if err == nil && n != len(got) {
			err = fmt.Errorf("short read %d", n)
		}
		done <- err
	}()
	relWaitBytes(t, func() uint64 { return c.Stats().BytesRead }, uint64(len(data))/3)
	s.restart()
	if err := <-done; err != nil {
		t.Fatalf("ReadAt across a restart: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatal("data read across a restart differs")
	}
	if st := c.Stats(); st.Reconnects == 0 {
		t.Fatalf("no reconnection seen: %+v", st)
	}
}

// serveProc is `nfsd-cache serve` in a child process on a fixed port.
type serveProc struct {
	t              testing.TB
	bin, addr      string
	root, stateDir string
	cmd            *exec.Cmd
}

func buildNfsdCache(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nfsd-cache")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nfscache/nfscache/cmd/nfsd-cache").CombinedOutput()
	if err != nil {
		t.Fatalf("go build nfsd-cache: %v\n%s", err, out)
	}
	return bin
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs the server and waits until it prints its mount line.
func (p *serveProc) start(extra ...string) {
	p.t.Helper()
	for range 100 {
		args := append([]string{"serve", "--listen", p.addr, "--root", p.root, "--state-dir", p.stateDir, "--log-level", "warn"}, extra...)
		cmd := exec.Command(p.bin, args...)
		stdout, _ := cmd.StdoutPipe()
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			p.t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			go func() {
				for sc.Scan() {
				}
			}()
			p.cmd = cmd
			return
		}
		cmd.Wait()
		if !strings.Contains(stderr.String(), "address already in use") {
			p.t.Fatalf("serve exited: %s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Fatal("port never freed")
}

func (p *serveProc) kill() {
	if p.cmd != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		_ = p.cmd.Wait()
		p.cmd = nil
	}
}

// TestServeSIGKILL runs `nfsd-cache serve` as a child process and kills it
// with SIGKILL in the middle of a large write and of a large read, then
// starts it again on the same port and state directory. The client rides
// through both crashes; the bytes on disk and the bytes read are exact.
func TestServeSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: builds nfsd-cache; the in-process restart tests cover the protocol side")
	}
	p := &serveProc{t: t, bin: buildNfsdCache(t), addr: freePort(t), root: t.TempDir(), stateDir: t.TempDir()}
	p.start()
	t.Cleanup(p.kill)
	c := relDial(t, p.addr, client.Options{MaxIOSize: 64 << 10, Timeout: time.Minute})
	ctx := relCtx(t)
	f, err := c.Create(ctx, c.Root(), "big", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		t.Fatal(err)
	}
	data := relData(3, *relSize)
	done := make(chan error, 1)
	go func() {
		_, err := c.WriteAt(ctx, f.Handle, data, 0)
		done <- err
	}()
	relWaitBytes(t, func() uint64 { return c.Stats().BytesWritten }, uint64(len(data))/3)
	p.kill()
	p.start()
	if err := <-done; err != nil {
		t.Fatalf("WriteAt across SIGKILL: %v", err)
	}
	res, err := c.Commit(ctx, f.Handle, 0, 0)
	if err != nil {
		t.Fatalf("Commit after SIGKILL: %v", err)
	}
	sum, n := relFileSum(t, filepath.Join(p.root, "big"))
	if n != len(data) || sum != sha256.Sum256(data) {
		t.Fatalf("after SIGKILL mid-write the file on disk differs (%d bytes of %d)", n, len(data))
	}

	// The handle taken before the crash still reads, and a read survives
	// a second SIGKILL.
	got := make([]byte, len(data))
	rdone := make(chan error, 1)
	before := c.Stats().BytesRead
	go func() {
		_, err := c.ReadAt(ctx, f.Handle, got, 0)
		rdone <- err
	}()
	relWaitBytes(t, func() uint64 { return c.Stats().BytesRead - before }, uint64(len(data))/3)
	p.kill()
	p.start()
	if err := <-rdone; err != nil {
		t.Fatalf("ReadAt across SIGKILL: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatal("data read across SIGKILL differs")
	}
	st := c.Stats()
	t.Logf("2 SIGKILLs: resent %d bytes at Commit, %d retransmissions, %d reconnects", res.Resent, st.Retransmissions, st.Reconnects)
}
