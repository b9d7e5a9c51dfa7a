package faultproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoServer echoes every connection on 127.0.0.1 until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func newProxy(t *testing.T) *Proxy {
	t.Helper()
	p, err := New(echoServer(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func TestPassThrough(t *testing.T) {
	var (
		mu     sync.Mutex
		tapped [2]bytes.Buffer
		conns  = map[int64]bool{}
	)
	p, err := New(echoServer(t), Options{Tap: func(conn int64, dir Direction, b []byte) {
		mu.Lock()
		tapped[dir].Write(b)
		conns[conn] = true
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	c := dial(t, p)
	want := pattern(1 << 20)
	go func() { _, _ = c.Write(want) }()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("echo through the proxy differs")
	}
	// The proxy counts (and taps) a chunk after forwarding it, so the client
	// can finish reading just before the last chunk is accounted: wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := p.Stats()
		if st.Accepted == 1 && st.Bytes[ToServer] == int64(len(want)) && st.Bytes[ToClient] == int64(len(want)) && st.Fired == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	mu.Lock()
	defer mu.Unlock()
	if !bytes.Equal(tapped[ToServer].Bytes(), want) || !bytes.Equal(tapped[ToClient].Bytes(), want) || !conns[1] || len(conns) != 1 {
		t.Fatalf("tap saw %d/%d bytes on connections %v", tapped[0].Len(), tapped[1].Len(), conns)
	}
}

// TestTruncate: the echo comes back with exactly After bytes, then EOF.
func TestTruncate(t *testing.T) {
	for _, dir := range []Direction{ToServer, ToClient} {
		t.Run(dir.String(), func(t *testing.T) {
			p := newProxy(t)
			c := dial(t, p)
			fired := p.Arm(Fault{Dir: dir, After: 100_000, Action: Truncate})
			want := pattern(300_000)
			go func() { _, _ = c.Write(want) }()
			got, err := io.ReadAll(c)
			if err != nil && !errors.Is(err, syscall.ECONNRESET) {
				t.Fatal(err)
			}
			if len(got) != 100_000 || !bytes.Equal(got, want[:100_000]) {
				t.Fatalf("got %d bytes, want exactly the first 100000", len(got))
			}
			<-fired
		})
	}
}

// TestCut: the connection is reset mid-stream; reads fail, not hang, and
// fewer bytes than sent come back.
func TestCut(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	fired := p.Arm(Fault{Dir: ToClient, After: 50_000, Action: Cut})
	want := pattern(400_000)
	go func() { _, _ = c.Write(want) }()
	got, err := io.ReadAll(c)
	<-fired
	if len(got) >= len(want) {
		t.Fatalf("cut did not cut: %d bytes, err %v", len(got), err)
	}
	if !bytes.Equal(got, want[:len(got)]) {
		t.Fatal("bytes before the cut are corrupted")
	}
	// The proxy keeps accepting after a fault.
	c2 := dial(t, p)
	if _, err := c2.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 2)
	if _, err := io.ReadFull(c2, b); err != nil || string(b) != "ok" {
		t.Fatalf("after cut: %q %v", b, err)
	}
}

// TestStallAndLatency: a stall delays the stream by about its duration and
// loses nothing; CutAll resets live connections.
func TestStallAndLatency(t *testing.T) {
	p := newProxy(t)
	c := dial(t, p)
	p.SetLatency(time.Millisecond)
	p.Arm(Fault{Dir: ToServer, After: 10, Action: Stall, Stall: 300 * time.Millisecond})
	want := pattern(64 << 10)
	start := time.Now()
	go func() { _, _ = c.Write(want) }()
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 300*time.Millisecond {
		t.Fatalf("stall of 300ms took effect in %v", el)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("data changed by a stall")
	}
	p.SetLatency(0)
	if n := p.CutAll(); n != 1 {
		t.Fatalf("CutAll reset %d connections, want 1", n)
	}
	if _, err := io.ReadAll(c); err == nil {
		// A reset connection may also read as EOF; either way it ends.
		t.Log("cut read as EOF")
	}
}
