package billyfs

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-git/go-billy/v5"
	"github.com/hashicorp/golang-lru/v2/simplelru"
	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/fscache"
	"github.com/nfscache/nfscache/writeback"
)

// FS is a billy.Filesystem over one NFSv3 export, with file data cached in
// a local fscache directory (or not, without Options.CacheDir). Chroot
// returns another *FS sharing the same connection, cache and inodes.
//
// Concurrency: every method of FS and of its files is safe for concurrent
// use by many goroutines (go-nfs calls a served filesystem from many
// connections at once). Close must not run concurrently with other calls;
// after it every call fails with EBADF.
type FS struct {
	s    *state
	base string // slash path from the export root, "/" for the root FS
}

// state is what every chroot of one FS shares.
//
// Lock order: state.mu → inode.mu (taken inside state.mu only to read or set
// plain fields). No lock is held while calling client, fscache or writeback.
type state struct {
	opts    Options
	log     *slog.Logger
	clnt    *client.Client
	cache   *fscache.Cache     // nil without CacheDir
	vol     *fscache.Volume    // nil without CacheDir
	flusher *writeback.Flusher // nil without CacheDir
	ctx     context.Context    // cancelled by Close
	cancel  context.CancelFunc

	mu     sync.Mutex
	closed bool
	inodes map[string]*inode // handle → live inode (bounded by MaxInodes, see evictIdle)
	idle   *list.List        // of *inode with no open file, oldest first

	// The metadata caches, each a least-recently-used list bounded by
	// Options.MaxCachedInodes (metacache.go): evicting a handle's
	// attributes drops its listing and link target with them.
	dentries     *simplelru.LRU[string, dentry]    // dir handle + "/" + name → child (nil: negative)
	dentrySeq    uint64                            // bumped by every putChild and dropChild (putNegative)
	attrs        *simplelru.LRU[string, attrEntry] // handle → attributes
	listings     *simplelru.LRU[string, listing]   // dir handle → last READDIRPLUS
	listingNames int                               // names held by listings, ≤ MaxCachedInodes
	links        *simplelru.LRU[string, linkEntry] // symlink handle → target (ServeStale only)
	usage        *usageEntry                       // last FSSTAT (ServeStale only)

	recovered atomic.Int64 // dirty objects written back at New
	conflicts atomic.Int64 // dirty objects moved to <cache>/conflicts at New

	// Outage state (upstream.go). down is read without a lock; the rest
	// is guarded by outageMu, which is never held across a call.
	down           atomic.Bool
	outageMu       sync.Mutex
	outageSince    time.Time
	staleBase      int64
	closedForProbe bool
	probes         sync.WaitGroup
	outages        atomic.Int64
	staleAnswers   atomic.Int64

	hooks testHooks // set only by tests, before any call
}

// testHooks are points where a test can stop a revalidation to force an
// interleaving (export_test.go); nil in normal use.
type testHooks struct {
	revalidateStart func() // an open has its attributes and counts itself, nothing compared yet
	revalidateAct   func() // revalidation decided the file changed, before it truncates and invalidates
	closeUnuse      func() // File.Close sampled the size to record, before Cookie.Unuse
}

func runHook(h func()) {
	if h != nil {
		h()
	}
}

type dentry struct {
	fh client.Handle
	at time.Time
}

// attrEntry is an attribute cache entry. An entry our own change made
// outdated is kept with valid=false: only an outage may still use it
// (as the last attributes validated, at).
type attrEntry struct {
	attr  client.Attr
	at    time.Time
	valid bool
}

// listing is a directory's entries as last read (names and handles; the
// attributes are in state.attrs).
type listing struct {
	names   []string
	handles []client.Handle
	at      time.Time
}

type linkEntry struct {
	target string
	at     time.Time
}

type usageEntry struct {
	st client.FSStat
	at time.Time
}

