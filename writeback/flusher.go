package writeback

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by a Flusher after Close.
var ErrClosed = errors.New("writeback: flusher closed")

// Options configures a Flusher. The zero value means defaults. New copies
// it; later changes have no effect.
type Options struct {
	// DirtyExpire is dirty_expire_centisecs: an inode dirty for this long
	// is written back by the flusher. Default 5s.
	DirtyExpire time.Duration
	// Interval is dirty_writeback_centisecs: how often the flusher wakes
	// to look for expired inodes. Default DirtyExpire/5 (at least 10ms).
	Interval time.Duration
	// DirtyLimitBytes is the hard dirty limit of balance_dirty_pages: a
	// writer that would push the bytes held dirty (or under writeback)
	// past it waits until writeback brings them down. A single write
	// larger than the limit is admitted alone, when nothing else is dirty.
	// Default 64 MiB.
	DirtyLimitBytes int64
	// BackgroundBytes is dirty_background_bytes: above it the flusher
	// writes back inodes before they expire. Default DirtyLimitBytes/2.
	BackgroundBytes int64
	// WriteChunkBytes is how much the flusher writes of one inode per
	// WritePages call (MIN_WRITEBACK_PAGES); accounting and throttled
	// writers advance after each chunk. Default 4 MiB.
	WriteChunkBytes int64
	// MaxPinnedInodes bounds the inodes that are dirty or pinned
	// (PinningCacheWB) through MarkDirty; 0 means no bound. A writer that
	// would dirty one more inode past it forces writeback and waits until an
	// inode is clean and unpinned. The cache layer sets it to its
	// MaxOpenFiles budget so that pinned backing files never exceed it.
	MaxPinnedInodes int
	// Logger receives writeback errors; nil discards.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.DirtyExpire <= 0 {
		o.DirtyExpire = 5 * time.Second
	}
	if o.Interval <= 0 {
		o.Interval = max(o.DirtyExpire/5, 10*time.Millisecond)
	}
	if o.DirtyLimitBytes <= 0 {
		o.DirtyLimitBytes = 64 << 20
	}
	if o.BackgroundBytes <= 0 || o.BackgroundBytes > o.DirtyLimitBytes {
		o.BackgroundBytes = o.DirtyLimitBytes / 2
	}
	if o.WriteChunkBytes <= 0 {
		o.WriteChunkBytes = 4 << 20
	}
	if o.MaxPinnedInodes < 0 {
		o.MaxPinnedInodes = 0
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return o
}

// Stats is a snapshot of a Flusher's counters: a plain value, each field
// read atomically but not all at one instant.
type Stats struct {
	DirtyBytes    int64 // bytes dirty or under writeback
	DirtyInodes   int64 // inodes with DirtyPages
	PinnedInodes  int64 // inodes with PinningCacheWB
	HeldInodes    int64 // inodes counted against MaxPinnedInodes
	PagesWritten  int64 // pages cleaned by writeback
	WriteErrors   int64 // failed WritePages/WriteInode calls
	ThrottleWaits int64 // times a writer waited in MarkDirty
}

// Flusher is the per-filesystem writeback machinery (the bdi flusher
// thread plus balance_dirty_pages): a list of dirty inodes ordered by when
// they were dirtied, a background goroutine that writes back expired
// inodes (or any, when over the background threshold or a writer is
// throttled), and the throttle itself.
//
// Concurrency: all methods are safe for concurrent use. Lock order:
// Flusher.passMu → Inode.wbMu → Inode.mu → Flusher.mu; Inode.mu and
// Flusher.mu are never held while the Filesystem callbacks or a MarkDirty
// pin hook run.
type Flusher struct {
	fs   Filesystem
	opts Options
	log  *slog.Logger

	pinned        atomic.Int64
	dirtyInodes   atomic.Int64
	pagesWritten  atomic.Int64
	writeErrors   atomic.Int64
	throttleWaits atomic.Int64

	mu         sync.Mutex
	dirtyBytes int64 // |dirty ∪ writing| over all inodes
	reserved   int64 // admitted by the throttle, not yet added
	held       int64 // inodes with holdsSlot
	urgent     int   // throttled writers waiting: write back regardless of age
	forceReq   bool  // StartWriteback asked for one pass regardless of age
	queue      list.List
	entries    map[*Inode]*list.Element // value *queued
	changed    chan struct{}            // closed and replaced when room appears
	closed     bool
	errSeq     uint64 // every writeback error of any inode (s_wb_err)
	err        error
	syncAllSeq uint64 // errSeq last reported by SyncAll

	kick chan struct{}
	stop chan struct{}
	done chan struct{}

	passMu sync.Mutex // held for each flusher pass; outermost lock (tests pause the flusher with it)
}

