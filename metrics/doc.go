// Package metrics exposes the counters of an nfsd-cache proxy as Prometheus
// metrics, and turns a scrape back into the /proc/fs/fscache/stats layout
// for humans.
//
// # Collecting
//
// A Collector is a prometheus.Collector (the "custom collector" pattern of
// client_golang): it keeps no counters of its own. On every scrape it
// calls Stats() on its sources — the billyfs FS the proxy serves (which
// carries the fscache, writeback and upstream client statistics) and the
// server that serves it — and emits constant metrics from that one
// snapshot. The sources are consumer-defined interfaces (FSSource,
// ServerSource), so *billyfs.FS and *server.Server satisfy them and tests
// may pass anything with the same Stats method. Handler serves a private
// registry (never prometheus.DefaultRegisterer: no package-level state)
// holding the collector plus the Go runtime and process collectors.
//
// # The series
//
// All names start with "nfscache_" (see Names for the full list):
//
//   - nfscache_fscache_*: the fscache.Stats counters, the counterpart of
//     /proc/fs/fscache/stats (cookies, acquires, opens, LRU evictions,
//     culls, invalidations, read hits and misses, ...), plus the gauges
//     open backing fds (nfscache_fscache_open_files) and pinned cookies.
//   - nfscache_cache_hit_ratio: fscache read hits / (hits + misses) since
//     start (0 before the first read), the fraction of cache lookups that
//     found the data present (fscache's IO rd/mis line).
//   - nfscache_bytes_from_cache_total / nfscache_bytes_from_upstream_total:
//     file data read out of the local cache, and file data fetched from the
//     upstream with READ.
//   - nfscache_upstream_rpc_duration_seconds{procedure}: a summary (count =
//     calls, sum = total latency) per NFS/MOUNT procedure the proxy sent
//     upstream, with nfscache_upstream_rpc_errors_total{procedure};
//     retransmissions, reconnects, bytes written and resent.
//   - nfscache_served_rpc_calls_total{procedure}: calls the proxy answered,
//     per NFSv3 and MOUNT procedure (the server keeps counts, not
//     latencies), bytes served, connections.
//   - nfscache_writeback_*: dirty bytes, dirty and pinned inodes
//     (writeback's PinningCacheWB), pages written, errors, throttles.
//   - nfscache_upstream_down, nfscache_upstream_outages_total,
//     nfscache_stale_answers_total: outages of the upstream seen with
//     --serve-stale and what was answered from the last validated copy;
//     nfscache_crash_recovered_objects_total / _conflict_objects_total:
//     dirty data a crashed predecessor left, written back or kept aside.
//   - nfscache_cached_attributes, _cached_dentries, _cached_listing_names:
//     billyfs's metadata caches, each bounded by --max-cached-inodes.
//
// # Reading it back
//
// ParseText reads the Prometheus text format (expfmt) into a Report, and
// Report.String prints fscache.Stats.String() — the kernel's
// /proc/fs/fscache/stats lines — followed by the proxy's own lines (hit
// ratio and bytes, dirty data, per-procedure RPCs). That is what
// `nfsd-cache stats --metrics ADDR` prints.
//
// # Concurrency
//
// Collector is safe for concurrent scrapes; it holds no lock and calls its
// sources' Stats (which must be safe for concurrent use) once per scrape.
package metrics
