package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"

	"github.com/nfscache/nfscache/client"
)

// dialOurs connects our NFS client to addr for the rest of the test.
func dialOurs(t testing.TB, addr string) (*client.Client, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	c, err := client.Dial(ctx, addr, client.Options{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ctx
}

// statusOfCall is the NFS status of a client call's error.
func statusOfCall(t testing.TB, err error) client.Status {
	t.Helper()
	if err == nil {
		return client.StatusOK
	}
	var ne *client.Error
	if !errors.As(err, &ne) {
		t.Fatalf("not an NFS status: %v", err)
	}
	return ne.Status
}

func wantStale(t testing.TB, what string, err error) {
	t.Helper()
	if st := statusOfCall(t, err); st != client.StatusStale {
		t.Errorf("%s: %v, want NFS3ERR_STALE", what, st)
	}
}

// createFile creates name in dir through NFS with data (FILE_SYNC).
func createFile(t testing.TB, c *client.Client, ctx context.Context, dir client.Handle, name string, data []byte) client.Handle {
	t.Helper()
	r, err := c.Create(ctx, dir, name, client.CreateHow{Mode: client.Guarded})
	if err != nil {
		t.Fatalf("CREATE %s: %v", name, err)
	}
	if _, err := c.Write(ctx, r.Handle, 0, data, client.FileSync); err != nil {
		t.Fatalf("WRITE %s: %v", name, err)
	}
	return r.Handle
}

// replaceOutOfBand removes path and creates a new file with data under
// the same name, as `rm f && echo data > f` on the server would.
func replaceOutOfBand(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// An out-of-band rm + create of a file makes its old handle STALE for
// every procedure, whether or not the server has the old file open in its
// open-file cache (RFC 1813 §4.4: the handle names the file, not the
// name); the new file gets a new handle, whose WRITE lands in the new
// file on disk.
func TestReplacedFileOldHandleStale(t *testing.T) {
	dir, fsys := diskFS(t)
	_, addr := startServer(t, fsys, Options{})
	c, ctx := dialOurs(t, addr)
	root := c.Root()
	buf := make([]byte, 64)
	ops := []struct {
		name string
		do   func(h client.Handle) error
	}{
		{"GETATTR", func(h client.Handle) error { _, err := c.Getattr(ctx, h); return err }},
		{"READ", func(h client.Handle) error { _, err := c.Read(ctx, h, 0, buf); return err }},
		{"WRITE-UNSTABLE", func(h client.Handle) error {
			_, err := c.Write(ctx, h, 0, []byte("lost"), client.Unstable)
			return err
		}},
		{"WRITE-FILESYNC", func(h client.Handle) error {
			_, err := c.Write(ctx, h, 0, []byte("lost"), client.FileSync)
			return err
		}},
		{"COMMIT", func(h client.Handle) error { _, err := c.Commit(ctx, h, 0, 0); return err }},
		{"SETATTR", func(h client.Handle) error {
			mode := uint32(0o600)
			_, err := c.Setattr(ctx, h, client.SetAttr{Mode: &mode}, nil)
			return err
		}},
		{"ACCESS", func(h client.Handle) error { _, _, err := c.Access(ctx, h, 0x3f); return err }},
	}
	for _, cached := range []bool{false, true} {
		for _, op := range ops {
			name := fmt.Sprintf("%s-cached=%v", op.name, cached)
			t.Run(name, func(t *testing.T) {
				old := createFile(t, c, ctx, root, name, []byte("old contents"))
				if cached {
					// The server now holds the old inode open.
					if _, err := c.Read(ctx, old, 0, buf); err != nil {
						t.Fatal(err)
					}
				}
				replaceOutOfBand(t, filepath.Join(dir, name), []byte("new contents"))
				wantStale(t, op.name+" through the old handle", op.do(old))
				// Still STALE afterwards, for the other procedures too.
				_, err := c.Getattr(ctx, old)
				wantStale(t, "GETATTR after "+op.name, err)
				_, err = c.Read(ctx, old, 0, buf)
				wantStale(t, "READ after "+op.name, err)
				if got, _ := os.ReadFile(filepath.Join(dir, name)); string(got) != "new contents" {
					t.Fatalf("new file changed through the old handle: %q", got)
				}
				// The name now gets a fresh handle that reaches the new file.
				l, err := c.Lookup(ctx, root, name)
				if err != nil {
					t.Fatal(err)
				}
				if bytes.Equal(l.Handle, old) {
					t.Fatal("LOOKUP of the new file returned the old handle")
				}
				r, err := c.Read(ctx, l.Handle, 0, buf)
				if err != nil || string(buf[:r.N]) != "new contents" {
					t.Fatalf("READ via new handle: %q, %v", buf[:r.N], err)
				}
				if _, err := c.Write(ctx, l.Handle, 0, []byte("NEW"), client.Unstable); err != nil {
					t.Fatal(err)
				}
				if _, err := c.Commit(ctx, l.Handle, 0, 0); err != nil {
					t.Fatal(err)
				}
				if got, _ := os.ReadFile(filepath.Join(dir, name)); string(got) != "NEW contents" {
					t.Fatalf("WRITE via the new handle: disk has %q", got)
				}
			})
		}
	}
}

// A file removed outside NFS while the server holds it open: a WRITE
// must not land silently in the unlinked inode, and an UNSTABLE WRITE
// acknowledged just before the removal is reported lost by COMMIT.
func TestRemovedOpenFileWriteStale(t *testing.T) {
	dir, fsys := diskFS(t)
	_, addr := startServer(t, fsys, Options{})
	c, ctx := dialOurs(t, addr)
	root := c.Root()

	h := createFile(t, c, ctx, root, "w", []byte("data"))
	if _, err := c.Write(ctx, h, 4, []byte("+more"), client.Unstable); err != nil {
		t.Fatal(err) // the fd is cached now
	}
	os.Remove(filepath.Join(dir, "w"))
	_, err := c.Write(ctx, h, 0, []byte("into the void"), client.Unstable)
	wantStale(t, "UNSTABLE WRITE to a removed file", err)

	h2 := createFile(t, c, ctx, root, "w2", []byte("data"))
	if _, err := c.Write(ctx, h2, 4, []byte("+more"), client.Unstable); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "w2"))
	_, err = c.Commit(ctx, h2, 0, 0)
	wantStale(t, "COMMIT of a removed file", err)
}

// rm -r d && mkdir d outside NFS: the old directory handle is STALE for
// LOOKUP, CREATE and READDIRPLUS, creates nothing in the new directory,
// and the old handle of d/x (a new d/x exists) is STALE as well.
func TestReplacedDirectoryOldHandleStale(t *testing.T) {
	dir, fsys := diskFS(t)
	_, addr := startServer(t, fsys, Options{})
	c, ctx := dialOurs(t, addr)
	root := c.Root()
	d, err := c.Mkdir(ctx, root, "d", client.SetAttr{})
	if err != nil {
		t.Fatal(err)
	}
	x := createFile(t, c, ctx, d.Handle, "x", []byte("old x"))
	if err := os.RemoveAll(filepath.Join(dir, "d")); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "d"), 0o755)
	os.WriteFile(filepath.Join(dir, "d", "x"), []byte("new x"), 0o644)

	_, err = c.Lookup(ctx, d.Handle, "x")
	wantStale(t, "LOOKUP through the old directory handle", err)
	_, err = c.Create(ctx, d.Handle, "y", client.CreateHow{Mode: client.Guarded})
	wantStale(t, "CREATE through the old directory handle", err)
	_, err = c.ReadDirAll(ctx, d.Handle)
	wantStale(t, "READDIRPLUS of the old directory handle", err)
	_, err = c.Getattr(ctx, x)
	wantStale(t, "GETATTR of the old d/x", err)
	_, err = c.Read(ctx, x, 0, make([]byte, 8))
	wantStale(t, "READ of the old d/x", err)
	if _, err := os.Lstat(filepath.Join(dir, "d", "y")); !os.IsNotExist(err) {
		t.Fatalf("CREATE through the stale handle made d/y: %v", err)
	}

	nd, err := c.Lookup(ctx, root, "d")
	if err != nil || bytes.Equal(nd.Handle, d.Handle) {
		t.Fatalf("LOOKUP of the new d: %v (same handle: %v)", err, bytes.Equal(nd.Handle, d.Handle))
	}
	nx, err := c.Lookup(ctx, nd.Handle, "x")
	if err != nil || bytes.Equal(nx.Handle, x) {
		t.Fatalf("LOOKUP of the new d/x: %v (same handle: %v)", err, bytes.Equal(nx.Handle, x))
	}
	buf := make([]byte, 16)
	if r, err := c.Read(ctx, nx.Handle, 0, buf); err != nil || string(buf[:r.N]) != "new x" {
		t.Fatalf("READ new d/x: %q %v", buf[:r.N], err)
	}
}

