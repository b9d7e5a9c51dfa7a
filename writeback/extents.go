package writeback

import "sort"

// PageSize is the granularity of dirty tracking. A byte range handed to
// MarkDirty is widened to whole pages, as set_page_dirty works on whole
// pages (folios) in the kernel.
const PageSize = 4096

// Extent is a half-open byte range [Off, End). Extents produced by this
// package are page-aligned.
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

// extentSet is a sorted list of disjoint, non-adjacent extents: adjacent or
// overlapping ranges are always coalesced, so the number of entries is the
// number of separate dirty regions, not the number of dirty pages.
// It is not safe for concurrent use; Inode guards it with its mutex.
type extentSet struct {
	ext []Extent
}

// bytes returns the total length of the set.
func (s *extentSet) bytes() int64 {
	var n int64
	for _, e := range s.ext {
		n += e.Len()
	}
	return n
}

func (s *extentSet) empty() bool { return len(s.ext) == 0 }

// first returns the index of the first extent whose End >= off (so it
// touches or follows off).
func (s *extentSet) first(off int64) int {
	return sort.Search(len(s.ext), func(i int) bool { return s.ext[i].End >= off })
}

// add inserts r, coalescing with every extent it overlaps or touches.
// It returns the bytes of r that were not already in the set.
func (s *extentSet) add(r Extent) (added int64) {
	if r.End <= r.Off {
		return 0
	}
	i := s.first(r.Off)
	j := i
	merged := r
	added = r.Len()
	for j < len(s.ext) && s.ext[j].Off <= r.End {
		e := s.ext[j]
		added -= overlap(e, r)
		merged.Off = min(merged.Off, e.Off)
		merged.End = max(merged.End, e.End)
		j++
	}
	if i == j {
		s.ext = append(s.ext, Extent{})
		copy(s.ext[i+1:], s.ext[i:])
		s.ext[i] = merged
		return added
	}
	s.ext[i] = merged
	s.ext = append(s.ext[:i+1], s.ext[j:]...)
	return added
}

// remove deletes r from the set, splitting an extent that straddles it.
// It returns the bytes that were removed.
func (s *extentSet) remove(r Extent) (removed int64) {
	if r.End <= r.Off {
		return 0
	}
	i := sort.Search(len(s.ext), func(i int) bool { return s.ext[i].End > r.Off })
	var out []Extent
	j := i
	for j < len(s.ext) && s.ext[j].Off < r.End {
		e := s.ext[j]
		removed += overlap(e, r)
		if e.Off < r.Off {
			out = append(out, Extent{e.Off, r.Off})
		}
		if e.End > r.End {
			out = append(out, Extent{r.End, e.End})
		}
		j++
	}
	if i == j {
		return 0
	}
	tail := append(out, s.ext[j:]...)
	s.ext = append(s.ext[:i], tail...)
	return removed
}

// covered returns how many bytes of r are in the set.
func (s *extentSet) covered(r Extent) int64 {
	var n int64
	for i := sort.Search(len(s.ext), func(i int) bool { return s.ext[i].End > r.Off }); i < len(s.ext) && s.ext[i].Off < r.End; i++ {
		n += overlap(s.ext[i], r)
	}
	return n
}

// within returns copies of the parts of the set that lie inside r.
func (s *extentSet) within(r Extent) []Extent {
	var out []Extent
	if r.End <= r.Off {
		return nil
	}
	for i := sort.Search(len(s.ext), func(i int) bool { return s.ext[i].End > r.Off }); i < len(s.ext) && s.ext[i].Off < r.End; i++ {
		e := s.ext[i]
		out = append(out, Extent{max(e.Off, r.Off), min(e.End, r.End)})
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
