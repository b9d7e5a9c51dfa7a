package bench

import (
	"bytes"
	"strings"
	"testing"
)

func TestSummary(t *testing.T) {
	for _, c := range []struct {
		in          []float64
		lo, med, hi float64
	}{
		{[]float64{5}, 5, 5, 5},
		{[]float64{3, 1, 2}, 1, 2, 3},
		{[]float64{4, 1, 3, 2}, 1, 2.5, 4},
	} {
		lo, med, hi := summary(c.in)
		if lo != c.lo || med != c.med || hi != c.hi {
			t.Errorf("summary(%v) = %v %v %v, want %v %v %v", c.in, lo, med, hi, c.lo, c.med, c.hi)
		}
	}
}

// TestReportRendering builds a report by hand and checks the statuses,
// the ratios and what the table says about rows not measured.
func TestReportRendering(t *testing.T) {
	rep := &Report{Size: 1 << 20, Repeat: 2, Targets: []TargetInfo{
		{Name: TargetGoNFS, Available: true}, {Name: TargetServe, Available: true},
		{Name: TargetGanesha, Reason: "ganesha.nfsd not installed"},
	}}
	rep.Rows = []*Row{
		{Workload: WorkReadWarm, Client: ClientOurs, Target: TargetGoNFS, Unit: "MB/s", Values: []float64{100, 200}},
		{Workload: WorkReadWarm, Client: ClientOurs, Target: TargetServe, Unit: "MB/s", Values: []float64{500, 300, 400}},
		{Workload: WorkReadWarm, Client: ClientOurs, Target: TargetGanesha, Unit: "MB/s", Status: StatusUnavailable, Reason: "ganesha.nfsd not installed"},
		{Workload: WorkWrite, Client: ClientOurs, Target: TargetServe, Unit: "MB/s", Errors: []string{"boom"}},
	}
	for _, r := range rep.Rows {
		r.summarize()
	}
	if r := rep.Rows[1]; r.Status != StatusOK || r.Min != 300 || r.Median != 400 || r.Max != 500 {
		t.Errorf("serve row: %+v", r)
	}
	if r := rep.Rows[3]; r.Status != StatusFailed || r.Reason != "boom" {
		t.Errorf("failed row: %+v", r)
	}
	rep.Ratios = ratios(rep)
	if len(rep.Ratios) != 1 || rep.Ratios[0].Value != 400.0/150 {
		t.Fatalf("ratios: %+v", rep.Ratios)
	}
	var b bytes.Buffer
	if err := rep.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	table := b.String()
	for _, want := range []string{"| seq-read-warm (MB/s) | nfscache/client | 150 (100) | 400 (300) | n/a [1] |",
		"[1] unavailable: ganesha.nfsd not installed", "[2] failed: boom", "serve vs stock go-nfs, seq-read-warm, nfscache/client: 2.67x"} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	b.Reset()
	if err := rep.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(b.String(), "<rect"); n != 3 { // background + 2 bars
		t.Errorf("svg has %d rects, want 3", n)
	}
}
