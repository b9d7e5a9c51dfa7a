package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
)

// parallel runs fn(i) for i in [0,n) on up to width goroutines and returns
// the first error; after an error the remaining chunks are skipped and the
// context passed to fn is cancelled.
func parallel(ctx context.Context, n, width int, fn func(ctx context.Context, i int) error) error {
	if n == 1 {
		return fn(ctx, 0)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for w := 0; w < min(n, width); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if err := fn(ctx, i); err != nil {
					errOnce.Do(func() { firstErr = err; cancel() })
					return
				}
			}
		}()
	}
	wg.Wait()
	return firstErr
}

// ReadAt fills p from h at off with concurrent READs of RSize bytes (up to
// Options.MaxInflight in flight), each decoded straight into its part of p.
// Like io.ReaderAt it returns len(p), nil or a short count with an error,
// io.EOF when the file ends before p is full. Short READs that are not at EOF
// are continued.
func (c *Client) ReadAt(ctx context.Context, h Handle, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("client: ReadAt: negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	chunk := c.rsize
	n := (len(p) + chunk - 1) / chunk
	var eofAt atomic.Int64 // offset into p where the file ended, or len(p)
	eofAt.Store(int64(len(p)))
	err := parallel(ctx, n, c.opts.MaxInflight, func(ctx context.Context, i int) error {
		lo := i * chunk
		hi := min(lo+chunk, len(p))
		for got := lo; got < hi; {
			if int64(got) >= eofAt.Load() {
				return nil
			}
			r, err := c.Read(ctx, h, uint64(off)+uint64(got), p[got:hi])
			if err != nil {
				return err
			}
			got += r.N
			if r.EOF {
				for {
					cur := eofAt.Load()
					if int64(got) >= cur || eofAt.CompareAndSwap(cur, int64(got)) {
						break
					}
				}
				return nil
			}
			if r.N == 0 {
				return fmt.Errorf("client: READ: %w: no data and no EOF at offset %d", ErrProtocol, off+int64(got))
			}
		}
		return nil
	})
	end := int(eofAt.Load())
	if err != nil {
		return 0, err
	}
	if end < len(p) {
		return end, io.EOF
	}
	return end, nil
}

// writeState tracks a handle's UNSTABLE writes that no COMMIT has covered yet.
//
// Concurrency: guarded by mu.
type writeState struct {
	mu      sync.Mutex
	extents []*extent // in the order the writes were acknowledged
	dead    bool      // removed from Client.writes; track in a fresh one
}

// extent is one acknowledged UNSTABLE write: where, under which verifier, and
// how to get its bytes again if the server loses them.
type extent struct {
	off  uint64
	n    int
	verf Verifier
	data []byte      // retained copy (WriteAt), or nil
	src  io.ReaderAt // caller's copy at file offsets (WriteAtFrom), or nil
}

func (x *extent) bytes() ([]byte, error) {
	if x.data != nil {
		return x.data, nil
	}
	b := make([]byte, x.n)
	if _, err := x.src.ReadAt(b, int64(x.off)); err != nil && !(errors.Is(err, io.EOF) && len(b) == x.n) {
		return nil, fmt.Errorf("client: rereading uncommitted data at %d: %w", x.off, err)
	}
	return b, nil
}

// track records an acknowledged UNSTABLE write of h.
func (c *Client) track(h Handle, x *extent) {
	for {
		ws := c.writeStateFor(h)
		ws.mu.Lock()
		if !ws.dead {
			ws.extents = append(ws.extents, x)
			ws.mu.Unlock()
			return
		}
		ws.mu.Unlock() // Commit just retired it; take the new one
	}
}

// retireIfEmpty drops h's tracking state once nothing is uncommitted, so
// the map does not grow with every file ever written.
func (c *Client) retireIfEmpty(h Handle, ws *writeState) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if len(ws.extents) == 0 && c.writes[string(h)] == ws {
		ws.dead = true
		delete(c.writes, string(h))
	}
}

func (c *Client) writeStateFor(h Handle) *writeState {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	ws := c.writes[string(h)]
	if ws == nil {
		ws = &writeState{}
		c.writes[string(h)] = ws
	}
	return ws
}

// WriteAt writes p to h at off with concurrent UNSTABLE WRITEs of WSize
// bytes. Until a Commit covering them succeeds, the client keeps a copy of
// every chunk the server acknowledged as UNSTABLE, so that Commit can resend
// it if the server's write verifier changed (it rebooted and lost them).
// Chunks the server wrote FILE_SYNC/DATA_SYNC are not kept. It returns
// len(p) or an error.
func (c *Client) WriteAt(ctx context.Context, h Handle, p []byte, off int64) (int, error) {
	return c.writeAt(ctx, h, p, off, nil)
}

// WriteAtFrom is WriteAt without the copy: instead the caller promises that
// src.ReadAt at the same file offsets returns the same bytes until a Commit
// covering them has returned (e.g. a page cache or a local cache file). Commit
// reads from src only if it has to resend.
func (c *Client) WriteAtFrom(ctx context.Context, h Handle, p []byte, off int64, src io.ReaderAt) (int, error) {
	if src == nil {
		return 0, errors.New("client: WriteAtFrom: nil source")
	}
	return c.writeAt(ctx, h, p, off, src)
}

