//go:build linux

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// nfsSuperMagic is NFS_SUPER_MAGIC, the f_type statfs reports for an NFS mount.
const nfsSuperMagic = 0x6969

func (g *guest) checks() []check {
	return []check{
		{"statfs", g.statfs, g.statfs},
		{"create", g.createWrite, g.createVerify},
		{"offsets", g.offsetsWrite, g.offsetsVerify},
		{"bigfile", g.bigWrite, g.bigVerify},
		{"append", g.appendWrite, g.appendVerify},
		{"truncate", g.truncateWrite, g.truncateVerify},
		{"chmod_utimes", g.attrsWrite, g.attrsVerify},
		{"hardlink", g.hardlinkWrite, g.hardlinkVerify},
		{"link_then_unlink", g.linkUnlinkWrite, g.linkUnlinkVerify},
		{"symlink", g.symlinkWrite, g.symlinkVerify},
		{"rename", g.renameWrite, g.renameVerify},
		{"unlink_open", g.unlinkOpenWrite, g.unlinkOpenVerify},
		{"mkdir_rmdir", g.treeWrite, g.treeVerify},
		{"readdir_churn", g.readdirChurn, g.readdirVerify},
		{"mmap", g.mmapWrite, g.mmapVerify},
		{"fsync", g.fsyncWrite, g.fsyncVerify},
		{"excl_create", g.exclWrite, g.exclVerify},
	}
}

// statfs: FSSTAT as statfs(2) shows it.
func (g *guest) statfs() error {
	var st unix.Statfs_t
	if err := unix.Statfs(g.root, &st); err != nil {
		return err
	}
	g.infof("statfs type=%#x bsize=%d blocks=%d bfree=%d bavail=%d files=%d ffree=%d namelen=%d",
		st.Type, st.Bsize, st.Blocks, st.Bfree, st.Bavail, st.Files, st.Ffree, st.Namelen)
	// The host compares these with the figures of the export's filesystem
	// (the upstream's, through the proxy).
	g.con.printf("STATFS %s %d %d %d %d %d %d", g.name, st.Bsize, st.Blocks, st.Bfree, st.Bavail, st.Files, st.Ffree)
	var errs []error
	if st.Type != nfsSuperMagic {
		errs = append(errs, fmt.Errorf("f_type %#x, want NFS_SUPER_MAGIC %#x", st.Type, nfsSuperMagic))
	}
	if st.Bsize <= 0 || st.Blocks == 0 {
		errs = append(errs, fmt.Errorf("no size reported: bsize=%d blocks=%d (FSSTAT tbytes=0)", st.Bsize, st.Blocks))
	}
	if st.Bfree > st.Blocks || st.Bavail > st.Bfree {
		errs = append(errs, fmt.Errorf("inconsistent: blocks=%d bfree=%d bavail=%d", st.Blocks, st.Bfree, st.Bavail))
	}
	if st.Ffree > st.Files {
		errs = append(errs, fmt.Errorf("inconsistent: files=%d ffree=%d", st.Files, st.Ffree))
	}
	if st.Namelen == 0 {
		errs = append(errs, errors.New("namelen 0 (PATHCONF name_max)"))
	}
	return errors.Join(errs...)
}

var helloData = []byte("hello, nfs\n")

// create: CREATE (unchecked), WRITE, GETATTR, READ; a missing parent is ENOENT.
func (g *guest) createWrite() error {
	dir := g.path("create")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	name := filepath.Join(dir, "hello.txt")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(helloData); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "empty"), nil, 0o600); err != nil {
		return err
	}
	_, err = os.Create(filepath.Join(dir, "no-such-dir", "x"))
	if err := expectErrno("create in a missing directory", err, syscall.ENOENT); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return g.createVerify()
}

func (g *guest) createVerify() error {
	dir := g.path("create")
	if err := expectFile(filepath.Join(dir, "hello.txt"), helloData); err != nil {
		return err
	}
	if err := expectMode(filepath.Join(dir, "hello.txt"), 0o644); err != nil {
		return err
	}
	if err := expectFile(filepath.Join(dir, "empty"), nil); err != nil {
		return err
	}
	return expectMode(filepath.Join(dir, "empty"), 0o600)
}

// offsetsLayout is the content of offsets/sparse.dat: writes at 0, 8192 and
// 1 MiB+3 with holes between, then a small overwrite at 2.
func offsetsLayout() []byte {
	want := make([]byte, 1<<20+3+1000)
	copy(want[0:], bytes.Repeat([]byte("A"), 4096))
	copy(want[8192:], bytes.Repeat([]byte("B"), 4096))
	copy(want[1<<20+3:], pattern(3, 1000))
	copy(want[2:], "xy")
	return want
}

