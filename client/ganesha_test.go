package client_test

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/internal/ganeshatest"
)

func dialGanesha(t *testing.T, g *ganeshatest.Ganesha, opts client.Options) *client.Client {
	opts.Portmap = true
	opts.Export = ganeshatest.Export
	opts.Dial = g.Dial
	return dial(t, g.Addr, opts)
}

// TestGanesha runs the client against nfs-ganesha: every procedure, MOUNT
// EXPORT, concurrent ReadAt/WriteAt, a 10 000-entry directory, and a server
// restart between WRITE and COMMIT (the write verifier changes, so the client
// must resend what it wrote).
func TestGanesha(t *testing.T) {
	g := ganeshatest.Start(t)
	c := dialGanesha(t, g, client.Options{Connections: 2, MaxIOSize: 256 << 10})

	t.Run("procedures", func(t *testing.T) { exerciseProcedures(t, c, g.Dir, quirks{}) })
	t.Run("exports", func(t *testing.T) {
		ex, err := c.Exports(testCtx(t))
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range ex {
			found = found || e.Dir == ganeshatest.Export
		}
		if !found {
			t.Fatalf("EXPORT list %+v lacks %s", ex, ganeshatest.Export)
		}
	})
	t.Run("readwriteat", func(t *testing.T) { testReadWriteAt(t, c, g.Dir, 2<<20+777) })
	t.Run("bigdir", func(t *testing.T) { testBigDir(t, c, mkdirFiles(t, g.Dir), 10000) })
	t.Run("restart-before-commit", func(t *testing.T) {
		ctx := testCtx(t)
		f, err := c.Create(ctx, c.Root(), "restart", client.CreateHow{Mode: client.Unchecked})
		if err != nil {
			t.Fatal(err)
		}
		data := randomBytes(t, 3<<20)
		if _, err := c.WriteAt(ctx, f.Handle, data, 0); err != nil {
			t.Fatal(err)
		}
		if n := c.Uncommitted(f.Handle); n != len(data) {
			t.Fatalf("ganesha should answer UNSTABLE: %d of %d bytes tracked", n, len(data))
		}
		if err := g.Restart(); err != nil {
			t.Fatal(err)
		}
		res, err := c.Commit(ctx, f.Handle, 0, 0)
		if err != nil {
			t.Fatalf("Commit after restart: %v", err)
		}
		if res.Resent != len(data) {
			t.Fatalf("verifier changed across the restart: want all %d bytes resent, got %d", len(data), res.Resent)
		}
		got, err := os.ReadFile(filepath.Join(g.Dir, "restart"))
		if err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
			t.Fatalf("file differs after restart+commit (len %d, %v)", len(got), err)
		}
		if st := c.Stats(); st.Reconnects == 0 || st.BytesResent < uint64(len(data)) {
			t.Fatalf("stats after restart: %+v", st)
		}
	})
}
