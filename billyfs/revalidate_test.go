package billyfs_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5"

	"github.com/nfscache/nfscache/billyfs"
)

// pauser stops the first revalidation that reaches its hook until resume
// is closed; paused is closed when it got there.
type pauser struct {
	first          atomic.Bool
	paused, resume chan struct{}
}

func newPauser() *pauser {
	return &pauser{paused: make(chan struct{}), resume: make(chan struct{})}
}

func (p *pauser) hook() {
	// Not a sync.Once: later callers must not wait for the first.
	if p.first.CompareAndSwap(false, true) {
		close(p.paused)
		<-p.resume
	}
}

// openAsync opens name O_RDWR in a goroutine.
func openAsync(fsys *billyfs.FS, name string) (<-chan billy.File, <-chan error) {
	res := make(chan billy.File, 1)
	ec := make(chan error, 1)
	go func() {
		f, err := fsys.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			ec <- err
			return
		}
		res <- f
	}()
	return res, ec
}

// An open fetches the file's attributes before it counts itself as a
// writer; a second writer that opens meanwhile may write and write back,
// so those attributes are older than our own latest write. Revalidation
// must not take them for a remote change: that set the local size back
// to the stale size (reads of data on the server answered EOF — the
// proxy soak's "read w15-3: EOF") and invalidated the cache. The second
// writer closes before the first open compares, so a re-check of the
// writer count does not help either.
func TestRevalidateStaleAttrsKeepOwnWrites(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir(), DirtyExpire: time.Hour})
	f, err := fsys.Create("f")
	must(t, err)
	must(t, f.Close())

	p := newPauser()
	billyfs.SetRevalidateHooks(fsys, p.hook, nil)
	resA, errA := openAsync(fsys, "f")
	<-p.paused // A holds the attributes of the empty file

	data := randBytes(31, 10_000)
	b, err := fsys.OpenFile("f", os.O_RDWR, 0)
	must(t, err)
	_, err = b.(io.WriterAt).WriteAt(data, 0)
	must(t, err)
	must(t, b.Close()) // written back and committed

	close(p.resume)
	var a billy.File
	select {
	case a = <-resA:
	case err := <-errA:
		t.Fatal(err)
	}
	defer a.Close()
	got := make([]byte, len(data))
	if n, err := a.ReadAt(got, 0); n != len(data) || err != nil || !bytes.Equal(got, data) {
		t.Fatalf("first writer reads %d bytes (%v) of the second writer's %d after its open compared stale attributes; equal=%v", n, err, len(data), bytes.Equal(got[:n], data[:n]))
	}
	c, err := fsys.Open("f")
	must(t, err)
	defer c.Close()
	if n, err := c.ReadAt(got, 0); n != len(data) || err != nil || !bytes.Equal(got, data) {
		t.Fatalf("a later open reads %d bytes (%v), want %d", n, err, len(data))
	}
}

// A write that lands while revalidation is acting on a real remote change
// (between its decision and its truncate/invalidate) must not be dropped:
// it is acknowledged, so it either lands before the decision (and is
// written back first) or after the invalidation (onto the new version).
// The hook tries to write in that window; with the fix the write waits
// until revalidation is done.
func TestRevalidateKeepsWriteRacingWithInvalidation(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir(), DirtyExpire: time.Hour})
	f, err := fsys.Create("f")
	must(t, err)
	_, err = f.Write(randBytes(41, 10_000))
	must(t, err)
	must(t, f.Close())
	// Another client rewrites the file, shorter.
	remote := randBytes(42, 4000)
	must(t, os.WriteFile(filepath.Join(srv.Dir, "f"), remote, 0o644))

	p := newPauser()
	var b billy.File
	payload := randBytes(43, 3000)
	const at = 5000
	wrote := make(chan error, 1)
	var actOnce sync.Once
	var acted atomic.Bool
	billyfs.SetRevalidateHooks(fsys, p.hook, func() {
		actOnce.Do(func() {
			acted.Store(true)
			// B writes in the window; give it time to complete if it can.
			go func() {
				_, err := b.(io.WriterAt).WriteAt(payload, at)
				wrote <- err
			}()
			select {
			case err := <-wrote:
				wrote <- err
			case <-time.After(300 * time.Millisecond):
			}
		})
	})
	resA, errA := openAsync(fsys, "f")
	<-p.paused // A has the remote attributes
	// B opens while A counts as a writer: it does not revalidate.
	b, err = fsys.OpenFile("f", os.O_RDWR, 0)
	must(t, err)
	close(p.resume)
	var a billy.File
	select {
	case a = <-resA:
	case err := <-errA:
		t.Fatal(err)
	}
	must(t, <-wrote)
	if !acted.Load() {
		t.Fatal("revalidation did not act on the remote change: the window was not tested")
	}
	got := make([]byte, len(payload))
	if n, err := b.ReadAt(got, at); n != len(payload) || err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("writer reads back %d bytes (%v) of its acknowledged write; equal=%v", n, err, bytes.Equal(got[:n], payload[:n]))
	}
	must(t, b.Close())
	must(t, a.Close())
	must(t, fsys.Sync())
	want := append(append(append([]byte(nil), remote...), make([]byte, at-len(remote))...), payload...)
	disk, err := os.ReadFile(filepath.Join(srv.Dir, "f"))
	must(t, err)
	if !bytes.Equal(disk, want) {
		t.Fatalf("server has %d bytes, want %d (remote version + our write); equal=%v", len(disk), len(want), bytes.Equal(disk, want))
	}
}

// Close records the local size with its cookie use, and fscache cuts the
// object (present data and dirty records) to that size. A write of
// another File past the size Close sampled must survive: before the fix
// it was cut from the cache — read back as zeros, never written back.
func TestCloseKeepsConcurrentWritePastRecordedSize(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir(), DirtyExpire: time.Hour})
	first := randBytes(51, 4000)
	a, err := fsys.Create("f")
	must(t, err)
	_, err = a.Write(first)
	must(t, err)
	b, err := fsys.OpenFile("f", os.O_RDWR, 0)
	must(t, err)
	payload := randBytes(52, 3000)
	const at = 10_000
	wrote := make(chan error, 1)
	var acted atomic.Bool
	billyfs.SetCloseHook(fsys, func() {
		if !acted.CompareAndSwap(false, true) {
			return
		}
		go func() {
			_, err := b.(io.WriterAt).WriteAt(payload, at)
			wrote <- err
		}()
		select {
		case err := <-wrote:
			wrote <- err
		case <-time.After(300 * time.Millisecond):
		}
	})
	must(t, a.Close())
	must(t, <-wrote)
	if !acted.Load() {
		t.Fatal("the close hook did not run: the window was not tested")
	}
	got := make([]byte, len(payload))
	if n, err := b.ReadAt(got, at); n != len(payload) || err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("writer reads back %d bytes (%v) of its acknowledged write; equal=%v", n, err, bytes.Equal(got[:n], payload[:n]))
	}
	must(t, b.Close())
	must(t, fsys.Sync())
	want := append(append(append([]byte(nil), first...), make([]byte, at-len(first))...), payload...)
	disk, err := os.ReadFile(filepath.Join(srv.Dir, "f"))
	must(t, err)
	if !bytes.Equal(disk, want) {
		t.Fatalf("server has %d bytes, want %d; equal=%v", len(disk), len(want), bytes.Equal(disk, want))
	}
}