type queued struct {
	ino  *Inode
	when time.Time
}

// New starts a Flusher writing back through fs.
func New(fs Filesystem, opts Options) *Flusher {
	opts = opts.withDefaults()
	f := &Flusher{
		fs:      fs,
		opts:    opts,
		log:     opts.Logger,
		entries: make(map[*Inode]*list.Element),
		changed: make(chan struct{}),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	go f.run()
	return f
}

// NewInode returns a clean inode managed by f: MarkDirty through f queues
// it for background writeback and counts it in f's limits.
func (f *Flusher) NewInode(owner any) *Inode {
	return &Inode{owner: owner, f: f}
}

// Stats returns the current counters.
func (f *Flusher) Stats() Stats {
	f.mu.Lock()
	s := Stats{DirtyBytes: f.dirtyBytes, HeldInodes: f.held}
	f.mu.Unlock()
	s.DirtyInodes = f.dirtyInodes.Load()
	s.PinnedInodes = f.pinned.Load()
	s.PagesWritten = f.pagesWritten.Load()
	s.WriteErrors = f.writeErrors.Load()
	s.ThrottleWaits = f.throttleWaits.Load()
	return s
}

// MarkDirty is the write path's set_page_dirty + balance_dirty_pages: it
// waits while the dirty limit or the pinned-inode bound is reached (forcing
// writeback meanwhile), then records [off, off+n) of ino as dirty, then
// calls pin (if not nil) with no lock held: the cache layer's
// fscache.SetPageDirty, which sets PinningCacheWB after the dirtying, as
// fscache_dirty_folio does. The inode cannot drop out of the pinned-inode
// bound between the dirtying and pin.
//
// ino must have been made by f.NewInode. It returns ctx's error or
// ErrClosed if it gave up waiting; nothing is dirtied then.
func (f *Flusher) MarkDirty(ctx context.Context, ino *Inode, off, n int64, pin func()) error {
	if ino.f != f {
		return errors.New("writeback: MarkDirty: inode belongs to another flusher")
	}
	if err := checkRange(off, n); err != nil {
		return err
	}
	r := pageRange(off, n)
	var need int64
	waited := false
	for {
		ino.mu.Lock()
		// Only bytes not already held count: rewriting dirty pages costs
		// no memory and never waits.
		need = r.Len() - ino.unionCoveredLocked(r)
		f.mu.Lock()
		if f.closed {
			if waited {
				f.urgent--
			}
			f.mu.Unlock()
			ino.mu.Unlock()
			return ErrClosed
		}
		inMem := f.dirtyBytes + f.reserved
		bytesOK := need == 0 || inMem+need <= f.opts.DirtyLimitBytes || inMem == 0
		slotOK := ino.holdsSlot || f.opts.MaxPinnedInodes == 0 || f.held < int64(f.opts.MaxPinnedInodes)
		if bytesOK && slotOK {
			if waited {
				f.urgent--
			}
			f.reserved += need
			if !ino.holdsSlot {
				ino.holdsSlot = true
				f.held++
			}
			f.mu.Unlock()
			break
		}
		if !waited {
			waited = true
			f.urgent++
			f.throttleWaits.Add(1)
		}
		ch := f.changed
		f.mu.Unlock()
		ino.mu.Unlock()
		f.wake()
		select {
		case <-ch:
		case <-ctx.Done():
			f.mu.Lock()
			f.urgent--
			f.mu.Unlock()
			return fmt.Errorf("writeback: MarkDirty: %w", ctx.Err())
		}
	}
	// ino.mu held.
	ino.markDirtyLocked(r)
	ino.dirtiers++
	f.mu.Lock()
	f.reserved -= need
	background := f.dirtyBytes > f.opts.BackgroundBytes
	f.mu.Unlock()
	ino.mu.Unlock()
	if background {
		f.wake() // start background writeback now, before the hard limit
	}

	if pin != nil {
		pin()
	}

	ino.mu.Lock()
	ino.dirtiers--
	ino.maybeReleaseSlotLocked()
	ino.mu.Unlock()
	return nil
}

// Sync writes back ino with SyncAll (waiting for a writeback already
// running) and returns the first writeback error recorded on ino since the
// previous Sync of ino, including errors of background writeback. Each
// error is returned by exactly one Sync; per-open-file reporting uses
// SampleErr/CheckErr with SyncFile.
func (f *Flusher) Sync(ctx context.Context, ino *Inode) error {
	return f.syncWith(ctx, ino, nil)
}

// SyncFile is Sync for a syncer with its own cursor (an open file, like
// file->f_wb_err): the error is reported to this cursor once, independently
// of other syncers.
func (f *Flusher) SyncFile(ctx context.Context, ino *Inode, cur *ErrCursor) error {
	return f.syncWith(ctx, ino, cur)
}

func (f *Flusher) syncWith(ctx context.Context, ino *Inode, cur *ErrCursor) error {
	werr := WriteSingleInode(ctx, f.fs, ino, &Control{SyncMode: SyncAll})
	if ctx.Err() != nil && werr != nil {
		return fmt.Errorf("writeback: sync: %w", ctx.Err())
	}
	ino.mu.Lock()
	defer ino.mu.Unlock()
	if cur == nil {
		cur = &ino.syncCursor
	}
	return ino.checkErrLocked(cur)
}

// SyncAll is sync_inodes_sb + syncfs: Sync for every inode dirty or pinned
// when it is called. It returns the errors joined; if none of those Syncs
// reported one but some inode's writeback failed since the previous
// SyncAll (an error already reported to that inode's Sync, or on an inode
// since written and dropped from the list), it returns the latest such
// error, like syncfs reporting sb->s_wb_err.
func (f *Flusher) SyncAll(ctx context.Context) error {
	f.mu.Lock()
	inodes := make([]*Inode, 0, len(f.entries))
	for e := f.queue.Front(); e != nil; e = e.Next() {
		inodes = append(inodes, e.Value.(*queued).ino)
	}
	f.mu.Unlock()
	var errs []error
	for _, ino := range inodes {
		if err := f.Sync(ctx, ino); err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	f.mu.Lock()
	if f.syncAllSeq != f.errSeq {
		f.syncAllSeq = f.errSeq
		if len(errs) == 0 {
			errs = append(errs, f.err)
		}
	}
	f.mu.Unlock()
	return errors.Join(errs...)
}

// Close stops the background flusher, makes later MarkDirty calls fail with
// ErrClosed (waking throttled writers), and writes back everything dirty.
// It returns the errors of that final writeback (and any not yet reported
// to SyncAll). It waits for a writeback in progress, so it returns only
// when the Filesystem callbacks do.
func (f *Flusher) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return ErrClosed
	}
	f.closed = true
	f.broadcastLocked()
	f.mu.Unlock()
	close(f.stop)
	<-f.done
	return f.SyncAll(context.Background())
}

