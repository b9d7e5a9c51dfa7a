package server

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNameRefusals: directory procedures with names go-nfs would join
// into a path get knfsd's status and a reply whose failure body is
// exactly the procedure's empty post_op_attr / wcc_data (RFC 1813 §3.3),
// nothing changes on disk, and a name whose claimed length exceeds the
// bytes sent is still GARBAGE_ARGS without hurting the connection.
func TestNameRefusals(t *testing.T) {
	dir, fsys := diskFS(t)
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub", filepath.Join(dir, "lnk")); err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, fsys, Options{})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	lnk, st := r.lookup(root, "lnk")
	if st != 0 {
		t.Fatalf("LOOKUP lnk: %d", st)
	}
	const (
		perm, noent, acces, exist, notdir, inval, nametoolong = 1, 2, 13, 17, 20, 22, 63
	)
	dirop := func(d []byte, name string) xdrBuf { return xdrBuf(nil).opaque(d).opaque([]byte(name)) }
	sattr := xdrBuf(nil).u32(0).u32(0).u32(0).u32(0).u32(0).u32(0)
	long := strings.Repeat("n", 300)
	cases := []struct {
		what      string
		proc      uint32
		args      []byte
		want      uint32
		bodyZeros int
	}{
		{"LOOKUP sub/x", ProcLookup, dirop(root, "sub/x"), acces, 4},
		{"LOOKUP empty", ProcLookup, dirop(root, ""), acces, 4},
		{"LOOKUP long", ProcLookup, dirop(root, long), nametoolong, 4},
		{"CREATE ../x", ProcCreate, append(dirop(root, "../x").u32(0), sattr...), acces, 8},
		{"CREATE a\\0b", ProcCreate, append(dirop(root, "a\x00b").u32(0), sattr...), inval, 8},
		{"CREATE long", ProcCreate, append(dirop(root, long).u32(0), sattr...), nametoolong, 8},
		{"CREATE empty", ProcCreate, append(dirop(root, "").u32(0), sattr...), perm, 8},
		{"CREATE in symlink", ProcCreate, append(dirop(lnk, "x").u32(0), sattr...), notdir, 8},
		{"MKDIR ..", ProcMkdir, append(dirop(root, ".."), sattr...), exist, 8},
		{"MKDIR in symlink", ProcMkdir, append(dirop(lnk, "x"), sattr...), notdir, 8},
		{"SYMLINK empty", ProcSymlink, append(dirop(root, ""), append(sattr, xdrBuf(nil).opaque([]byte("sub"))...)...), noent, 8},
		{"MKNOD sub/x", ProcMknod, append(dirop(root, "sub/x").u32(7), sattr...), acces, 8},
		{"REMOVE .", ProcRemove, dirop(root, "."), acces, 8},
		{"RMDIR ..", ProcRmdir, dirop(root, ".."), acces, 8},
		{"RENAME sub -> .", ProcRename, append(dirop(root, "sub"), dirop(root, ".")...), perm, 16},
		{"RENAME sub -> sub/x", ProcRename, append(dirop(root, "sub"), dirop(root, "sub/x")...), acces, 16},
		{"LINK ../x", ProcLink, append(xdrBuf(nil).opaque(lnk), dirop(root, "../x")...), acces, 12},
	}
	for _, tc := range cases {
		st, body := r.nfsStatus(tc.proc, tc.args)
		if st != tc.want {
			t.Errorf("%s: status %d, want %d", tc.what, st, tc.want)
		}
		if !bytes.Equal(body, make([]byte, tc.bodyZeros)) {
			t.Errorf("%s: failure body %x, want %d zero bytes", tc.what, body, tc.bodyZeros)
		}
	}
	// A name claiming 1 GiB with 4 bytes sent is malformed, not too long.
	if acc, _ := r.call(progNFS, 3, ProcLookup, xdrBuf(nil).opaque(root).u32(1<<30).u32(0)); acc != acceptGarbageArgs {
		t.Errorf("LOOKUP with a 1 GiB claimed name: accept_stat %d, want GARBAGE_ARGS", acc)
	}
	if _, st := r.lookup(root, "sub"); st != 0 {
		t.Fatalf("LOOKUP sub after the refusals: %d", st)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "lnk,sub" {
		t.Errorf("export after refused calls holds %v, want [lnk sub]", names)
	}
	if sub, _ := os.ReadDir(filepath.Join(dir, "sub")); len(sub) != 0 {
		t.Errorf("sub/ after refused calls holds %v", sub)
	}
}
