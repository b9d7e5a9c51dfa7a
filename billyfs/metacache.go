package billyfs

import (
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/nfscache/nfscache/client"
)

// initMetaCache sets up the metadata caches (attributes, directory
// entries, listings, link targets), each a least-recently-used list of at
// most Options.MaxCachedInodes entries — the kernel's inode and dentry
// LRUs (prune_icache_sb, prune_dcache_sb), minus the memory-pressure
// shrinker: a count bound is what a long-running proxy can plan for.
// Evicting a handle's attributes drops its listing and link target too
// (they describe the same inode). Eviction only costs round trips: the
// next use asks the upstream again (GETATTR, LOOKUP, READDIRPLUS), and an
// evicted entry can no longer stand in during an outage (ServeStale).
//
// Every method of the LRUs, and so every eviction callback, runs under
// state.mu; the callbacks touch only the caches.
func (s *state) initMetaCache() {
	n := s.opts.MaxCachedInodes
	s.listings = mustLRU(simplelru.NewLRU(n, func(_ string, l listing) { s.listingNames -= len(l.names) }))
	s.links = mustLRU(simplelru.NewLRU[string, linkEntry](n, nil))
	s.dentries = mustLRU(simplelru.NewLRU[string, dentry](n, nil))
	s.attrs = mustLRU(simplelru.NewLRU(n, func(fh string, _ attrEntry) {
		s.listings.Remove(fh)
		s.links.Remove(fh)
	}))
}

// putListing caches dir's listing; s.mu held. Listings are bounded by the
// names they hold (MaxCachedInodes in all): the oldest go first, and a
// listing larger than the whole bound is not kept.
func (s *state) putListing(dir client.Handle, l listing) {
	s.listings.Remove(string(dir))
	if len(l.names) > s.opts.MaxCachedInodes {
		return
	}
	s.listings.Add(string(dir), l)
	s.listingNames += len(l.names)
	for s.listingNames > s.opts.MaxCachedInodes {
		s.listings.RemoveOldest()
	}
}

// mustLRU is for constructors that fail only on arguments withDefaults rules
// out (a non-positive LRU size).
func mustLRU[T any](v T, err error) T {
	if err != nil {
		panic("billyfs: " + err.Error())
	}
	return v
}
