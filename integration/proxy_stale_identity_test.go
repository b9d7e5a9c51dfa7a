package integration

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/server"
)

// pxInProcess runs billyfs over up behind our server on 127.0.0.1:0, as
// nfsd-cache proxy does, and returns a client of it and its port.
func pxInProcess(t *testing.T, up *pxUpstream, opts billyfs.Options) (*billyfs.FS, *client.Client, string) {
	t.Helper()
	opts.Addr = up.Addr
	fsys, err := billyfs.New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(fsys, server.Options{StateDir: t.TempDir()})
	if err != nil {
		fsys.Close()
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(l) }()
	c, err := client.Dial(context.Background(), l.Addr().String(), client.Options{Timeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		srv.Close()
		<-done
		fsys.Close()
	})
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return fsys, c, port
}

// Through the proxy, a client sees the upstream's identity: the fileid is
// the upstream file's inode number and survives a RENAME, LINK makes a
// real hard link on the upstream (nlink 2, content shared), FSSTAT is the
// upstream's.
func TestProxyIdentityLinkFSStat(t *testing.T) {
	up := pxStartUpstream(t)
	if err := os.WriteFile(filepath.Join(up.Dir, "f"), []byte("identity through the proxy"), 0o644); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(up.Dir, "f"), &st); err != nil {
		t.Fatal(err)
	}
	_, c, _ := pxInProcess(t, up, billyfs.Options{CacheDir: t.TempDir()})
	ctx := context.Background()
	lr, err := c.Lookup(ctx, c.Root(), "f")
	if err != nil {
		t.Fatal(err)
	}
	if lr.Attr == nil || lr.Attr.FileID != st.Ino {
		t.Fatalf("fileid through the proxy %+v, upstream inode %d", lr.Attr, st.Ino)
	}
	if _, _, err := c.Rename(ctx, c.Root(), "f", c.Root(), "g"); err != nil {
		t.Fatal(err)
	}
	a, err := c.Getattr(ctx, lr.Handle)
	if err != nil {
		t.Fatalf("GETATTR of the renamed file's handle: %v", err)
	}
	if a.FileID != st.Ino {
		t.Fatalf("fileid after RENAME %d, want %d (unchanged)", a.FileID, st.Ino)
	}
	after, _, err := c.Link(ctx, lr.Handle, c.Root(), "h")
	if err != nil {
		t.Fatalf("LINK through the proxy: %v", err)
	}
	if after == nil || after.Nlink != 2 {
		t.Fatalf("LINK post-op attributes %+v, want nlink 2", after)
	}
	if err := syscall.Stat(filepath.Join(up.Dir, "h"), &st); err != nil || st.Nlink != 2 {
		t.Fatalf("upstream after LINK: %v, nlink %d", err, st.Nlink)
	}
	if got, err := os.ReadFile(filepath.Join(up.Dir, "h")); err != nil || !bytes.Equal(got, []byte("identity through the proxy")) {
		t.Fatalf("upstream link content %q, %v", got, err)
	}
	uc, err := client.Dial(ctx, up.Addr, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	// Other processes write to the same disk: the proxy's answer must lie
	// between two of the upstream's taken around it.
	for try := 0; ; try++ {
		before, err := uc.FSStat(ctx, uc.Root())
		if err != nil {
			t.Fatal(err)
		}
		got, err := c.FSStat(ctx, c.Root())
		if err != nil {
			t.Fatal(err)
		}
		after, err := uc.FSStat(ctx, uc.Root())
		if err != nil {
			t.Fatal(err)
		}
		between := func(g, x, y uint64) bool { return min(x, y) <= g && g <= max(x, y) }
		if got.TotalBytes == before.TotalBytes && got.TotalFiles == before.TotalFiles &&
			between(got.FreeBytes, before.FreeBytes, after.FreeBytes) && between(got.FreeFiles, before.FreeFiles, after.FreeFiles) {
			break
		}
		if try == 10 {
			t.Fatalf("FSSTAT through the proxy %+v, upstream before %+v after %+v", got, before, after)
		}
	}
}
