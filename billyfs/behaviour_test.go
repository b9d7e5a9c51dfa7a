package billyfs_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand"
	"os"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	"github.com/go-git/go-billy/v5/util"

	"github.com/nfscache/nfscache/billyfs"
)

// behaviours is our own behaviour suite: each case states exact expected
// results and runs first against go-billy's osfs (the reference), then
// against billyfs with and without a cache, so all three must agree.
var behaviours = map[string]func(*testing.T, billy.Filesystem){
	"LargeRoundTrip": func(t *testing.T, fsys billy.Filesystem) {
		data := randBytes(1, 5<<20+123)
		writeFile(t, fsys, "big/file", data)
		got := readFile(t, fsys, "big/file")
		if !bytes.Equal(got, data) {
			t.Fatalf("read back %d bytes, differs from the %d written", len(got), len(data))
		}
		f := open(t, fsys, "big/file")
		defer f.Close()
		for _, off := range []int64{0, 1, 4095, 4096, 1 << 20, int64(len(data)) - 10} {
			b := make([]byte, 100)
			n, err := f.ReadAt(b, off)
			want := data[off:min(off+100, int64(len(data)))]
			if n != len(want) || !bytes.Equal(b[:n], want) {
				t.Fatalf("ReadAt(%d) = %d, %v; want %d bytes", off, n, err, len(want))
			}
			if n < 100 && err != io.EOF {
				t.Fatalf("short ReadAt at %d: err %v, want io.EOF", off, err)
			}
		}
	},
	"OverwriteMiddleOfExistingFile": func(t *testing.T, fsys billy.Filesystem) {
		data := randBytes(2, 100_000)
		writeFile(t, fsys, "f", data)
		f, err := fsys.OpenFile("f", os.O_RDWR, 0)
		must(t, err)
		patch := []byte("PATCHED-BYTES")
		for _, off := range []int64{5, 4090, 50_001, 99_990} {
			// Seek+Write: osfs's chroot files hide io.WriterAt.
			_, err := f.Seek(off, io.SeekStart)
			must(t, err)
			_, err = f.Write(patch)
			must(t, err)
			copy(data[off:], patch)
			if off+int64(len(patch)) > int64(len(data)) {
				data = append(data[:off], patch...)
			}
		}
		must(t, f.Close())
		if got := readFile(t, fsys, "f"); !bytes.Equal(got, data) {
			t.Fatalf("after patches: %d bytes, want %d, equal=%v", len(got), len(data), bytes.Equal(got, data))
		}
	},
	"SparseWriteReadsZeros": func(t *testing.T, fsys billy.Filesystem) {
		f, err := fsys.Create("sparse")
		must(t, err)
		_, err = f.Seek(1<<20, io.SeekStart)
		must(t, err)
		_, err = f.Write([]byte("end"))
		must(t, err)
		b := make([]byte, 8192)
		n, err := f.ReadAt(b, 500_000)
		if n != len(b) || err != nil || !bytes.Equal(b, make([]byte, len(b))) {
			t.Fatalf("hole read before close: n=%d err=%v", n, err)
		}
		must(t, f.Close())
		got := readFile(t, fsys, "sparse")
		if len(got) != 1<<20+3 || string(got[1<<20:]) != "end" || !bytes.Equal(got[:1<<20], make([]byte, 1<<20)) {
			t.Fatalf("sparse file: %d bytes", len(got))
		}
	},
	"TruncateShrinkExtend": func(t *testing.T, fsys billy.Filesystem) {
		data := randBytes(3, 20_000)
		writeFile(t, fsys, "t", data)
		f, err := fsys.OpenFile("t", os.O_RDWR, 0)
		must(t, err)
		must(t, f.Truncate(5000))
		must(t, f.Truncate(9000))
		_, err = f.Seek(0, io.SeekStart)
		must(t, err)
		got, err := io.ReadAll(f)
		must(t, err)
		want := append(append([]byte{}, data[:5000]...), make([]byte, 4000)...)
		if !bytes.Equal(got, want) {
			t.Fatalf("after truncate: %d bytes, equal=%v", len(got), bytes.Equal(got, want))
		}
		must(t, f.Close())
		st, err := fsys.Stat("t")
		must(t, err)
		if st.Size() != 9000 {
			t.Fatalf("size %d, want 9000", st.Size())
		}
	},
	"AppendAcrossOpens": func(t *testing.T, fsys billy.Filesystem) {
		for i := 0; i < 5; i++ {
			f, err := fsys.OpenFile("log", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			must(t, err)
			_, err = fmt.Fprintf(f, "line %d\n", i)
			must(t, err)
			must(t, f.Close())
		}
		if got := string(readFile(t, fsys, "log")); got != "line 0\nline 1\nline 2\nline 3\nline 4\n" {
			t.Fatalf("log = %q", got)
		}
	},
	"ErrorsArePathErrorsWithErrno": func(t *testing.T, fsys billy.Filesystem) {
		_, err := fsys.Open("missing/file")
		var pe *fs.PathError
		if !errors.As(err, &pe) || !os.IsNotExist(err) || !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, syscall.ENOENT) {
			t.Fatalf("open missing: %#v", err)
		}
		writeFile(t, fsys, "x", []byte("x"))
		_, err = fsys.OpenFile("x", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if !errors.As(err, &pe) || !errors.Is(err, fs.ErrExist) || !os.IsExist(err) {
			t.Fatalf("O_EXCL on existing: %#v", err)
		}
		_, err = fsys.Stat("x/y")
		if !errors.Is(err, syscall.ENOTDIR) {
			t.Fatalf("stat through a file: %v, want ENOTDIR", err)
		}
		must(t, fsys.MkdirAll("d/e", 0o755))
		writeFile(t, fsys, "d/e/f", nil)
		if err := fsys.Remove("d/e"); err == nil {
			t.Fatal("removing a non-empty directory succeeded")
		}
		f := open(t, fsys, "x")
		if _, err := f.Write([]byte("no")); err == nil {
			t.Fatal("write to a read-only file succeeded")
		}
		must(t, f.Close())
		if err := f.Close(); err == nil {
			t.Fatal("second Close succeeded")
		}
	},
	"RenameReplacesFile": func(t *testing.T, fsys billy.Filesystem) {
		writeFile(t, fsys, "a", []byte("from a"))
		writeFile(t, fsys, "b", []byte("old b"))
		must(t, fsys.Rename("a", "b"))
		if got := string(readFile(t, fsys, "b")); got != "from a" {
			t.Fatalf("b = %q", got)
		}
		if _, err := fsys.Stat("a"); !os.IsNotExist(err) {
			t.Fatalf("a still there: %v", err)
		}
	},
	"ReadDirSortedWithSizes": func(t *testing.T, fsys billy.Filesystem) {
		names := []string{"zeta", "alpha", "mid", "Beta"}
		for i, n := range names {
			writeFile(t, fsys, "dir/"+n, bytes.Repeat([]byte("x"), i*1000))
		}
		must(t, fsys.MkdirAll("dir/sub", 0o755))
		infos, err := fsys.ReadDir("dir")
		must(t, err)
		var got []string
		for _, fi := range infos {
			got = append(got, fmt.Sprintf("%s:%d:%v", fi.Name(), sizeIfFile(fi), fi.IsDir()))
		}
		want := []string{"Beta:3000:false", "alpha:1000:false", "mid:2000:false", "sub:0:true", "zeta:0:false"}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("ReadDir = %v, want %v", got, want)
		}
		if !sort.SliceIsSorted(infos, func(i, j int) bool { return infos[i].Name() < infos[j].Name() }) {
			t.Fatal("not sorted")
		}
	},
	"SymlinkChain": func(t *testing.T, fsys billy.Filesystem) {
		writeFile(t, fsys, "real/target", []byte("payload"))
		must(t, fsys.Symlink("../real/target", "links/one"))
		must(t, fsys.Symlink("one", "links/two"))
		must(t, fsys.Symlink("/real", "links/dir"))
		if got := string(readFile(t, fsys, "links/two")); got != "payload" {
			t.Fatalf("through two links: %q", got)
		}
		if got := string(readFile(t, fsys, "links/dir/target")); got != "payload" {
			t.Fatalf("through an absolute dir link: %q", got)
		}
		fi, err := fsys.Lstat("links/two")
		must(t, err)
		if fi.Mode()&os.ModeSymlink == 0 {
			t.Fatalf("Lstat mode %v", fi.Mode())
		}
		tgt, err := fsys.Readlink("links/one")
		must(t, err)
		if tgt != "../real/target" {
			t.Fatalf("Readlink = %q", tgt)
		}
	},
	"ChmodChtimes": func(t *testing.T, fsys billy.Filesystem) {
		writeFile(t, fsys, "m", []byte("m"))
		ch := fsys.(billy.Change)
		must(t, ch.Chmod("m", 0o640))
		mt := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
		must(t, ch.Chtimes("m", mt, mt))
		fi, err := fsys.Stat("m")
		must(t, err)
		if fi.Mode().Perm() != 0o640 || !fi.ModTime().Equal(mt) {
			t.Fatalf("mode %v mtime %v", fi.Mode(), fi.ModTime())
		}
	},
	"StatSeesUnflushedSize": func(t *testing.T, fsys billy.Filesystem) {
		f, err := fsys.Create("growing")
		must(t, err)
		_, err = f.Write(make([]byte, 12345))
		must(t, err)
		fi, err := fsys.Stat("growing")
		must(t, err)
		if fi.Size() != 12345 {
			t.Fatalf("size while open %d", fi.Size())
		}
		end, err := f.Seek(0, io.SeekEnd)
		must(t, err)
		if end != 12345 {
			t.Fatalf("SeekEnd = %d", end)
		}
		must(t, f.Close())
	},
	"ConcurrentFilesAndReaders": func(t *testing.T, fsys billy.Filesystem) {
		const files = 16
		var wg sync.WaitGroup
		errs := make(chan error, files*2)
		for i := 0; i < files; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				data := randBytes(int64(100+i), 300_000+i)
				name := fmt.Sprintf("c/%d", i)
				if err := util.WriteFile(fsys, name, data, 0o644); err != nil {
					errs <- err
					return
				}
				f, err := fsys.Open(name)
				if err != nil {
					errs <- err
					return
				}
				defer f.Close()
				// Concurrent ReadAt on one file.
				var rw sync.WaitGroup
				for r := 0; r < 4; r++ {
					rw.Add(1)
					go func(r int) {
						defer rw.Done()
						off := int64(r * 70_000)
						b := make([]byte, 70_000)
						n, err := f.ReadAt(b, off)
						if (err != nil && err != io.EOF) || !bytes.Equal(b[:n], data[off:off+int64(n)]) || n != 70_000 {
							errs <- fmt.Errorf("file %d ReadAt %d: n=%d err=%v", i, off, n, err)
						}
					}(r)
				}
				rw.Wait()
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	},
}

