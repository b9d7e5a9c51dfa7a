package writeback

import (
	"fmt"
	"sync"
	"time"
)

// State is the set of inode state bits, the analogue of inode->i_state.
type State uint32

const (
	// DirtyPages is I_DIRTY_PAGES: the inode has dirty pages (or pages
	// under writeback whose write may still fail and re-dirty them).
	DirtyPages State = 1 << iota
	// PinningCacheWB is I_PINNING_FSCACHE_WB: the filesystem holds a use
	// on the cache object of this inode so that writeback can write the
	// dirty data to the cache without reopening it. This package only
	// stores and clears the bit; the cache layer sets it (after dirtying,
	// see SetPinningCacheWB) and drops its use when Control.UnpinnedCacheWB
	// is reported to WriteInode.
	PinningCacheWB
	// DirtyInode is I_DIRTY_SYNC: inode metadata needs ->write_inode even
	// if no page is dirty (for NFS: an outstanding COMMIT, a size change).
	DirtyInode
	// Writeback is I_SYNC: a WriteSingleInode call is running on the inode.
	Writeback
)

// Inode is the writeback state of one file: its dirty byte ranges, kept as
// coalesced page-aligned extents, its state bits, when it was first
// dirtied, its size, and its writeback error sequence.
//
// Concurrency: every method is safe for concurrent use. At most one
// WriteSingleInode runs per inode at a time (SyncNone writeback skips an
// inode that is already being written, SyncAll waits), like I_SYNC.
type Inode struct {
	owner any      // immutable: the filesystem's object for this inode
	f     *Flusher // immutable: nil for an inode made by NewInode

	wbMu sync.Mutex // held for a whole WriteSingleInode (I_SYNC)

	mu          sync.Mutex // i_lock: guards everything below
	state       State
	dirty       extentSet // dirty, not under writeback
	writing     extentSet // snapshot being written by WriteSingleInode
	dirtiedWhen time.Time
	size        int64
	errSeq      uint64 // bumped by every recorded writeback error
	errSeen     bool   // the latest error was reported to someone
	err         error  // latest recorded writeback error
	syncCursor  ErrCursor
	dirtiers    int  // Flusher.MarkDirty calls between dirtying and pin hook
	unpinning   bool // pin cleared, WriteInode not yet returned (use not yet dropped)

	holdsSlot bool // guarded by f.mu: counted in the MaxPinnedInodes bound
}

// NewInode returns a clean inode not attached to any Flusher: it tracks
// dirty ranges and state bits, and WriteSingleInode can write it, but no
// background writeback or throttling applies. Use Flusher.NewInode for
// inodes the flusher should manage.
func NewInode(owner any) *Inode {
	return &Inode{owner: owner}
}

// Owner returns the value given when the inode was created: the
// filesystem's own object for the file (billyfs: its remote file).
func (i *Inode) Owner() any { return i.owner }

// State returns the current state bits.
func (i *Inode) State() State {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.state
}

// Size returns i_size, the file size the cache should record at unuse.
func (i *Inode) Size() int64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.size
}

// ExtendSize raises i_size to end if it is smaller (a write past EOF).
func (i *Inode) ExtendSize(end int64) {
	i.mu.Lock()
	if end > i.size {
		i.size = end
	}
	i.mu.Unlock()
}

// DirtiedWhen returns when the inode last went from clean to dirty (or
// when a failed writeback put it back to wait another expiry period); zero
// if clean.
func (i *Inode) DirtiedWhen() time.Time {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.dirtiedWhen
}

// SetPinningCacheWB sets PinningCacheWB and reports whether this call set
// it: the caller that gets true takes the cache use the bit stands for.
// This is the test-and-set fscache_set_page_dirty does under i_lock.
//
// Call it after the pages are dirtied (MarkDirty), never before: writeback
// clears the bit when it finds no dirty page, so pinning first could leave
// dirty pages without a pin. Take the cache use before calling it and give
// it back when it returns false:
//
//	if ino.State()&writeback.PinningCacheWB == 0 { // fast path
//		cookie.Use(true)
//		if !ino.SetPinningCacheWB() {
//			cookie.Unuse(...)
//		}
//	}
//
// Taking the use after a true return leaves a window in which a writeback
// can clear the bit and have WriteInode drop a use not yet taken (the
// kernel's fscache_set_page_dirty has that window too). If writeback cleaned the inode between the
// dirtying and this call, the pin would linger on a clean inode; the inode
// is then queued so that the flusher's next pass (or the next Sync) finds
// it clean and unpins it (at once, without waiting for DirtyExpire).
func (i *Inode) SetPinningCacheWB() (newlySet bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.state&PinningCacheWB != 0 {
		return false
	}
	i.state |= PinningCacheWB
	if i.f != nil {
		i.f.pinned.Add(1)
		if i.state&DirtyPages == 0 {
			// A lingering pin holds a cache file open for nothing: have
			// the flusher's next wakeup drop it, not the next expiry.
			i.f.queueNowLocked(i)
		}
	}
	return true
}

