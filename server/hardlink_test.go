package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	bolt "go.etcd.io/bbolt"

	"github.com/nfscache/nfscache/client"
)

// linkerFS is a directory exported without os.Root (osfs chroot mode),
// so LINK goes through its HardLinker, as for a re-exported upstream.
type linkerFS struct {
	billy.Filesystem
	dir string
}

func (l linkerFS) Link(target, link string) error {
	return os.Link(filepath.Join(l.dir, filepath.Clean("/"+target)), filepath.Join(l.dir, filepath.Clean("/"+link)))
}

// linkExports are the two ways LINK is made: os.Root and a HardLinker.
var linkExports = []struct {
	name string
	fs   func(dir string) billy.Filesystem
}{
	{"osroot", func(dir string) billy.Filesystem { return osfs.New(dir, osfs.WithBoundOS()) }},
	{"hardlinker", func(dir string) billy.Filesystem { return linkerFS{osfs.New(dir), dir} }},
}

// checkTable verifies the handle table's invariants: every name is bound
// to a live id and is either its primary name or a recorded alias, every
// alias is a bound name, and the live count is the number of ids.
func checkTable(t *testing.T, s *Server) {
	t.Helper()
	err := s.table.db.View(func(tx *bolt.Tx) error {
		paths, ids, aliases := tx.Bucket(bucketPaths), tx.Bucket(bucketIDs), tx.Bucket(bucketAliases)
		_ = paths.ForEach(func(k, v []byte) error {
			e, ok := decodeEntry(ids.Get(v))
			if !ok {
				t.Errorf("name %q bound to id %d, which has no entry", k, binary.BigEndian.Uint64(v))
				return nil
			}
			if name := string(k[1:]); e.path != name && aliases.Get(aliasKey(v, name)) == nil {
				t.Errorf("name %q bound to id %d (%q) but not an alias", k, binary.BigEndian.Uint64(v), e.path)
			}
			return nil
		})
		_ = aliases.ForEach(func(k, _ []byte) error {
			idb, name := k[:8], string(k[8:])
			if v := paths.Get(pathKey(name)); !bytes.Equal(v, idb) {
				t.Errorf("alias %q of id %d not bound to it", name, binary.BigEndian.Uint64(idb))
			}
			if e, ok := decodeEntry(ids.Get(idb)); !ok || e.path == name {
				t.Errorf("alias %q of id %d: entry %+v %v", name, binary.BigEndian.Uint64(idb), e, ok)
			}
			return nil
		})
		if n := ids.Stats().KeyN; n != s.table.count() {
			t.Errorf("live count %d, table holds %d ids", s.table.count(), n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// lookupHandle LOOKUPs name in dir and returns its handle.
func lookupHandle(t *testing.T, c *client.Client, ctx context.Context, dir client.Handle, name string) client.Handle {
	t.Helper()
	l, err := c.Lookup(ctx, dir, name)
	if err != nil {
		t.Fatalf("LOOKUP %s: %v", name, err)
	}
	return l.Handle
}

// useHandle reads want through h, writes more through it and commits,
// and checks nlink and the data on disk at name: the handle is alive.
func useHandle(t *testing.T, c *client.Client, ctx context.Context, h client.Handle, dir, name string, want []byte, nlink uint32) []byte {
	t.Helper()
	buf := make([]byte, len(want)+16)
	n, err := c.ReadAt(ctx, h, buf, 0)
	if (err != nil && err != io.EOF) || !bytes.Equal(buf[:n], want) {
		t.Fatalf("READ: %q %v, want %q", buf[:n], err, want)
	}
	more := []byte("+more")
	if _, err := c.WriteAt(ctx, h, more, int64(len(want))); err != nil {
		t.Fatalf("WRITE: %v", err)
	}
	if _, err := c.Commit(ctx, h, 0, 0); err != nil {
		t.Fatalf("COMMIT: %v", err)
	}
	want = append(append([]byte(nil), want...), more...)
	a, err := c.Getattr(ctx, h)
	if err != nil {
		t.Fatalf("GETATTR: %v", err)
	}
	if a.Nlink != nlink || a.Size != uint64(len(want)) {
		t.Fatalf("GETATTR: nlink %d size %d, want %d %d", a.Nlink, a.Size, nlink, len(want))
	}
	if got, err := os.ReadFile(filepath.Join(dir, name)); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("%s on disk: %q %v, want %q", name, got, err, want)
	}
	return want
}

func wantStatus(t *testing.T, what string, err error, st client.Status) {
	t.Helper()
	if got := statusOfCall(t, err); got != st {
		t.Fatalf("%s: %v, want %v", what, got, st)
	}
}

// The maildir/git pattern the Linux client runs (write tmp, link final,
// unlink tmp, go on through the descriptor, which holds tmp's handle):
// the handle outlives the name it was issued for while the file has
// another name LINK made, LOOKUP of every name returns it, and it is
// STALE once the last name is gone.
func TestLinkThenRemoveOriginal(t *testing.T) {
	for _, ex := range linkExports {
		t.Run(ex.name, func(t *testing.T) {
			dir := t.TempDir()
			s, addr := startServer(t, ex.fs(dir), Options{})
			c, ctx := dialOurs(t, addr)
			root := c.Root()
			data := []byte("message")
			h := createFile(t, c, ctx, root, "tmp", data)

			la, _, err := c.Link(ctx, h, root, "final")
			if err != nil {
				t.Fatalf("LINK: %v", err)
			}
			if la.Nlink != 2 {
				t.Fatalf("LINK: nlink %d", la.Nlink)
			}
			for _, name := range []string{"tmp", "final"} {
				if got := lookupHandle(t, c, ctx, root, name); !bytes.Equal(got, h) {
					t.Fatalf("LOOKUP %s: handle %v, want %v (all names of a file share its handle)", name, got, h)
				}
			}
			ents, err := c.ReadDirAll(ctx, root)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if (e.Name == "tmp" || e.Name == "final") && e.Handle != nil && !bytes.Equal(e.Handle, h) {
					t.Fatalf("READDIRPLUS %s: handle %v, want %v", e.Name, e.Handle, h)
				}
			}
			checkTable(t, s)

			if _, err := c.Remove(ctx, root, "tmp"); err != nil {
				t.Fatalf("REMOVE tmp: %v", err)
			}
			checkTable(t, s)
			data = useHandle(t, c, ctx, h, dir, "final", data, 1)
			if got := lookupHandle(t, c, ctx, root, "final"); !bytes.Equal(got, h) {
				t.Fatalf("LOOKUP final after REMOVE tmp: %v, want %v", got, h)
			}
			_, err = c.Lookup(ctx, root, "tmp")
			wantStatus(t, "LOOKUP tmp", err, client.StatusNoEnt)

			// A new tmp is another file with another handle.
			h2 := createFile(t, c, ctx, root, "tmp", []byte("next"))
			if bytes.Equal(h2, h) {
				t.Fatal("new tmp got the handle of final")
			}
			useHandle(t, c, ctx, h, dir, "final", data, 1)

			if _, err := c.Remove(ctx, root, "final"); err != nil {
				t.Fatalf("REMOVE final: %v", err)
			}
			_, err = c.Getattr(ctx, h)
			wantStale(t, "GETATTR after the last name went", err)
			_, err = c.Read(ctx, h, 0, make([]byte, 8))
			wantStale(t, "READ after the last name went", err)
			checkTable(t, s)
		})
	}
}

// Renames: over an alias (the id keeps its primary name), over the
// primary name (the id moves to a remaining alias), of an alias (it
// moves), and between two names of the file (rename(2) does nothing).
func TestLinkRenames(t *testing.T) {
	for _, ex := range linkExports {
		t.Run(ex.name, func(t *testing.T) {
			dir := t.TempDir()
			s, addr := startServer(t, ex.fs(dir), Options{})
			c, ctx := dialOurs(t, addr)
			root := c.Root()
			data := []byte("abc")
			h := createFile(t, c, ctx, root, "a", data)
			sub, err := c.Mkdir(ctx, root, "sub", client.SetAttr{})
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range []struct {
				dir  client.Handle
				name string
			}{{root, "b"}, {sub.Handle, "c"}, {root, "d"}} {
				if _, _, err := c.Link(ctx, h, l.dir, l.name); err != nil {
					t.Fatalf("LINK %s: %v", l.name, err)
				}
			}

			// Over an alias.
			x := createFile(t, c, ctx, root, "x", []byte("x"))
			if _, _, err := c.Rename(ctx, root, "x", root, "d"); err != nil {
				t.Fatal(err)
			}
			if got := lookupHandle(t, c, ctx, root, "d"); !bytes.Equal(got, x) {
				t.Fatalf("LOOKUP d after rename over it: %v, want x's %v", got, x)
			}
			data = useHandle(t, c, ctx, h, dir, "a", data, 3)
			checkTable(t, s)

			// Between two names of the file: both stay.
			if _, _, err := c.Rename(ctx, root, "b", root, "a"); err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"a", "b"} {
				if got := lookupHandle(t, c, ctx, root, name); !bytes.Equal(got, h) {
					t.Fatalf("LOOKUP %s after rename b→a: %v, want %v", name, got, h)
				}
			}
			checkTable(t, s)

			// Over the primary name, then REMOVE of b: sub/c is left.
			y := createFile(t, c, ctx, root, "y", []byte("y"))
			if _, _, err := c.Rename(ctx, root, "y", root, "a"); err != nil {
				t.Fatal(err)
			}
			if got := lookupHandle(t, c, ctx, root, "a"); !bytes.Equal(got, y) {
				t.Fatalf("LOOKUP a after rename over it: %v, want y's %v", got, y)
			}
			if _, err := c.Remove(ctx, root, "b"); err != nil {
				t.Fatal(err)
			}
			data = useHandle(t, c, ctx, h, dir, "sub/c", data, 1)
			checkTable(t, s)

			// The directory holding the last name moves; then the name.
			if _, _, err := c.Rename(ctx, root, "sub", root, "sub2"); err != nil {
				t.Fatal(err)
			}
			data = useHandle(t, c, ctx, h, dir, "sub2/c", data, 1)
			sub2 := lookupHandle(t, c, ctx, root, "sub2")
			if _, _, err := c.Rename(ctx, sub2, "c", root, "e"); err != nil {
				t.Fatal(err)
			}
			useHandle(t, c, ctx, h, dir, "e", data, 1)
			checkTable(t, s)

			// Rename over the last name: STALE.
			z := createFile(t, c, ctx, root, "z", nil)
			if _, _, err := c.Rename(ctx, root, "z", root, "e"); err != nil {
				t.Fatal(err)
			}
			_, err = c.Getattr(ctx, h)
			wantStale(t, "GETATTR after rename over the last name", err)
			if got := lookupHandle(t, c, ctx, root, "e"); !bytes.Equal(got, z) {
				t.Fatalf("LOOKUP e: %v, want z's %v", got, z)
			}
			checkTable(t, s)
		})
	}
}

// Aliases are in the persistent table: a server restarted on the same
// StateDir between LINK and REMOVE keeps the handle alive.
func TestLinkAliasesSurviveRestart(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	s, addr := startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{StateDir: state})
	c, ctx := dialOurs(t, addr)
	root := c.Root()
	data := []byte("survives")
	h := createFile(t, c, ctx, root, "tmp", data)
	if _, _, err := c.Link(ctx, h, root, "final"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, addr = startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{StateDir: state})
	c, ctx = dialOurs(t, addr)
	root = c.Root()
	if got := lookupHandle(t, c, ctx, root, "final"); !bytes.Equal(got, h) {
		t.Fatalf("LOOKUP final after restart: %v, want %v", got, h)
	}
	if _, err := c.Remove(ctx, root, "tmp"); err != nil {
		t.Fatal(err)
	}
	useHandle(t, c, ctx, h, dir, "final", data, 1)
	checkTable(t, s)
	if _, err := c.Remove(ctx, root, "final"); err != nil {
		t.Fatal(err)
	}
	_, err := c.Getattr(ctx, h)
	wantStale(t, "GETATTR after both names went", err)
	checkTable(t, s)
}

// Changes outside NFS to names LINK made: the primary name removed (the
// handle moves to the alias at its next use), an alias replaced (its
// LOOKUP gets the new file's handle, the old handle keeps its file), and
// a name whose old file went outside NFS reused by LINK.
func TestLinkAliasesOutOfBand(t *testing.T) {
	dir := t.TempDir()
	s, addr := startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{})
	c, ctx := dialOurs(t, addr)
	root := c.Root()
	data := []byte("oob")
	h := createFile(t, c, ctx, root, "p", data)
	for _, name := range []string{"q", "r"} {
		if _, _, err := c.Link(ctx, h, root, name); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(dir, "p")); err != nil {
		t.Fatal(err)
	}
	a, err := c.Getattr(ctx, h)
	if err != nil || a.Nlink != 2 {
		t.Fatalf("GETATTR after p went outside NFS: %+v %v", a, err)
	}
	replaceOutOfBand(t, filepath.Join(dir, "q"), []byte("other"))
	q := lookupHandle(t, c, ctx, root, "q")
	if bytes.Equal(q, h) {
		t.Fatal("LOOKUP q after replacement outside NFS returned the old file's handle")
	}
	data = useHandle(t, c, ctx, h, dir, "r", data, 1)
	checkTable(t, s)

	// "old" is known to the table, then removed outside NFS; LINK reuses
	// the name for h's file.
	old := createFile(t, c, ctx, root, "old", []byte("old"))
	if err := os.Remove(filepath.Join(dir, "old")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Link(ctx, h, root, "old"); err != nil {
		t.Fatal(err)
	}
	if got := lookupHandle(t, c, ctx, root, "old"); !bytes.Equal(got, h) {
		t.Fatalf("LOOKUP old: %v, want %v", got, h)
	}
	_, err = c.Getattr(ctx, old)
	wantStale(t, "GETATTR of the file that had the name", err)
	useHandle(t, c, ctx, h, dir, "old", data, 2)
	checkTable(t, s)
}

// Several clients run the link-then-unlink pattern at once, each on its
// own files, in one directory: every handle stays alive through its
// REMOVE, and the table ends consistent (run under -race).
func TestLinkThenRemoveConcurrent(t *testing.T) {
	dir := t.TempDir()
	s, addr := startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{})
	const workers, rounds = 4, 15
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		c, ctx := dialOurs(t, addr)
		wg.Add(1)
		go func() {
			defer wg.Done()
			root := c.Root()
			for i := range rounds {
				tmp, final := fmt.Sprintf("tmp-%d-%d", w, i), fmt.Sprintf("final-%d-%d", w, i)
				data := []byte(final)
				r, err := c.Create(ctx, root, tmp, client.CreateHow{Mode: client.Guarded})
				if err == nil {
					_, err = c.Write(ctx, r.Handle, 0, data, client.FileSync)
				}
				if err == nil {
					_, _, err = c.Link(ctx, r.Handle, root, final)
				}
				if err == nil {
					_, err = c.Remove(ctx, root, tmp)
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", final, err)
					return
				}
				buf := make([]byte, 64)
				rr, err := c.Read(ctx, r.Handle, 0, buf)
				if err != nil || !bytes.Equal(buf[:rr.N], data) {
					errs <- fmt.Errorf("READ %s through tmp's handle: %q %v", final, buf[:rr.N], err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkTable(t, s)
}

// A table written before aliases existed (no aliases bucket) opens and
// records links.
func TestLinkOnTableWithoutAliasBucket(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	tbl, err := openHandleTable(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := tbl.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketAliases) }); err != nil {
		t.Fatal(err)
	}
	if err := tbl.close(); err != nil {
		t.Fatal(err)
	}
	s, addr := startServer(t, osfs.New(dir, osfs.WithBoundOS()), Options{StateDir: state})
	c, ctx := dialOurs(t, addr)
	root := c.Root()
	h := createFile(t, c, ctx, root, "tmp", []byte("x"))
	if _, _, err := c.Link(ctx, h, root, "final"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Remove(ctx, root, "tmp"); err != nil {
		t.Fatal(err)
	}
	useHandle(t, c, ctx, h, dir, "final", []byte("x"), 1)
	checkTable(t, s)
}

// BenchmarkLinkTable measures what aliases cost the table, in the same
// run: REMOVE's table update (assign then forget of a name with no other
// name, the common case: one extra read transaction looks for aliases)
// against LINK + REMOVE of the original + REMOVE of the link (linked,
// a forget that re-points the id after a statx of the alias, a forget
// that drops it), and resolve of a handle whose file has an alias
// against one without (no difference expected: aliases are only read
// when the primary name fails its check).
//
//	go test ./server/ -run '^$' -bench LinkTable
func BenchmarkLinkTable(b *testing.B) {
	dir := b.TempDir()
	for _, n := range []string{"plain", "orig", "alias"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(n), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(dir, "alias")); err != nil {
		b.Fatal(err)
	}
	if err := os.Link(filepath.Join(dir, "orig"), filepath.Join(dir, "alias")); err != nil {
		b.Fatal(err)
	}
	s, err := New(osfs.New(dir, osfs.WithBoundOS()), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var plainNs, aliasNs float64
	b.Run("assign+forget/no-alias", func(b *testing.B) {
		for b.Loop() {
			must(s.table.assign("plain"))
			must(s.table.forget("plain"))
		}
		plainNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("assign+linked+forget-repoint+forget", func(b *testing.B) {
		for b.Loop() {
			id, _ := must2(s.table.resolveData(must(s.table.assign("orig"))))
			if err := s.table.linked(id, "alias"); err != nil {
				b.Fatal(err)
			}
			must(s.table.forget("orig")) // re-points to alias
			if d := must(s.table.forget("alias")); len(d) != 1 || d[0] != id {
				b.Fatalf("forget alias dropped %v, want [%d]", d, id)
			}
		}
		aliasNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		if plainNs > 0 {
			b.ReportMetric(aliasNs/plainNs, "x-no-alias")
		}
	})
	hp := must(s.table.assign("plain"))
	ho := must(s.table.assign("orig"))
	id, _ := must2(s.table.resolveData(ho))
	if err := s.table.linked(id, "alias"); err != nil {
		b.Fatal(err)
	}
	var resolvePlain float64
	b.Run("resolve/no-alias", func(b *testing.B) {
		for b.Loop() {
			must2(s.table.resolve(hp))
		}
		resolvePlain = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	})
	b.Run("resolve/with-alias", func(b *testing.B) {
		for b.Loop() {
			must2(s.table.resolve(ho))
		}
		if resolvePlain > 0 {
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/resolvePlain, "x-no-alias")
		}
	})
}

func must2[A, B any](a A, c B, err error) (A, B) {
	if err != nil {
		panic(err)
	}
	return a, c
}
