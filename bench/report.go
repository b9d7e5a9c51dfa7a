package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Row statuses.
const (
	StatusOK          = "ok"
	StatusSkipped     = "skipped"     // the pair makes no sense, or the client is not installed
	StatusUnavailable = "unavailable" // the target could not start
	StatusFailed      = "failed"      // every repeat failed
)

// Report is the result of Run: what ran, every (workload, client,
// target) row and the ratios that matter. It is plain data, safe to
// read concurrently once Run has returned.
type Report struct {
	Started    time.Time    `json:"started"`
	Elapsed    string       `json:"elapsed"`
	GoVersion  string       `json:"go_version"`
	NumCPU     int          `json:"num_cpu"`
	Size       int64        `json:"size_bytes"`
	Files      int          `json:"files"`
	DirEntries int          `json:"dir_entries"`
	Repeat     int          `json:"repeat"`
	Targets    []TargetInfo `json:"targets"`
	Rows       []*Row       `json:"rows"`
	Ratios     []Ratio      `json:"ratios"`
}

// TargetInfo says what a target is and whether it ran.
type TargetInfo struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Available   bool   `json:"available"`
	Reason      string `json:"reason,omitempty"`
}

// Row is one (workload, client, target) measurement: a rate per repeat.
type Row struct {
	Workload string    `json:"workload"`
	Client   string    `json:"client"`
	Target   string    `json:"target"`
	Unit     string    `json:"unit"`
	Status   string    `json:"status"`
	Reason   string    `json:"reason,omitempty"`
	Values   []float64 `json:"values,omitempty"`
	Min      float64   `json:"min,omitempty"`
	Median   float64   `json:"median,omitempty"`
	Max      float64   `json:"max,omitempty"`
	// Errors of failed repeats (a row with some values is still ok).
	Errors []string `json:"errors,omitempty"`
}

// summarize sets Status, Min, Median and Max from Values and Errors.
func (r *Row) summarize() {
	if r.Status == StatusSkipped || r.Status == StatusUnavailable {
		return
	}
	if len(r.Values) == 0 {
		r.Status = StatusFailed
		if len(r.Errors) > 0 {
			r.Reason = r.Errors[0]
		} else {
			r.Reason = "not measured"
		}
		return
	}
	r.Status = StatusOK
	r.Min, r.Median, r.Max = summary(r.Values)
}

// summary returns min, median and max of vs (not empty).
func summary(vs []float64) (lo, med, hi float64) {
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	med = s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return s[0], med, s[n-1]
}

// Ratio is Num's median over Den's median for one workload.
type Ratio struct {
	Name     string  `json:"name"`
	Workload string  `json:"workload"`
	Client   string  `json:"client"`
	Num      string  `json:"num"` // "target/client"
	Den      string  `json:"den"`
	Value    float64 `json:"value"`
}

// Row returns the row of (w, c, t), nil if there is none.
func (rep *Report) Row(w, c, t string) *Row {
	for _, r := range rep.Rows {
		if r.Workload == w && r.Client == c && r.Target == t {
			return r
		}
	}
	return nil
}

// ratios computes: ours (serve, proxy) vs stock go-nfs and vs ganesha
// with the same client, and the warm proxy cache vs the local disk.
func ratios(rep *Report) []Ratio {
	var out []Ratio
	add := func(name, w, cn, tn, cd, td string) {
		n, d := rep.Row(w, cn, tn), rep.Row(w, cd, td)
		if n == nil || d == nil || n.Status != StatusOK || d.Status != StatusOK || d.Median == 0 {
			return
		}
		c := cn
		if cn != cd {
			c = cn + " vs " + cd
		}
		out = append(out, Ratio{Name: name, Workload: w, Client: c, Num: tn + "/" + cn, Den: td + "/" + cd, Value: n.Median / d.Median})
	}
	for _, w := range Workloads() {
		for _, c := range Clients() {
			add("serve vs stock go-nfs", w, c, TargetServe, c, TargetGoNFS)
		}
	}
	for _, w := range Workloads() {
		for _, c := range Clients() {
			add("serve vs nfs-ganesha", w, c, TargetServe, c, TargetGanesha)
		}
	}
	for _, w := range Workloads() {
		for _, c := range Clients() {
			add("proxy vs stock go-nfs", w, c, TargetProxy, c, TargetGoNFS)
		}
	}
	for _, c := range Clients() {
		add("proxy warm cache vs local disk (warm)", WorkReadWarm, c, TargetProxy, ClientOS, TargetLocal)
		add("proxy warm cache vs its upstream (serve, warm)", WorkReadWarm, c, TargetProxy, c, TargetServe)
	}
	return out
}

