//go:build linux

package kernel

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// hostResult is a check the host made for a variant (phase "host").
type hostResult struct {
	name, res string // res: "ok ..." or "FAIL ..."
}

func (v *variant) hostCheck(name string, err error) {
	res := "ok"
	if err != nil {
		res = "FAIL " + strings.Join(strings.Fields(err.Error()), " ")
	}
	v.host = append(v.host, hostResult{name, res})
}

// hostChecks are the host's checks every variant reports.
var hostChecks = []string{"fsynced_data_on_disk_during_pause", "data_on_disk_after_both_boots", "statfs_figures"}

// report turns the variant's results into subtests — <variant>/<phase>/<check>,
// phase write, verify or host — and returns one summary line per check.
// A failure listed in v.known is logged as KNOWN FAILURE instead of
// failing; every other failure, a check missing from the plan and a check
// that never reported fail the test.
func (v *variant) report(t *testing.T, boots []*guestRun) (summary []string) {
	t.Helper()
	record := func(phase, check, res string, ok bool) string {
		key := phase + "/" + check
		line := fmt.Sprintf("%s %s ", v.name, key)
		why, isKnown := v.known.failures[key]
		switch {
		case !ok:
			line += "FAIL: no result reported"
		case strings.HasPrefix(res, "ok"):
			line += res
			if isKnown {
				line += " [listed as a known failure: remove the entry]"
			}
		default:
			line += "FAIL: " + strings.TrimSpace(strings.TrimPrefix(res, "FAIL"))
			if isKnown {
				line += " [KNOWN: " + why + "]"
			}
		}
		return line
	}
	// one check as a subtest; false when it failed (known or not)
	runCheck := func(t *testing.T, phase, check, res string, ok bool, lastBegin string) bool {
		key := phase + "/" + check
		why, isKnown := v.known.failures[key]
		summary = append(summary, record(phase, check, res, ok))
		if isKnown && ok && !strings.HasPrefix(res, "ok") {
			t.Logf("KNOWN FAILURE %s %s: %s (%s)", v.name, key, res, why)
			return false
		}
		t.Run(check, func(t *testing.T) {
			switch {
			case isKnown && ok && strings.HasPrefix(res, "ok"):
				t.Logf("KNOWN FAILURE NOW PASSES: %s %s is listed as a known failure (%s) but passed: remove it once it passes reliably", v.name, key, why)
			case !ok:
				t.Errorf("no result reported (guest stopped or hung; last BEGIN: %s)", lastBegin)
			case strings.HasPrefix(res, "ok"):
				t.Logf("ok%s", strings.TrimPrefix(res, "ok"))
			default:
				t.Errorf("%s %s %s", v.name, key, res)
			}
		})
		return ok && strings.HasPrefix(res, "ok")
	}
	t.Run(v.name, func(t *testing.T) {
		for _, b := range boots {
			want := writeChecks
			if b.phase == "verify" {
				want = verifyChecks
			}
			traffic := v.traffic[b.phase]
			t.Run(b.phase, func(t *testing.T) {
				failed := false
				plan := b.plans[v.name]
				planned := map[string]bool{}
				for _, n := range plan {
					planned[n] = true
				}
				for _, n := range want {
					if !planned[n] {
						t.Errorf("the guest's plan %v for %s lacks check %s", plan, v.name, n)
						summary = append(summary, fmt.Sprintf("%s %s/%s FAIL: not in the guest's plan", v.name, b.phase, n))
						failed = true
					}
				}
				for _, n := range plan {
					res, ok := b.checks[v.name+"/"+n]
					if !runCheck(t, b.phase, n, res, ok, b.lastBegin(v.name)) {
						failed = true
					}
				}
				t.Run("no_unimplemented_calls", func(t *testing.T) {
					if traffic == nil || len(traffic.counts) == 0 {
						t.Fatalf("the relay saw no RPC traffic")
					}
					counts := traffic.counts
					if up := v.upTraffic[b.phase]; up != nil {
						for _, c := range up.counts {
							counts = append(counts, "upstream: "+c)
						}
					}
					var bad []string
					for _, c := range unimplemented(counts) {
						key, _, _ := strings.Cut(c, ":")
						if why, ok := v.known.unimplemented[key]; ok {
							t.Logf("KNOWN UNIMPLEMENTED %s (%s)", c, why)
							continue
						}
						bad = append(bad, c)
					}
					if len(bad) > 0 {
						t.Errorf("%s: the server (or, for the proxy, its upstream) answered calls as unimplemented:\n%s", v.name, strings.Join(bad, "\n"))
					}
				})
				if msgs := b.kernelNFSMessages(); len(msgs) > 0 {
					t.Logf("kernel NFS messages in boot %s (any mount):\n%s", b.phase, strings.Join(msgs, "\n"))
				}
				if failed && traffic != nil {
					t.Logf("serial console of boot %s, lines of %s:\n%s", b.phase, v.name, strings.Join(b.consoleOf(v.name), "\n"))
					t.Logf("calls of boot %s the %s server answered other than OK or NOENT (relay):\n%s", b.phase, v.name, strings.Join(traffic.failed, "\n"))
					if res := b.checks[v.name+"/readdir_churn"]; !strings.HasPrefix(res, "ok") {
						t.Logf("READDIR/READDIRPLUS exchanges of boot %s around NFS3ERR_BAD_COOKIE (relay):\n%s", b.phase, strings.Join(aroundBadCookies(traffic.readdir, 150), "\n"))
						t.Logf("last READDIR/READDIRPLUS exchanges of boot %s (relay):\n%s", b.phase, strings.Join(tailLines(traffic.readdir, 20), "\n"))
					}
				}
			})
		}
		t.Run("host", func(t *testing.T) {
			got := map[string]bool{}
			for _, h := range v.host {
				got[h.name] = true
				runCheck(t, "host", h.name, h.res, true, "")
			}
			for _, n := range hostChecks {
				if !got[n] {
					runCheck(t, "host", n, "", false, "(host check did not run)")
				}
			}
		})
	})
	return summary
}

