package fscache

import (
	"fmt"
	"strings"
	"sync/atomic"
)

// counters are the cache's event counters, updated atomically.
type counters struct {
	volumes, cookies, acquires, acquireDiscards  atomic.Int64
	relinquishes, retires, uses, unuses, updates atomic.Int64
	opens, reopens, writebackReopens             atomic.Int64
	peakOpenFiles                                atomic.Int64
	lruEvictions, inUseEvictions, slotWaits      atomic.Int64
	fdExhausted                                  atomic.Int64
	pins, pinWaits                               atomic.Int64
	readHits, readMisses, bytesRead              atomic.Int64
	writes, bytesWritten, staleWrites            atomic.Int64
	noSpaceWrites, invalidations, resizes        atomic.Int64
	culled, cullPasses, discards                 atomic.Int64
	dirtySyncs, conflicts                        atomic.Int64
}

// Stats is a snapshot of the cache's state and counters, the counterpart
// of /proc/fs/fscache/stats. It is a plain value, safe to copy and share.
type Stats struct {
	Volumes          int64 // volumes acquired
	Cookies          int64 // live (acquired, not relinquished) cookies
	Objects          int64 // backing objects in the index
	UsedBytes        int64 // present bytes over all objects
	Acquires         int64 // AcquireCookie calls
	AcquireDiscards  int64 // acquires that discarded data for mismatched aux
	Relinquishes     int64
	Retires          int64 // relinquishes that deleted the data
	Uses, Unuses     int64
	Updates          int64 // aux/size updates at Unuse
	OpenFiles        int64 // backing fds open now
	PeakOpenFiles    int64 // most backing fds ever open at once
	LRU              int64 // unpinned cookies holding an fd (evictable)
	Pinned           int64 // cookies pinned for writeback now
	Pins             int64 // pin uses taken
	PinWaits         int64 // SetPageDirty waits at MaxPinned
	Opens            int64 // backing file opens
	Reopens          int64 // opens of a file the cookie had open before
	WritebackReopens int64 // opens of a pinned cookie's file after pinning: must stay 0
	LRUEvictions     int64 // fds of unused cookies closed by the LRU
	InUseEvictions   int64 // fds of in-use, unpinned cookies closed for a slot
	SlotWaits        int64 // opens that waited for an fd slot
	FDExhausted      int64 // backing opens that failed with EMFILE/ENFILE (an evictable fd is then closed and the open retried)
	ReadHits         int64
	ReadMisses       int64
	BytesRead        int64
	Writes           int64
	BytesWritten     int64
	StaleWrites      int64 // generation-checked writes refused after Invalidate
	NoSpace          int64 // writes refused for ENOSPC/bstop: cache stepped aside
	Invalidations    int64
	Resizes          int64
	Culled           int64 // objects culled
	CullPasses       int64
	Discards         int64 // DiscardRange calls that dropped data
	DirtySyncs       int64 // SyncDirty passes that had something to sync
	Conflicts        int64 // dirty objects moved to conflicts/
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	open, lru, pinned := c.openFiles, c.lru.Len(), c.pinned
	c.mu.Unlock()
	st := &c.st
	return Stats{
		Volumes: st.volumes.Load(), Cookies: st.cookies.Load(),
		Objects: int64(c.journal.count()), UsedBytes: c.journal.usedBytes(),
		Acquires: st.acquires.Load(), AcquireDiscards: st.acquireDiscards.Load(),
		Relinquishes: st.relinquishes.Load(), Retires: st.retires.Load(),
		Uses: st.uses.Load(), Unuses: st.unuses.Load(), Updates: st.updates.Load(),
		OpenFiles: int64(open), PeakOpenFiles: st.peakOpenFiles.Load(), LRU: int64(lru),
		Pinned: int64(pinned), Pins: st.pins.Load(), PinWaits: st.pinWaits.Load(),
		Opens: st.opens.Load(), Reopens: st.reopens.Load(), WritebackReopens: st.writebackReopens.Load(),
		LRUEvictions: st.lruEvictions.Load(), InUseEvictions: st.inUseEvictions.Load(),
		SlotWaits: st.slotWaits.Load(), FDExhausted: st.fdExhausted.Load(),
		ReadHits: st.readHits.Load(), ReadMisses: st.readMisses.Load(), BytesRead: st.bytesRead.Load(),
		Writes: st.writes.Load(), BytesWritten: st.bytesWritten.Load(), StaleWrites: st.staleWrites.Load(),
		NoSpace: st.noSpaceWrites.Load(), Invalidations: st.invalidations.Load(), Resizes: st.resizes.Load(),
		Culled: st.culled.Load(), CullPasses: st.cullPasses.Load(), Discards: st.discards.Load(),
		DirtySyncs: st.dirtySyncs.Load(), Conflicts: st.conflicts.Load(),
	}
}

// String renders the stats in the layout of /proc/fs/fscache/stats (the
// lines the kernel has, with this cache's counters in them), followed by
// the descriptor lines the kernel does not have.
func (s Stats) String() string {
	var b strings.Builder
	b.WriteString("FS-Cache statistics\n")
	fmt.Fprintf(&b, "Cookies: n=%d v=%d vcol=%d voom=%d\n", s.Cookies, s.Volumes, 0, 0)
	fmt.Fprintf(&b, "Acquire: n=%d ok=%d oom=%d\n", s.Acquires, s.Acquires-s.AcquireDiscards, 0)
	fmt.Fprintf(&b, "LRU    : n=%d exp=%d rmv=%d drp=%d at=%d\n", s.LRU, s.LRUEvictions, s.InUseEvictions, s.Culled, 0)
	fmt.Fprintf(&b, "Invals : n=%d\n", s.Invalidations)
	fmt.Fprintf(&b, "Updates: n=%d rsz=%d rsn=%d\n", s.Updates, s.Resizes, 0)
	fmt.Fprintf(&b, "Relinqs: n=%d rtr=%d drop=%d\n", s.Relinquishes, s.Retires, s.AcquireDiscards)
	fmt.Fprintf(&b, "NoSpace: nwr=%d ncr=%d cull=%d\n", s.NoSpace, 0, s.Culled)
	fmt.Fprintf(&b, "IO     : rd=%d wr=%d mis=%d\n", s.ReadHits, s.Writes, s.ReadMisses)
	fmt.Fprintf(&b, "Files  : open=%d peak=%d pinned=%d pins=%d pinwait=%d\n", s.OpenFiles, s.PeakOpenFiles, s.Pinned, s.Pins, s.PinWaits)
	fmt.Fprintf(&b, "Opens  : n=%d reopen=%d wbreopen=%d slotwait=%d emfile=%d\n", s.Opens, s.Reopens, s.WritebackReopens, s.SlotWaits, s.FDExhausted)
	fmt.Fprintf(&b, "Bytes  : used=%d rd=%d wr=%d objs=%d\n", s.UsedBytes, s.BytesRead, s.BytesWritten, s.Objects)
	return b.String()
}
