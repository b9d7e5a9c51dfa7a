package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"time"
)

// ONC RPC v2 (RFC 5531) constants.
const (
	rpcVersion = 2

	msgCall  = 0
	msgReply = 1

	replyAccepted = 0
	replyDenied   = 1

	acceptSuccess      = 0
	acceptProgUnavail  = 1
	acceptProgMismatch = 2
	acceptProcUnavail  = 3
	acceptGarbageArgs  = 4
	acceptSystemErr    = 5

	rejectRPCMismatch = 0
	rejectAuthError   = 1

	authNone = 0
	authSys  = 1

	// lastFragment is the record-marking bit (RFC 5531 §11) of the last fragment.
	lastFragment = 1 << 31

	// maxReplyBody bounds a reply body buffered in memory (all replies but
	// READ, whose data goes straight to the caller's buffer). Our READDIRPLUS
	// asks for at most maxDirReply bytes, so anything larger is garbage.
	maxReplyBody = 4 << 20
)

// Transport errors. They are wrapped with details; match with errors.Is.
var (
	// ErrClosed is returned by calls on a closed Client.
	ErrClosed = errors.New("client: closed")
	// ErrConnLost is returned for a non-idempotent call (CREATE, REMOVE,
	// RENAME, …) that was sent on a connection that dropped before its reply
	// arrived: the server may or may not have executed it, and since no server
	// duplicate request cache is assumed the client does not retransmit it.
	// Callers decide what to do (typically LOOKUP to see what happened).
	ErrConnLost = errors.New("client: connection lost before the reply to a non-idempotent call; it may have been executed")
	// ErrProtocol marks a reply that is not valid ONC RPC / NFSv3.
	ErrProtocol = errors.New("client: protocol error in reply")
)

// errDropped is the internal signal that the connection under a call went
// away; do() decides whether to retransmit.
var errDropped = errors.New("client: connection dropped")

// TimeoutError is returned when a call got no reply within Options.Timeout.
// It unwraps to syscall.ETIMEDOUT.
type TimeoutError struct {
	Proc    string
	Timeout time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("client: %s: no reply within %v", e.Proc, e.Timeout)
}
func (e *TimeoutError) Unwrap() error { return syscall.ETIMEDOUT }

// RPCError reports a call the server's RPC layer refused (accept_stat or
// reject_stat other than SUCCESS).
type RPCError struct {
	Proc string
	Msg  string
}

func (e *RPCError) Error() string { return "client: " + e.Proc + ": rpc: " + e.Msg }
func (e *RPCError) Unwrap() error { return ErrProtocol }

// dialFunc opens a stream connection; net.Dialer.DialContext has this shape.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// call is one RPC in flight. The caller owns it except between the moment the
// reader goroutine removes it from conn.pending and the moment it signals
// done: in that window the reader writes the reply into it (and into sink).
type call struct {
	xid        uint32
	proc       string
	idempotent bool

	msg  []byte // record marker + RPC header + arguments
	data []byte // trailing opaque payload (WRITE data), sent without copying

	sink []byte // READ: reply data is read straight into this buffer

	// Reply, written by the reader goroutine.
	body  []byte // reply body after accept_stat (for READ: the fields before the data)
	sinkN int    // READ: data bytes written into sink
	err   error
	done  chan struct{} // capacity 1; one signal per attempt
	sent  bool          // this attempt was (at least partly) written
}

// conn is one TCP connection slot to one server address, with its reader
// goroutine and automatic reconnection.
//
// Concurrency: safe for concurrent use. Lock order: wmu before mu; neither is
// held while calling outside the package.
type conn struct {
	addr    string
	dial    dialFunc
	log     *slog.Logger
	timeout time.Duration
	redial  bool // false: one-shot connection (MOUNT, portmap), fail on drop

	wmu sync.Mutex // serialises record writes to nc

	mu      sync.Mutex
	nc      net.Conn // nil while disconnected
	up      chan struct{}
	pending map[uint32]*call
	closed  bool
	closeCh chan struct{}
	loopEnd chan struct{}
	retrans uint64 // retransmissions (guarded by mu)
	reconns uint64 // successful reconnections (guarded by mu)
}

// newConn dials addr once (failing fast if that fails) and starts the reader
// goroutine that also reconnects.
func newConn(ctx context.Context, addr string, dial dialFunc, log *slog.Logger, timeout time.Duration, redial bool) (*conn, error) {
	nc, err := dial(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", addr, err)
	}
	setNoDelay(nc)
	c := &conn{
		addr: addr, dial: dial, log: log, timeout: timeout, redial: redial,
		nc: nc, up: make(chan struct{}), pending: make(map[uint32]*call),
		closeCh: make(chan struct{}), loopEnd: make(chan struct{}),
	}
	close(c.up)
	go c.loop(nc)
	return c, nil
}

