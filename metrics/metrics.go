package metrics

import (
	"log/slog"
	"net/http"
	"sort"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/fscache"
	"github.com/nfscache/nfscache/server"
	"github.com/nfscache/nfscache/writeback"
)

// FSSource is what the collector needs from the served filesystem:
// *billyfs.FS. Stats must be safe for concurrent use.
type FSSource interface {
	Stats() billyfs.Stats
}

// ServerSource is what the collector needs from the NFS server:
// *server.Server. Stats must be safe for concurrent use.
type ServerSource interface {
	Stats() server.Stats
}

// Options configures New. A nil source leaves its series out.
type Options struct {
	FS     FSSource
	Server ServerSource
	// Logger receives errors the HTTP handler meets while serving a
	// scrape; nil discards them.
	Logger *slog.Logger
}

// Collector turns its sources' Stats into Prometheus metrics at scrape
// time.
//
// Concurrency: safe for concurrent use; immutable after New.
type Collector struct {
	fs  FSSource
	srv ServerSource
	log *slog.Logger

	scalars      []scalar
	upstreamDur  *prometheus.Desc
	upstreamErr  *prometheus.Desc
	servedCalls  *prometheus.Desc
	servedMounts *prometheus.Desc
}

// snapshot is one scrape's worth of source statistics.
type snapshot struct {
	fs     billyfs.Stats
	srv    server.Stats
	hasFS  bool
	hasSrv bool
}

// scalar is one unlabelled series computed from a snapshot.
type scalar struct {
	desc   *prometheus.Desc
	typ    prometheus.ValueType
	server bool // from the server snapshot, else from the FS snapshot
	value  func(*snapshot) float64
}

const ns = "nfscache_"

// fscacheField maps a metric name (without "nfscache_fscache_") to its
// fscache.Stats field. One table serves both directions: Collect reads the
// field, ParseText writes it back, so the two cannot drift apart.
type fscacheField struct {
	name, help string
	gauge      bool
	field      func(*fscache.Stats) *int64
}

