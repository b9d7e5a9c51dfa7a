package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/client"
)

// nfsd-cache proxy --serve-stale across an upstream outage (our server,
// stopped and restarted on the same port, state dir and export dir):
//   - files read before the outage keep coming back byte-identical through
//     nfs-cat while the upstream is down;
//   - an nfs-cat of a file never read fails within the bound (it is not a
//     hang), and a COMMIT of data written during the outage is refused
//     (not acknowledged) within the bound;
//   - data written during the outage (UNSTABLE WRITEs into the proxy's
//     cache) and a new file nfs-cp'd during the outage land byte-identical
//     on the upstream once it is back; the COMMIT then succeeds;
//   - the proxy logs the outage and its end once each and reconnected by
//     itself.
func TestProxyServeStale(t *testing.T) {
	nfsCat, nfsCp := srvLibnfs(t, "nfs-cat"), srvLibnfs(t, "nfs-cp")
	bin := pxBuild(t)
	up := pxStartUpstream(t)
	aWant := pxRandomFile(t, filepath.Join(up.Dir, "a.bin"), 3<<20)
	bWant := pxRandomFile(t, filepath.Join(up.Dir, "b.bin"), 200_000)
	pxRandomFile(t, filepath.Join(up.Dir, "uncached.bin"), 100_000)
	if err := os.WriteFile(filepath.Join(up.Dir, "w.bin"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	const bound = 3 * time.Second // --upstream-timeout
	p := pxStart(t, nil, bin, "--upstream", up.Addr, "--cache-dir", t.TempDir(), "--listen", "127.0.0.1:0",
		"--serve-stale", "5m", "--outage-detect", "500ms", "--upstream-timeout", bound.String(),
		"--attr-timeout", "100ms", "--connections", "2", "--log-level", "info")
	cat := func(name string) ([]byte, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var out, errb bytes.Buffer
		cmd := exec.CommandContext(ctx, nfsCat, p.URL("/"+name))
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := cmd.Run(); err != nil {
			return nil, &catError{err, errb.String()}
		}
		return out.Bytes(), nil
	}
	for name, want := range map[string][32]byte{"a.bin": aWant, "b.bin": bWant} {
		got, err := cat(name)
		if err != nil || sha256.Sum256(got) != want {
			t.Fatalf("nfs-cat %s before the outage: %v, checksum differs", name, err)
		}
	}
	ctx := context.Background()
	c, err := client.Dial(ctx, "127.0.0.1:"+p.Port, client.Options{Timeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w, err := c.Lookup(ctx, c.Root(), "w.bin")
	if err != nil {
		t.Fatal(err)
	}
	// Known to the proxy (name and attributes), its data never read.
	if _, err := c.Lookup(ctx, c.Root(), "uncached.bin"); err != nil {
		t.Fatal(err)
	}

	up.Stop()
	outage := time.Now()
	time.Sleep(200 * time.Millisecond) // past --attr-timeout: answers need revalidation
	for round := 0; round < 3; round++ {
		for name, want := range map[string][32]byte{"a.bin": aWant, "b.bin": bWant} {
			got, err := cat(name)
			if err != nil || sha256.Sum256(got) != want {
				t.Fatalf("round %d: nfs-cat %s during the outage: %v (%d bytes, checksum equal %v)\nproxy stderr:\n%s",
					round, name, err, len(got), sha256.Sum256(got) == want, p.stderr)
			}
		}
	}
	t.Logf("cached reads served %v into the outage", time.Since(outage).Round(time.Millisecond))
	for _, name := range []string{"uncached.bin", "never-looked-up.bin"} {
		start := time.Now()
		if got, err := cat(name); err == nil {
			t.Fatalf("nfs-cat of %s during the outage succeeded (%d bytes)", name, len(got))
		} else if el := time.Since(start); el > 3*bound {
			t.Fatalf("nfs-cat of %s failed only after %v (bound %v): %v", name, el, bound, err)
		} else {
			t.Logf("nfs-cat of %s during the outage failed after %v: %v", name, el.Round(time.Millisecond), err)
		}
	}

	// Written during the outage: acknowledged into the proxy's cache.
	data := make([]byte, 1<<20+3)
	rand.Read(data)
	if _, err := c.WriteAt(ctx, w.Handle, data, 0); err != nil {
		t.Fatalf("WRITE during the outage: %v", err)
	}
	start := time.Now()
	if _, err := c.Commit(ctx, w.Handle, 0, 0); err == nil {
		t.Fatal("COMMIT during the outage succeeded: the data cannot be on the upstream")
	} else if el := time.Since(start); el > 3*bound {
		t.Fatalf("COMMIT during the outage failed only after %v (bound %v)", el, bound)
	}
	// A new file, nfs-cp'd while the upstream is down: its CREATE waits
	// (up to the bound) for the upstream, which comes back meanwhile.
	local := filepath.Join(t.TempDir(), "new.bin")
	newWant := pxRandomFile(t, local, 2<<20+7)
	var cpErr bytes.Buffer
	cp := exec.Command(nfsCp, local, p.URL("/new.bin"))
	cp.Stderr = &cpErr
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	cpDone := make(chan error, 1)
	go func() { cpDone <- cp.Wait() }()
	time.Sleep(500 * time.Millisecond)
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Logf("upstream back after %v", time.Since(outage).Round(time.Millisecond))
	select {
	case err := <-cpDone:
		if err != nil {
			t.Fatalf("nfs-cp across the outage: %v %s\nproxy stderr:\n%s", err, &cpErr, p.stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("nfs-cp did not finish 60 s after the upstream came back")
	}
	if _, err := c.Commit(ctx, w.Handle, 0, 0); err != nil {
		t.Fatalf("COMMIT after the outage: %v\nproxy stderr:\n%s", err, p.stderr)
	}
	if got, err := os.ReadFile(filepath.Join(up.Dir, "w.bin")); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data written during the outage on the upstream: %d bytes, %v; want the %d written", len(got), err, len(data))
	}
	if got := srvSum(t, filepath.Join(up.Dir, "new.bin")); got != newWant {
		t.Fatal("file nfs-cp'd during the outage differs on the upstream")
	}
	if got, err := cat("uncached.bin"); err != nil || len(got) != 100_000 {
		t.Fatalf("nfs-cat after the outage: %v", err)
	}
	p.Stop(t)
	logs := p.stderr.String()
	if n, m := strings.Count(logs, "billyfs: upstream unreachable:"), strings.Count(logs, "upstream reachable again"); n != 1 || m != 1 {
		t.Errorf("outage logged %d times and its end %d times, want once each:\n%s", n, m, logs)
	}
}

type catError struct {
	err    error
	stderr string
}

func (e *catError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.stderr) }

// Without ServeStale (billyfs in-process behind our server, as the proxy
// runs it) nothing is served stale: once cached attributes expire, an
// nfs-cat of a file read before the outage waits for the upstream and
// fails; after the upstream returns it reads the same bytes again.
func TestProxyServeStaleOff(t *testing.T) {
	nfsCat := srvLibnfs(t, "nfs-cat")
	up := pxStartUpstream(t)
	aWant := pxRandomFile(t, filepath.Join(up.Dir, "a.bin"), 500_000)
	const bound = 1 * time.Second
	fsys, _, port := pxInProcess(t, up, billyfs.Options{CacheDir: t.TempDir(),
		Timeout: bound, AttrTimeout: 100 * time.Millisecond, Connections: 1})
	url := srvURL(port, "/a.bin")
	if sha256.Sum256(pxRun(t, nfsCat, url)) != aWant {
		t.Fatal("nfs-cat before the outage differs")
	}
	up.Stop()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, nfsCat, url).Output()
	if err == nil {
		t.Fatalf("nfs-cat during the outage without ServeStale succeeded (%d bytes): it was served stale", len(out))
	}
	el := time.Since(start)
	if el < bound/2 {
		t.Fatalf("nfs-cat failed after %v: it did not wait for the upstream (bound %v)", el, bound)
	}
	if st := fsys.Stats(); st.Outages != 0 || st.StaleAnswers != 0 {
		t.Fatalf("outages %d, stale answers %d without ServeStale", st.Outages, st.StaleAnswers)
	}
	t.Logf("without ServeStale nfs-cat failed after %v: %v", el.Round(time.Millisecond), err)
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(pxRun(t, nfsCat, url)) != aWant {
		t.Fatal("nfs-cat after the outage differs")
	}
}