// ClearPinningCacheWB clears PinningCacheWB and reports whether it was set:
// the caller that gets true drops the cache use. This is the test-and-clear
// of fscache_clear_inode_writeback at inode eviction.
func (i *Inode) ClearPinningCacheWB() (wasSet bool) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.state&PinningCacheWB == 0 {
		return false
	}
	i.state &^= PinningCacheWB
	if i.f != nil {
		i.f.pinned.Add(-1)
		i.maybeReleaseSlotLocked()
	}
	return true
}

// MarkInodeDirty sets DirtyInode (__mark_inode_dirty(I_DIRTY_SYNC)): the
// next writeback calls WriteInode even if no page is dirty.
func (i *Inode) MarkInodeDirty() {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.state |= DirtyInode
	if i.f != nil {
		i.f.queueLocked(i, time.Now())
	}
}

// MarkDirty records [off, off+n) as dirty, widened to whole pages, and
// sets DirtyPages. It never blocks and never throttles: it is for
// re-dirtying from inside WriteInode (e.g. an NFS COMMIT whose verifier
// changed) and for inodes without a Flusher. Writers should use
// Flusher.MarkDirty, which applies balance_dirty_pages throttling and the
// pinned-inode bound. Re-dirtied data needs its cache pin like any other:
// pin after MarkDirty (see SetPinningCacheWB) if the cache holds the data.
// An empty or invalid range is an error and changes nothing.
func (i *Inode) MarkDirty(off, n int64) error {
	if err := checkRange(off, n); err != nil {
		return err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.markDirtyLocked(pageRange(off, n))
	return nil
}

// maxOffset keeps page rounding of off+n from overflowing int64.
const maxOffset = 1<<63 - 1 - PageSize

func checkRange(off, n int64) error {
	if off < 0 || n <= 0 || off > maxOffset-n {
		return fmt.Errorf("writeback: MarkDirty: invalid range off=%d n=%d", off, n)
	}
	return nil
}

func (i *Inode) markDirtyLocked(r Extent) {
	var grow int64
	if i.writing.empty() {
		grow = i.dirty.add(r)
	} else {
		grow = r.Len() - i.unionCoveredLocked(r)
		i.dirty.add(r)
	}
	if i.state&DirtyPages == 0 {
		i.state |= DirtyPages
		i.dirtiedWhen = time.Now()
		if i.f != nil {
			i.f.dirtyInodes.Add(1)
		}
	}
	if i.f != nil {
		i.f.addDirtyBytes(grow)
		i.f.queueLocked(i, i.dirtiedWhen)
	}
}

// unionCoveredLocked is |(dirty ∪ writing) ∩ r|: the bytes of r already
// held in memory for writeback.
func (i *Inode) unionCoveredLocked(r Extent) int64 {
	both := int64(0)
	for _, e := range i.dirty.within(r) {
		both += i.writing.covered(e)
	}
	return i.dirty.covered(r) + i.writing.covered(r) - both
}

// Truncate sets i_size to size and discards dirty pages wholly past it
// (truncate_inode_pages). A page straddling size stays dirty.
func (i *Inode) Truncate(size int64) {
	if size < 0 {
		size = 0
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	i.size = size
	r := Extent{pageRange(size, 0).End, 1<<63 - 1} // pages wholly past size
	lost := i.unionCoveredLocked(r)
	i.dirty.remove(r)
	i.writing.remove(r)
	if i.f != nil {
		i.f.addDirtyBytes(-lost)
	}
	if i.dirty.empty() && i.writing.empty() && i.state&(Writeback|DirtyPages) == DirtyPages {
		// Only the state bit: a pin stays for writeback to drop through
		// WriteInode, which is the only path that tells the cache layer.
		i.state &^= DirtyPages
		i.dirtiedWhen = time.Time{}
		if i.f != nil {
			i.f.dirtyInodes.Add(-1)
		}
	}
}

// DirtyExtents returns a copy of the dirty extents, including those under
// writeback (whose write may still fail).
func (i *Inode) DirtyExtents() []Extent {
	i.mu.Lock()
	defer i.mu.Unlock()
	var s extentSet
	for _, e := range i.dirty.all() {
		s.add(e)
	}
	for _, e := range i.writing.all() {
		s.add(e)
	}
	return s.all()
}

// DirtyBytes returns the bytes held dirty or under writeback.
func (i *Inode) DirtyBytes() int64 {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.dirty.bytes() + i.writing.bytes() - i.bothLocked()
}

func (i *Inode) bothLocked() int64 {
	n := int64(0)
	for _, e := range i.writing.all() {
		n += i.dirty.covered(e)
	}
	return n
}

// maybeReleaseSlotLocked gives back the inode's place in the flusher's
// dirty-or-pinned bound once nothing can pin it any more.
func (i *Inode) maybeReleaseSlotLocked() {
	if i.f == nil {
		return
	}
	if i.state&(DirtyPages|PinningCacheWB) != 0 || i.dirtiers > 0 || i.unpinning {
		return
	}
	f := i.f
	f.mu.Lock()
	if i.holdsSlot {
		i.holdsSlot = false
		f.held--
		f.broadcastLocked()
	}
	f.mu.Unlock()
}
