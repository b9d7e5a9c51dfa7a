package billyfs

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"

	"github.com/nfscache/nfscache/client"
)

// Serving stale data during an upstream outage (Options.ServeStale).
//
// The upstream is "down" from the first call that fails with a connection
// error (no reply within the bound, connection lost, refused or reset)
// until a NULL probe is answered. While it is down, answers that billyfs
// would revalidate — attributes, names, directory listings, symbolic link
// targets, FSSTAT — come from what was last validated, if that was within
// ServeStale; everything else is tried against the upstream as usual (the
// client retries through reconnects for up to Options.Timeout) and fails
// with EIO after that bound. Background writeback does not try while the
// upstream is down; dirty data stays in the cache, pinned, and is written
// back when the probe sees the upstream again.

// errUpstreamDown fails background writeback while the upstream is down.
var errUpstreamDown = fmt.Errorf("billyfs: upstream unreachable: %w", syscall.EIO)

// foregroundKey marks the contexts of billyfs's own calls (s.ctx and its
// children); the writeback flusher's background passes carry none.
type foregroundKey struct{}

// isConnErr reports whether err says the upstream could not be reached, as
// opposed to an answer from it.
func isConnErr(err error) bool {
	if err == nil {
		return false
	}
	// Not net.Error: every syscall.Errno implements it, NFS3ERR_NOENT too.
	var oe *net.OpError
	switch {
	case errors.Is(err, errUpstreamDown),
		errors.Is(err, client.ErrConnLost),
		errors.Is(err, syscall.ETIMEDOUT),
		errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.EPIPE),
		errors.As(err, &oe):
		return true
	}
	return false
}

// serveStale reports whether the stale machinery is on.
func (s *state) serveStale() bool { return s.opts.ServeStale > 0 }

// upstreamDown reports whether the upstream is considered unreachable.
func (s *state) upstreamDown() bool { return s.down.Load() }

// noteErr looks at the error of a call to the upstream: a connection
// error starts an outage (logged once) and the reconnection probe.
func (s *state) noteErr(err error) {
	if !s.serveStale() || !isConnErr(err) || s.ctx.Err() != nil {
		return
	}
	s.outageMu.Lock()
	if s.down.Load() || s.closedForProbe {
		s.outageMu.Unlock()
		return
	}
	s.down.Store(true)
	s.outageSince = time.Now()
	s.outages.Add(1)
	s.staleBase = s.staleAnswers.Load()
	s.probes.Add(1)
	s.outageMu.Unlock()
	s.log.Warn("billyfs: upstream unreachable: serving cached data validated within the last "+s.opts.ServeStale.String()+"; other calls wait up to "+s.opts.Timeout.String()+" then fail with EIO; dirty data is kept until it is back",
		"upstream", s.opts.Addr, "err", err)
	go s.probe()
}

// probe sends NULL until the upstream answers, then ends the outage and
// starts writeback of everything held dirty meanwhile.
func (s *state) probe() {
	defer s.probes.Done()
	every := min(s.opts.OutageDetect/2, 500*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-t.C:
		}
		if !s.probeAll() {
			continue
		}
		s.outageMu.Lock()
		s.down.Store(false)
		lasted := time.Since(s.outageSince)
		stale := s.staleAnswers.Load() - s.staleBase
		s.outageMu.Unlock()
		s.log.Info("billyfs: upstream reachable again; writing back data held during the outage",
			"upstream", s.opts.Addr, "outage", lasted.Round(time.Millisecond), "stale_answers", stale)
		if s.flusher != nil {
			s.flusher.StartWriteback()
		}
		return
	}
}

// healed reports whether a writeback error can be dropped: it is only that
// the upstream was unreachable during an earlier (background) attempt,
// and everything is written back now (clean), so nothing it stood for is
// lost. Other errors are always reported.
func (s *state) healed(err error, clean bool) bool {
	if err == nil || !s.serveStale() || !clean {
		return false
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	for _, e := range errs {
		if e != nil && !isConnErr(e) {
			return false
		}
	}
	s.log.Debug("billyfs: writeback error of the outage healed: everything is written back", "err", err)
	return true
}

// probeAll sends NULL on every connection at once (the client spreads
// calls round-robin, so 2×Connections calls reach each connection) and
// reports whether all were answered within OutageDetect: an outage ends
// only when no connection is still redialing, or the next revalidation
// on a lagging one would start another.
func (s *state) probeAll() bool {
	ctx, cancel := context.WithTimeout(s.ctx, s.opts.OutageDetect)
	defer cancel()
	n := 2 * s.opts.Connections
	errs := make(chan error, n)
	for range n {
		go func() { errs <- s.clnt.Null(ctx) }()
	}
	ok := true
	for range n {
		if err := <-errs; err != nil {
			ok = false
		}
	}
	return ok
}

// stopProbe makes noteErr start no more probes and waits for a running
// one (FS.Close).
func (s *state) stopProbe() {
	s.outageMu.Lock()
	s.closedForProbe = true
	s.outageMu.Unlock()
	s.cancel()
	s.probes.Wait()
}

// revalidate runs fn, a call whose answer may be replaced by a stale one
// (stale reports whether it found one). Without ServeStale it is just fn.
// With it: while the upstream is down a stale answer is used at once;
// otherwise fn gets Options.OutageDetect to answer, and on a connection
// error a stale answer is used, or fn is tried again for the rest of the
// normal bound.
func (s *state) revalidate(ctx context.Context, fn func(context.Context) error, stale func() bool) error {
	if !s.serveStale() {
		return fn(ctx)
	}
	if s.upstreamDown() {
		if stale() {
			s.staleAnswers.Add(1)
			return nil
		}
		err := fn(ctx)
		s.noteErr(err)
		return err
	}
	short, cancel := context.WithTimeout(ctx, min(s.opts.OutageDetect, s.opts.Timeout))
	err := fn(short)
	cancel()
	if err == nil || !isConnErr(err) || ctx.Err() != nil {
		return err
	}
	s.noteErr(err)
	if stale() {
		s.staleAnswers.Add(1)
		return nil
	}
	err = fn(ctx)
	s.noteErr(err)
	return err
}

// staleOK reports whether an entry last validated at may stand in for the
// upstream's answer: during an outage, within ServeStale.
func (s *state) staleOK(at time.Time) bool {
	return s.serveStale() && s.upstreamDown() && time.Since(at) <= s.opts.ServeStale
}