// StartWriteback asks the flusher for one pass over every queued inode,
// oldest first, regardless of age, and returns at once
// (wakeup_flusher_threads). It is what a cache's pin-pressure hook calls
// when it needs pinned inodes written back and unpinned.
func (f *Flusher) StartWriteback() {
	f.mu.Lock()
	f.forceReq = true
	f.mu.Unlock()
	f.wake()
}

func (f *Flusher) wake() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func (f *Flusher) run() {
	defer close(f.done)
	t := time.NewTicker(f.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-f.stop:
			return
		case <-t.C:
		case <-f.kick:
		}
		f.passMu.Lock()
		f.pass()
		f.passMu.Unlock()
	}
}

// forceLocked says whether the flusher should write inodes before they
// expire: over the background threshold, over the pinned bound, or a writer
// is throttled.
func (f *Flusher) forceLocked() bool {
	if f.urgent > 0 || f.dirtyBytes > f.opts.BackgroundBytes {
		return true
	}
	m := int64(f.opts.MaxPinnedInodes)
	return m > 0 && f.pinned.Load() >= m
}

// pass is one sweep of wb_writeback: oldest first, each inode at most once.
func (f *Flusher) pass() {
	f.mu.Lock()
	n := f.queue.Len()
	requested := f.forceReq
	f.forceReq = false
	f.mu.Unlock()
	for range n {
		select {
		case <-f.stop:
			return
		default:
		}
		f.mu.Lock()
		e := f.queue.Front()
		if e == nil {
			f.mu.Unlock()
			return
		}
		q := e.Value.(*queued)
		now := time.Now()
		expired := now.Sub(q.when) >= f.opts.DirtyExpire
		if !requested && !expired && !f.forceLocked() {
			f.mu.Unlock()
			return // the queue is ordered: nothing later has expired
		}
		// Move it to the tail first, so that a skipped or still-dirty inode
		// waits another period (redirty_tail); it is dropped below if clean.
		q.when = now
		f.queue.MoveToBack(e)
		f.mu.Unlock()
		f.writeInodeChunks(q.ino, expired || requested)
	}
}

