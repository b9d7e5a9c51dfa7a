package faultproxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Direction says which stream of a proxied connection a fault applies to.
type Direction int

const (
	// ToServer is the client→target stream (calls).
	ToServer Direction = iota
	// ToClient is the target→client stream (replies).
	ToClient
)

func (d Direction) String() string {
	if d == ToServer {
		return "to-server"
	}
	return "to-client"
}

// Action is what a fault does once it fires.
type Action int

const (
	// Cut resets both sockets at once (RST): bytes not yet forwarded are lost.
	Cut Action = iota
	// Truncate forwards exactly Fault.After bytes of Fault.Dir, then closes
	// that direction (FIN) and drops the rest its sender writes, so the peer
	// reads a partial record followed by EOF.
	Truncate
	// Stall forwards Fault.After bytes, pauses for Fault.Stall, then goes on
	// forwarding; nothing is lost.
	Stall
)

func (a Action) String() string {
	switch a {
	case Cut:
		return "cut"
	case Truncate:
		return "truncate"
	default:
		return "stall"
	}
}

// Fault is a one-shot fault: it fires at the first byte in Dir beyond the
// first After bytes forwarded in Dir since Arm (After 0: the next byte).
type Fault struct {
	Dir    Direction
	After  int64
	Action Action
	// Stall is the pause of a Stall action.
	Stall time.Duration
}

// Options configures a Proxy; the zero value is ready to use.
type Options struct {
	// Logger receives connection and fault events; nil discards.
	Logger *slog.Logger
	// Tap, if set, is called with every chunk forwarded, before it is
	// written on, with the connection's sequence number (from 1). The
	// slice is only valid during the call. Used to capture real sessions
	// (e.g. as fuzz seeds). Calls for one direction of one connection are
	// sequential; different connections and directions call concurrently.
	Tap func(conn int64, dir Direction, b []byte)
}

// Stats counts what a Proxy did since New.
type Stats struct {
	Accepted int64 // connections accepted (and dialled through)
	Fired    int64 // faults that fired
	Bytes    [2]int64
}

// Proxy forwards connections from its listener to a target. See the
// package doc for the concurrency contract.
type Proxy struct {
	target string
	ln     net.Listener
	log    *slog.Logger
	tap    func(int64, Direction, []byte)

	latency atomic.Int64 // nanoseconds added before forwarding each chunk
	stats   struct{ accepted, fired atomic.Int64 }
	bytes   [2]atomic.Int64

	mu      sync.Mutex
	armed   *Fault
	counted int64 // bytes in armed.Dir since Arm
	fired   chan struct{}
	conns   map[*pair]struct{}
	closed  bool
	done    chan struct{}
	wg      sync.WaitGroup
}

// pair is one proxied connection: the accepted client side and the dialled
// target side.
type pair struct {
	client, server net.Conn
	seq            int64
	once           sync.Once
	ended          atomic.Int32 // directions finished; the pair closes at 2
}

// close closes both sides; reset makes them send RST instead of FIN.
func (p *pair) close(reset bool) {
	p.once.Do(func() {
		if reset {
			for _, c := range []net.Conn{p.client, p.server} {
				if tc, ok := c.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
			}
		}
		p.client.Close()
		p.server.Close()
	})
}

// New starts a proxy on 127.0.0.1 (an ephemeral port) forwarding to target.
func New(target string, opts Options) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{target: target, ln: ln, log: opts.Logger, tap: opts.Tap, conns: map[*pair]struct{}{}, done: make(chan struct{})}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's listening address (host:port).
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetLatency delays every forwarded chunk by d (0 turns it off).
func (p *Proxy) SetLatency(d time.Duration) { p.latency.Store(int64(d)) }

// Arm replaces any pending fault with f. The returned channel is closed
// when f fires.
func (p *Proxy) Arm(f Fault) <-chan struct{} {
	ch := make(chan struct{})
	p.mu.Lock()
	p.armed, p.counted, p.fired = &f, 0, ch
	p.mu.Unlock()
	return ch
}

// Disarm cancels a pending fault.
func (p *Proxy) Disarm() {
	p.mu.Lock()
	p.armed = nil
	p.mu.Unlock()
}

