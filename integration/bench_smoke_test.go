package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nfscache/nfscache/bench"
)

// TestBenchSmoke runs `nfsd-cache bench` at a tiny scale (4 MiB, 50 files,
// 200 entries, one repeat) so the command never rots: the JSON, SVG and
// Markdown are written and parse, every (workload, client, target) row is
// there, every measured row has positive rates, and our client measured
// every workload on every target that started. It asserts no timing.
func TestBenchSmoke(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, bench.Options{Size: 4 << 20, Files: 50, DirEntries: 200, Repeat: 1, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := rep.WriteFiles(out); err != nil {
		t.Fatal(err)
	}

	// JSON: parse it back and check every row.
	data, err := os.ReadFile(filepath.Join(out, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	var got bench.Report
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("results.json does not parse: %v", err)
	}
	available := map[string]bool{}
	for _, ti := range got.Targets {
		available[ti.Name] = ti.Available
		if !ti.Available {
			t.Logf("target %s unavailable: %s", ti.Name, ti.Reason)
		}
	}
	for _, tn := range bench.Targets() {
		if _, ok := available[tn]; !ok {
			t.Errorf("target %s missing from results.json", tn)
		}
	}
	// Everything nobody here wrote may be missing, but ours, stock go-nfs
	// and the local disk always run.
	for _, tn := range []string{bench.TargetLocal, bench.TargetGoNFS, bench.TargetServe, bench.TargetProxy} {
		if !available[tn] {
			t.Errorf("target %s unavailable", tn)
		}
	}
	for _, w := range bench.Workloads() {
		for _, c := range bench.Clients() {
			for _, tn := range bench.Targets() {
				r := got.Row(w, c, tn)
				if r == nil {
					t.Errorf("no row for %s / %s / %s", w, c, tn)
					continue
				}
				switch r.Status {
				case bench.StatusOK:
					if len(r.Values) != 1 || r.Values[0] <= 0 || r.Median <= 0 || r.Min <= 0 {
						t.Errorf("%s / %s / %s: ok without positive values: %+v", w, c, tn, r)
					}
				case bench.StatusSkipped, bench.StatusUnavailable, bench.StatusFailed:
					if r.Reason == "" {
						t.Errorf("%s / %s / %s: %s without a reason", w, c, tn, r.Status)
					}
				default:
					t.Errorf("%s / %s / %s: unknown status %q", w, c, tn, r.Status)
				}
				// Our client, go-nfs-client (except its known trouble with
				// nothing here) and os must measure everything they can.
				mustWork := available[tn] && ((c == bench.ClientOurs && tn != bench.TargetLocal) ||
					(c == bench.ClientGoNFS && tn != bench.TargetLocal) || (c == bench.ClientOS && tn == bench.TargetLocal))
				if mustWork && r.Status != bench.StatusOK {
					t.Errorf("%s / %s / %s: %s: %s %v", w, c, tn, r.Status, r.Reason, r.Errors)
				}
			}
		}
	}
	if len(got.Ratios) == 0 {
		t.Error("no ratios")
	}
	for _, r := range got.Ratios {
		if r.Value <= 0 {
			t.Errorf("ratio %+v not positive", r)
		}
	}

	// SVG: well-formed XML with an <svg> root, a bar per measured row and
	// every workload named.
	svg, err := os.ReadFile(filepath.Join(out, "results.svg"))
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(svg))
	rects, root := 0, ""
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("results.svg is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok {
			if root == "" {
				root = se.Name.Local
			}
			if se.Name.Local == "rect" {
				rects++
			}
		}
	}
	okRows := 0
	for _, r := range got.Rows {
		if r.Status == bench.StatusOK {
			okRows++
		}
	}
	if root != "svg" || rects != okRows+1 { // +1: the background
		t.Errorf("results.svg: root <%s>, %d rects for %d measured rows", root, rects, okRows)
	}
	for _, w := range bench.Workloads() {
		if !bytes.Contains(svg, []byte(w)) {
			t.Errorf("results.svg does not name workload %s", w)
		}
	}

	table, err := os.ReadFile(filepath.Join(out, "results.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range append(bench.Targets(), "Ratios") {
		if !strings.Contains(string(table), want) {
			t.Errorf("results.md lacks %q", want)
		}
	}
	t.Logf("bench smoke run:\n%s", table)
}
