package billyfs

import (
	"log/slog"
	"time"
)

// Options configures New. The zero value of every field means its default.
type Options struct {
	// Addr is host:port of a server that serves MOUNT and NFS on one port
	// (go-nfs style, our server). With Portmap, Addr is a host whose
	// portmapper gives the ports (nfs-ganesha, knfsd).
	Addr    string
	Portmap bool
	// Export is the MOUNT dirpath; default "/".
	Export string
	// CacheDir is the local cache directory (fscache). Empty means no
	// local cache: straight NFS, writes sent through to the server as
	// UNSTABLE WRITEs and committed at Close/Sync.
	CacheDir string
	// MaxOpenFiles bounds the cache's open backing files (fscache
	// MaxOpenFiles); default 64. Writeback pins at most 3/4 of them.
	MaxOpenFiles int
	// CacheMaxBytes bounds the bytes of cached data; 0 = no limit other
	// than the free space of the cache filesystem.
	CacheMaxBytes int64
	// AttrTimeout is how long attributes and directory entries are cached
	// (Linux's acregmin/acdirmin). Default 3 s; negative disables caching.
	// Open always revalidates (close-to-open) whatever the timeout.
	AttrTimeout time.Duration
	// Connections is the number of TCP connections (nconnect); default 4.
	Connections int
	// UID and GID are the AUTH_SYS credentials; default 0/0.
	UID, GID uint32
	// Timeout bounds each RPC; default 60 s.
	Timeout time.Duration
	// ReadAhead is the largest read-ahead window for sequential reads;
	// default 8 MiB.
	ReadAhead int
	// DirtyExpire is how long written data may stay dirty in the cache
	// before background writeback (dirty_expire_centisecs); default 5 s.
	DirtyExpire time.Duration
	// DirtyLimitBytes bounds dirty data held in the cache before writers
	// are throttled (balance_dirty_pages); default 64 MiB.
	DirtyLimitBytes int64
	// DirtyBackgroundBytes is the dirty data above which background
	// writeback starts without waiting for DirtyExpire
	// (dirty_background_bytes); default 4 MiB, at most DirtyLimitBytes/2.
	// Starting early overlaps the upstream WRITEs with a client's upload,
	// so less is left to write back when it COMMITs
	// (BenchmarkProxyWrite).
	DirtyBackgroundBytes int64
	// MaxInodes is how many inodes of files (with their cache cookies and
	// possibly their backing fds in the fscache LRU) stay in memory beyond
	// those open, dirty or pinned for writeback; default 1024, at most
	// MaxCachedInodes. The least recently used go first; an evicted
	// file's cached data stays in the cache and is used again after the
	// next open's revalidation.
	MaxInodes int
	// MaxCachedInodes bounds each metadata cache: attributes cached per
	// handle, directory entries (negative ones included), names held by
	// cached directory listings, symbolic link targets. The least
	// recently used entries go first, so the memory of a long-running FS
	// stays bounded whatever it walks; default 100 000 (about 570 B per
	// stat'ed file measured, so some 60 MB: BenchmarkMetadataMemory).
	MaxCachedInodes int
	// ServeStale keeps the FS serving through an upstream outage: when the
	// upstream stops answering (no reply, connection lost or refused),
	// attributes, names, directory listings, symbolic link targets and
	// FSSTAT last validated within ServeStale are used instead of asking
	// it, and file data cached for them is read from the cache. Other
	// calls (reads of uncached data, creates, removes, COMMIT...) still
	// wait for the upstream up to Timeout and then fail with EIO. Writes
	// go into the cache as usual and are written back once the upstream
	// answers again; nothing dirty is dropped. 0 (the default) is off:
	// every call waits for the upstream up to Timeout, nothing stale is
	// served.
	ServeStale time.Duration
	// OutageDetect is, with ServeStale, how long a revalidation waits for
	// the upstream before the upstream is declared down and the last
	// validated answer is used, and the timeout of the NULL probe that
	// detects its return; default 3 s (at most Timeout).
	OutageDetect time.Duration
	// Logger receives diagnostics; nil discards.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Export == "" {
		o.Export = "/"
	}
	if o.MaxOpenFiles <= 0 {
		o.MaxOpenFiles = 64
	}
	if o.AttrTimeout == 0 {
		o.AttrTimeout = 3 * time.Second
	}
	if o.Connections <= 0 {
		o.Connections = 4
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.OutageDetect <= 0 {
		o.OutageDetect = 3 * time.Second
	}
	o.OutageDetect = min(o.OutageDetect, o.Timeout)
	if o.ServeStale < 0 {
		o.ServeStale = 0
	}
	if o.ReadAhead <= 0 {
		o.ReadAhead = 8 << 20
	}
	if o.DirtyExpire <= 0 {
		o.DirtyExpire = 5 * time.Second
	}
	if o.DirtyLimitBytes <= 0 {
		o.DirtyLimitBytes = 64 << 20
	}
	if o.DirtyBackgroundBytes <= 0 {
		o.DirtyBackgroundBytes = 4 << 20
	}
	o.DirtyBackgroundBytes = max(min(o.DirtyBackgroundBytes, o.DirtyLimitBytes/2), 1)
	if o.MaxCachedInodes <= 0 {
		o.MaxCachedInodes = 100_000
	}
	if o.MaxInodes <= 0 {
		o.MaxInodes = 1024
	}
	o.MaxInodes = min(o.MaxInodes, o.MaxCachedInodes)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}