// New mounts opts.Export at opts.Addr and, with opts.CacheDir, opens the
// local cache. ctx bounds the mount only.
func New(ctx context.Context, opts Options) (*FS, error) {
	opts = opts.withDefaults()
	if opts.Addr == "" {
		return nil, errors.New("billyfs: Options.Addr is required")
	}
	clnt, err := client.Dial(ctx, opts.Addr, client.Options{
		Export:      opts.Export,
		Portmap:     opts.Portmap,
		Connections: opts.Connections,
		UID:         opts.UID,
		GID:         opts.GID,
		Timeout:     opts.Timeout,
		Logger:      opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("billyfs: mounting %s:%s: %w", opts.Addr, opts.Export, err)
	}
	s := &state{
		opts:   opts,
		log:    opts.Logger,
		clnt:   clnt,
		inodes: make(map[string]*inode),
		idle:   list.New(),
	}
	s.initMetaCache()
	// s.ctx marks billyfs's own calls (foregroundKey): writeback passes
	// without it are the flusher's background ones.
	s.ctx, s.cancel = context.WithCancel(context.WithValue(context.Background(), foregroundKey{}, true))
	if opts.CacheDir != "" {
		maxPinned := max(1, opts.MaxOpenFiles*3/4)
		cache, err := fscache.Open(opts.CacheDir, fscache.Options{
			MaxOpenFiles: opts.MaxOpenFiles,
			MaxPinned:    maxPinned,
			MaxBytes:     opts.CacheMaxBytes,
			// The pin-pressure hook kicks the flusher, which exists by
			// the time a file can be dirtied.
			PinPressure: func() { s.flusher.StartWriteback() },
			Logger:      opts.Logger,
		})
		if err != nil {
			clnt.Close()
			s.cancel()
			return nil, fmt.Errorf("billyfs: opening cache: %w", err)
		}
		vol, err := cache.AcquireVolume([]byte("nfs3:" + opts.Addr + ":" + opts.Export))
		if err != nil {
			cache.Close()
			clnt.Close()
			s.cancel()
			return nil, fmt.Errorf("billyfs: cache volume: %w", err)
		}
		s.cache, s.vol = cache, vol
		s.recoverDirty(ctx)
		s.flusher = writeback.New(wbFilesystem{s}, writeback.Options{
			DirtyExpire:     opts.DirtyExpire,
			DirtyLimitBytes: opts.DirtyLimitBytes,
			BackgroundBytes: opts.DirtyBackgroundBytes,
			MaxPinnedInodes: maxPinned,
			Logger:          opts.Logger,
		})
	}
	return &FS{s: s, base: "/"}, nil
}

// Sync writes back every dirty byte (UNSTABLE WRITE + COMMIT) and reports
// the writeback errors not reported yet.
func (f *FS) Sync() error {
	return f.s.sync(f.s.ctx)
}

func (s *state) sync(ctx context.Context) error {
	var errs []error
	if s.flusher != nil {
		err := s.flusher.SyncAll(ctx)
		if err != nil && s.healed(err, s.allClean()) {
			err = nil
		}
		errs = append(errs, err)
	}
	for _, ino := range s.liveInodes() {
		errs = append(errs, ino.commitThrough(ctx))
	}
	if s.cache != nil {
		errs = append(errs, s.cache.SyncDirty())
	}
	return errors.Join(errs...)
}

// allClean reports whether no inode holds data not yet on the upstream.
func (s *state) allClean() bool {
	for _, ino := range s.liveInodes() {
		if ino.dirty() {
			return false
		}
	}
	return true
}

func (s *state) liveInodes() []*inode {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*inode, 0, len(s.inodes))
	for _, ino := range s.inodes {
		out = append(out, ino)
	}
	return out
}

// Close syncs, then releases every cookie and backing fd, closes the cache
// and unmounts. Files still open become unusable (their cache uses are
// dropped). Closing a chroot of an FS closes the whole FS.
func (f *FS) Close() error {
	s := f.s
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.Unlock()
	var errs []error
	if s.flusher != nil {
		// Close writes back everything and stops the flusher.
		err := s.flusher.Close()
		if err != nil && s.healed(err, s.allClean()) {
			err = nil
		}
		errs = append(errs, err)
	}
	for _, ino := range s.liveInodes() {
		errs = append(errs, ino.commitThrough(s.ctx))
	}
	if s.cache != nil {
		errs = append(errs, s.cache.SyncDirty())
	}
	s.mu.Lock()
	s.closed = true
	inodes := make([]*inode, 0, len(s.inodes))
	for _, ino := range s.inodes {
		inodes = append(inodes, ino)
	}
	clear(s.inodes)
	s.idle.Init()
	s.mu.Unlock()
	for _, ino := range inodes {
		errs = append(errs, ino.release(false, true))
	}
	if s.cache != nil {
		errs = append(errs, s.cache.Close())
	}
	s.stopProbe()
	errs = append(errs, s.clnt.Close())
	return errors.Join(errs...)
}

