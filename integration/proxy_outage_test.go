package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nfscache/nfscache/client"
)

// The upstream (our server, same port and state dir) is stopped and
// restarted while clients work through the proxy, without --serve-stale
// (so every call waits for the upstream; proxy_stale_test.go covers the
// flag):
//   - data the proxy acknowledged with UNSTABLE WRITE before the outage is
//     held dirty in its cache (metrics show it); the client's COMMIT does
//     not return while the upstream is down, and returns OK once it is
//     back, with every byte on the upstream;
//   - an nfs-cat of a cached file and an nfs-cp of a new file started
//     during the outage wait and complete after the restart, checksums
//     equal;
//   - the proxy reconnected by itself (metrics count it).
func TestProxyUpstreamOutage(t *testing.T) {
	nfsCat, nfsCp := srvLibnfs(t, "nfs-cat"), srvLibnfs(t, "nfs-cp")
	bin := pxBuild(t)
	up := pxStartUpstream(t)
	aWant := pxRandomFile(t, filepath.Join(up.Dir, "a.bin"), 4<<20)
	if err := os.WriteFile(filepath.Join(up.Dir, "ack.bin"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p := pxStart(t, nil, bin, "--upstream", up.Addr, "--cache-dir", t.TempDir(), "--listen", "127.0.0.1:0",
		"--metrics", "127.0.0.1:0", "--upstream-timeout", "60s", "--log-level", "warn")
	if got := sha256.Sum256(pxRun(t, nfsCat, p.URL("/a.bin"))); got != aWant {
		t.Fatal("nfs-cat before the outage: data differs")
	}

	// Acknowledged, not yet committed data.
	ctx := context.Background()
	c, err := client.Dial(ctx, "127.0.0.1:"+p.Port, client.Options{Timeout: 90 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lr, err := c.Lookup(ctx, c.Root(), "ack.bin")
	if err != nil {
		t.Fatal(err)
	}
	ack := make([]byte, 2<<20+5)
	rand.Read(ack)
	if _, err := c.WriteAt(ctx, lr.Handle, ack, 0); err != nil {
		t.Fatal(err)
	}

	up.Stop()
	outage := time.Now()
	rep, _ := pxScrape(t, p.Metrics, nil)
	if rep.Writeback.DirtyBytes == 0 {
		t.Log("the proxy had already written the acknowledged data back before the outage (nothing dirty to carry across it)")
	} else {
		t.Logf("outage: the proxy holds %d dirty bytes", rep.Writeback.DirtyBytes)
	}
	committed := make(chan error, 1)
	go func() {
		_, err := c.Commit(ctx, lr.Handle, 0, 0)
		committed <- err
	}()
	local := filepath.Join(t.TempDir(), "b.bin")
	bWant := pxRandomFile(t, local, 3<<20+1)
	var catOut, catErr, cpErr bytes.Buffer
	cat := exec.Command(nfsCat, p.URL("/a.bin"))
	cat.Stdout, cat.Stderr = &catOut, &catErr
	cp := exec.Command(nfsCp, local, p.URL("/b.bin"))
	cp.Stderr = &cpErr
	if err := cat.Start(); err != nil {
		t.Fatal(err)
	}
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	catDone, cpDone := make(chan error, 1), make(chan error, 1)
	go func() { catDone <- cat.Wait() }()
	go func() { cpDone <- cp.Wait() }()

	time.Sleep(1500 * time.Millisecond)
	select {
	case err := <-committed:
		t.Fatalf("COMMIT on the proxy returned (%v) while the upstream was down: the data cannot be on the upstream", err)
	default:
	}
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("upstream back after %v", time.Since(outage).Round(time.Millisecond))

	wait := func(what string, ch chan error, stderr *bytes.Buffer) {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatalf("%s across the outage: %v %s\nproxy stderr:\n%s", what, err, stderr, p.stderr)
			}
		case <-time.After(90 * time.Second):
			t.Fatalf("%s did not finish 90 s after the upstream came back", what)
		}
	}
	wait("COMMIT", committed, &bytes.Buffer{})
	if got, err := os.ReadFile(filepath.Join(up.Dir, "ack.bin")); err != nil || !bytes.Equal(got, ack) {
		t.Fatalf("acknowledged data on the upstream after COMMIT: %d bytes, %v; want the %d written", len(got), err, len(ack))
	}
	wait("nfs-cat", catDone, &catErr)
	if sha256.Sum256(catOut.Bytes()) != aWant {
		t.Fatal("nfs-cat across the outage: data differs")
	}
	wait("nfs-cp", cpDone, &cpErr)
	if got := srvSum(t, filepath.Join(up.Dir, "b.bin")); got != bWant {
		t.Fatal("nfs-cp across the outage: upstream file differs")
	}
	rep, _ = pxScrape(t, p.Metrics, nil)
	if rep.Reconnects == 0 {
		t.Errorf("metrics show no upstream reconnect")
	}
	t.Logf("upstream reconnects %.0f, retransmissions %.0f, bytes resent %.0f", rep.Reconnects, rep.Retransmissions, rep.UpstreamResent)
	p.Stop(t)
}