func TestBehaviour(t *testing.T) {
	srv := startServer(t)
	targets := []struct {
		name string
		make func(t *testing.T) billy.Filesystem
	}{
		{"osfs", func(t *testing.T) billy.Filesystem {
			// osfs plus billy.Change done with package os (osfs has
			// only Chmod).
			dir := t.TempDir()
			return &osChangeFS{Filesystem: osfs.New(dir), dir: dir}
		}},
		{"billyfs-cache", func(t *testing.T) billy.Filesystem {
			root := mount(t, srv, billyfs.Options{CacheDir: t.TempDir(), MaxOpenFiles: 8})
			return chrootFor(t, root)
		}},
		{"billyfs-nocache", func(t *testing.T) billy.Filesystem {
			return chrootFor(t, mount(t, srv, billyfs.Options{}))
		}},
	}
	names := make([]string, 0, len(behaviours))
	for n := range behaviours {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) {
			for _, n := range names {
				t.Run(n, func(t *testing.T) { behaviours[n](t, tg.make(t)) })
			}
		})
	}
}

// chrootFor gives each case its own directory of the shared export.
func chrootFor(t *testing.T, fsys billy.Filesystem) billy.Filesystem {
	c, err := fsys.Chroot(fmt.Sprintf("case-%d", time.Now().UnixNano()))
	must(t, err)
	return c
}

