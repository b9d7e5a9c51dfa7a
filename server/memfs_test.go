package server

import (
	"os"
	"testing"
	"time"
)

// The in-memory export keeps modification times: writes, truncates and
// directory changes move them, Chtimes sets them, reads do not.
func TestMemFSModTimes(t *testing.T) {
	m := NewMemFS()
	f, err := m.Create("d/f")
	if err != nil {
		t.Fatal(err)
	}
	mt := func(p string) time.Time {
		fi, err := m.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.ModTime()
	}
	t0, d0 := mt("d/f"), mt("d")
	time.Sleep(2 * time.Millisecond)
	f.Write([]byte("x"))
	if !mt("d/f").After(t0) {
		t.Fatal("write did not move mtime")
	}
	t1 := mt("d/f")
	time.Sleep(2 * time.Millisecond)
	buf := make([]byte, 1)
	f.(interface {
		ReadAt([]byte, int64) (int, error)
	}).ReadAt(buf, 0)
	if !mt("d/f").Equal(t1) {
		t.Fatal("read moved mtime")
	}
	if mt("d").Equal(d0) && mt("d").Before(t0) {
		t.Fatal("directory mtime not set by create")
	}
	time.Sleep(2 * time.Millisecond)
	g, _ := m.Create("d/g")
	g.Close()
	if !mt("d").After(d0) {
		t.Fatal("create did not move the directory's mtime")
	}
	want := time.Date(2001, 2, 3, 4, 5, 6, 7, time.UTC)
	if err := m.(interface {
		Chtimes(string, time.Time, time.Time) error
	}).Chtimes("d/f", want, want); err != nil {
		t.Fatal(err)
	}
	if !mt("d/f").Equal(want) {
		t.Fatalf("Chtimes: mtime %v", mt("d/f"))
	}
	if err := m.Rename("d", "e"); err != nil {
		t.Fatal(err)
	}
	if !mt("e/f").Equal(want) {
		t.Fatal("rename lost the mtime")
	}
	ents, _ := m.ReadDir("e")
	for _, e := range ents {
		if e.Name() == "f" && !e.ModTime().Equal(want) {
			t.Fatal("ReadDir reports another mtime")
		}
	}
	if _, err := m.OpenFile("e/f", os.O_RDWR|os.O_EXCL, 0); err != nil {
		t.Fatalf("O_EXCL without O_CREATE: %v", err)
	}
}