// Identities do not get in the way of what must keep working: handles
// follow NFS renames (of the file and of its directory) with their
// identity, and survive a restart on the same StateDir; a file replaced
// while the server was down is STALE after the restart.
func TestIdentitySurvivesRenameAndRestart(t *testing.T) {
	dir, fsys := diskFS(t)
	state := t.TempDir()
	s1, err := New(fsys, Options{StateDir: state})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s1.Serve(l) }()
	c, ctx := dialOurs(t, l.Addr().String())
	root := c.Root()
	a, err := c.Mkdir(ctx, root, "a", client.SetAttr{})
	if err != nil {
		t.Fatal(err)
	}
	f := createFile(t, c, ctx, a.Handle, "f", []byte("keep"))
	g := createFile(t, c, ctx, root, "g", []byte("replace me"))
	if _, _, err := c.Rename(ctx, a.Handle, "f", a.Handle, "f2"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Rename(ctx, root, "a", root, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, f, 4, []byte("!"), client.FileSync); err != nil {
		t.Fatalf("WRITE after NFS renames: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "b", "f2")); string(got) != "keep!" {
		t.Fatalf("b/f2 = %q", got)
	}
	c.Close()
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	replaceOutOfBand(t, filepath.Join(dir, "g"), []byte("replaced while down"))

	_, addr := startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{StateDir: state})
	c2, ctx2 := dialOurs(t, addr)
	buf := make([]byte, 32)
	if r, err := c2.Read(ctx2, f, 0, buf); err != nil || string(buf[:r.N]) != "keep!" {
		t.Fatalf("READ after restart: %q %v", buf[:r.N], err)
	}
	if _, err := c2.Getattr(ctx2, a.Handle); err != nil {
		t.Fatalf("GETATTR of the renamed directory after restart: %v", err)
	}
	if l, err := c2.Lookup(ctx2, a.Handle, "f2"); err != nil || !bytes.Equal(l.Handle, f) {
		t.Fatalf("LOOKUP b/f2 after restart: %v (same handle: %v)", err, bytes.Equal(l.Handle, f))
	}
	_, err = c2.Getattr(ctx2, g)
	wantStale(t, "GETATTR of a file replaced while the server was down", err)
	_, err = c2.Read(ctx2, g, 0, buf)
	wantStale(t, "READ of a file replaced while the server was down", err)
}