func setNoDelay(nc net.Conn) {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
}

// close fails every pending call with ErrClosed and stops the reader.
func (c *conn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.loopEnd
		return
	}
	c.closed = true
	close(c.closeCh)
	nc := c.nc
	c.mu.Unlock()
	if nc != nil {
		nc.Close()
	}
	<-c.loopEnd
}

// loop reads replies from nc until it fails, then fails the pending calls
// with errDropped (their callers decide whether to retransmit) and redials
// with backoff until the conn is closed.
func (c *conn) loop(nc net.Conn) {
	defer close(c.loopEnd)
	for {
		err := c.readLoop(nc)
		nc.Close()
		c.mu.Lock()
		closed := c.closed
		c.nc = nil
		c.up = make(chan struct{})
		failed := c.pending
		c.pending = make(map[uint32]*call)
		c.mu.Unlock()
		cause := errDropped
		if closed {
			cause = ErrClosed
		} else {
			c.log.Warn("nfs client: connection dropped", "addr", c.addr, "err", err)
		}
		for _, cl := range failed {
			cl.finish(cause)
		}
		if closed || !c.redial {
			c.mu.Lock()
			if !c.closed {
				c.closed = true
				close(c.closeCh)
			}
			c.mu.Unlock()
			return
		}
		if nc = c.redialLoop(); nc == nil {
			return
		}
	}
}

// redialLoop reconnects with exponential backoff (10 ms to 1 s). It returns
// nil once the conn is closed.
func (c *conn) redialLoop() net.Conn {
	backoff := 10 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		go func() {
			select {
			case <-c.closeCh:
				cancel()
			case <-ctx.Done():
			}
		}()
		nc, err := c.dial(ctx, "tcp", c.addr)
		cancel()
		if err == nil {
			setNoDelay(nc)
			c.mu.Lock()
			if c.closed {
				c.mu.Unlock()
				nc.Close()
				return nil
			}
			c.nc = nc
			c.reconns++
			close(c.up)
			c.mu.Unlock()
			c.log.Info("nfs client: reconnected", "addr", c.addr)
			return nc
		}
		select {
		case <-c.closeCh:
			return nil
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

func (cl *call) finish(err error) {
	cl.err = err
	cl.done <- struct{}{}
}

// do sends cl and waits for its reply. After a dropped connection it
// retransmits under the same xid if the call is idempotent or was never
// written; a non-idempotent call that was written fails with ErrConnLost.
func (c *conn) do(ctx context.Context, cl *call) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	timer := time.NewTimer(c.timeout)
	defer timer.Stop()
	timeoutErr := func() error { return &TimeoutError{Proc: cl.proc, Timeout: c.timeout} }
	resend := false
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return ErrClosed
		}
		nc, up := c.nc, c.up
		if nc == nil {
			c.mu.Unlock()
			select {
			case <-up:
				continue
			case <-c.closeCh:
				return ErrClosed
			case <-ctx.Done():
				return ctx.Err()
			case <-timer.C:
				return timeoutErr()
			}
		}
		if resend {
			c.retrans++
		}
		cl.sent = false
		cl.err = nil
		c.pending[cl.xid] = cl
		c.mu.Unlock()

		c.send(cl, nc)

		select {
		case <-cl.done:
		case <-ctx.Done():
			c.abandon(cl, nc)
			return ctx.Err()
		case <-timer.C:
			c.abandon(cl, nc)
			return timeoutErr()
		}
		if cl.err == errDropped {
			if cl.idempotent || !cl.sent {
				resend = resend || cl.sent
				continue
			}
			return fmt.Errorf("%s: %w", cl.proc, ErrConnLost)
		}
		return cl.err
	}
}