// Stats is a snapshot of an FS's counters.
type Stats struct {
	Cache     fscache.Stats   // zero without a cache
	RPC       client.Stats    // per-procedure NFS/MOUNT calls
	Writeback writeback.Stats // zero without a cache
	Inodes    int             // inodes in memory (files opened, bounded by MaxInodes beyond the open ones)
	// The metadata caches, each bounded by Options.MaxCachedInodes:
	// handles with cached attributes, directory entries (negative ones
	// included) and names held by cached directory listings.
	CachedAttrs  int
	Dentries     int
	ListingNames int
	// Recovered counts the dirty objects a crashed predecessor left in
	// the cache that New wrote back; Conflicts those it kept in
	// <CacheDir>/conflicts because the remote file had changed or gone.
	Recovered int64
	Conflicts int64
	// With Options.ServeStale: UpstreamDown says an outage is going on,
	// Outages counts them, StaleAnswers counts attributes, names,
	// listings, link targets and FSSTATs answered from the last
	// validated copy during outages.
	UpstreamDown bool
	Outages      int64
	StaleAnswers int64
}

// Stats returns the fscache stats, the client's RPC counts and the writeback
// counters.
func (f *FS) Stats() Stats {
	s := f.s
	st := Stats{RPC: s.clnt.Stats(), Recovered: s.recovered.Load(), Conflicts: s.conflicts.Load(),
		UpstreamDown: s.down.Load(), Outages: s.outages.Load(), StaleAnswers: s.staleAnswers.Load()}
	if s.cache != nil {
		st.Cache = s.cache.Stats()
		st.Writeback = s.flusher.Stats()
	}
	s.mu.Lock()
	st.Inodes = len(s.inodes)
	st.CachedAttrs, st.Dentries, st.ListingNames = s.attrs.Len(), s.dentries.Len(), s.listingNames
	s.mu.Unlock()
	return st
}

// Capabilities reports what works: read, write, read-write opens, seek and
// truncate. Not LockCapability: NFSv3 locking is the NLM side protocol,
// which billyfs does not speak, so Lock/Unlock are no-ops.
func (f *FS) Capabilities() billy.Capability {
	return billy.WriteCapability | billy.ReadCapability | billy.ReadAndWriteCapability |
		billy.SeekCapability | billy.TruncateCapability
}

// Join joins path elements like filepath.Join (as go-billy's osfs).
func (f *FS) Join(elem ...string) string { return filepath.Join(elem...) }

// Root is the path of this FS's root inside the export ("/" for the FS New
// returned).
func (f *FS) Root() string { return f.base }

// Chroot returns an FS rooted at path (relative to this FS's root). It
// shares connection, cache and inodes with f. Symbolic links inside it
// resolve within it: a link leading out fails with billy.ErrCrossedBoundary,
// as go-billy's chroot helper does.
func (f *FS) Chroot(path string) (billy.Filesystem, error) {
	rel, err := cleanRel(path)
	if err != nil {
		return nil, err
	}
	return &FS{s: f.s, base: joinSlash(f.base, rel)}, nil
}

// --- attribute and directory-entry cache ---

func dkey(dir client.Handle, name string) string { return string(dir) + "/" + name }

func (s *state) cachedChild(dir client.Handle, name string) (client.Handle, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.dentries.Get(dkey(dir, name))
	if !ok {
		return nil, false
	}
	if s.opts.AttrTimeout >= 0 && time.Since(d.at) <= s.opts.AttrTimeout || s.staleOK(d.at) {
		return d.fh, true
	}
	return nil, false
}

// keep reports whether validated answers are stored at all.
func (s *state) keep() bool { return s.opts.AttrTimeout >= 0 || s.serveStale() }

