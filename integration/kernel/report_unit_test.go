//go:build linux

package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestCompareTrees(t *testing.T) {
	mk := func(root string) {
		for _, d := range []string{"d/e"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(filepath.Join(root, "d", "f"), []byte("same"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("d/f", filepath.Join(root, "l")); err != nil {
			t.Fatal(err)
		}
	}
	a, b := t.TempDir(), t.TempDir()
	mk(a)
	mk(b)
	if err := compareTrees(a, b); err != nil {
		t.Fatalf("equal trees: %v", err)
	}
	// A hard link on one side only: nlink differs, and a name is missing.
	if err := os.Link(filepath.Join(a, "d", "f"), filepath.Join(a, "d", "g")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(b, "only"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := compareTrees(a, b)
	if err == nil {
		t.Fatal("different trees compare equal")
	}
	for _, w := range []string{"3 paths differ", "d/f: upstream", "d/g: missing on the upstream", "only: only on the upstream"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%q lacks %q", err, w)
		}
	}
}

func TestCheckStatfs(t *testing.T) {
	dir := t.TempDir()
	var sf syscall.Statfs_t
	if err := syscall.Statfs(dir, &sf); err != nil {
		t.Fatal(err)
	}
	const bsize = 1 << 20
	tbytes := sf.Blocks * uint64(sf.Bsize)
	good := statfsFigures{bsize: bsize, blocks: (tbytes + bsize - 1) / bsize, files: sf.Files}
	if err := checkStatfs(dir, []statfsFigures{good}); err != nil {
		t.Errorf("matching figures: %v", err)
	}
	bad := good
	bad.blocks++
	if err := checkStatfs(dir, []statfsFigures{good, bad}); err == nil || !strings.Contains(err.Error(), "statfs 1:") {
		t.Errorf("other totals: %v", err)
	}
	if err := checkStatfs(dir, nil); err == nil {
		t.Errorf("no figures: no error")
	}
}