func (c *Client) writeAt(ctx context.Context, h Handle, p []byte, off int64, src io.ReaderAt) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("client: WriteAt: negative offset %d", off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	chunk := c.wsize
	n := (len(p) + chunk - 1) / chunk
	err := parallel(ctx, n, c.opts.MaxInflight, func(ctx context.Context, i int) error {
		lo := i * chunk
		hi := min(lo+chunk, len(p))
		for lo < hi {
			r, err := c.Write(ctx, h, uint64(off)+uint64(lo), p[lo:hi], Unstable)
			if err != nil {
				return err
			}
			if r.Count == 0 {
				return fmt.Errorf("client: WRITE: %w: server wrote 0 bytes at offset %d", ErrProtocol, off+int64(lo))
			}
			if r.Committed == Unstable {
				x := &extent{off: uint64(off) + uint64(lo), n: r.Count, verf: r.Verifier, src: src}
				if src == nil {
					x.data = append([]byte(nil), p[lo:lo+r.Count]...)
				}
				c.track(h, x)
			}
			lo += r.Count
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// CommitResult is the outcome of Commit.
type CommitResult struct {
	Verifier Verifier
	Wcc      Wcc
	// Resent counts the bytes that had to be written again because the
	// server's verifier had changed since they were acknowledged.
	Resent int
}

// Commit asks the server to make the writes in [off, off+count) stable
// (COMMIT, RFC 1813 §3.3.21; count 0 means to the end of the file) and checks
// the write verifier: every UNSTABLE write acknowledged under a different
// verifier than the COMMIT's was lost by a server restart, so Commit resends
// it (FILE_SYNC) before returning. When Commit returns nil, every byte that
// WriteAt acknowledged in the range before Commit was called is on stable
// storage. Writes acknowledged while Commit runs, and writes that straddle
// the range's edges, stay tracked for the next Commit.
func (c *Client) Commit(ctx context.Context, h Handle, off uint64, count uint32) (CommitResult, error) {
	end := ^uint64(0)
	if count > 0 {
		end = off + uint64(count)
	}
	ws := c.writeStateFor(h)
	ws.mu.Lock()
	var snap []*extent
	for _, x := range ws.extents {
		if x.off >= off && x.off+uint64(x.n) <= end { // only writes the COMMIT fully covers
			snap = append(snap, x)
		}
	}
	ws.mu.Unlock()

	var res CommitResult
	for attempt := 0; ; attempt++ {
		v, wcc, err := c.commitRaw(ctx, h, off, count)
		if err != nil {
			return res, err
		}
		res.Verifier, res.Wcc = v, wcc
		var stale []*extent
		for _, x := range snap {
			if x.verf != v {
				stale = append(stale, x)
			}
		}
		done := snap
		if len(stale) > 0 {
			if attempt >= 4 {
				return res, fmt.Errorf("client: COMMIT: write verifier still changing after %d resends", attempt)
			}
			c.log.Warn("nfs client: write verifier changed, resending uncommitted data", "handle", h.String(), "extents", len(stale))
		}
		var again []*extent
		for _, x := range stale {
			b, err := x.bytes()
			if err != nil {
				return res, err
			}
			for sent := 0; sent < len(b); {
				r, err := c.Write(ctx, h, x.off+uint64(sent), b[sent:], FileSync)
				if err != nil {
					return res, fmt.Errorf("client: resending uncommitted data: %w", err)
				}
				if r.Count == 0 {
					return res, fmt.Errorf("client: resending uncommitted data: %w: server wrote 0 bytes", ErrProtocol)
				}
				if r.Committed == Unstable { // not allowed for FILE_SYNC, but be safe
					x.verf = r.Verifier
					again = append(again, x)
				}
				sent += r.Count
			}
			res.Resent += len(b)
			c.stats.resent.Add(uint64(len(b)))
		}
		ws.mu.Lock()
		ws.extents = removeExtents(ws.extents, done, again)
		ws.mu.Unlock()
		if len(again) == 0 {
			c.retireIfEmpty(h, ws)
			return res, nil
		}
		snap = again
	}
}

// removeExtents returns all minus remove, keeping those also in keep.
func removeExtents(all, remove, keep []*extent) []*extent {
	drop := make(map[*extent]bool, len(remove))
	for _, x := range remove {
		drop[x] = true
	}
	for _, x := range keep {
		delete(drop, x)
	}
	out := all[:0]
	for _, x := range all {
		if !drop[x] {
			out = append(out, x)
		}
	}
	clear(all[len(out):])
	return out
}

// Uncommitted reports how many bytes written to h through WriteAt are not yet
// known to be stable.
func (c *Client) Uncommitted(h Handle) int {
	c.wmu.Lock()
	ws := c.writes[string(h)]
	c.wmu.Unlock()
	if ws == nil {
		return 0
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	n := 0
	for _, x := range ws.extents {
		n += x.n
	}
	return n
}

// Forget drops the uncommitted-write tracking of h (e.g. after it was
// removed); its data is then lost if the server restarts before it flushes.
func (c *Client) Forget(h Handle) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if ws := c.writes[string(h)]; ws != nil {
		ws.mu.Lock()
		ws.dead = true
		ws.extents = nil
		ws.mu.Unlock()
		delete(c.writes, string(h))
	}
}