func sizeIfFile(fi os.FileInfo) int64 {
	if fi.IsDir() {
		return 0
	}
	return fi.Size()
}

func randBytes(seed int64, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(seed)).Read(b)
	return b
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t testing.TB, fsys billy.Filesystem, name string, data []byte) {
	t.Helper()
	must(t, util.WriteFile(fsys, name, data, 0o644))
}

func readFile(t testing.TB, fsys billy.Filesystem, name string) []byte {
	t.Helper()
	b, err := util.ReadFile(fsys, name)
	must(t, err)
	return b
}

func open(t testing.TB, fsys billy.Filesystem, name string) billy.File {
	t.Helper()
	f, err := fsys.Open(name)
	must(t, err)
	return f
}

// A file removed while open keeps working for its open File as far as the
// server allows, and its cache object is retired at the last close.
func TestRemoveWhileOpenRetiresCache(t *testing.T) {
	srv := startServer(t)
	fsys := mount(t, srv, billyfs.Options{CacheDir: t.TempDir()})
	writeFile(t, fsys, "gone", randBytes(30, 100_000))
	f := open(t, fsys, "gone")
	if _, err := io.ReadAll(f); err != nil {
		t.Fatal(err)
	}
	must(t, fsys.Remove("gone"))
	must(t, f.Close())
	st := fsys.Stats()
	if st.Cache.Retires == 0 || st.Cache.UsedBytes != 0 {
		t.Fatalf("after removing and closing: retires %d, cached bytes %d", st.Cache.Retires, st.Cache.UsedBytes)
	}
	if _, err := fsys.Stat("gone"); !os.IsNotExist(err) {
		t.Fatalf("stat after remove: %v", err)
	}
}
