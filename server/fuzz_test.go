package server

import (
	"net"
	"testing"
	"time"
)

// FuzzCallArgs sends arbitrary arguments to every NFS and MOUNT
// procedure, relayed ones included, and checks that the server keeps
// answering. The seed corpus runs in every `go test`:
//
//	go test ./server -run '^$' -fuzz FuzzCallArgs -fuzztime 60s
func FuzzCallArgs(f *testing.F) {
	_, fsys := diskFS(f)
	_, addr := startServer(f, fsys, Options{})
	setupClient := dialRaw(f, addr)
	root := setupClient.rootHandle()
	setupClient.create(root, "file")
	setupClient.mkdir(root, "dir")
	f.Add(uint8(ProcLookup), true, []byte("\x00\x00\x00\x04file"))
	f.Add(uint8(ProcReadDirPlus), true, []byte("\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x10\x00"))
	f.Add(uint8(ProcSetAttr), true, []byte("\x00\x00\x00\x01\x00\x00\x00\x01\xff\xff\xff\xff"))
	f.Add(uint8(ProcRename), true, []byte("\x00\x00\x00\x04file\x00\x00\x00\x00"))
	f.Add(uint8(ProcSymlink), true, []byte("\x00\x00\x00\x01l\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Add(uint8(ProcMknod), true, []byte("\x00\x00\x00\x01n\x00\x00\x00\x03"))
	f.Add(uint8(100+MountProcMnt), false, []byte("\x00\x00\x00\x01/"))
	f.Fuzz(func(t *testing.T, proc uint8, withRoot bool, args []byte) {
		prog, p := uint32(progNFS), uint32(proc%numNFSProcs)
		if proc >= 100 {
			prog, p = progMount, uint32(proc-100)%numMountProcs
		}
		var body []byte
		if withRoot {
			body = xdrBuf(nil).opaque(root)
		}
		body = append(body, args...)
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		msg := xdrBuf(nil).u32(7).u32(0).u32(2).u32(prog).u32(3).u32(p).u32(0).u32(0).u32(0).u32(0)
		msg = append(msg, body...)
		rec := append(xdrBuf(nil).u32(uint32(len(msg))|1<<31), msg...)
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write(rec)
		c.Read(make([]byte, 4096)) // a reply or a close: either is fine
		// The server still serves a fresh client.
		r := dialRaw(t, addr)
		if acc, _ := r.call(progNFS, 3, ProcNull, nil); acc != 0 {
			t.Fatalf("NULL after fuzz input: accept_stat %d", acc)
		}
	})
}
