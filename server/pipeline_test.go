package server

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// Many calls sent back to back on one connection are all answered, each
// reply carrying its call's xid and data (replies may come in any order).
func TestPipelinedCallsOnOneConnection(t *testing.T) {
	dir, fsys := diskFS(t)
	const calls = 48
	for i := range calls {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), []byte(fmt.Sprintf("file %d", i)), 0o644)
	}
	_, addr := startServer(t, fsys, Options{})
	r := dialRaw(t, addr)
	root := r.rootHandle()
	handles := make([][]byte, calls)
	for i := range calls {
		handles[i], _ = r.lookup(root, fmt.Sprintf("f%d", i))
	}
	var out []byte
	for i := range calls {
		proc := uint32(ProcRead)
		args := xdrBuf(nil).opaque(handles[i]).u64(0).u32(100)
		if i%3 == 1 {
			proc, args = ProcGetAttr, xdrBuf(nil).opaque(handles[i]) // relayed via go-nfs
		}
		msg := xdrBuf(nil).u32(uint32(1000 + i)).u32(0).u32(2).u32(progNFS).u32(3).u32(proc).u32(0).u32(0).u32(0).u32(0)
		msg = append(msg, args...)
		out = append(append(out, xdrBuf(nil).u32(uint32(len(msg))|1<<31)...), msg...)
	}
	if _, err := r.c.Write(out); err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]bool{}
	for range calls {
		rep, err := readRecord(r.br, nil, nil, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		xid := binary.BigEndian.Uint32(rep)
		i := int(xid) - 1000
		if i < 0 || i >= calls || seen[xid] {
			t.Fatalf("unexpected xid %d", xid)
		}
		seen[xid] = true
		if st := binary.BigEndian.Uint32(rep[24:]); st != 0 {
			t.Fatalf("call %d: status %d", i, st)
		}
		if i%3 != 1 {
			body := rep[28+4+fattrLen:]
			n := binary.BigEndian.Uint32(body[8:])
			if got := string(body[12 : 12+n]); got != fmt.Sprintf("file %d", i) {
				t.Fatalf("call %d read %q", i, got)
			}
		}
	}
}

// With more concurrent readers than the open-file bound, open fds still
// never exceed it: a miss waits for a cached file to be released.
func TestOpenFileBoundUnderConcurrency(t *testing.T) {
	dir, fsys := diskFS(t)
	const files, bound, readers = 200, 4, 8
	for i := range files {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), []byte(fmt.Sprint(i)), 0o644)
	}
	s, addr := startServer(t, fsys, Options{MaxOpenFiles: bound})
	clients := make([]*rawClient, readers)
	roots := make([][]byte, readers)
	for i := range clients {
		clients[i] = dialRaw(t, addr)
		roots[i] = clients[i].rootHandle()
	}
	var mu sync.Mutex
	maxOpen := int64(0)
	var wg sync.WaitGroup
	for w := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := clients[w]
			for i := w; i < files; i += readers {
				h, st := r.lookup(roots[w], fmt.Sprintf("f%d", i))
				if st != 0 {
					t.Errorf("lookup: %d", st)
					return
				}
				if st, data := r.read(h, 0, 10); st != 0 || string(data) != fmt.Sprint(i) {
					t.Errorf("read f%d: %d %q", i, st, data)
					return
				}
				mu.Lock()
				maxOpen = max(maxOpen, s.open.open())
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if maxOpen > bound {
		t.Fatalf("open-file cache held %d fds, bound %d", maxOpen, bound)
	}
	if s.Stats().NFS[ProcRead] != files {
		t.Fatalf("READs = %d", s.Stats().NFS[ProcRead])
	}
}
