package fscache

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestFailedCompactionKeepsCommitting: the index's compaction cannot
// create its temporary file (here a directory is in the way; in life
// EMFILE or ENOSPC). Updates keep succeeding — their records are appended
// and applied before compaction is tried, so failing them would make the
// caller undo what the index already says — and compaction is retried
// after another MiB of appends. Once the obstacle is gone the next
// compaction succeeds, and a reopened cache has the last aux and the data.
func TestFailedCompactionKeepsCommitting(t *testing.T) {
	dir := t.TempDir()
	c, err := Open(dir, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	v := mustVolume(t, c, "vol")
	ck := mustCookie(t, v, "k", "aux", 0)
	data := pattern(7, 0, 64<<10)
	if err := ck.Use(true); err != nil {
		t.Fatal(err)
	}
	if _, err := ck.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := ck.Unuse(nil, -1); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "index.tmp", "in-the-way"), 0o700); err != nil {
		t.Fatal(err)
	}
	index := filepath.Join(dir, "index")
	// Each Unuse with a new 4 KiB aux appends a 4 KiB record: 400 of them
	// are well past the 1 MiB after which compaction is due.
	aux := func(i int) []byte {
		return append([]byte(fmt.Sprintf("v%05d-", i)), bytes.Repeat([]byte{'a'}, 4<<10)...)
	}
	update := func(i int) {
		t.Helper()
		if err := ck.Use(false); err != nil {
			t.Fatal(err)
		}
		if err := ck.Unuse(aux(i), int64(len(data))); err != nil {
			t.Fatalf("update %d with compaction failing: %v", i, err)
		}
	}
	const n = 800
	for i := range n / 2 {
		update(i)
	}
	blocked, err := os.Stat(index)
	if err != nil {
		t.Fatal(err)
	}
	if blocked.Size() < 3<<20/2 {
		t.Fatalf("index is %d bytes: compaction was never due, the test proves nothing", blocked.Size())
	}
	if err := os.RemoveAll(filepath.Join(dir, "index.tmp")); err != nil {
		t.Fatal(err)
	}
	for i := n / 2; i < n; i++ {
		update(i)
	}
	after, err := os.Stat(index)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() >= blocked.Size() {
		t.Errorf("index grew from %d to %d bytes: compaction was not retried once possible", blocked.Size(), after.Size())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c = openTest(t, dir, testOptions())
	v = mustVolume(t, c, "vol")
	ck = mustCookie(t, v, "k", string(aux(n-1)), int64(len(data)))
	if err := ck.Use(false); err != nil {
		t.Fatal(err)
	}
	defer ck.Unuse(nil, -1)
	if err := checkRead(ck, 0, data); err != nil {
		t.Fatalf("after reopen with the last aux: %v", err)
	}
	t.Logf("index %d bytes with compaction blocked, %d bytes after it was retried", blocked.Size(), after.Size())
}
