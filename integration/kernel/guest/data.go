//go:build linux

package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// guest holds the state of one variant (one mount) in one run. Its checks
// run one after another in one goroutine; only readdir_churn starts
// goroutines of its own, and waits for them. Different variants share
// only the console and the failure count, both safe for concurrent use.
type guest struct {
	name       string // the variant: "serve", "proxy"
	root       string // its mount point
	phase      string
	bigMiB     int
	dirEntries int
	con        *console
	failures   *atomic.Int64
	mountErr   error // why root is not an NFS mount

	plan, restartPlan []check

	// held across the server restart (write phase with -pause); no
	// chdir: the working directory is shared by the variants.
	heldRead, heldWrite, heldDir, heldDeep *os.File
}

// infof prints an INFO line about this variant.
func (g *guest) infof(format string, args ...any) {
	g.con.printf("INFO "+g.name+" "+format, args...)
}

func (g *guest) path(elem ...string) string {
	return filepath.Join(append([]string{g.root}, elem...)...)
}

// rel returns p relative to the mount: file contents must not depend on
// the mount point, so every variant's export ends up identical.
func (g *guest) rel(p string) string {
	r, err := filepath.Rel(g.root, p)
	if err != nil {
		return p
	}
	return r
}

// pattern returns n deterministic pseudo-random bytes for seed
// (splitmix64), so the verify phase can regenerate what the write phase wrote.
func pattern(seed uint64, n int) []byte {
	b := make([]byte, (n+7)/8*8)
	x := seed
	for i := 0; i < len(b); i += 8 {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		z ^= z >> 31
		binary.LittleEndian.PutUint64(b[i:], z)
	}
	return b[:n]
}

// dropCaches makes the next access go to the server: dirty data is written
// back, then the page cache, dentries and inodes are dropped (open files keep
// their inodes, but their clean pages go).
func dropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		return fmt.Errorf("drop caches: %w", err)
	}
	return nil
}

// writeFile creates name with data and mode, and fsyncs it.
func writeFile(name string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// expectFile checks that name holds exactly want.
func expectFile(name string, want []byte) error {
	got, err := os.ReadFile(name)
	if err != nil {
		return err
	}
	return sameBytes(name, got, want)
}

func sameBytes(what string, got, want []byte) error {
	if bytes.Equal(got, want) {
		return nil
	}
	n := min(len(got), len(want))
	i := 0
	for i < n && got[i] == want[i] {
		i++
	}
	return fmt.Errorf("%s: content differs at byte %d (got %d bytes, want %d)", what, i, len(got), len(want))
}

// expectMode checks the permission bits and file type of name (lstat).
func expectMode(name string, want os.FileMode) error {
	fi, err := os.Lstat(name)
	if err != nil {
		return err
	}
	if got := fi.Mode() & (os.ModeType | os.ModePerm); got != want {
		return fmt.Errorf("%s: mode %v, want %v", name, got, want)
	}
	return nil
}

// inode returns the inode number (the NFS fileid) of name (lstat).
func inode(name string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Lstat(name, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// expectMissing checks that name does not exist (ENOENT, not ESTALE or EIO).
func expectMissing(name string) error {
	_, err := os.Lstat(name)
	if err == nil {
		return fmt.Errorf("%s exists, want ENOENT", name)
	}
	if errno(err) != syscall.ENOENT {
		return fmt.Errorf("%s: want ENOENT, got %w", name, err)
	}
	return nil
}

// expectErrno checks that err carries want.
func expectErrno(what string, err error, want ...syscall.Errno) error {
	got := errno(err)
	for _, w := range want {
		if got == w {
			return nil
		}
	}
	if err == nil {
		return fmt.Errorf("%s succeeded, want %v", what, want)
	}
	return fmt.Errorf("%s: got %v, want %v", what, err, want)
}

// noSillyRenames checks that dir holds no .nfsXXXX files: the kernel renames
// an unlinked open file to one and must remove it at the last close.
func noSillyRenames(dir string) error {
	var left []string
	deadline := time.Now().Add(15 * time.Second)
	for {
		left = left[:0]
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), ".nfs") {
				left = append(left, e.Name())
			}
		}
		// The sillydelete is asynchronous (nfs_async_unlink_release): give it time.
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(left) > 0 {
		return fmt.Errorf("%s: silly-renamed files left behind: %v", dir, left)
	}
	return nil
}

// shaFile returns the size and hex sha256 of name.
func shaFile(name string) (int64, string, error) {
	f, err := os.Open(name)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		return n, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// announce prints a SHA line so the host can compare the file in its export
// directory with what the guest wrote.
func (g *guest) announce(rel string) error {
	n, sum, err := shaFile(g.path(rel))
	if err != nil {
		return err
	}
	g.con.printf("SHA %s %s %d %s", g.name, rel, n, sum)
	return nil
}

func mkdirFresh(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.MkdirAll(dir, 0o755)
}