// Entries written before identities were recorded (gen | path) still
// resolve, and get the identity of the file seen at their next resolve,
// after which a replacement is detected.
func TestLegacyEntryGetsIdentity(t *testing.T) {
	dir, fsys := diskFS(t)
	os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o644)
	s, err := New(fsys, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h, err := s.table.assign("f")
	if err != nil {
		t.Fatal(err)
	}
	id, e, err := s.table.entryOf(h)
	if err != nil || !e.hasKey {
		t.Fatalf("fresh entry: %+v %v, want an identity", e, err)
	}
	// Rewrite the entry in the pre-identity format.
	legacy := append(e.gen[:], "f"...)
	if d, ok := decodeEntry(legacy); !ok || d.hasKey || d.path != "f" {
		t.Fatalf("legacy entry decodes as %+v", d)
	}
	s.table.mu.Lock()
	err = s.table.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketIDs).Put(u64(id), legacy) })
	s.table.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if _, p, err := s.table.resolve(h); err != nil || p != "f" {
		t.Fatalf("resolve legacy entry: %q %v", p, err)
	}
	if _, e, _ := s.table.entryOf(h); !e.hasKey {
		t.Fatal("resolve did not record the identity")
	}
	replaceOutOfBand(t, filepath.Join(dir, "f"), []byte("y"))
	if _, _, err := s.table.resolve(h); !errors.Is(err, errStaleHandle) {
		t.Fatalf("resolve after replacement: %v, want stale", err)
	}
	if n := s.Stats().Handles; n != 1 {
		t.Fatalf("handles = %d, want 1 (the root): the stale id is forgotten", n)
	}
}