var fscacheFields = []fscacheField{
	{"volumes", "Cache volumes acquired.", true, func(s *fscache.Stats) *int64 { return &s.Volumes }},
	{"cookies", "Live (acquired, not relinquished) cookies.", true, func(s *fscache.Stats) *int64 { return &s.Cookies }},
	{"objects", "Backing objects in the cache index.", true, func(s *fscache.Stats) *int64 { return &s.Objects }},
	{"used_bytes", "Bytes of file data present in the cache.", true, func(s *fscache.Stats) *int64 { return &s.UsedBytes }},
	{"acquires_total", "Cookie acquisitions (fscache_acquire_cookie).", false, func(s *fscache.Stats) *int64 { return &s.Acquires }},
	{"acquire_discards_total", "Acquisitions that discarded cached data for mismatched coherency data.", false, func(s *fscache.Stats) *int64 { return &s.AcquireDiscards }},
	{"relinquishes_total", "Cookies relinquished.", false, func(s *fscache.Stats) *int64 { return &s.Relinquishes }},
	{"retires_total", "Relinquishes that deleted the cached data.", false, func(s *fscache.Stats) *int64 { return &s.Retires }},
	{"uses_total", "Cookie uses (fscache_use_cookie).", false, func(s *fscache.Stats) *int64 { return &s.Uses }},
	{"unuses_total", "Cookie unuses (fscache_unuse_cookie).", false, func(s *fscache.Stats) *int64 { return &s.Unuses }},
	{"updates_total", "Coherency data/size updates at unuse.", false, func(s *fscache.Stats) *int64 { return &s.Updates }},
	{"open_files", "Backing file descriptors open now.", true, func(s *fscache.Stats) *int64 { return &s.OpenFiles }},
	{"peak_open_files", "Most backing file descriptors ever open at once.", true, func(s *fscache.Stats) *int64 { return &s.PeakOpenFiles }},
	{"lru_cookies", "Unpinned cookies holding a backing fd (evictable).", true, func(s *fscache.Stats) *int64 { return &s.LRU }},
	{"pinned_cookies", "Cookies pinned for writeback now (PinningCacheWB).", true, func(s *fscache.Stats) *int64 { return &s.Pinned }},
	{"pins_total", "Writeback pins taken.", false, func(s *fscache.Stats) *int64 { return &s.Pins }},
	{"pin_waits_total", "Dirtiers that waited at the pinned-cookie bound.", false, func(s *fscache.Stats) *int64 { return &s.PinWaits }},
	{"opens_total", "Backing file opens.", false, func(s *fscache.Stats) *int64 { return &s.Opens }},
	{"reopens_total", "Opens of a backing file the cookie had open before.", false, func(s *fscache.Stats) *int64 { return &s.Reopens }},
	{"writeback_reopens_total", "Opens of a pinned cookie's file after pinning (must stay 0).", false, func(s *fscache.Stats) *int64 { return &s.WritebackReopens }},
	{"lru_evictions_total", "Backing fds of unused cookies closed by the LRU.", false, func(s *fscache.Stats) *int64 { return &s.LRUEvictions }},
	{"in_use_evictions_total", "Backing fds of in-use, unpinned cookies closed for a slot.", false, func(s *fscache.Stats) *int64 { return &s.InUseEvictions }},
	{"slot_waits_total", "Opens that waited for a backing fd slot.", false, func(s *fscache.Stats) *int64 { return &s.SlotWaits }},
	{"read_hits_total", "Cache reads that found the data present.", false, func(s *fscache.Stats) *int64 { return &s.ReadHits }},
	{"read_misses_total", "Cache reads that did not find all the data.", false, func(s *fscache.Stats) *int64 { return &s.ReadMisses }},
	{"read_bytes_total", "Bytes read from backing files.", false, func(s *fscache.Stats) *int64 { return &s.BytesRead }},
	{"writes_total", "Writes into backing files.", false, func(s *fscache.Stats) *int64 { return &s.Writes }},
	{"written_bytes_total", "Bytes written into backing files.", false, func(s *fscache.Stats) *int64 { return &s.BytesWritten }},
	{"stale_writes_total", "Writes refused because the cookie was invalidated meanwhile.", false, func(s *fscache.Stats) *int64 { return &s.StaleWrites }},
	{"nospace_total", "Writes refused for ENOSPC or bstop (cache stepped aside).", false, func(s *fscache.Stats) *int64 { return &s.NoSpace }},
	{"invalidations_total", "Cookie invalidations (remote file changed).", false, func(s *fscache.Stats) *int64 { return &s.Invalidations }},
	{"resizes_total", "Cookie resizes.", false, func(s *fscache.Stats) *int64 { return &s.Resizes }},
	{"culled_total", "Objects culled (cachefilesd).", false, func(s *fscache.Stats) *int64 { return &s.Culled }},
	{"cull_passes_total", "Culling passes.", false, func(s *fscache.Stats) *int64 { return &s.CullPasses }},
	{"discards_total", "Cached ranges discarded.", false, func(s *fscache.Stats) *int64 { return &s.Discards }},
	{"fd_exhausted_total", "Backing opens that met EMFILE/ENFILE; an evictable fd was closed and the open retried.", false, func(s *fscache.Stats) *int64 { return &s.FDExhausted }},
}

// writebackField is fscacheField's counterpart for writeback.Stats.
type writebackField struct {
	name, help string
	gauge      bool
	field      func(*writeback.Stats) *int64
}