// offsets: pwrite/pread at unaligned offsets, holes read as zeros.
func (g *guest) offsetsWrite() error {
	dir := g.path("offsets")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "sparse.dat"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	writes := []struct {
		off  int64
		data []byte
	}{
		{0, bytes.Repeat([]byte("A"), 4096)},
		{8192, bytes.Repeat([]byte("B"), 4096)},
		{1<<20 + 3, pattern(3, 1000)},
		{2, []byte("xy")},
	}
	for _, w := range writes {
		if n, err := f.WriteAt(w.data, w.off); err != nil || n != len(w.data) {
			return fmt.Errorf("pwrite %d bytes at %d: n=%d %w", len(w.data), w.off, n, err)
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	want := offsetsLayout()
	for _, r := range []struct{ off, n int64 }{{0, 10}, {4090, 20}, {5000, 100}, {8191, 4098}, {1<<20 + 1, 1002}, {1 << 19, 4096}} {
		got := make([]byte, r.n)
		n, err := f.ReadAt(got, r.off)
		if err != nil && !(errors.Is(err, io.EOF) && r.off+int64(n) == int64(len(want))) {
			return fmt.Errorf("pread %d at %d: %w", r.n, r.off, err)
		}
		if err := sameBytes(fmt.Sprintf("pread %d at %d", r.n, r.off), got[:n], want[r.off:r.off+int64(n)]); err != nil {
			return err
		}
	}
	// Reading at EOF returns 0 bytes.
	if n, err := f.ReadAt(make([]byte, 10), int64(len(want))); n != 0 || !errors.Is(err, io.EOF) {
		return fmt.Errorf("pread at EOF: n=%d err=%v", n, err)
	}
	return g.offsetsVerify()
}

func (g *guest) offsetsVerify() error {
	name := g.path("offsets", "sparse.dat")
	fi, err := os.Stat(name)
	if err != nil {
		return err
	}
	want := offsetsLayout()
	if fi.Size() != int64(len(want)) {
		return fmt.Errorf("size %d, want %d", fi.Size(), len(want))
	}
	return expectFile(name, want)
}

const bigSeed = 42

// bigBlock returns block i of the large file: one pseudo-random MiB whose
// first 8 bytes carry the block number, so a misplaced block is caught.
func bigBlock(base []byte, i int) []byte {
	binary.LittleEndian.PutUint64(base, uint64(i)^0xb16b00b5)
	return base
}

// bigfile: a large sequential write (1 MiB writes, the client's wsize
// decides the WRITE size), fsync, then a cold read with a checksum.
func (g *guest) bigWrite() error {
	dir := g.path("bigfile")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	name := filepath.Join(dir, "big.dat")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	base := pattern(bigSeed, 1<<20)
	h := sha256.New()
	start := time.Now()
	for i := 0; i < g.bigMiB; i++ {
		b := bigBlock(base, i)
		h.Write(b)
		if _, err := f.Write(b); err != nil {
			f.Close()
			return fmt.Errorf("write block %d: %w", i, err)
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	wsecs := time.Since(start).Seconds()
	want := hex.EncodeToString(h.Sum(nil))
	if err := dropCaches(); err != nil {
		return err
	}
	start = time.Now()
	if err := g.bigCompare(name); err != nil {
		return err
	}
	rsecs := time.Since(start).Seconds()
	g.infof("bigfile %d MiB: write+fsync %.1f MB/s, cold read %.1f MB/s (guest under TCG)",
		g.bigMiB, float64(g.bigMiB)*1.048576/wsecs, float64(g.bigMiB)*1.048576/rsecs)
	g.con.printf("SHA %s bigfile/big.dat %d %s", g.name, int64(g.bigMiB)<<20, want)
	return nil
}

func (g *guest) bigVerify() error {
	return g.bigCompare(g.path("bigfile", "big.dat"))
}

// bigCompare reads name block by block and compares each with what bigWrite wrote.
func (g *guest) bigCompare(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != int64(g.bigMiB)<<20 {
		return fmt.Errorf("size %d, want %d", fi.Size(), int64(g.bigMiB)<<20)
	}
	base := pattern(bigSeed, 1<<20)
	buf := make([]byte, 1<<20)
	for i := 0; i < g.bigMiB; i++ {
		if _, err := io.ReadFull(f, buf); err != nil {
			return fmt.Errorf("read block %d: %w", i, err)
		}
		if err := sameBytes(fmt.Sprintf("block %d", i), buf, bigBlock(base, i)); err != nil {
			return err
		}
	}
	if n, err := f.Read(buf); n != 0 || err != io.EOF {
		return fmt.Errorf("after the last block: n=%d err=%v, want EOF", n, err)
	}
	return nil
}

var appendWant = []byte("a1\nb1\na2\nb2\nc1\n")

// append: two O_APPEND descriptors interleave; each write lands at the end.
func (g *guest) appendWrite() error {
	dir := g.path("append")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	name := filepath.Join(dir, "log.txt")
	a, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer a.Close()
	b, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	defer b.Close()
	for _, w := range []struct {
		f *os.File
		s string
	}{{a, "a1\n"}, {b, "b1\n"}, {a, "a2\n"}, {b, "b2\n"}} {
		if _, err := w.f.WriteString(w.s); err != nil {
			return err
		}
	}
	if err := a.Close(); err != nil {
		return err
	}
	if err := b.Close(); err != nil {
		return err
	}
	c, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := c.WriteString("c1\n"); err != nil {
		c.Close()
		return err
	}
	if err := c.Close(); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return g.appendVerify()
}

func (g *guest) appendVerify() error {
	return expectFile(g.path("append", "log.txt"), appendWant)
}

func truncateWant() (down, up []byte) {
	down = append(pattern(7, 100), make([]byte, 5000-100)...)
	up = make([]byte, 1<<20)
	return down, up
}

// truncate: SETATTR size down (ftruncate) and up (truncate by path), and
// a new empty file extended to 1 MiB of zeros.
func (g *guest) truncateWrite() error {
	dir := g.path("truncate")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	name := filepath.Join(dir, "t.dat")
	if err := writeFile(name, pattern(7, 10000), 0o644); err != nil {
		return err
	}
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if err := f.Truncate(100); err != nil {
		f.Close()
		return fmt.Errorf("ftruncate down: %w", err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != 100 {
		f.Close()
		return fmt.Errorf("after ftruncate(100): %v %v", fi, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	if err := expectFile(name, pattern(7, 100)); err != nil {
		return fmt.Errorf("after truncating down: %w", err)
	}
	if err := os.Truncate(name, 5000); err != nil {
		return fmt.Errorf("truncate up: %w", err)
	}
	if err := writeFile(filepath.Join(dir, "grown.dat"), nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(filepath.Join(dir, "grown.dat"), 1<<20); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return g.truncateVerify()
}

func (g *guest) truncateVerify() error {
	down, up := truncateWant()
	if err := expectFile(g.path("truncate", "t.dat"), down); err != nil {
		return err
	}
	return expectFile(g.path("truncate", "grown.dat"), up)
}

var (
	attrsMtime = time.Date(2002, 3, 4, 5, 6, 7, 123456789, time.UTC)
	attrsAtime = time.Date(2001, 2, 3, 4, 5, 6, 987654321, time.UTC)
)

// chmod_utimes: SETATTR mode on a file and a directory, SETATTR times with
// nanoseconds; GETATTR after dropping caches shows them.
func (g *guest) attrsWrite() error {
	start := time.Now()
	dir := g.path("attrs")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	name := filepath.Join(dir, "f")
	if err := writeFile(name, []byte("attrs"), 0o600); err != nil {
		return err
	}
	if err := expectMode(name, 0o600); err != nil {
		return err
	}
	if err := os.Chmod(name, 0o754); err != nil {
		return err
	}
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(sub, 0o711); err != nil {
		return err
	}
	if err := os.Chtimes(name, attrsAtime, attrsMtime); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(name, &st); err != nil {
		return err
	}
	if got := time.Unix(st.Atim.Sec, st.Atim.Nsec); !got.Equal(attrsAtime) {
		return fmt.Errorf("atime %v, want %v", got.UTC(), attrsAtime)
	}
	// ctime is the server's time of the last change (the SETATTR), which
	// a client cannot set: neither atime nor mtime. The guest's clock
	// comes from the host's (qemu's RTC), so it agrees within minutes.
	if got := time.Unix(st.Ctim.Sec, st.Ctim.Nsec); got.Before(start.Add(-10*time.Minute)) || got.After(time.Now().Add(10*time.Minute)) {
		return fmt.Errorf("ctime %v, want the time of the chmod/utimes (about %v)", got.UTC(), start.UTC().Round(time.Second))
	}
	return g.attrsVerify()
}

func (g *guest) attrsVerify() error {
	name := g.path("attrs", "f")
	if err := expectMode(name, 0o754); err != nil {
		return err
	}
	if err := expectMode(g.path("attrs", "sub"), os.ModeDir|0o711); err != nil {
		return err
	}
	fi, err := os.Lstat(name)
	if err != nil {
		return err
	}
	if !fi.ModTime().Equal(attrsMtime) {
		return fmt.Errorf("mtime %v, want %v", fi.ModTime().UTC(), attrsMtime)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if ctime := time.Unix(st.Ctim.Sec, st.Ctim.Nsec); ctime.Year() < 2020 {
		return fmt.Errorf("ctime %v: the server reports a time the client set (atime or mtime), not the change time", ctime.UTC())
	}
	return nil
}

// hardlink: LINK; both names share the inode (fileid) and nlink is 2; a
// write through one name is read through the other; removing one leaves 1.
func (g *guest) hardlinkWrite() error {
	dir := g.path("hardlink")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	if err := writeFile(a, []byte("linked"), 0o644); err != nil {
		return err
	}
	if err := os.Link(a, b); err != nil {
		return err
	}
	if err := os.Link(a, c); err != nil {
		return err
	}
	err := os.Link(a, b)
	if err := expectErrno("link over an existing name", err, syscall.EEXIST); err != nil {
		return err
	}
	f, err := os.OpenFile(b, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString("+b"); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Remove(c); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return g.hardlinkVerify()
}

func (g *guest) hardlinkVerify() error {
	a, b := g.path("hardlink", "a"), g.path("hardlink", "b")
	var sa, sb syscall.Stat_t
	if err := syscall.Stat(a, &sa); err != nil {
		return err
	}
	if err := syscall.Stat(b, &sb); err != nil {
		return err
	}
	if sa.Ino != sb.Ino {
		return fmt.Errorf("hard links have different inode numbers %d and %d", sa.Ino, sb.Ino)
	}
	if sa.Nlink != 2 || sb.Nlink != 2 {
		return fmt.Errorf("nlink %d/%d, want 2", sa.Nlink, sb.Nlink)
	}
	if err := expectFile(a, []byte("linked+b")); err != nil {
		return err
	}
	return expectMissing(g.path("hardlink", "c"))
}

var linkUnlinkData = []byte("delivered atomically")

// link_then_unlink: the write-then-link-then-unlink pattern of maildir
// delivery and git's object store — write tmp, link(tmp, final), open
// final, unlink(tmp) — then read and write through the descriptor opened
// by the new name. The kernel's nfs_link gives final the inode (and file
// handle) of tmp, so a server whose handle dies with the name it was
// issued for answers the descriptor's READ/WRITE with NFS3ERR_STALE
// although the file still has a name.
func (g *guest) linkUnlinkWrite() error {
	dir := g.path("linkunlink")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	tmp, final := filepath.Join(dir, "tmp"), filepath.Join(dir, "final")
	if err := writeFile(tmp, linkUnlinkData, 0o644); err != nil {
		return err
	}
	if err := os.Link(tmp, final); err != nil {
		return err
	}
	f, err := os.OpenFile(final, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// Read from the server before the unlink too, so that a server (the
	// proxy) has the file open when one of its names goes.
	if err := dropCaches(); err != nil {
		return err
	}
	got := make([]byte, len(linkUnlinkData))
	if _, err := f.ReadAt(got, 0); err != nil {
		return fmt.Errorf("read through final: %w", err)
	}
	if err := os.Remove(tmp); err != nil {
		return err
	}
	if err := dropCaches(); err != nil { // the next read goes to the server
		return err
	}
	if _, err := f.ReadAt(got, 0); err != nil {
		return fmt.Errorf("read through final after unlink(tmp): %w", err)
	}
	if err := sameBytes("read through final", got, linkUnlinkData); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte("D"), 0); err != nil {
		return fmt.Errorf("write through final after unlink(tmp): %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync through final after unlink(tmp): %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return g.linkUnlinkVerify()
}

func (g *guest) linkUnlinkVerify() error {
	dir := g.path("linkunlink")
	if err := expectMissing(filepath.Join(dir, "tmp")); err != nil {
		return err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, "final"), &st); err != nil {
		return err
	}
	if st.Nlink != 1 {
		return fmt.Errorf("final: nlink %d, want 1", st.Nlink)
	}
	want := append([]byte("D"), linkUnlinkData[1:]...)
	return expectFile(filepath.Join(dir, "final"), want)
}

// symlink: SYMLINK, READLINK, lstat vs stat, a dangling link, a link to a
// directory that path lookup follows.
func (g *guest) symlinkWrite() error {
	dir := g.path("symlink")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "target"), []byte("target data"), 0o644); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(dir, "tdir"), 0o755); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "tdir", "inner"), []byte("inner"), 0o644); err != nil {
		return err
	}
	for link, target := range map[string]string{"link": "target", "dangling": "no/such/file", "dirlink": "tdir", "abs": "/etc/hostname-not-on-server"} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			return err
		}
	}
	err := os.Symlink("x", filepath.Join(dir, "link"))
	if err := expectErrno("symlink over an existing name", err, syscall.EEXIST); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return g.symlinkVerify()
}

func (g *guest) symlinkVerify() error {
	dir := g.path("symlink")
	for link, target := range map[string]string{"link": "target", "dangling": "no/such/file", "dirlink": "tdir", "abs": "/etc/hostname-not-on-server"} {
		got, err := os.Readlink(filepath.Join(dir, link))
		if err != nil {
			return err
		}
		if got != target {
			return fmt.Errorf("readlink %s = %q, want %q", link, got, target)
		}
		fi, err := os.Lstat(filepath.Join(dir, link))
		if err != nil {
			return err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			return fmt.Errorf("lstat %s: mode %v, want a symlink", link, fi.Mode())
		}
	}
	if err := expectFile(filepath.Join(dir, "link"), []byte("target data")); err != nil {
		return err
	}
	if err := expectFile(filepath.Join(dir, "dirlink", "inner"), []byte("inner")); err != nil {
		return err
	}
	_, err := os.Stat(filepath.Join(dir, "dangling"))
	return expectErrno("stat of a dangling symlink", err, syscall.ENOENT)
}

// rename: to a new name while open, over an existing (open) file, across
// directories, and of a directory with children.
func (g *guest) renameWrite() error {
	dir := g.path("rename")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	p := func(elem ...string) string { return filepath.Join(append([]string{dir}, elem...)...) }
	if err := writeFile(p("a"), []byte("AAAA"), 0o644); err != nil {
		return err
	}
	if err := writeFile(p("b"), []byte("BBBB"), 0o644); err != nil {
		return err
	}
	fa, err := os.Open(p("a"))
	if err != nil {
		return err
	}
	defer fa.Close()
	inoA, err := inode(p("a"))
	if err != nil {
		return err
	}
	if err := os.Rename(p("a"), p("c")); err != nil {
		return fmt.Errorf("rename to a new name: %w", err)
	}
	if err := expectMissing(p("a")); err != nil {
		return err
	}
	// The fileid is the file's, not the name's (the kernel compares it
	// with what it cached: "fileid changed" → ESTALE).
	if err := dropCaches(); err != nil {
		return err
	}
	if ino, err := inode(p("c")); err != nil || ino != inoA {
		return fmt.Errorf("inode number after rename: %d %v, before: %d", ino, err, inoA)
	}
	// c is open (fa) when b replaces it: the kernel silly-renames the target.
	if err := os.Rename(p("b"), p("c")); err != nil {
		return fmt.Errorf("rename over an existing file: %w", err)
	}
	if err := dropCaches(); err != nil {
		return err
	}
	got, err := io.ReadAll(fa)
	if err != nil {
		return fmt.Errorf("read of a file renamed, then replaced, while open: %w", err)
	}
	if err := sameBytes("open file after rename and replace", got, []byte("AAAA")); err != nil {
		return err
	}
	if err := fa.Close(); err != nil {
		return err
	}
	for _, d := range []string{"d1", "d2"} {
		if err := os.Mkdir(p(d), 0o755); err != nil {
			return err
		}
	}
	if err := writeFile(p("d1", "x"), []byte("moved across"), 0o644); err != nil {
		return err
	}
	if err := writeFile(p("d1", "child"), []byte("child of a renamed dir"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(p("d1", "x"), p("d2", "y")); err != nil {
		return fmt.Errorf("rename across directories: %w", err)
	}
	inoD1, err := inode(p("d1"))
	if err != nil {
		return err
	}
	if err := os.Rename(p("d1"), p("d3")); err != nil {
		return fmt.Errorf("rename of a directory: %w", err)
	}
	if err := dropCaches(); err != nil {
		return err
	}
	if ino, err := inode(p("d3")); err != nil || ino != inoD1 {
		return fmt.Errorf("inode number of a directory after rename: %d %v, before: %d", ino, err, inoD1)
	}
	if err := os.Mkdir(p("empty"), 0o755); err != nil {
		return err
	}
	// syscall.Rename, not os.Rename: os.Rename refuses an existing
	// directory as the target itself (EEXIST) without calling rename(2).
	err = syscall.Rename(p("d3"), p("d2"))
	if err := expectErrno("rename of a directory over a non-empty one", err, syscall.ENOTEMPTY, syscall.EEXIST); err != nil {
		return err
	}
	if err := syscall.Rename(p("d3"), p("empty")); err != nil {
		return fmt.Errorf("rename(2) of a directory over an empty one: %w", err)
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return g.renameVerify()
}

func (g *guest) renameVerify() error {
	dir := g.path("rename")
	p := func(elem ...string) string { return filepath.Join(append([]string{dir}, elem...)...) }
	if err := expectFile(p("c"), []byte("BBBB")); err != nil {
		return err
	}
	for _, gone := range []string{"a", "b", "d1", "d3", "d2/x"} {
		if err := expectMissing(p(gone)); err != nil {
			return err
		}
	}
	if err := expectFile(p("d2", "y"), []byte("moved across")); err != nil {
		return err
	}
	if err := expectFile(p("empty", "child"), []byte("child of a renamed dir")); err != nil {
		return err
	}
	return noSillyRenames(dir)
}

// unlink_open: unlinking an open file makes the kernel rename it to
// .nfsXXXX (sillyrename); reads and writes through the descriptor keep
// working; the last close removes it.
func (g *guest) unlinkOpenWrite() error {
	dir := g.path("unlink")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	name := filepath.Join(dir, "victim")
	data := pattern(11, 200000)
	if err := writeFile(name, data, 0o644); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "keep"), []byte("keep"), 0o644); err != nil {
		return err
	}
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := os.Remove(name); err != nil {
		return fmt.Errorf("unlink of an open file: %w", err)
	}
	if err := expectMissing(name); err != nil {
		return err
	}
	if err := dropCaches(); err != nil { // the reads below go to the server
		return err
	}
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, 0); err != nil {
		return fmt.Errorf("read after unlink: %w", err)
	}
	if err := sameBytes("read after unlink", got, data); err != nil {
		return err
	}
	if _, err := f.WriteAt([]byte("still writable"), 100); err != nil {
		return fmt.Errorf("write after unlink: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync after unlink: %w", err)
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != int64(len(data)) {
		return fmt.Errorf("fstat after unlink: %v %v", fi, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return g.unlinkOpenVerify()
}

func (g *guest) unlinkOpenVerify() error {
	dir := g.path("unlink")
	if err := noSillyRenames(dir); err != nil {
		return err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	if len(ents) != 1 || ents[0].Name() != "keep" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return fmt.Errorf("directory holds %v, want [keep]", names)
	}
	return nil
}

// treePaths lists the directories of a nested tree (depth levels, fanout
// children each) below root.
func treePaths(root string, depth, fanout int) []string {
	dirs := []string{root}
	level := []string{root}
	for d := 0; d < depth; d++ {
		var next []string
		for _, p := range level {
			for i := 0; i < fanout; i++ {
				next = append(next, filepath.Join(p, fmt.Sprintf("d%d", i)))
			}
		}
		dirs = append(dirs, next...)
		level = next
	}
	return dirs
}

// treeDepth is the depth of the binary trees of mkdir_rmdir (15 directories each).
const treeDepth = 3

// mkdir_rmdir: MKDIR of a nested tree with a file in every directory,
// RMDIR of a non-empty directory fails, MKDIR of an existing one fails,
// RemoveAll of the tree, and a kept tree for the verify phase.
func (g *guest) treeWrite() error {
	dir := g.path("tree")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	for _, t := range []string{"gone", "kept"} {
		for _, d := range treePaths(filepath.Join(dir, t), treeDepth, 2) {
			if err := os.Mkdir(d, 0o755); err != nil {
				return err
			}
			if err := writeFile(filepath.Join(d, "f"), []byte(g.rel(d)), 0o644); err != nil {
				return err
			}
		}
	}
	err := syscall.Rmdir(filepath.Join(dir, "gone", "d0"))
	if err := expectErrno("rmdir of a non-empty directory", err, syscall.ENOTEMPTY, syscall.EEXIST); err != nil {
		return err
	}
	err = os.Mkdir(filepath.Join(dir, "gone", "d0"), 0o755)
	if err := expectErrno("mkdir of an existing directory", err, syscall.EEXIST); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(dir, "gone")); err != nil {
		return fmt.Errorf("remove the tree: %w", err)
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return g.treeVerify()
}

func (g *guest) treeVerify() error {
	dir := g.path("tree")
	if err := expectMissing(filepath.Join(dir, "gone")); err != nil {
		return err
	}
	want := map[string]bool{}
	for _, d := range treePaths(filepath.Join(dir, "kept"), treeDepth, 2) {
		want[d] = true
		want[filepath.Join(d, "f")] = true
	}
	seen := 0
	err := filepath.WalkDir(filepath.Join(dir, "kept"), func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !want[p] {
			return fmt.Errorf("unexpected %s", p)
		}
		seen++
		if !d.IsDir() {
			return expectFile(p, []byte(g.rel(filepath.Dir(p))))
		}
		return nil
	})
	if err != nil {
		return err
	}
	if seen != len(want) {
		return fmt.Errorf("walked %d entries, want %d", seen, len(want))
	}
	return nil
}

// readdir_churn: list a directory of dirEntries files (created by the host)
// with small getdents batches while another goroutine creates and removes
// files in it. Each listing must end, and must return every stable entry
// exactly once (POSIX leaves only the changed entries unspecified). Linux
// looped forever on NFS3ERR_BAD_COOKIE with older go-nfs.
func (g *guest) readdirChurn() error {
	dir := g.path("readdir", "big")
	// A quiet listing first: exactly the stable entries.
	if err := g.listStable(dir, false); err != nil {
		return fmt.Errorf("quiet listing: %w", err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var churnErr error
	churned := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name := filepath.Join(dir, fmt.Sprintf("churn-%05d", i))
			if err := writeFile(name, nil, 0o644); err != nil {
				churnErr = err
				return
			}
			churned++
			if i >= 5 {
				if err := os.Remove(filepath.Join(dir, fmt.Sprintf("churn-%05d", i-5))); err != nil {
					churnErr = err
					return
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	var listErr error
	for pass := 0; pass < churnPasses && listErr == nil; pass++ {
		if err := dropCaches(); err != nil {
			listErr = err
			break
		}
		done := make(chan error, 1)
		go func() { done <- g.listStable(dir, true) }()
		select {
		case listErr = <-done:
			if listErr != nil {
				listErr = fmt.Errorf("listing %d under churn: %w", pass, listErr)
			}
		case <-time.After(churnTimeout):
			listErr = fmt.Errorf("listing %d under churn did not end within %v (readdir cookie loop?)", pass, churnTimeout)
		}
	}
	close(stop)
	wg.Wait()
	g.infof("readdir_churn: %d churn files created during %d listings of %d entries", churned, churnPasses, g.dirEntries)
	// Remove the churn files even after a failure, so the verify boot
	// checks the listing of exactly the stable entries.
	var cleanErr error
	for i := 0; i < churned; i++ {
		err := os.Remove(filepath.Join(dir, fmt.Sprintf("churn-%05d", i)))
		if err != nil && errno(err) != syscall.ENOENT {
			cleanErr = errors.Join(cleanErr, err)
		}
	}
	switch {
	case listErr != nil:
		return listErr
	case churnErr != nil:
		return fmt.Errorf("churn: %w", churnErr)
	case cleanErr != nil:
		return fmt.Errorf("removing the churn files: %w", cleanErr)
	}
	return g.readdirVerify()
}

func (g *guest) readdirVerify() error {
	return g.listStable(g.path("readdir", "big"), false)
}

// listStable lists dir in batches of 100 entries and checks every
// stable-NNNNN entry appears exactly once; with churn, churn-* entries may
// come and go, without it nothing else may appear.
func (g *guest) listStable(dir string, churn bool) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	seen := make(map[string]int, g.dirEntries)
	var extra []string
	for {
		names, err := f.Readdirnames(100)
		for _, n := range names {
			switch {
			case strings.HasPrefix(n, "stable-"):
				seen[n]++
			case churn && strings.HasPrefix(n, "churn-"):
			default:
				extra = append(extra, n)
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("getdents after %d names: %w", len(seen), err)
		}
	}
	var missing, dup []string
	for i := 0; i < g.dirEntries; i++ {
		n := fmt.Sprintf("stable-%05d", i)
		switch seen[n] {
		case 0:
			missing = append(missing, n)
		case 1:
		default:
			dup = append(dup, n)
		}
		delete(seen, n)
	}
	for n := range seen {
		extra = append(extra, n)
	}
	sort.Strings(extra)
	var errs []error
	if len(missing) > 0 {
		errs = append(errs, fmt.Errorf("%d stable entries missing (first %v)", len(missing), head(missing)))
	}
	if len(dup) > 0 {
		errs = append(errs, fmt.Errorf("%d stable entries listed twice (first %v)", len(dup), head(dup)))
	}
	if len(extra) > 0 {
		errs = append(errs, fmt.Errorf("unexpected entries %v", head(extra)))
	}
	return errors.Join(errs...)
}

func head(s []string) []string {
	if len(s) > 5 {
		return s[:5]
	}
	return s
}

// churnPasses is how many listings run under churn; each one starts from
// an empty page cache and takes ~10 s of emulated time for 10 000 entries
// when the server's cookies survive the churn.
const churnPasses = 1

// churnTimeout bounds one listing under churn. A server whose cookies are
// positions in the listing answers NFS3ERR_BAD_COOKIE after every change
// and the kernel starts over, so the listing may never end. It is generous:
// through the proxy under -race on a loaded 2-core machine one listing of
// 10 000 entries (~150 READDIRs) took 67 s.
const churnTimeout = 180 * time.Second

const mmapSize = 256 << 10

// mmap: a shared read-only mapping sees the file's data; stores through a
// shared writable mapping reach the server after msync.
func (g *guest) mmapWrite() error {
	dir := g.path("mmap")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	ro := filepath.Join(dir, "ro.dat")
	if err := writeFile(ro, pattern(21, mmapSize), 0o644); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	if err := mapCompare(ro, pattern(21, mmapSize)); err != nil {
		return err
	}

	rw := filepath.Join(dir, "rw.dat")
	f, err := os.OpenFile(rw, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(mmapSize); err != nil {
		return err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, mmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap rw: %w", err)
	}
	copy(m, pattern(22, mmapSize))
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		unix.Munmap(m)
		return fmt.Errorf("msync: %w", err)
	}
	if err := unix.Munmap(m); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	if err := g.mmapVerify(); err != nil {
		return err
	}
	return g.announce("mmap/rw.dat")
}

func (g *guest) mmapVerify() error {
	if err := expectFile(g.path("mmap", "rw.dat"), pattern(22, mmapSize)); err != nil {
		return err
	}
	return mapCompare(g.path("mmap", "ro.dat"), pattern(21, mmapSize))
}

func mapCompare(name string, want []byte) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, len(want), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap ro: %w", err)
	}
	defer unix.Munmap(m)
	return sameBytes("mmap of "+filepath.Base(name), m, want)
}

// fsync: every fsync returns success and the data is on the server; the
// host re-reads the file from its export directory (SHA line).
func (g *guest) fsyncWrite() error {
	dir := g.path("fsync")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "synced.dat"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	data := pattern(31, 300000)
	for i := 0; i < 3; i++ {
		if _, err := f.Write(data[i*100000 : (i+1)*100000]); err != nil {
			return err
		}
		if i == 1 {
			if err := unix.Fdatasync(int(f.Fd())); err != nil {
				return fmt.Errorf("fdatasync: %w", err)
			}
			continue
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("fsync %d: %w", i, err)
		}
	}
	if err := f.Close(); err != nil {
		return err
	}
	// fsync of a directory is valid too.
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return fmt.Errorf("fsync of a directory: %w", err)
	}
	d.Close()
	if err := g.fsyncVerify(); err != nil {
		return err
	}
	return g.announce("fsync/synced.dat")
}

func (g *guest) fsyncVerify() error {
	return expectFile(g.path("fsync", "synced.dat"), pattern(31, 300000))
}

// excl_create: O_CREAT|O_EXCL (CREATE EXCLUSIVE with a verifier, then
// SETATTR of the mode) succeeds once, then fails with EEXIST, also on a
// symlink; the mode asked for sticks.
func (g *guest) exclWrite() error {
	dir := g.path("excl")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	name := filepath.Join(dir, "once")
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return fmt.Errorf("O_EXCL create: %w", err)
	}
	if _, err := f.WriteString("exclusive"); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err := expectErrno("second O_EXCL create", err, syscall.EEXIST); err != nil {
		return err
	}
	if err := os.Symlink("nowhere", filepath.Join(dir, "sym")); err != nil {
		return err
	}
	_, err = os.OpenFile(filepath.Join(dir, "sym"), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o640)
	if err := expectErrno("O_EXCL create on a dangling symlink", err, syscall.EEXIST); err != nil {
		return err
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return g.exclVerify()
}

func (g *guest) exclVerify() error {
	name := g.path("excl", "once")
	if err := expectFile(name, []byte("exclusive")); err != nil {
		return err
	}
	if err := expectMode(name, 0o640); err != nil {
		return err
	}
	// An exclusive create stores its verifier in atime/mtime until the
	// client's SETATTR replaces them; real times must show.
	fi, err := os.Stat(name)
	if err != nil {
		return err
	}
	if y := fi.ModTime().Year(); y < 2020 || y > 2200 {
		return fmt.Errorf("mtime %v looks like an exclusive-create verifier, not a time", fi.ModTime())
	}
	return nil
}