// abandon withdraws cl after a timeout or cancellation. If the reader already
// owns it (it is reading the reply into cl.sink, the caller's buffer), wait
// until it is done so the caller's buffer is not written after we return;
// a reader stuck mid-record is unstuck by closing the connection.
func (c *conn) abandon(cl *call, nc net.Conn) {
	c.mu.Lock()
	if c.pending[cl.xid] == cl {
		delete(c.pending, cl.xid)
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	if cl.sink == nil {
		return // the reader writes only into cl itself; done has room for its signal
	}
	t := time.NewTimer(c.timeout)
	defer t.Stop()
	select {
	case <-cl.done:
	case <-t.C:
		nc.Close()
		<-cl.done
	}
}

// send writes cl's record to nc. A write error closes nc, which makes the
// reader fail every pending call with errDropped.
func (c *conn) send(cl *call, nc net.Conn) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	ok := c.nc == nc && c.pending[cl.xid] == cl
	if ok {
		cl.sent = true
	}
	c.mu.Unlock()
	if !ok {
		return // dropped or abandoned meanwhile
	}
	_ = nc.SetWriteDeadline(time.Now().Add(c.timeout))
	var err error
	if len(cl.data) == 0 {
		_, err = nc.Write(cl.msg)
	} else {
		var pad [3]byte
		bufs := net.Buffers{cl.msg, cl.data, pad[:padLen(len(cl.data))]}
		_, err = bufs.WriteTo(nc)
	}
	if err != nil {
		c.log.Warn("nfs client: write failed", "addr", c.addr, "err", err)
		nc.Close()
	}
}

// recordReader reads one RPC record (RFC 5531 §11 record marking) from a
// stream, hiding fragment boundaries. ioErr is set when the stream itself
// failed (the connection is then unusable); reaching the end of the record
// early is a protocol error in that one reply.
type recordReader struct {
	r     *bufio.Reader
	left  uint32 // bytes left in the current fragment
	last  bool
	ioErr error
}

func (rr *recordReader) start() error {
	rr.left, rr.last = 0, false
	return rr.nextFragment()
}

func (rr *recordReader) nextFragment() error {
	var h [4]byte
	if _, err := io.ReadFull(rr.r, h[:]); err != nil {
		rr.ioErr = err
		return err
	}
	v := binary.BigEndian.Uint32(h[:])
	rr.last = v&lastFragment != 0
	rr.left = v &^ lastFragment
	return nil
}

// Read reads from the current record; io.EOF at its end.
func (rr *recordReader) Read(p []byte) (int, error) {
	for rr.left == 0 {
		if rr.last {
			return 0, io.EOF
		}
		if err := rr.nextFragment(); err != nil {
			return 0, err
		}
	}
	if uint32(len(p)) > rr.left {
		p = p[:rr.left]
	}
	n, err := rr.r.Read(p)
	rr.left -= uint32(n)
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		rr.ioErr = err
	}
	return n, err
}

// full fills p from the record. A record that ends early yields ErrProtocol.
func (rr *recordReader) full(p []byte) error {
	_, err := io.ReadFull(rr, p)
	if err != nil {
		if rr.ioErr != nil {
			return rr.ioErr
		}
		return fmt.Errorf("%w: record too short", ErrProtocol)
	}
	return nil
}

func (rr *recordReader) u32() (uint32, error) {
	var b [4]byte
	if err := rr.full(b[:]); err != nil {
		return 0, err
	}
	return binary.BigEndian.Uint32(b[:]), nil
}

// discard skips the rest of the record.
func (rr *recordReader) discard() error {
	for {
		if rr.left > 0 {
			n, err := rr.r.Discard(int(rr.left))
			rr.left -= uint32(n)
			if err != nil {
				rr.ioErr = err
				return err
			}
		}
		if rr.last {
			return nil
		}
		if err := rr.nextFragment(); err != nil {
			return err
		}
	}
}

// readAll appends the rest of the record to dst, up to max bytes in total;
// a longer record is discarded and reported as ErrProtocol.
func (rr *recordReader) readAll(dst []byte, max int) ([]byte, error) {
	for {
		if rr.left > 0 {
			if len(dst)+int(rr.left) > max {
				if err := rr.discard(); err != nil {
					return nil, err
				}
				return nil, fmt.Errorf("%w: reply longer than %d bytes", ErrProtocol, max)
			}
			n := len(dst)
			dst = append(dst, make([]byte, rr.left)...)
			if _, err := io.ReadFull(rr.r, dst[n:]); err != nil {
				rr.ioErr = err
				return nil, err
			}
			rr.left = 0
		}
		if rr.last {
			return dst, nil
		}
		if err := rr.nextFragment(); err != nil {
			return nil, err
		}
	}
}

