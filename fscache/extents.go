package fscache

// Range is a byte range [Off, Off+Len) of a cache object; a plain value.
type Range struct {
	Off, Len int64
}

// End is the first byte after the range.
func (r Range) End() int64 { return r.Off + r.Len }

// extentSet is a sorted list of disjoint, non-adjacent half-open ranges
// [off, end): the byte ranges of a backing file whose data is present.
// Adjacent ranges are merged on insertion so the list stays short for
// sequentially filled files. Not safe for concurrent use; the owner's lock
// guards it.
type extentSet []extent

type extent struct{ off, end int64 }

// search returns the index of the first extent whose end is >= off.
func (s extentSet) search(off int64) int {
	lo, hi := 0, len(s)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if s[m].end < off {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// add marks [off, end) present, merging with overlapping or adjacent extents.
func (s extentSet) add(off, end int64) extentSet {
	if end <= off {
		return s
	}
	i := s.search(off) // first extent that could touch [off,end)
	j := i
	for j < len(s) && s[j].off <= end {
		if s[j].off < off {
			off = s[j].off
		}
		if s[j].end > end {
			end = s[j].end
		}
		j++
	}
	if i == j {
		s = append(s, extent{})
		copy(s[i+1:], s[i:])
		s[i] = extent{off, end}
		return s
	}
	s[i] = extent{off, end}
	return append(s[:i+1], s[j:]...)
}

// truncate drops everything at or beyond size.
func (s extentSet) truncate(size int64) extentSet {
	for len(s) > 0 && s[len(s)-1].off >= size {
		s = s[:len(s)-1]
	}
	if len(s) > 0 && s[len(s)-1].end > size {
		s[len(s)-1].end = size
	}
	return s
}

// presentPrefix returns the first offset in [off, end) that is not present,
// or end when all of it is.
func (s extentSet) presentPrefix(off, end int64) int64 {
	i := s.search(off + 1)
	if i < len(s) && s[i].off <= off {
		if s[i].end >= end {
			return end
		}
		return s[i].end
	}
	return off
}

// ranges returns the present sub-ranges of [off, end).
func (s extentSet) ranges(off, end int64) []Range {
	var out []Range
	for i := s.search(off + 1); i < len(s) && s[i].off < end; i++ {
		a, b := max(s[i].off, off), min(s[i].end, end)
		if a < b {
			out = append(out, Range{Off: a, Len: b - a})
		}
	}
	return out
}

// bytes is the number of present bytes.
func (s extentSet) bytes() int64 {
	var n int64
	for _, e := range s {
		n += e.end - e.off
	}
	return n
}

func (s extentSet) clone() extentSet {
	if len(s) == 0 {
		return nil
	}
	return append(extentSet(nil), s...)
}

// remove marks [off, end) absent, splitting an extent that spans it.
func (s extentSet) remove(off, end int64) extentSet {
	if end <= off {
		return s
	}
	var out extentSet
	for _, e := range s {
		if e.end <= off || e.off >= end {
			out = append(out, e)
			continue
		}
		if e.off < off {
			out = append(out, extent{e.off, off})
		}
		if e.end > end {
			out = append(out, extent{end, e.end})
		}
	}
	return out
}
