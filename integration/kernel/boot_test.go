//go:build linux

package kernel

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// guestRun is the record of one boot.
type guestRun struct {
	phase string

	mu     sync.Mutex
	lines  []string // serial console, escape codes stripped
	timed  []string // the same, each with the host's time of arrival
	plans  map[string][]string
	checks map[string]string // "variant/check" → "ok..." or "FAIL ..."
	statfs map[string][]statfsFigures
	done   bool
	err    error // qemu failed, timed out, or the guest never finished

	firstLineAt                            time.Duration // first console output (firmware)
	initAt, mountedAt, guestDoneAt, exitAt time.Duration
	initUptime                             string
}

// shaLine is a file the guest wrote and announced with its checksum.
type shaLine struct {
	path string
	size int64
	sum  string
}

// statfsFigures is statfs(2) of a mount as the guest saw it.
type statfsFigures struct {
	bsize, blocks, bfree, bavail, files, ffree uint64
}

// shas returns the files the guest announced for variant v.
func (g *guestRun) shas(v string) []shaLine {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []shaLine
	for _, l := range g.lines {
		f := strings.Fields(l)
		if len(f) == 5 && f[0] == "SHA" && f[1] == v {
			n, err := strconv.ParseInt(f[3], 10, 64)
			if err == nil {
				out = append(out, shaLine{f[2], n, f[4]})
			}
		}
	}
	return out
}

func (g *guestRun) infos() []string {
	var out []string
	for _, l := range g.lines {
		if strings.HasPrefix(l, "INFO ") {
			out = append(out, strings.TrimPrefix(l, "INFO "))
		}
	}
	return out
}

// escapeCodes matches the terminal control sequences on the serial console.
var escapeCodes = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\x1b[=>78cDEHM]|\r`)

var checkLine = regexp.MustCompile(`CHECK (\S+)/(\S+): (ok|FAIL)(.*)$`)

// bootGuest boots the kernel with PHASE=phase and collects the console.
// When the guest prints "PAUSE restart", onPause runs and then the guest is
// told to resume (a line on its console).
func bootGuest(t *testing.T, k kernelEnv, initrd, phase string, onPause func(*guestRun)) *guestRun {
	t.Helper()
	g := &guestRun{phase: phase, plans: map[string][]string{}, checks: map[string]string{}, statfs: map[string][]statfsFigures{}}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.qemu,
		"-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
		"-nographic", "-no-reboot",
		"-kernel", k.image(), "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 PHASE="+phase,
		// romfile= skips the iPXE option ROM: nothing boots from the network.
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile=")
	// Its own process group, killed as a whole on timeout; and killed if
	// the test binary dies (go test -timeout) instead of running on.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(escapeCodes.ReplaceAllString(sc.Text(), ""))
		if line == "" {
			continue
		}
		now := time.Since(start)
		g.mu.Lock()
		g.lines = append(g.lines, line)
		g.timed = append(g.timed, time.Now().Format("15:04:05.000 ")+line)
		g.mu.Unlock()
		if g.firstLineAt == 0 {
			g.firstLineAt = now
		}
		f := strings.Fields(line)
		switch {
		case strings.Contains(line, "INIT start"):
			g.initAt = now
			if _, up, ok := strings.Cut(line, "uptime="); ok {
				g.initUptime = up
			}
		case strings.Contains(line, "INIT mounted"):
			g.mountedAt = now
		case f[0] == "PLAN" && len(f) > 3:
			g.plans[f[2]] = f[3:]
		case f[0] == "STATFS" && len(f) == 8:
			var s statfsFigures
			var errs []error
			for i, p := range []*uint64{&s.bsize, &s.blocks, &s.bfree, &s.bavail, &s.files, &s.ffree} {
				var err error
				*p, err = strconv.ParseUint(f[2+i], 10, 64)
				errs = append(errs, err)
			}
			if errors.Join(errs...) == nil {
				g.statfs[f[1]] = append(g.statfs[f[1]], s)
			}
		case f[0] == "DONE":
			g.done = true
			g.guestDoneAt = now
		case strings.HasPrefix(line, "PAUSE restart"):
			if onPause != nil {
				onPause(g)
			}
			if _, err := io.WriteString(stdin, "resume\n"); err != nil {
				t.Errorf("telling the guest to resume: %v", err)
			}
		}
		if m := checkLine.FindStringSubmatch(line); m != nil {
			g.checks[m[1]+"/"+m[2]] = m[3] + m[4]
		}
	}
	waitErr := cmd.Wait()
	g.exitAt = time.Since(start)
	switch {
	case ctx.Err() != nil:
		g.err = fmt.Errorf("qemu killed after %v (timeout)", g.exitAt.Round(time.Second))
	case waitErr != nil:
		g.err = fmt.Errorf("qemu: %v", waitErr)
	case !g.done:
		g.err = errors.New("the guest never printed DONE")
	}
	return g
}

// kernelNFSMessages returns the kernel's NFS complaints on the console,
// such as "NFS: server 10.0.2.2 error: fileid changed" (printed at
// KERN_ERR, so "quiet" does not hide them) and the line after each. The
// kernel does not say which mount: both variants share the server address.
func (g *guestRun) kernelNFSMessages() []string {
	var out []string
	for i, l := range g.lines {
		if strings.Contains(l, "] NFS: ") || strings.Contains(l, "] nfs: ") {
			out = append(out, l)
			if i+1 < len(g.lines) && strings.HasPrefix(g.lines[i+1], "[") {
				out = append(out, g.lines[i+1])
			}
		}
	}
	return out
}

// lastBegin names the last check of variant v that began.
func (g *guestRun) lastBegin(v string) string {
	for i := len(g.lines) - 1; i >= 0; i-- {
		if c, ok := strings.CutPrefix(g.lines[i], "BEGIN "+v+"/"); ok {
			return c
		}
	}
	return "none"
}

// consoleOf returns the console lines about variant v, and the lines that
// concern no variant (kernel messages, INIT).
func (g *guestRun) consoleOf(v string) []string {
	var out []string
	for _, l := range g.lines {
		f := strings.Fields(l)
		switch f[0] {
		case "PLAN", "STATFS", "SHA", "INFO":
			if len(f) > 2 && (f[1] == v || f[1] == "all" || f[2] == v) {
				out = append(out, l)
			}
			continue
		case "BEGIN", "CHECK":
			if len(f) > 1 && strings.HasPrefix(f[1], v+"/") {
				out = append(out, l)
			}
			continue
		}
		out = append(out, l)
	}
	return out
}