// readLoop reads replies until the stream fails, and returns that error.
func (c *conn) readLoop(nc net.Conn) error {
	rr := recordReader{r: bufio.NewReaderSize(nc, 256<<10)}
	for {
		if err := rr.start(); err != nil {
			return err
		}
		var hdr [8]byte
		if err := rr.full(hdr[:]); err != nil {
			if rr.ioErr != nil {
				return err
			}
			continue // a tiny garbage record: skip it
		}
		xid := binary.BigEndian.Uint32(hdr[0:4])
		c.mu.Lock()
		cl := c.pending[xid]
		if cl != nil {
			delete(c.pending, xid)
		}
		c.mu.Unlock()
		if cl == nil || binary.BigEndian.Uint32(hdr[4:8]) != msgReply {
			// A reply to an abandoned call, or not a reply at all.
			if cl != nil {
				cl.finish(fmt.Errorf("%s: %w: message type is not REPLY", cl.proc, ErrProtocol))
			}
			if err := rr.discard(); err != nil {
				return err
			}
			continue
		}
		err := receiveReply(&rr, cl)
		if rr.ioErr != nil {
			cl.finish(errDropped)
			return rr.ioErr
		}
		if err == nil {
			err = rr.discard() // trailing bytes after a READ
			if rr.ioErr != nil {
				cl.finish(errDropped)
				return rr.ioErr
			}
		}
		cl.finish(err)
	}
}

// receiveReply parses the RPC reply header (after xid and message type) and
// the body into cl. On return without ioErr the record is consumed up to the
// end or the body is fully read.
func receiveReply(rr *recordReader, cl *call) error {
	fail := func(err error) error {
		if rr.ioErr == nil {
			if derr := rr.discard(); derr != nil {
				return derr
			}
		}
		return err
	}
	stat, err := rr.u32()
	if err != nil {
		return fail(err)
	}
	switch stat {
	case replyAccepted:
		if _, err := rr.u32(); err != nil { // verifier flavor
			return fail(err)
		}
		n, err := rr.u32()
		if err != nil {
			return fail(err)
		}
		if n > 400 {
			return fail(fmt.Errorf("%w: verifier of %d bytes", ErrProtocol, n))
		}
		var skip [400 + 3]byte
		if err := rr.full(skip[:n+uint32(padLen(int(n)))]); err != nil {
			return fail(err)
		}
		as, err := rr.u32()
		if err != nil {
			return fail(err)
		}
		if as != acceptSuccess {
			msg := acceptStatString(as)
			if as == acceptProgMismatch {
				lo, _ := rr.u32()
				hi, _ := rr.u32()
				msg += fmt.Sprintf(" (server supports %d..%d)", lo, hi)
			}
			return fail(&RPCError{Proc: cl.proc, Msg: msg})
		}
	case replyDenied:
		rs, err := rr.u32()
		if err != nil {
			return fail(err)
		}
		v, _ := rr.u32()
		if rs == rejectRPCMismatch {
			return fail(&RPCError{Proc: cl.proc, Msg: "RPC version mismatch"})
		}
		return fail(&RPCError{Proc: cl.proc, Msg: fmt.Sprintf("authentication error %d", v)})
	default:
		return fail(fmt.Errorf("%s: %w: reply_stat %d", cl.proc, ErrProtocol, stat))
	}
	if cl.sink != nil {
		return fail(receiveReadBody(rr, cl))
	}
	cl.body, err = rr.readAll(cl.body[:0], maxReplyBody)
	if err != nil {
		return fmt.Errorf("%s: %w", cl.proc, err)
	}
	return nil
}

// receiveReadBody reads a READ3res: the fixed fields go to cl.body, the data
// straight into cl.sink. A server sending more data than asked is refused.
func receiveReadBody(rr *recordReader, cl *call) error {
	b := cl.body[:0]
	var w [4]byte
	get := func(n int) error {
		off := len(b)
		b = append(b, make([]byte, n)...)
		return rr.full(b[off:])
	}
	if err := get(8); err != nil { // status, attributes_follow
		return err
	}
	status := binary.BigEndian.Uint32(b[0:4])
	if binary.BigEndian.Uint32(b[4:8]) != 0 {
		if err := get(fattrSize); err != nil {
			return err
		}
	}
	if status == 0 {
		if err := get(8); err != nil { // count, eof
			return err
		}
		if err := rr.full(w[:]); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(w[:])
		if uint64(n) > uint64(len(cl.sink)) {
			return fmt.Errorf("%s: %w: server returned %d bytes, %d asked", cl.proc, ErrProtocol, n, len(cl.sink))
		}
		if err := rr.full(cl.sink[:n]); err != nil {
			return err
		}
		cl.sinkN = int(n)
	}
	cl.body = b
	return nil
}

func acceptStatString(s uint32) string {
	switch s {
	case acceptProgUnavail:
		return "program unavailable"
	case acceptProgMismatch:
		return "program version mismatch"
	case acceptProcUnavail:
		return "procedure unavailable"
	case acceptGarbageArgs:
		return "garbage arguments"
	case acceptSystemErr:
		return "system error"
	}
	return fmt.Sprintf("accept_stat %d", s)
}
