package client

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"
)

// scriptedServer answers calls on in-memory connections: for the i-th
// connection it calls handle(i, call record) which returns the reply body
// (after the xid) and how to frame it, or nil to hang up without replying.
type scriptedServer struct {
	mu     sync.Mutex
	conns  int
	xids   []uint32
	handle func(conn int, rec []byte) (body []byte, fragSize int)
}

func (s *scriptedServer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	s.mu.Lock()
	i := s.conns
	s.conns++
	s.mu.Unlock()
	cli, srv := net.Pipe()
	go func() {
		defer srv.Close()
		for {
			rec, err := readTestRecord(srv)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.xids = append(s.xids, binary.BigEndian.Uint32(rec))
			s.mu.Unlock()
			body, frag := s.handle(i, rec)
			if body == nil {
				return
			}
			reply := append(append([]byte(nil), rec[:4]...), body...)
			var out []byte
			for len(reply) > 0 {
				n := min(frag, len(reply))
				m := uint32(n)
				if n == len(reply) {
					m |= lastFragment
				}
				out = binary.BigEndian.AppendUint32(out, m)
				out = append(out, reply[:n]...)
				reply = reply[n:]
			}
			if _, err := srv.Write(out); err != nil {
				return
			}
		}
	}()
	return cli, nil
}

func scriptedClient(t *testing.T, s *scriptedServer) *Client {
	c := &Client{
		opts:   Options{Timeout: 5 * time.Second, MaxInflight: 4, Dial: s.dial},
		log:    slog.New(slog.DiscardHandler),
		writes: map[string]*writeState{},
		rsize:  4096, wsize: 4096,
	}
	cn, err := newConn(context.Background(), "scripted", s.dial, c.log, c.opts.Timeout, true)
	if err != nil {
		t.Fatal(err)
	}
	c.conns = []*conn{cn}
	t.Cleanup(cn.close)
	return c
}

func acceptedOK(words ...uint32) []byte {
	var e encoder
	for _, w := range append([]uint32{msgReply, replyAccepted, authNone, 0, acceptSuccess}, words...) {
		e.u32(w)
	}
	return e.b
}

// TestFragmentedReply: a reply split into 1-byte fragments is reassembled.
func TestFragmentedReply(t *testing.T) {
	s := &scriptedServer{handle: func(int, []byte) ([]byte, int) {
		b := acceptedOK(0) // GETATTR OK + fattr3
		fa := make([]byte, fattrSize)
		fa[3] = byte(TypeReg)
		binary.BigEndian.PutUint64(fa[20:], 12345) // size
		return append(b, fa...), 1
	}}
	c := scriptedClient(t, s)
	a, err := c.Getattr(context.Background(), Handle{1})
	if err != nil || a.Type != TypeReg || a.Size != 12345 {
		t.Fatalf("GETATTR over 1-byte fragments: %+v %v", a, err)
	}
}

// TestReadMoreThanAsked: a READ reply carrying more data than requested is
// refused with ErrProtocol, the caller's buffer is not overrun, and the
// connection stays usable.
func TestReadMoreThanAsked(t *testing.T) {
	s := &scriptedServer{handle: func(_ int, rec []byte) ([]byte, int) {
		if binary.BigEndian.Uint32(rec[20:]) == procGetattr {
			return append(acceptedOK(0), make([]byte, fattrSize)...), 1 << 20
		}
		b := acceptedOK(0, 0, 100, 1, 100) // OK, no attrs, count 100, eof, 100 bytes
		return append(b, make([]byte, 100)...), 1 << 20
	}}
	c := scriptedClient(t, s)
	buf := make([]byte, 10, 200)
	_, err := c.Read(context.Background(), Handle{1}, 0, buf)
	if !errors.Is(err, ErrProtocol) {
		t.Fatalf("want ErrProtocol, got %v", err)
	}
	if _, err := c.Getattr(context.Background(), Handle{1}); err != nil {
		t.Fatalf("connection unusable after a bad READ reply: %v", err)
	}
}

// TestRetransmitPolicy: when the connection drops after a call was sent,
// GETATTR is retransmitted under the same xid on a new connection, while
// REMOVE (not idempotent) fails with ErrConnLost and is not resent.
func TestRetransmitPolicy(t *testing.T) {
	s := &scriptedServer{handle: func(conn int, rec []byte) ([]byte, int) {
		if conn == 0 {
			return nil, 0 // first connection: swallow the call and hang up
		}
		switch binary.BigEndian.Uint32(rec[20:]) {
		case procGetattr:
			return append(acceptedOK(0), make([]byte, fattrSize)...), 64
		default:
			return acceptedOK(0, 0, 0), 64 // OK + empty wcc_data
		}
	}}
	c := scriptedClient(t, s)
	if _, err := c.Getattr(context.Background(), Handle{1}); err != nil {
		t.Fatalf("GETATTR across a dropped connection: %v", err)
	}
	s.mu.Lock()
	if len(s.xids) != 2 || s.xids[0] != s.xids[1] {
		t.Fatalf("want one retransmission under the same xid, saw xids %v", s.xids)
	}
	s.mu.Unlock()

	// Make the next connection drop again for REMOVE.
	s.mu.Lock()
	s.handle = func(int, []byte) ([]byte, int) { return nil, 0 }
	s.xids = nil
	s.mu.Unlock()
	_, err := c.Remove(context.Background(), Handle{1}, "x")
	if !errors.Is(err, ErrConnLost) {
		t.Fatalf("REMOVE on a dropped connection: want ErrConnLost, got %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.xids) != 1 {
		t.Fatalf("REMOVE must not be retransmitted; server saw %d copies", len(s.xids))
	}
}

// TestJukeboxRetry: NFS3ERR_JUKEBOX is retried (with a new xid) until the
// server answers; a server that never stops answering JUKEBOX yields EAGAIN
// once Options.Timeout has passed.
func TestJukeboxRetry(t *testing.T) {
	var mu sync.Mutex
	jukeboxes := 2
	s := &scriptedServer{handle: func(int, []byte) ([]byte, int) {
		mu.Lock()
		defer mu.Unlock()
		if jukeboxes != 0 {
			jukeboxes--
			return acceptedOK(uint32(StatusJukebox)), 1 << 20
		}
		return append(acceptedOK(0), make([]byte, fattrSize)...), 1 << 20
	}}
	c := scriptedClient(t, s)
	if _, err := c.Getattr(context.Background(), Handle{1}); err != nil {
		t.Fatalf("GETATTR after two JUKEBOX replies: %v", err)
	}
	s.mu.Lock()
	if len(s.xids) != 3 || s.xids[0] == s.xids[1] || s.xids[1] == s.xids[2] {
		t.Fatalf("want 3 sends with distinct xids, saw %v", s.xids)
	}
	s.mu.Unlock()

	mu.Lock()
	jukeboxes = -1 // forever
	mu.Unlock()
	c.opts.Timeout = 500 * time.Millisecond
	_, err := c.Getattr(context.Background(), Handle{1})
	if !errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("endless JUKEBOX: want EAGAIN, got %v", err)
	}
}
