//go:build linux

package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The restart checks keep a guest running while the host restarts the
// servers (same ports, same state directories). The kernel holds file handles
// for open files, for its current directory and for every cached dentry; a
// server whose handles do not survive a restart answers NFS3ERR_STALE and
// the application sees ESTALE.

var (
	heldReadData  = pattern(41, 100000)
	heldWriteData = pattern(42, 100000)
	dirtyBefore   = []byte("dirty-before-restart")
	writtenAfter  = []byte("written-after-restart")
)

func heldWriteWant() []byte {
	want := append([]byte{}, heldWriteData...)
	copy(want, dirtyBefore)
	copy(want[50000:], writtenAfter)
	return want
}

// holdForRestart opens the files the restart checks use, holds the deep
// directory open (its handle is what later lookups relative to it use, as
// they would relative to a working directory), and leaves one write dirty
// in the page cache.
func (g *guest) holdForRestart() error {
	dir := g.path("restart")
	if err := mkdirFresh(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "sub", "deep"), 0o755); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "sub", "deep", "file"), []byte("deep"), 0o644); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "held-read"), heldReadData, 0o644); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, "held-write"), heldWriteData, 0o644); err != nil {
		return err
	}
	var err error
	if g.heldRead, err = os.Open(filepath.Join(dir, "held-read")); err != nil {
		return err
	}
	if g.heldWrite, err = os.OpenFile(filepath.Join(dir, "held-write"), os.O_RDWR, 0); err != nil {
		return err
	}
	if g.heldDir, err = os.Open(dir); err != nil {
		return err
	}
	if g.heldDeep, err = os.Open(filepath.Join(dir, "sub", "deep")); err != nil {
		return err
	}
	// Left dirty on purpose: it is written back across the restart.
	_, err = g.heldWrite.WriteAt(dirtyBefore, 0)
	return err
}

func (g *guest) releaseHeld() {
	for _, f := range []*os.File{g.heldRead, g.heldWrite, g.heldDir, g.heldDeep} {
		if f != nil {
			f.Close()
		}
	}
}

func (g *guest) restartChecks() []check {
	return []check{
		{"restart_open_read", g.restartOpenRead, nil},
		{"restart_open_write", g.restartOpenWrite, nil},
		{"restart_cached_paths", g.restartCachedPaths, nil},
		{"restart_create_rename", g.restartCreateRename, nil},
	}
}

// restartVerifyCheck is run by the second boot when the first one paused.
func (g *guest) restartVerifyCheck() check {
	return check{"restart_state", nil, g.restartVerify}
}

func (g *guest) restartOpenRead() error {
	if g.heldRead == nil {
		return fmt.Errorf("no file held open (setup failed)")
	}
	if err := dropCaches(); err != nil {
		return err
	}
	got := make([]byte, len(heldReadData))
	if _, err := g.heldRead.ReadAt(got, 0); err != nil {
		return fmt.Errorf("read through a descriptor opened before the restart: %w", err)
	}
	return sameBytes("held-read", got, heldReadData)
}

func (g *guest) restartOpenWrite() error {
	if g.heldWrite == nil {
		return fmt.Errorf("no file held open (setup failed)")
	}
	if _, err := g.heldWrite.WriteAt(writtenAfter, 50000); err != nil {
		return fmt.Errorf("write through a descriptor opened before the restart: %w", err)
	}
	if err := g.heldWrite.Sync(); err != nil {
		return fmt.Errorf("fsync after the restart (with a write dirtied before it): %w", err)
	}
	if err := dropCaches(); err != nil {
		return err
	}
	return expectFile(g.path("restart", "held-write"), heldWriteWant())
}

func (g *guest) restartCachedPaths() error {
	if g.heldDir == nil || g.heldDeep == nil {
		return fmt.Errorf("no directory held open (setup failed)")
	}
	// Relative to the held directory (openat): LOOKUP with the handle of a
	// directory the kernel looked up before the restart.
	fd, err := unix.Openat(int(g.heldDeep.Fd()), "file", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("openat relative to a directory held open: %w", err)
	}
	f := os.NewFile(uintptr(fd), "restart/sub/deep/file")
	got, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("read relative to a directory held open: %w", err)
	}
	if err := sameBytes("sub/deep/file", got, []byte("deep")); err != nil {
		return err
	}
	names, err := g.heldDir.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("readdir of a directory opened before the restart: %w", err)
	}
	if len(names) != 3 {
		return fmt.Errorf("readdir of restart/ after the restart: %v, want held-read held-write sub", names)
	}
	if _, err := os.Stat(g.path("restart", "held-read")); err != nil {
		return fmt.Errorf("stat by absolute path: %w", err)
	}
	return nil
}

func (g *guest) restartCreateRename() error {
	if g.heldDeep == nil {
		return fmt.Errorf("no directory held open (setup failed)")
	}
	dirfd := int(g.heldDeep.Fd())
	fd, err := unix.Openat(dirfd, "created-after-restart", unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("create relative to a directory held open: %w", err)
	}
	f := os.NewFile(uintptr(fd), "created-after-restart")
	if _, err := f.Write([]byte("new")); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := unix.Renameat(dirfd, "file", unix.AT_FDCWD, g.path("restart", "moved")); err != nil {
		return fmt.Errorf("rename out of a directory held open: %w", err)
	}
	if err := os.Mkdir(g.path("restart", "sub", "newdir"), 0o755); err != nil {
		return err
	}
	return nil
}

func (g *guest) restartVerify() error {
	dir := g.path("restart")
	if err := expectFile(filepath.Join(dir, "held-read"), heldReadData); err != nil {
		return err
	}
	if err := expectFile(filepath.Join(dir, "held-write"), heldWriteWant()); err != nil {
		return err
	}
	if err := expectFile(filepath.Join(dir, "sub", "deep", "created-after-restart"), []byte("new")); err != nil {
		return err
	}
	if err := expectFile(filepath.Join(dir, "moved"), []byte("deep")); err != nil {
		return err
	}
	if err := expectMissing(filepath.Join(dir, "sub", "deep", "file")); err != nil {
		return err
	}
	fi, err := os.Stat(filepath.Join(dir, "sub", "newdir"))
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("sub/newdir is not a directory")
	}
	return nil
}