var writebackFields = []writebackField{
	{"dirty_bytes", "Bytes dirty or under writeback, not yet on the upstream.", true, func(s *writeback.Stats) *int64 { return &s.DirtyBytes }},
	{"dirty_inodes", "Inodes with dirty pages.", true, func(s *writeback.Stats) *int64 { return &s.DirtyInodes }},
	{"pinned_inodes", "Inodes pinning their cache cookie for writeback.", true, func(s *writeback.Stats) *int64 { return &s.PinnedInodes }},
	{"held_inodes", "Inodes counted against the pinned-inode bound.", true, func(s *writeback.Stats) *int64 { return &s.HeldInodes }},
	{"pages_written_total", "Pages cleaned by writeback.", false, func(s *writeback.Stats) *int64 { return &s.PagesWritten }},
	{"write_errors_total", "Failed writeback attempts.", false, func(s *writeback.Stats) *int64 { return &s.WriteErrors }},
	{"throttle_waits_total", "Times a writer waited for dirty data to drain.", false, func(s *writeback.Stats) *int64 { return &s.ThrottleWaits }},
}

// Names of the proxy-level series (shared with ParseText).
const (
	nameHitRatio          = ns + "cache_hit_ratio"
	nameBytesFromCache    = ns + "bytes_from_cache_total"
	nameBytesFromUpstream = ns + "bytes_from_upstream_total"
	nameInodes            = ns + "inodes"
	nameUpstreamDown      = ns + "upstream_down"
	nameCachedAttrs       = ns + "cached_attributes"
	nameDentries          = ns + "cached_dentries"
	nameListingNames      = ns + "cached_listing_names"
	nameUpstreamOutages   = ns + "upstream_outages_total"
	nameStaleAnswers      = ns + "stale_answers_total"
	nameRecovered         = ns + "crash_recovered_objects_total"
	nameConflicts         = ns + "crash_conflict_objects_total"
	nameUpstreamDuration  = ns + "upstream_rpc_duration_seconds"
	nameUpstreamErrors    = ns + "upstream_rpc_errors_total"
	nameUpstreamWritten   = ns + "upstream_written_bytes_total"
	nameUpstreamResent    = ns + "upstream_resent_bytes_total"
	nameUpstreamRetrans   = ns + "upstream_retransmissions_total"
	nameUpstreamReconnect = ns + "upstream_reconnects_total"
	nameServedCalls       = ns + "served_rpc_calls_total"
	nameServedMountCalls  = ns + "served_mount_calls_total"
	nameServedReadBytes   = ns + "served_read_bytes_total"
	nameServedWriteBytes  = ns + "served_written_bytes_total"
	nameServedConns       = ns + "served_connections_total"
	nameServedRejected    = ns + "served_rejected_connections_total"
	nameServedMalformed   = ns + "served_malformed_connections_total"
	nameServedOpenFiles   = ns + "served_open_files"
	nameServedHandles     = ns + "served_handles"
	nameServedEMFILE      = ns + "served_fd_exhausted_total"
)

// NFSProcNames are the NFSv3 procedure names (RFC 1813 §3.3), indexed by
// procedure number: the values of the "procedure" label.
var NFSProcNames = [...]string{
	"NULL", "GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READLINK", "READ", "WRITE",
	"CREATE", "MKDIR", "SYMLINK", "MKNOD", "REMOVE", "RMDIR", "RENAME", "LINK",
	"READDIR", "READDIRPLUS", "FSSTAT", "FSINFO", "PATHCONF", "COMMIT",
}

// mountProcNames are the MOUNT v3 procedure names (RFC 1813 §5.2).
var mountProcNames = [...]string{"NULL", "MNT", "DUMP", "UMNT", "UMNTALL", "EXPORT"}