// READDIRPLUS of a directory in which names are renamed and removed
// concurrently never fails: osfs failed the whole listing (and go-nfs
// answered NOTDIR) when a name vanished between getdents and its lstat.
func TestReadDirDuringRenames(t *testing.T) {
	dir, fsys := diskFS(t)
	const files = 300
	for i := range files {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)), nil, 0o644)
	}
	_, addr := startServer(t, fsys, Options{})
	c, ctx := dialOurs(t, addr)
	stop := make(chan struct{})
	var renames atomic.Int64
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				n := (i*2 + w) % files
				a := filepath.Join(dir, fmt.Sprintf("f%03d", n))
				b := filepath.Join(dir, fmt.Sprintf("g%03d", n))
				if os.Rename(a, b) == nil {
					os.Rename(b, a)
					renames.Add(2)
				}
			}
		}()
	}
	deadline := time.Now().Add(1500 * time.Millisecond)
	lists, failed := 0, 0
	var firstErr error
	for time.Now().Before(deadline) {
		ents, err := c.ReadDirAll(ctx, c.Root())
		lists++
		if err != nil {
			failed++
			firstErr = err
			continue
		}
		if len(ents) < files/2 {
			t.Errorf("listing has %d entries of %d", len(ents), files)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d listings, %d renames meanwhile", lists, renames.Load())
	if failed > 0 {
		t.Fatalf("%d of %d READDIRPLUS failed during renames; first: %v", failed, lists, firstErr)
	}
}

// On overlayfs the first open for writing copies a lower file up into a
// new upper inode: same inode number (overlayfs keeps the lower one),
// new birth time. The handle must survive that, so identities on
// overlayfs are the inode number alone.
func TestOverlayCopyUpKeepsHandle(t *testing.T) {
	if statxMaskFor(overlayfsMagic)&unix.STATX_BTIME != 0 || statxMaskFor(0xef53)&unix.STATX_BTIME == 0 {
		t.Fatal("statxMaskFor: birth time must count everywhere but on overlayfs")
	}
	d := t.TempDir()
	for _, s := range []string{"lower", "upper", "work", "merged"} {
		os.Mkdir(filepath.Join(d, s), 0o755)
	}
	os.WriteFile(filepath.Join(d, "lower", "f"), []byte("lower data"), 0o644)
	time.Sleep(20 * time.Millisecond) // the copy-up gets another birth time
	merged := filepath.Join(d, "merged")
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", filepath.Join(d, "lower"), filepath.Join(d, "upper"), filepath.Join(d, "work"))
	if err := syscall.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		t.Skipf("cannot mount overlayfs here (%v): the statxMaskFor check above still ran", err)
	}
	t.Cleanup(func() { syscall.Unmount(merged, 0) })
	_, addr := startServer(t, osfs.New(merged, osfs.WithBoundOS()), Options{})
	c, ctx := dialOurs(t, addr)
	l, err := c.Lookup(ctx, c.Root(), "f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(ctx, l.Handle, 0, []byte("LOWER"), client.FileSync); err != nil {
		t.Fatalf("WRITE (copy-up): %v", err)
	}
	if _, err := c.Getattr(ctx, l.Handle); err != nil {
		t.Fatalf("GETATTR after copy-up: %v", err)
	}
	buf := make([]byte, 32)
	if r, err := c.Read(ctx, l.Handle, 0, buf); err != nil || string(buf[:r.N]) != "LOWER data" {
		t.Fatalf("READ after copy-up: %q %v", buf[:r.N], err)
	}
	if got, _ := os.ReadFile(filepath.Join(d, "upper", "f")); string(got) != "LOWER data" {
		t.Fatalf("upper layer has %q", got)
	}
}
