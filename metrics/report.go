package metrics

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/nfscache/nfscache/fscache"
	"github.com/nfscache/nfscache/writeback"
)

// ProcReport is one procedure's upstream calls as scraped.
type ProcReport struct {
	Calls, Errors uint64
	LatencySum    float64 // seconds, summed over Calls
}

// Report is a scrape of a proxy's /metrics read back into the proxy's
// statistics. Missing series stay zero.
//
// Concurrency: a plain value; safe to share once built.
type Report struct {
	Cache     fscache.Stats
	Writeback writeback.Stats

	HitRatio                          float64
	BytesFromCache, BytesFromUpstream float64
	Inodes                            float64

	Upstream                         map[string]ProcReport
	UpstreamWritten, UpstreamResent  float64
	Retransmissions, Reconnects      float64
	Served, ServedMount              map[string]uint64
	ServedReadBytes, ServedWriteByte float64
	ServedConnections                float64
	ServedOpenFiles, ServedHandles   float64

	CachedAttrs, Dentries, ListingNames float64

	UpstreamDown                  bool
	Outages, StaleAnswers         float64
	CrashRecovered, CrashConflict float64

	// HasCache says the scrape had fscache series (a proxy with a cache).
	HasCache bool
}

// ParseText reads a Prometheus text-format exposition (what Handler
// serves) into a Report. It fails if r is not the text format or holds
// none of the proxy's series.
func ParseText(r io.Reader) (Report, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return Report{}, fmt.Errorf("metrics: parsing exposition: %w", err)
	}
	rep := Report{Upstream: map[string]ProcReport{}, Served: map[string]uint64{}, ServedMount: map[string]uint64{}}
	found := false
	value := func(name string) (float64, bool) {
		f, ok := fams[name]
		if !ok || len(f.GetMetric()) == 0 {
			return 0, false
		}
		found = true
		return metricValue(f.GetMetric()[0]), true
	}
	for _, f := range fscacheFields {
		if v, ok := value(ns + "fscache_" + f.name); ok {
			*f.field(&rep.Cache) = int64(v)
			rep.HasCache = true
		}
	}
	for _, f := range writebackFields {
		if v, ok := value(ns + "writeback_" + f.name); ok {
			*f.field(&rep.Writeback) = int64(v)
		}
	}
	for name, dst := range map[string]*float64{
		nameHitRatio: &rep.HitRatio, nameBytesFromCache: &rep.BytesFromCache,
		nameBytesFromUpstream: &rep.BytesFromUpstream, nameInodes: &rep.Inodes,
		nameUpstreamWritten: &rep.UpstreamWritten, nameUpstreamResent: &rep.UpstreamResent,
		nameUpstreamRetrans: &rep.Retransmissions, nameUpstreamReconnect: &rep.Reconnects,
		nameServedReadBytes: &rep.ServedReadBytes, nameServedWriteBytes: &rep.ServedWriteByte,
		nameServedConns: &rep.ServedConnections, nameServedOpenFiles: &rep.ServedOpenFiles,
		nameServedHandles: &rep.ServedHandles,
		nameCachedAttrs:   &rep.CachedAttrs, nameDentries: &rep.Dentries, nameListingNames: &rep.ListingNames,
		nameUpstreamOutages: &rep.Outages, nameStaleAnswers: &rep.StaleAnswers,
		nameRecovered: &rep.CrashRecovered, nameConflicts: &rep.CrashConflict,
	} {
		if v, ok := value(name); ok {
			*dst = v
		}
	}
	if v, ok := value(nameUpstreamDown); ok {
		rep.UpstreamDown = v != 0
	}
	for _, m := range fams[nameUpstreamDuration].GetMetric() {
		found = true
		pr := rep.Upstream[label(m, "procedure")]
		pr.Calls, pr.LatencySum = m.GetSummary().GetSampleCount(), m.GetSummary().GetSampleSum()
		rep.Upstream[label(m, "procedure")] = pr
	}
	for _, m := range fams[nameUpstreamErrors].GetMetric() {
		pr := rep.Upstream[label(m, "procedure")]
		pr.Errors = uint64(metricValue(m))
		rep.Upstream[label(m, "procedure")] = pr
	}
	for _, m := range fams[nameServedCalls].GetMetric() {
		found = true
		rep.Served[label(m, "procedure")] = uint64(metricValue(m))
	}
	for _, m := range fams[nameServedMountCalls].GetMetric() {
		rep.ServedMount[label(m, "procedure")] = uint64(metricValue(m))
	}
	if !found {
		return Report{}, errors.New("metrics: no nfscache_ series in the exposition (is this an nfsd-cache proxy's /metrics?)")
	}
	return rep, nil
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.GetCounter().GetValue()
	case m.Gauge != nil:
		return m.GetGauge().GetValue()
	case m.Untyped != nil:
		return m.GetUntyped().GetValue()
	case m.Summary != nil:
		return float64(m.GetSummary().GetSampleCount())
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// String renders the report for humans: the /proc/fs/fscache/stats lines
// (fscache.Stats.String) followed by the proxy's lines — hit ratio and
// bytes, writeback, upstream connection events, and per-procedure calls
// (upstream with errors and mean latency; served) for procedures called at
// least once.
func (r Report) String() string {
	var b strings.Builder
	if r.HasCache {
		b.WriteString(r.Cache.String())
	} else {
		b.WriteString("FS-Cache statistics\n(no cache: the proxy runs without fscache series)\n")
	}
	fmt.Fprintf(&b, "Hits   : ratio=%.4f cache_bytes=%.0f upstream_bytes=%.0f\n", r.HitRatio, r.BytesFromCache, r.BytesFromUpstream)
	w := r.Writeback
	fmt.Fprintf(&b, "Dirty  : bytes=%d inodes=%d pinned=%d held=%d pages_wr=%d err=%d throttle=%d\n",
		w.DirtyBytes, w.DirtyInodes, w.PinnedInodes, w.HeldInodes, w.PagesWritten, w.WriteErrors, w.ThrottleWaits)
	fmt.Fprintf(&b, "Inodes : n=%.0f attrs=%.0f dentries=%.0f listing_names=%.0f\n", r.Inodes, r.CachedAttrs, r.Dentries, r.ListingNames)
	fmt.Fprintf(&b, "Upstrm : wr_bytes=%.0f resent=%.0f retrans=%.0f reconn=%.0f\n", r.UpstreamWritten, r.UpstreamResent, r.Retransmissions, r.Reconnects)
	down := 0
	if r.UpstreamDown {
		down = 1
	}
	fmt.Fprintf(&b, "Outage : down=%d outages=%.0f stale_answers=%.0f\n", down, r.Outages, r.StaleAnswers)
	fmt.Fprintf(&b, "Crash  : recovered=%.0f conflicts=%.0f\n", r.CrashRecovered, r.CrashConflict)
	fmt.Fprintf(&b, "Served : rd_bytes=%.0f wr_bytes=%.0f conns=%.0f open=%.0f handles=%.0f\n",
		r.ServedReadBytes, r.ServedWriteByte, r.ServedConnections, r.ServedOpenFiles, r.ServedHandles)
	b.WriteString("RPC upstream (procedure calls errors avg_ms):\n")
	for _, name := range sortedKeys(r.Upstream) {
		p := r.Upstream[name]
		if p.Calls == 0 {
			continue
		}
		fmt.Fprintf(&b, "  %-12s %10d %6d %9.3f\n", name, p.Calls, p.Errors, 1000*p.LatencySum/float64(p.Calls))
	}
	b.WriteString("RPC served (procedure calls):\n")
	for _, name := range sortedKeys(r.Served) {
		if n := r.Served[name]; n > 0 {
			fmt.Fprintf(&b, "  %-12s %10d\n", name, n)
		}
	}
	for _, name := range sortedKeys(r.ServedMount) {
		if n := r.ServedMount[name]; n > 0 {
			fmt.Fprintf(&b, "  MOUNT %-6s %10d\n", name, n)
		}
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