// checkDataFiles re-reads, straight from the directory where the variant's
// data lands (the export; the upstream's export for the proxy), the files
// the guest fsynced and announced: the data reached that disk.
func checkDataFiles(dataDir string, sums []shaLine) error {
	if len(sums) == 0 {
		return errors.New("the guest announced no files to check")
	}
	var errs []error
	for _, s := range sums {
		f, err := os.Open(filepath.Join(dataDir, filepath.FromSlash(s.path)))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("reading %s: %w", s.path, err))
			continue
		}
		if got := hex.EncodeToString(h.Sum(nil)); n != s.size || got != s.sum {
			errs = append(errs, fmt.Errorf("%s on disk has %d bytes sha256 %.16s…; the guest wrote %d bytes sha256 %.16s…",
				s.path, n, got, s.size, s.sum))
		}
	}
	return errors.Join(errs...)
}

// checkStatfs compares statfs(2) in the guest with statfs of the
// filesystem that holds dataDir, which the server (or, through the proxy,
// the upstream) reports in FSSTAT. The kernel's nfs_statfs rounds tbytes up
// to its block size and reports tfiles as f_files; the free figures move
// while other processes write, so only the totals must match exactly.
func checkStatfs(dataDir string, figs []statfsFigures) error {
	if len(figs) == 0 {
		return errors.New("the guest reported no STATFS line")
	}
	var sf syscall.Statfs_t
	if err := syscall.Statfs(dataDir, &sf); err != nil {
		return err
	}
	tbytes := sf.Blocks * uint64(sf.Bsize)
	var errs []error
	for i, g := range figs {
		if g.bsize == 0 {
			errs = append(errs, fmt.Errorf("statfs %d: bsize 0", i))
			continue
		}
		if want := (tbytes + g.bsize - 1) / g.bsize; g.blocks != want || g.files != sf.Files {
			errs = append(errs, fmt.Errorf("statfs %d: guest blocks=%d×%d files=%d; the data directory's filesystem has %d bytes (%d blocks of %d) and %d files",
				i, g.blocks, g.bsize, g.files, tbytes, want, g.bsize, sf.Files))
		}
	}
	return errors.Join(errs...)
}

// treeEntry is what compareTrees compares of one path.
type treeEntry struct {
	kind  fs.FileMode // type bits
	perm  fs.FileMode
	size  int64
	sum   string // regular files: sha256; symlinks: the target
	nlink uint64 // regular files
}

func (e treeEntry) String() string {
	s := fmt.Sprintf("%v", e.kind|e.perm)
	switch {
	case e.kind == 0:
		s += fmt.Sprintf(" %d bytes nlink %d sha256 %.16s…", e.size, e.nlink, e.sum)
	case e.kind == fs.ModeSymlink:
		s += " → " + e.sum
	}
	return s
}

func readTree(root string) (map[string]treeEntry, error) {
	out := map[string]treeEntry{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		e := treeEntry{kind: fi.Mode().Type(), perm: fi.Mode().Perm()}
		switch {
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			e.size, e.sum = int64(len(b)), hex.EncodeToString(sum[:])
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				e.nlink = uint64(st.Nlink)
			}
		case fi.Mode()&fs.ModeSymlink != 0:
			if e.sum, err = os.Readlink(p); err != nil {
				return err
			}
		}
		out[filepath.ToSlash(rel)] = e
		return nil
	})
	return out, err
}

// compareTrees checks that the upstream's export, after the proxy was shut
// down, holds exactly what the same workload left in serve's export: the
// same names, types, permissions, link counts, symlink targets and bytes.
// The proxy must have written everything through to its upstream.
func compareTrees(serveDir, upstreamDir string) error {
	want, err := readTree(serveDir)
	if err != nil {
		return fmt.Errorf("reading serve's export: %w", err)
	}
	got, err := readTree(upstreamDir)
	if err != nil {
		return fmt.Errorf("reading the upstream's export: %w", err)
	}
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("%s: missing on the upstream (serve: %v)", p, w))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s: upstream %v, serve %v", p, g, w))
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: only on the upstream (%v)", p, g))
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	sort.Strings(diffs)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%d paths differ:", len(diffs))
	for _, d := range diffs[:min(len(diffs), 20)] {
		b.WriteString("; " + d)
	}
	return errors.New(b.String())
}
