package fscache

import (
	"fmt"
	"syscall"
	"time"
)

// Culling mirrors cachefilesd: the cache keeps the cache filesystem's free
// space and free files (and the unused share of Options.MaxBytes) above
// the Cull threshold by deleting least-recently-used objects until they
// are above Run; below Stop it refuses to write new data. An object is
// culled only while no cookie uses it — an in-use, pinned (dirty) object
// is never culled.

func statfsFree(dir string) (freeBlocks, freeFiles float64, err error) {
	var s syscall.Statfs_t
	if err := syscall.Statfs(dir, &s); err != nil {
		return 0, 0, fmt.Errorf("fscache: statfs: %w", err)
	}
	freeBlocks, freeFiles = 100, 100
	if s.Blocks > 0 {
		freeBlocks = 100 * float64(s.Bavail) / float64(s.Blocks)
	}
	if s.Files > 0 {
		freeFiles = 100 * float64(s.Ffree) / float64(s.Files)
	}
	return freeBlocks, freeFiles, nil
}

type cullState int

const (
	cullNone cullState = iota // everything above Cull
	cullRun                   // below Cull somewhere: cull until above Run
	cullStop                  // below Stop somewhere: also refuse writes
)

// level reports how far below thresholds the cache is, and whether
// everything is at or above the Run thresholds.
func (c *Cache) level() (st cullState, aboveRun bool, err error) {
	fb, ff, err := c.opts.statfs(c.dir)
	if err != nil {
		return cullNone, true, err
	}
	fbud := 100.0
	if c.opts.MaxBytes > 0 {
		fbud = 100 * float64(c.opts.MaxBytes-c.journal.usedBytes()) / float64(c.opts.MaxBytes)
	}
	fobj := c.freeObjects()
	o := &c.opts
	// The object budget bounds memory, not disk: it culls but never stops
	// writes.
	switch {
	case fb < o.BStop || ff < o.FStop || fbud < o.BStop:
		st = cullStop
	case fb < o.BCull || ff < o.FCull || fbud < o.BCull || fobj < o.FCull:
		st = cullRun
	}
	return st, fb >= o.BRun && ff >= o.FRun && fbud >= o.BRun && fobj >= o.FRun, nil
}

// freeObjects is the unused share of MaxObjects in percent (100 without
// a limit).
func (c *Cache) freeObjects() float64 {
	if c.opts.MaxObjects <= 0 {
		return 100
	}
	return 100 * float64(c.opts.MaxObjects-c.journal.count()) / float64(c.opts.MaxObjects)
}

// overBudget reports whether MaxBytes or MaxObjects asks for culling
// (cheap: no statfs).
func (c *Cache) overBudget() bool {
	if c.freeObjects() < c.opts.FCull {
		return true
	}
	if c.opts.MaxBytes <= 0 {
		return false
	}
	return 100*float64(c.opts.MaxBytes-c.journal.usedBytes())/float64(c.opts.MaxBytes) < c.opts.BCull
}

func (c *Cache) kickCull() {
	select {
	case c.cullKick <- struct{}{}:
	default:
	}
}

func (c *Cache) culler() {
	defer c.wg.Done()
	t := time.NewTicker(c.opts.CullInterval)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		case <-c.cullKick:
		}
		if _, err := c.Cull(); err != nil {
			c.log.Warn("fscache: cull", "err", err)
		}
	}
}

// Cull checks the thresholds and, if free space, free files or the byte
// budget is below Cull, deletes unused objects least recently used first
// until all are above Run (or nothing more can be culled). It updates the
// Stop state that makes writes step aside. It returns the objects culled.
func (c *Cache) Cull() (int, error) {
	c.cullMu.Lock()
	defer c.cullMu.Unlock()
	st, aboveRun, err := c.level()
	if err != nil {
		return 0, err
	}
	c.stopped.Store(st == cullStop)
	if st == cullNone {
		return 0, nil
	}
	c.st.cullPasses.Add(1)
	culled := 0
	for _, k := range c.journal.lru() {
		if aboveRun {
			break
		}
		ok, err := c.cullObject(k)
		if err != nil {
			return culled, err
		}
		if ok {
			culled++
			c.st.culled.Add(1)
			st, aboveRun, err = c.level()
			if err != nil {
				return culled, err
			}
			c.stopped.Store(st == cullStop)
		}
	}
	c.log.Info("fscache: culled", "objects", culled, "stopped", c.stopped.Load())
	return culled, nil
}

// cullObject deletes one object's data if no cookie uses it.
func (c *Cache) cullObject(k objKey) (bool, error) {
	c.mu.Lock()
	ck := c.cookies[k]
	c.mu.Unlock()
	if ck == nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.closed {
			return false, ErrClosed
		}
		if c.cookies[k] != nil { // acquired meanwhile: leave it
			return false, nil
		}
		if rec, ok := c.journal.lookup(k); !ok || len(rec.dirty) > 0 {
			return false, nil // gone, or dirty: never culled
		}
		return true, c.removeObjectLocked(k, c.backingPath(k))
	}
	// A live cookie: exclude its I/O without waiting (culling never stalls
	// behind a reader), then check it is unused.
	if !ck.io.TryLock() {
		return false, nil
	}
	defer ck.io.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	ck.mu.Lock()
	// pinPending: a pin is opening the file (its use is not counted yet);
	// closing the fd under it would fail the pin.
	if ck.dead || ck.users > 0 || ck.pins > 0 || ck.pinPending > 0 || len(ck.extents) == 0 || len(ck.dirty) > 0 {
		ck.mu.Unlock()
		return false, nil
	}
	ck.gen++
	ck.extents = nil
	ck.mu.Unlock()
	c.closeFileLocked(ck)
	// The cookie lives on with its aux; only its data goes.
	if err := c.journal.commit(encObject(k, &objRecord{volKey: ck.vol.key, key: ck.key, aux: ck.Aux(), size: ck.Size()})); err != nil {
		return false, err
	}
	if err := truncatePath(ck.path, 0); err != nil {
		return false, err
	}
	return true, nil
}