// New returns a collector reading opts' sources at every scrape.
func New(opts Options) *Collector {
	c := &Collector{fs: opts.FS, srv: opts.Server, log: opts.Logger}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	typ := func(gauge bool) prometheus.ValueType {
		if gauge {
			return prometheus.GaugeValue
		}
		return prometheus.CounterValue
	}
	fsScalar := func(name, help string, t prometheus.ValueType, v func(*snapshot) float64) {
		c.scalars = append(c.scalars, scalar{prometheus.NewDesc(name, help, nil, nil), t, false, v})
	}
	srvScalar := func(name, help string, t prometheus.ValueType, v func(*snapshot) float64) {
		c.scalars = append(c.scalars, scalar{prometheus.NewDesc(name, help, nil, nil), t, true, v})
	}
	for _, f := range fscacheFields {
		fsScalar(ns+"fscache_"+f.name, f.help, typ(f.gauge), func(s *snapshot) float64 { return float64(*f.field(&s.fs.Cache)) })
	}
	for _, f := range writebackFields {
		fsScalar(ns+"writeback_"+f.name, f.help, typ(f.gauge), func(s *snapshot) float64 { return float64(*f.field(&s.fs.Writeback)) })
	}
	fsScalar(nameHitRatio, "Fraction of cache reads that found the data present, since start (0 before any read).", prometheus.GaugeValue,
		func(s *snapshot) float64 { return hitRatio(s.fs.Cache.ReadHits, s.fs.Cache.ReadMisses) })
	fsScalar(nameBytesFromCache, "File data bytes read out of the local cache.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.Cache.BytesRead) })
	fsScalar(nameBytesFromUpstream, "File data bytes fetched from the upstream server with READ.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.RPC.BytesRead) })
	fsScalar(nameInodes, "Inodes of the proxy's filesystem in memory.", prometheus.GaugeValue,
		func(s *snapshot) float64 { return float64(s.fs.Inodes) })
	fsScalar(nameCachedAttrs, "Attributes cached (bounded by --max-cached-inodes).", prometheus.GaugeValue,
		func(s *snapshot) float64 { return float64(s.fs.CachedAttrs) })
	fsScalar(nameDentries, "Names cached, positive and negative (bounded by --max-cached-inodes).", prometheus.GaugeValue,
		func(s *snapshot) float64 { return float64(s.fs.Dentries) })
	fsScalar(nameListingNames, "Names held in cached directory listings (bounded by --max-cached-inodes).", prometheus.GaugeValue,
		func(s *snapshot) float64 { return float64(s.fs.ListingNames) })
	fsScalar(nameUpstreamDown, "1 while the upstream is unreachable (an outage detected with --serve-stale), else 0.", prometheus.GaugeValue,
		func(s *snapshot) float64 {
			if s.fs.UpstreamDown {
				return 1
			}
			return 0
		})
	fsScalar(nameUpstreamOutages, "Upstream outages detected (with --serve-stale).", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.Outages) })
	fsScalar(nameStaleAnswers, "Attributes, names, listings, link targets and FSSTATs answered from the last validated copy during outages.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.StaleAnswers) })
	fsScalar(nameRecovered, "Dirty objects a crashed predecessor left in the cache that were written back at start.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.Recovered) })
	fsScalar(nameConflicts, "Dirty objects left by a crash kept in <cache-dir>/conflicts because the remote file had changed.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.Conflicts) })
	fsScalar(nameUpstreamWritten, "File data bytes the upstream acknowledged with WRITE.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.RPC.BytesWritten) })
	fsScalar(nameUpstreamResent, "Bytes written again after the upstream's write verifier changed (it restarted).", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.RPC.BytesResent) })
	fsScalar(nameUpstreamRetrans, "Calls retransmitted to the upstream after a dropped connection.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.RPC.Retransmissions) })
	fsScalar(nameUpstreamReconnect, "Connections to the upstream re-established.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.fs.RPC.Reconnects) })

	srvScalar(nameServedReadBytes, "File data bytes the proxy served with READ.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.srv.BytesRead) })
	srvScalar(nameServedWriteBytes, "File data bytes clients wrote to the proxy with WRITE.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.srv.BytesWritten) })
	srvScalar(nameServedConns, "Client connections accepted.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.srv.Connections) })
	srvScalar(nameServedRejected, "Client connections refused by the allow-list.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.srv.Rejected) })
	srvScalar(nameServedMalformed, "Client connections closed for an unparsable RPC.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.srv.Malformed) })
	srvScalar(nameServedOpenFiles, "Files the server keeps open for READ/WRITE reuse.", prometheus.GaugeValue,
		func(s *snapshot) float64 { return float64(s.srv.OpenFiles) })
	srvScalar(nameServedHandles, "File ids in the persistent handle table.", prometheus.GaugeValue,
		func(s *snapshot) float64 { return float64(s.srv.Handles) })

	srvScalar(nameServedEMFILE, "Opens of exported files that met EMFILE/ENFILE; an idle cached file was closed and the open retried.", prometheus.CounterValue,
		func(s *snapshot) float64 { return float64(s.srv.FDExhausted) })

	c.upstreamDur = prometheus.NewDesc(nameUpstreamDuration,
		"Calls the proxy sent to the upstream and their total latency, by procedure.", []string{"procedure"}, nil)
	c.upstreamErr = prometheus.NewDesc(nameUpstreamErrors,
		"Upstream calls that failed at the transport/RPC level (not NFS status errors), by procedure.", []string{"procedure"}, nil)
	c.servedCalls = prometheus.NewDesc(nameServedCalls,
		"NFSv3 calls the proxy answered, by procedure.", []string{"procedure"}, nil)
	c.servedMounts = prometheus.NewDesc(nameServedMountCalls,
		"MOUNT calls the proxy answered, by procedure.", []string{"procedure"}, nil)
	return c
}

func hitRatio(hits, misses int64) float64 {
	if hits+misses == 0 {
		return 0
	}
	return float64(hits) / float64(hits+misses)
}

// Describe sends every descriptor the collector may emit.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, s := range c.scalars {
		if (s.server && c.srv != nil) || (!s.server && c.fs != nil) {
			ch <- s.desc
		}
	}
	if c.fs != nil {
		ch <- c.upstreamDur
		ch <- c.upstreamErr
	}
	if c.srv != nil {
		ch <- c.servedCalls
		ch <- c.servedMounts
	}
}

// Collect takes one snapshot of the sources and emits it.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	var snap snapshot
	if c.fs != nil {
		snap.fs, snap.hasFS = c.fs.Stats(), true
	}
	if c.srv != nil {
		snap.srv, snap.hasSrv = c.srv.Stats(), true
	}
	for _, s := range c.scalars {
		if (s.server && !snap.hasSrv) || (!s.server && !snap.hasFS) {
			continue
		}
		ch <- prometheus.MustNewConstMetric(s.desc, s.typ, s.value(&snap))
	}
	if snap.hasFS {
		// Every NFS procedure, zero or not, so the series exist from
		// the start; then whatever else the client counted (MNT, ...).
		procs := snap.fs.RPC.Procs
		names := append([]string(nil), NFSProcNames[:]...)
		var extra []string
		for name := range procs {
			if !isNFSProc(name) {
				extra = append(extra, name)
			}
		}
		sort.Strings(extra)
		for _, name := range append(names, extra...) {
			p := procs[name]
			ch <- prometheus.MustNewConstSummary(c.upstreamDur, p.Calls, p.Latency.Seconds(), nil, name)
			ch <- prometheus.MustNewConstMetric(c.upstreamErr, prometheus.CounterValue, float64(p.Errors), name)
		}
	}
	if snap.hasSrv {
		for i, n := range snap.srv.NFS {
			if i < len(NFSProcNames) {
				ch <- prometheus.MustNewConstMetric(c.servedCalls, prometheus.CounterValue, float64(n), NFSProcNames[i])
			}
		}
		for i, n := range snap.srv.Mount {
			if i < len(mountProcNames) {
				ch <- prometheus.MustNewConstMetric(c.servedMounts, prometheus.CounterValue, float64(n), mountProcNames[i])
			}
		}
	}
}

func isNFSProc(name string) bool {
	for _, n := range NFSProcNames {
		if n == name {
			return true
		}
	}
	return false
}

// Handler serves /metrics: a private registry holding c and the Go
// runtime and process collectors, in the Prometheus text (or negotiated)
// format.
func (c *Collector) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slogPrinter{c.log},
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// slogPrinter adapts a *slog.Logger to promhttp's Logger.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Println(v ...any) { p.log.Error("metrics handler", "err", v) }
