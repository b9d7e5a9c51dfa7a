package integration

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/internal/faultproxy"
	"github.com/nfscache/nfscache/server"
)

func relProxy(t testing.TB, target string) *faultproxy.Proxy {
	t.Helper()
	p, err := faultproxy.New(target, faultproxy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// relRounds is how many faults of each kind TestProxyFaultsIdempotent
// injects; the report table counts them.
var relRounds = 4

// TestProxyFaultsIdempotent puts the fault proxy between our client and
// our server and, for each kind of fault, breaks the stream at a random
// byte in the middle of a large WriteAt (calls direction) or ReadAt
// (replies direction). WRITE, COMMIT and READ are idempotent: every
// operation must complete, and the data must be exact.
func TestProxyFaultsIdempotent(t *testing.T) {
	s := relStart(t, server.Options{}, nil)
	p := relProxy(t, s.Addr)
	c := relDial(t, p.Addr(), client.Options{MaxIOSize: 64 << 10, Timeout: 30 * time.Second})
	ctx := relCtx(t)
	const size = 4 << 20
	rng := rand.New(rand.NewPCG(7, 7))
	faults := []faultproxy.Fault{
		{Action: faultproxy.Cut},
		{Action: faultproxy.Truncate},
		{Action: faultproxy.Stall, Stall: 500 * time.Millisecond},
	}
	fired := 0
	for _, f := range faults {
		for round := range relRounds {
			name := fmt.Sprintf("%s-%d", f.Action, round)
			data := relData(uint64(100+fired), size)
			h, err := c.Create(ctx, c.Root(), name, client.CreateHow{Mode: client.Unchecked})
			if err != nil {
				t.Fatalf("%s: create: %v", name, err)
			}
			// Break the calls stream inside the WRITE data.
			wf := f
			wf.Dir = faultproxy.ToServer
			wf.After = rng.Int64N(size / 2)
			wfired := p.Arm(wf)
			if _, err := c.WriteAt(ctx, h.Handle, data, 0); err != nil {
				t.Fatalf("%s: WriteAt through a %s at byte %d: %v", name, f.Action, wf.After, err)
			}
			if _, err := c.Commit(ctx, h.Handle, 0, 0); err != nil {
				t.Fatalf("%s: Commit: %v", name, err)
			}
			select {
			case <-wfired:
				fired++
			default:
				t.Fatalf("%s: write fault at %d never fired", name, wf.After)
			}
			sum, n := relFileSum(t, filepath.Join(s.Dir, name))
			if n != size || sum != sha256.Sum256(data) {
				t.Fatalf("%s: file on disk differs after a %s mid-WRITE", name, f.Action)
			}
			// Break the replies stream inside the READ data.
			rf := f
			rf.Dir = faultproxy.ToClient
			rf.After = rng.Int64N(size / 2)
			rfired := p.Arm(rf)
			got := make([]byte, size)
			if _, err := c.ReadAt(ctx, h.Handle, got, 0); err != nil {
				t.Fatalf("%s: ReadAt through a %s at byte %d: %v", name, f.Action, rf.After, err)
			}
			select {
			case <-rfired:
				fired++
			default:
				t.Fatalf("%s: read fault at %d never fired", name, rf.After)
			}
			if sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatalf("%s: data read through a %s differs", name, f.Action)
			}
		}
	}
	st := c.Stats()
	t.Logf("%d faults fired mid-WRITE/mid-READ, nothing lost; client: %d retransmissions, %d reconnects, %d bytes resent",
		fired, st.Retransmissions, st.Reconnects, st.BytesResent)
}

// TestProxyNonIdempotent cuts the connection after a non-idempotent call
// was sent: per the client's policy it fails with ErrConnLost (never a
// silent retransmission, never a hang), and a LOOKUP tells what happened.
// Idempotent calls through the same fault succeed.
func TestProxyNonIdempotent(t *testing.T) {
	s := relStart(t, server.Options{}, nil)
	p := relProxy(t, s.Addr)
	const timeout = 20 * time.Second
	c := relDial(t, p.Addr(), client.Options{Timeout: timeout})
	ctx := relCtx(t)
	if err := os.WriteFile(filepath.Join(s.Dir, "victim"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.Dir, "from"), []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := c.Root()
	calls := []struct {
		name     string
		call     func() error
		executed string // the name whose existence shows the call ran
		exists   bool   // what executed's existence means for a run call
	}{
		{"MKDIR", func() error { _, err := c.Mkdir(ctx, root, "d", client.SetAttr{}); return err }, "d", true},
		{"CREATE guarded", func() error {
			_, err := c.Create(ctx, root, "g", client.CreateHow{Mode: client.Guarded})
			return err
		}, "g", true},
		{"SYMLINK", func() error { _, err := c.Symlink(ctx, root, "l", "victim", client.SetAttr{}); return err }, "l", true},
		{"REMOVE", func() error { _, err := c.Remove(ctx, root, "victim"); return err }, "victim", false},
		{"RENAME", func() error { _, _, err := c.Rename(ctx, root, "from", root, "to"); return err }, "to", true},
	}
	for _, tc := range calls {
		for _, f := range []faultproxy.Fault{
			// The reply is lost: the server executed the call.
			{Dir: faultproxy.ToClient, After: 0, Action: faultproxy.Cut},
		} {
			fired := p.Arm(f)
			start := time.Now()
			err := tc.call()
			el := time.Since(start)
			<-fired
			if !errors.Is(err, client.ErrConnLost) {
				t.Fatalf("%s with its reply cut: err %v, want ErrConnLost", tc.name, err)
			}
			if el > timeout {
				t.Fatalf("%s took %v, beyond the %v timeout", tc.name, el, timeout)
			}
			_, lerr := c.Lookup(ctx, root, tc.executed)
			if (lerr == nil) != tc.exists {
				t.Fatalf("%s: LOOKUP %s after the cut: %v; the server should have executed the call", tc.name, tc.executed, lerr)
			}
		}
	}
	// A call cut before the server saw all of it fails the same way and
	// did not run.
	fired := p.Arm(faultproxy.Fault{Dir: faultproxy.ToServer, After: 20, Action: faultproxy.Truncate})
	if _, err := c.Mkdir(ctx, root, "never", client.SetAttr{}); !errors.Is(err, client.ErrConnLost) {
		t.Fatalf("MKDIR truncated mid-call: %v, want ErrConnLost", err)
	}
	<-fired
	if _, err := os.Lstat(filepath.Join(s.Dir, "never")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a truncated MKDIR call ran on the server: %v", err)
	}
	// Idempotent calls are retransmitted through the same faults.
	for _, f := range []faultproxy.Fault{
		{Dir: faultproxy.ToClient, After: 0, Action: faultproxy.Cut},
		{Dir: faultproxy.ToClient, After: 10, Action: faultproxy.Truncate},
		{Dir: faultproxy.ToServer, After: 30, Action: faultproxy.Truncate},
	} {
		p.Arm(f)
		if _, err := c.Getattr(ctx, root); err != nil {
			t.Fatalf("GETATTR through %v: %v", f, err)
		}
		if _, err := c.Lookup(ctx, root, "d"); err != nil {
			t.Fatalf("LOOKUP through %v: %v", f, err)
		}
	}
}

// TestProxyStall: a stall shorter than the call timeout only delays; a
// longer one fails the call with a timeout error close to Options.Timeout
// (no hang), and the client works again once the path recovers.
func TestProxyStall(t *testing.T) {
	s := relStart(t, server.Options{}, nil)
	p := relProxy(t, s.Addr)
	const timeout = time.Second
	c := relDial(t, p.Addr(), client.Options{Timeout: timeout})
	ctx := relCtx(t)
	p.Arm(faultproxy.Fault{Dir: faultproxy.ToClient, Action: faultproxy.Stall, Stall: 300 * time.Millisecond})
	if _, err := c.Getattr(ctx, c.Root()); err != nil {
		t.Fatalf("GETATTR through a short stall: %v", err)
	}
	p.Arm(faultproxy.Fault{Dir: faultproxy.ToClient, Action: faultproxy.Stall, Stall: 4 * timeout})
	start := time.Now()
	_, err := c.Getattr(ctx, c.Root())
	el := time.Since(start)
	var te *client.TimeoutError
	if !errors.As(err, &te) || !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("GETATTR through a long stall: %v, want *TimeoutError", err)
	}
	if el > timeout+2*time.Second {
		t.Fatalf("timed out after %v with Timeout %v", el, timeout)
	}
	// Constant latency: slower, still correct.
	p.SetLatency(2 * time.Millisecond)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.Getattr(ctx, c.Root())
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client did not recover after the stall: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	data := relData(9, 1<<20)
	h, err := c.Create(ctx, c.Root(), "after-stall", client.CreateHow{Mode: client.Unchecked})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(ctx, h.Handle, data, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Commit(ctx, h.Handle, 0, 0); err != nil {
		t.Fatal(err)
	}
	sum, n := relFileSum(t, filepath.Join(s.Dir, "after-stall"))
	if n != len(data) || sum != sha256.Sum256(data) {
		t.Fatal("file written after a stall differs")
	}
}