// writeInodeChunks writes ino in WriteChunkBytes pieces, at most the bytes
// it held when it was picked (so a writer that keeps dirtying it cannot
// hold the flusher on one inode, like tagged writepages), stopping early
// when the write was only for pressure and the pressure is gone.
func (f *Flusher) writeInodeChunks(ino *Inode, whole bool) {
	budget := ino.DirtyBytes()
	for {
		wbc := &Control{SyncMode: SyncNone, MaxBytes: f.opts.WriteChunkBytes}
		if err := WriteSingleInode(context.Background(), f.fs, ino, wbc); err != nil {
			f.log.Warn("writeback failed; range stays dirty", "err", err)
			return
		}
		budget -= wbc.PagesWritten * PageSize
		if wbc.PagesWritten == 0 || budget <= 0 || ino.State()&DirtyPages == 0 {
			return
		}
		select {
		case <-f.stop:
			return
		default:
		}
		f.mu.Lock()
		more := whole || f.forceLocked()
		f.mu.Unlock()
		if !more {
			return
		}
	}
}

// queueLocked puts ino on the dirty list if it is not there. Called with
// ino.mu held.
func (f *Flusher) queueLocked(ino *Inode, when time.Time) {
	f.mu.Lock()
	if _, ok := f.entries[ino]; !ok {
		f.entries[ino] = f.queue.PushBack(&queued{ino: ino, when: when})
	}
	f.mu.Unlock()
}

// queueNowLocked puts ino at the head of the dirty list as already
// expired and wakes the flusher. Called with ino.mu held.
func (f *Flusher) queueNowLocked(ino *Inode) {
	f.mu.Lock()
	if e, ok := f.entries[ino]; ok {
		e.Value.(*queued).when = time.Time{}
		f.queue.MoveToFront(e)
	} else {
		f.entries[ino] = f.queue.PushFront(&queued{ino: ino})
	}
	f.mu.Unlock()
	f.wake()
}

// requeueLocked moves ino to the tail of the dirty list with a new time.
// Called with ino.mu held.
func (f *Flusher) requeueLocked(ino *Inode, when time.Time) {
	f.mu.Lock()
	if e, ok := f.entries[ino]; ok {
		e.Value.(*queued).when = when
		f.queue.MoveToBack(e)
	} else {
		f.entries[ino] = f.queue.PushBack(&queued{ino: ino, when: when})
	}
	f.mu.Unlock()
}

// dequeueIfCleanLocked drops ino from the dirty list when writeback has
// nothing left to do for it. Called with ino.mu held.
func (f *Flusher) dequeueIfCleanLocked(ino *Inode) {
	if ino.state&(DirtyPages|PinningCacheWB|DirtyInode) != 0 {
		return
	}
	f.mu.Lock()
	if e, ok := f.entries[ino]; ok {
		f.queue.Remove(e)
		delete(f.entries, ino)
	}
	f.mu.Unlock()
}

func (f *Flusher) addDirtyBytes(delta int64) {
	if delta == 0 {
		return
	}
	f.mu.Lock()
	f.dirtyBytes += delta
	if delta < 0 {
		f.broadcastLocked()
	}
	f.mu.Unlock()
}

func (f *Flusher) broadcastLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}