func (s *state) putChild(dir client.Handle, name string, fh client.Handle) {
	if !s.keep() {
		return
	}
	s.mu.Lock()
	s.dentrySeq++
	s.dentries.Add(dkey(dir, name), dentry{fh: fh, at: time.Now()})
	s.mu.Unlock()
}

func (s *state) dropChild(dir client.Handle, name string) {
	s.mu.Lock()
	s.dentrySeq++
	s.dentries.Remove(dkey(dir, name))
	s.mu.Unlock()
}

// nameSeq samples the directory-entry sequence before a LOOKUP whose
// ENOENT may be cached (putNegative).
func (s *state) nameSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dentrySeq
}

// putNegative caches "dir/name does not exist" from a LOOKUP sent after
// seq was sampled, unless an entry changed meanwhile: a concurrent create
// here (MkdirAll of a shared parent) may have made the name exist after
// the server answered, and a late negative entry would hide it for
// AttrTimeout.
func (s *state) putNegative(dir client.Handle, name string, seq uint64) {
	if !s.keep() {
		return
	}
	s.mu.Lock()
	if s.dentrySeq == seq {
		s.dentrySeq++
		s.dentries.Add(dkey(dir, name), dentry{at: time.Now()})
	}
	s.mu.Unlock()
}

// purgeNames forgets every cached directory entry: after a stale handle.
func (s *state) purgeNames() {
	s.mu.Lock()
	s.dentries.Purge()
	s.attrs.Purge() // and with them listings and link targets
	s.listings.Purge()
	s.mu.Unlock()
}

func (s *state) cachedAttr(fh client.Handle) (client.Attr, bool) {
	if s.opts.AttrTimeout < 0 {
		return client.Attr{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.attrs.Get(string(fh))
	if !ok || !a.valid || time.Since(a.at) > s.opts.AttrTimeout {
		return client.Attr{}, false
	}
	return a.attr, true
}

// staleAttr returns the last attributes validated for fh if an outage
// lets them stand in (staleOK).
func (s *state) staleAttr(fh client.Handle) (client.Attr, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.attrs.Peek(string(fh))
	if !ok || !s.staleOK(a.at) {
		return client.Attr{}, false
	}
	return a.attr, true
}

func (s *state) putAttr(fh client.Handle, a *client.Attr) {
	if a == nil {
		s.dropAttr(fh)
		return
	}
	if !s.keep() {
		return
	}
	s.mu.Lock()
	s.attrs.Add(string(fh), attrEntry{attr: *a, at: time.Now(), valid: true})
	s.mu.Unlock()
}

// dropAttr marks fh's attributes outdated (our own change): they are not
// used again except as the last validated ones during an outage.
func (s *state) dropAttr(fh client.Handle) {
	s.mu.Lock()
	if a, ok := s.attrs.Peek(string(fh)); ok {
		a.valid = false
		s.attrs.Add(string(fh), a)
	}
	s.mu.Unlock()
}

// forgetAttr deletes fh's attributes: the file is gone.
func (s *state) forgetAttr(fh client.Handle) {
	s.mu.Lock()
	s.attrs.Remove(string(fh)) // and its listing and link target
	s.links.Remove(string(fh))
	s.listings.Remove(string(fh))
	s.mu.Unlock()
}

// dirChanged is called after we changed dir's entries: its attributes are
// outdated and its listing wrong.
func (s *state) dirChanged(dir client.Handle) {
	s.dropAttr(dir)
	s.mu.Lock()
	s.listings.Remove(string(dir))
	s.mu.Unlock()
}

// getattr returns fh's attributes from the cache if fresh, else by GETATTR
// (or, during an outage, the last validated ones: see revalidate).
func (s *state) getattr(ctx context.Context, fh client.Handle, fresh bool) (client.Attr, error) {
	if !fresh {
		if a, ok := s.cachedAttr(fh); ok {
			return a, nil
		}
	}
	var got client.Attr
	err := s.revalidate(ctx, func(ctx context.Context) error {
		a, err := s.clnt.Getattr(ctx, fh)
		if err != nil {
			return err
		}
		s.putAttr(fh, a)
		got = *a
		return nil
	}, func() bool {
		a, ok := s.staleAttr(fh)
		got = a
		return ok
	})
	if err != nil {
		return client.Attr{}, err
	}
	return got, nil
}