// format prints a rate with 3 significant digits at most.
func format(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// WriteTable writes the report as Markdown: one row per (workload,
// client), one column per target, "median (min)"; then notes for cells
// not measured and the ratios.
func (rep *Report) WriteTable(w io.Writer) error {
	var targets []string
	for _, t := range rep.Targets {
		targets = append(targets, t.Name)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Size %d MiB, %d small files, %d directory entries; median (min) of %d repeats; %s, %d CPUs; took %s.\n\n",
		rep.Size>>20, rep.Files, rep.DirEntries, rep.Repeat, rep.GoVersion, rep.NumCPU, rep.Elapsed)
	b.WriteString("| workload | client |")
	for _, t := range targets {
		b.WriteString(" " + t + " |")
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|", len(targets)) + "\n")
	var notes []string
	note := func(s string) int {
		if i := slices.Index(notes, s); i >= 0 {
			return i + 1
		}
		notes = append(notes, s)
		return len(notes)
	}
	var omitted []string
	for _, wl := range Workloads() {
		for _, c := range Clients() {
			var cells []string
			measured := false
			for _, t := range targets {
				r := rep.Row(wl, c, t)
				switch {
				case r == nil:
					cells = append(cells, "")
				case r.Status == StatusOK:
					measured = true
					cells = append(cells, format(r.Median)+" ("+format(r.Min)+")")
				case r.Status == StatusSkipped:
					cells = append(cells, "—")
				default:
					measured = true
					cells = append(cells, fmt.Sprintf("n/a [%d]", note(r.Status+": "+r.Reason)))
				}
			}
			if !measured {
				if r := firstNonLocal(rep, wl, c, targets); r != nil && r.Status == StatusSkipped && c != ClientOS {
					omitted = append(omitted, fmt.Sprintf("%s with %s: %s", wl, c, r.Reason))
				}
				continue
			}
			fmt.Fprintf(&b, "| %s (%s) | %s | %s |\n", wl, unit(wl), c, strings.Join(cells, " | "))
		}
	}
	b.WriteString("\n— : pair not measured (os reads the local disk only; NFS clients do not read it).\n")
	for i, n := range notes {
		fmt.Fprintf(&b, "[%d] %s\n", i+1, n)
	}
	for _, o := range slices.Compact(omitted) {
		fmt.Fprintf(&b, "Not measured: %s.\n", o)
	}
	b.WriteString(`
How each client writes: os writes 1 MiB calls and fsyncs at the end; nfscache/client sends
UNSTABLE WRITEs (8 MiB ReadAt/WriteAt calls, 1 MiB RPCs, 16 in flight) and one COMMIT;
go-nfs-client sends 1 MiB FILE_SYNC WRITEs, one at a time; libnfs nfs-cp uploads a local copy.
Small files are written with one FILE_SYNC WRITE each (os: write + fsync). Stock go-nfs
acknowledges FILE_SYNC and COMMIT without syncing; ours and ganesha sync. Cold reads: the
file's pages are dropped from the page cache (posix_fadvise DONTNEED) and the proxy
restarts with an empty cache. Reads by nfscache/client are 8 MiB ReadAt calls; by
go-nfs-client and os 1 MiB calls.
`)
	b.WriteString("\nTargets:\n")
	for _, t := range rep.Targets {
		s := "- " + t.Name + ": " + t.Description
		if !t.Available {
			s += " — UNAVAILABLE: " + t.Reason
		}
		b.WriteString(s + "\n")
	}
	if len(rep.Ratios) > 0 {
		b.WriteString("\nRatios (median / median):\n")
		for _, r := range rep.Ratios {
			fmt.Fprintf(&b, "- %s, %s, %s: %.2fx (%s / %s)\n", r.Name, r.Workload, r.Client, r.Value, r.Num, r.Den)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func firstNonLocal(rep *Report, w, c string, targets []string) *Row {
	for _, t := range targets {
		if t != TargetLocal {
			if r := rep.Row(w, c, t); r != nil {
				return r
			}
		}
	}
	return nil
}

// WriteJSON writes the report as indented JSON.
func (rep *Report) WriteJSON(w io.Writer) error {
	e := json.NewEncoder(w)
	e.SetIndent("", "  ")
	return e.Encode(rep)
}

// targetColor gives each target its bar colour.
func targetColor(t string) string {
	switch t {
	case TargetLocal:
		return "#7f7f7f"
	case TargetGoNFS:
		return "#d62728"
	case TargetServe:
		return "#1f77b4"
	case TargetProxy:
		return "#2ca02c"
	case TargetGanesha:
		return "#ff7f0e"
	}
	return "#9467bd"
}

// WriteSVG draws one panel per workload, a horizontal bar per measured
// (client, target): the bar is the median, the tick the minimum, each
// panel on its own scale.
func (rep *Report) WriteSVG(w io.Writer) error {
	const (
		width  = 960
		labelW = 260
		barH   = 16
		gap    = 4
		right  = 110
	)
	var body strings.Builder
	y := 50
	for _, wl := range Workloads() {
		var rows []*Row
		maxV := 0.0
		for _, c := range Clients() {
			for _, t := range rep.Targets {
				if r := rep.Row(wl, c, t.Name); r != nil && r.Status != StatusSkipped {
					rows = append(rows, r)
					maxV = max(maxV, r.Max)
				}
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(&body, `<text x="10" y="%d" font-weight="bold">%s (%s, median; tick = min)</text>`+"\n", y, html.EscapeString(wl), unit(wl))
		y += 8
		for _, r := range rows {
			label := r.Client + " → " + r.Target
			fmt.Fprintf(&body, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", labelW-6, y+barH-4, html.EscapeString(label))
			if r.Status != StatusOK {
				fmt.Fprintf(&body, `<text x="%d" y="%d" fill="#999">%s</text>`+"\n", labelW, y+barH-4, html.EscapeString(r.Status))
			} else {
				scale := float64(width-labelW-right) / maxV
				bw := max(1, int(r.Median*scale))
				fmt.Fprintf(&body, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", labelW, y, bw, barH, targetColor(r.Target))
				mx := labelW + int(r.Min*scale)
				fmt.Fprintf(&body, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>`+"\n", mx, y-1, mx, y+barH+1)
				fmt.Fprintf(&body, `<text x="%d" y="%d">%s</text>`+"\n", labelW+bw+6, y+barH-4, format(r.Median))
			}
			y += barH + gap
		}
		y += 28
	}
	title := fmt.Sprintf("nfsd-cache bench: %d MiB file, %d small files, %d entries, %d repeats", rep.Size>>20, rep.Files, rep.DirEntries, rep.Repeat)
	_, err := fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">
<rect width="100%%" height="100%%" fill="white"/>
<text x="10" y="24" font-size="16" font-weight="bold">%s</text>
%s</svg>
`, width, y, width, y, html.EscapeString(title), body.String())
	return err
}

// WriteFiles writes results.json, results.svg and results.md into dir
// (created if needed).
func (rep *Report) WriteFiles(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	var errs []error
	for name, write := range map[string]func(io.Writer) error{
		"results.json": rep.WriteJSON, "results.svg": rep.WriteSVG, "results.md": rep.WriteTable,
	} {
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, write(f), f.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bench: writing results: %w", err)
	}
	return nil
}