// CutAll resets every open proxied connection now and returns how many
// there were. New connections are still accepted.
func (p *Proxy) CutAll() int {
	p.mu.Lock()
	all := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		all = append(all, c)
	}
	p.mu.Unlock()
	for _, c := range all {
		c.close(true)
	}
	if len(all) > 0 {
		p.stats.fired.Add(1)
	}
	return len(all)
}

// Stats returns a snapshot of the counters.
func (p *Proxy) Stats() Stats {
	return Stats{
		Accepted: p.stats.accepted.Load(),
		Fired:    p.stats.fired.Load(),
		Bytes:    [2]int64{p.bytes[0].Load(), p.bytes[1].Load()},
	}
}

// Close stops accepting, closes every proxied connection and waits for the
// forwarding goroutines to end.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	close(p.done)
	all := make([]*pair, 0, len(p.conns))
	for c := range p.conns {
		all = append(all, c)
	}
	p.mu.Unlock()
	err := p.ln.Close()
	for _, c := range all {
		c.close(false)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				p.log.Warn("faultproxy: accept", "err", err)
			}
			return
		}
		s, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			// The target is down (e.g. being restarted): the client sees
			// its connection closed, as it would see a refused one.
			p.log.Info("faultproxy: dial target", "err", err)
			c.Close()
			continue
		}
		pr := &pair{client: c, server: s, seq: p.stats.accepted.Load() + 1}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			pr.close(false)
			return
		}
		p.conns[pr] = struct{}{}
		p.wg.Add(2)
		p.mu.Unlock()
		p.stats.accepted.Add(1)
		go p.pump(pr, ToServer, c, s)
		go p.pump(pr, ToClient, s, c)
	}
}

// pump copies src to dst, applying latency and the armed fault.
func (p *Proxy) pump(pr *pair, dir Direction, src io.Reader, dst io.Writer) {
	defer p.wg.Done()
	defer func() {
		if pr.ended.Add(1) < 2 {
			return
		}
		pr.close(false)
		p.mu.Lock()
		delete(p.conns, pr)
		p.mu.Unlock()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if d := time.Duration(p.latency.Load()); d > 0 && !p.sleep(d) {
				pr.close(false)
				return
			}
			chunk := buf[:n]
			f, k := p.check(dir, int64(n))
			if p.tap != nil {
				if f != nil && f.Action != Stall {
					p.tap(pr.seq, dir, chunk[:k])
				} else {
					p.tap(pr.seq, dir, chunk)
				}
			}
			if f != nil {
				p.log.Info("faultproxy: fault", "dir", dir, "action", f.Action, "after", f.After)
				if f.Action == Cut {
					pr.close(true)
					return
				}
				if _, werr := dst.Write(chunk[:k]); werr != nil {
					pr.close(false)
					return
				}
				p.bytes[dir].Add(k)
				if f.Action == Truncate {
					// The receiver sees the partial record, then EOF; what
					// the sender still sends is dropped.
					halfClose(dst)
					_, _ = io.Copy(io.Discard, src)
					return
				}
				if !p.sleep(f.Stall) {
					pr.close(false)
					return
				}
				chunk = chunk[k:]
			}
			if len(chunk) > 0 {
				if _, werr := dst.Write(chunk); werr != nil {
					pr.close(false)
					return
				}
				p.bytes[dir].Add(int64(len(chunk)))
			}
		}
		if err != nil {
			// Pass a clean EOF on as a half-close so request/response
			// protocols finish; anything else tears the pair down.
			if errors.Is(err, io.EOF) {
				halfClose(dst)
			} else {
				pr.close(false)
			}
			return
		}
	}
}

// check counts n bytes in dir against the armed fault. If the fault fires
// within these bytes it is disarmed and returned with the number of bytes
// of the chunk that come before it.
func (p *Proxy) check(dir Direction, n int64) (*Fault, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f := p.armed
	if f == nil || f.Dir != dir {
		return nil, 0
	}
	if p.counted+n <= f.After {
		p.counted += n
		return nil, 0
	}
	k := f.After - p.counted
	p.armed = nil
	close(p.fired)
	p.stats.fired.Add(1)
	return f, k
}

// sleep waits d or until Close; false means the proxy closed.
func (p *Proxy) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.done:
		return false
	}
}

func halfClose(c io.Writer) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
