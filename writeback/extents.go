package writeback

import "github.com/google/btree"

// PageSize is the granularity of dirty tracking. A byte range handed to
// MarkDirty is widened to whole pages, as set_page_dirty works on whole
// pages (folios) in the kernel.
const PageSize = 4096

// Extent is a half-open byte range [Off, End). Extents produced by this
// package are page-aligned. It is a plain value, copied freely.
type Extent struct {
	Off, End int64
}

// Len is the number of bytes in e.
func (e Extent) Len() int64 { return e.End - e.Off }

// pageRange widens [off, off+n) to whole pages.
func pageRange(off, n int64) Extent {
	start := off &^ (PageSize - 1)
	end := (off + n + PageSize - 1) &^ (PageSize - 1)
	return Extent{start, end}
}

// extentSet is an ordered set of disjoint, non-adjacent extents in a
// B-tree keyed by offset: adjacent or overlapping ranges are always
// coalesced, so the number of entries is the number of separate dirty
// regions, not the number of dirty pages, and every operation is
// O(log n + extents touched) even for random writes over a huge file.
// The zero value is an empty set. It is not safe for concurrent use; Inode
// guards it with its mutex.
type extentSet struct {
	t     *btree.BTreeG[Extent]
	total int64
}

func lessByOff(a, b Extent) bool { return a.Off < b.Off }

// bytes returns the total length of the set.
func (s *extentSet) bytes() int64 { return s.total }

func (s *extentSet) empty() bool { return s.t == nil || s.t.Len() == 0 }

// len is the number of extents.
func (s *extentSet) len() int {
	if s.t == nil {
		return 0
	}
	return s.t.Len()
}

// all returns the extents in order.
func (s *extentSet) all() []Extent {
	if s.t == nil {
		return nil
	}
	out := make([]Extent, 0, s.t.Len())
	s.t.Ascend(func(e Extent) bool { out = append(out, e); return true })
	return out
}

// hits appends to buf, in ascending order, every extent that overlaps r
// (or also touches it, when touching is true). One descent from r.End
// finds them all: they are exactly the extents starting before r.End (at
// or before, if touching) whose end reaches r.Off.
func (s *extentSet) hits(r Extent, touching bool, buf []Extent) []Extent {
	if s.t == nil {
		return buf
	}
	start := len(buf)
	keep := func(e Extent) bool {
		if touching {
			return e.End >= r.Off
		}
		return e.End > r.Off
	}
	collect := func(e Extent) bool {
		if !keep(e) {
			return false
		}
		buf = append(buf, e)
		return true
	}
	if touching {
		s.t.DescendLessOrEqual(Extent{Off: r.End}, collect)
	} else {
		s.t.DescendLessOrEqual(Extent{Off: r.End - 1}, collect)
	}
	for a, b := start, len(buf)-1; a < b; a, b = a+1, b-1 {
		buf[a], buf[b] = buf[b], buf[a]
	}
	return buf
}

// add inserts r, coalescing with every extent it overlaps or touches.
// It returns the bytes of r that were not already in the set.
func (s *extentSet) add(r Extent) (added int64) {
	if r.End <= r.Off {
		return 0
	}
	if s.t == nil {
		s.t = btree.NewG(32, lessByOff)
	}
	var stack [4]Extent
	victims := s.hits(r, true, stack[:0])
	merged := r
	added = r.Len()
	for _, e := range victims {
		added -= overlap(e, r)
		merged.Off = min(merged.Off, e.Off)
		merged.End = max(merged.End, e.End)
	}
	if len(victims) == 1 && victims[0] == merged {
		return 0 // already dirty: the common re-dirty
	}
	for _, e := range victims {
		s.total -= e.Len()
		if e.Off != merged.Off { // the one with merged's key is replaced below
			s.t.Delete(e)
		}
	}
	s.t.ReplaceOrInsert(merged)
	s.total += merged.Len()
	return added
}

// remove deletes r from the set, splitting an extent that straddles it.
// It returns the bytes that were removed.
func (s *extentSet) remove(r Extent) (removed int64) {
	if r.End <= r.Off {
		return 0
	}
	var stack [4]Extent
	for _, e := range s.hits(r, false, stack[:0]) {
		removed += overlap(e, r)
		s.t.Delete(e)
		s.total -= e.Len()
		if e.Off < r.Off {
			s.t.ReplaceOrInsert(Extent{e.Off, r.Off})
			s.total += r.Off - e.Off
		}
		if e.End > r.End {
			s.t.ReplaceOrInsert(Extent{r.End, e.End})
			s.total += e.End - r.End
		}
	}
	return removed
}

// covered returns how many bytes of r are in the set.
func (s *extentSet) covered(r Extent) int64 {
	var n int64
	if r.End > r.Off {
		var stack [4]Extent
		for _, e := range s.hits(r, false, stack[:0]) {
			n += overlap(e, r)
		}
	}
	return n
}

// within returns copies of the parts of the set that lie inside r.
func (s *extentSet) within(r Extent) []Extent {
	if r.End <= r.Off {
		return nil
	}
	out := s.hits(r, false, nil)
	for k, e := range out {
		out[k] = Extent{max(e.Off, r.Off), min(e.End, r.End)}
	}
	return out
}

func overlap(a, b Extent) int64 {
	lo, hi := max(a.Off, b.Off), min(a.End, b.End)
	if hi <= lo {
		return 0
	}
	return hi - lo
}
