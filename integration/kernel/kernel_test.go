//go:build linux

package kernel

import (
	"bufio"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	nfs "github.com/willscott/go-nfs"
)

const kernelVersion = "6.1.0-56-amd64"

// Sizes of the workload. TCG emulation is slow: the large file is sized so
// that both boots together stay near two minutes on a loaded 2-core machine.
var (
	bigMiB     = envInt("NFSCACHE_KERNEL_BIG_MIB", 32)
	dirEntries = envInt("NFSCACHE_KERNEL_DIR_ENTRIES", 10000)
)

// The checks the guest must report in each boot; the host fails if one is
// missing from the guest's plan or never reports.
var (
	writeChecks = []string{"statfs", "create", "offsets", "bigfile", "append", "truncate",
		"chmod_utimes", "hardlink", "symlink", "rename", "unlink_open", "mkdir_rmdir",
		"readdir_churn", "mmap", "fsync", "excl_create",
		"restart_open_read", "restart_open_write", "restart_cached_paths", "restart_create_rename"}
	verifyChecks = []string{"statfs", "create", "offsets", "bigfile", "append", "truncate",
		"chmod_utimes", "hardlink", "symlink", "rename", "unlink_open", "mkdir_rmdir",
		"readdir_churn", "mmap", "fsync", "excl_create", "restart_state"}
)

// unknownProcedure matches what a server logs when a client calls a
// program or procedure it does not implement.
var unknownProcedure = regexp.MustCompile(`(?i)no handler for|unknown (procedure|program|proc|prog)|proc_?unavail|prog_?unavail|not implemented`)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// kernelEnv is what booting the guest needs from the host.
type kernelEnv struct {
	qemu, busybox, root, version string
}

func (k kernelEnv) vmlinuz() string { return filepath.Join(k.root, "boot", "vmlinuz-"+k.version) }

// requireKernelEnv finds qemu, a static busybox and the prepared kernel. A
// missing piece fails the test under CI, and skips it (saying what is
// missing) elsewhere.
func requireKernelEnv(t *testing.T) kernelEnv {
	t.Helper()
	rootFromTestSh, setByTestSh := os.LookupEnv("NFSCACHE_KERNEL_ROOT")
	required := os.Getenv("CI") != "" || setByTestSh
	var missing []string
	k := kernelEnv{version: kernelVersion}
	var err error
	if k.qemu, err = exec.LookPath("qemu-system-x86_64"); err != nil {
		missing = append(missing, "qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if isStatic(p) {
			k.busybox = p
			break
		}
	}
	if k.busybox == "" {
		missing = append(missing, "a static busybox (apt-get install busybox-static)")
	}
	k.root = rootFromTestSh
	if k.root == "" && !setByTestSh {
		out, err := exec.Command("./prepare-kernel.sh", "--print").Output()
		if err == nil {
			k.root = strings.TrimSpace(string(out))
		}
	}
	if k.root == "" {
		missing = append(missing, "the Debian kernel "+kernelVersion+" (run integration/kernel/prepare-kernel.sh; test.sh does)")
	} else if _, err := os.Stat(k.vmlinuz()); err != nil {
		missing = append(missing, fmt.Sprintf("the kernel image: %v", err))
	}
	if len(missing) == 0 {
		return k
	}
	msg := "Linux kernel NFS client test cannot run: missing " + strings.Join(missing, "; ")
	if required {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED (not in CI; set CI=1 to make this a failure): " + msg)
	return k
}

// isStatic reports whether p is an ELF executable without a program interpreter.
func isStatic(p string) bool {
	f, err := elf.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return false
		}
	}
	return true
}

// buildGuest compiles ./guest as a static linux/amd64 binary.
func buildGuest(t *testing.T, out string) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goBin, "build", "-trimpath", "-o", out, "./guest")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the guest program: %v\n%s", err, b)
	}
}

// TestLinuxKernelClient mounts our server (serve: an osfs directory).
func TestLinuxKernelClient(t *testing.T) {
	k := requireKernelEnv(t)
	runKernelSuite(t, k, knownServe, func(t *testing.T, exportDir string, logger *slog.Logger) starter {
		stateDir := filepath.Join(t.TempDir(), "state")
		return func(t *testing.T, addr string) *runningServer {
			return startServer(t, addr, exportDir, stateDir, logger)
		}
	})
}

// TestLinuxKernelClientProxy mounts the proxy (our server over billyfs with
// a local cache) whose upstream is our server over the export directory.
// Only the proxy restarts; the upstream keeps running. It doubles the
// test time, so it runs only with NFSCACHE_KERNEL_PROXY=1.
func TestLinuxKernelClientProxy(t *testing.T) {
	if os.Getenv("NFSCACHE_KERNEL_PROXY") == "" {
		t.Skip("the proxy variant boots the guest twice more (~3 min): set NFSCACHE_KERNEL_PROXY=1 to run it")
	}
	k := requireKernelEnv(t)
	runKernelSuite(t, k, knownProxy, func(t *testing.T, exportDir string, logger *slog.Logger) starter {
		up := startServer(t, "127.0.0.1:0", exportDir, filepath.Join(t.TempDir(), "upstream-state"), logger.With("side", "upstream"))
		t.Cleanup(func() { up.stop() })
		cacheDir, stateDir := filepath.Join(t.TempDir(), "cache"), filepath.Join(t.TempDir(), "proxy-state")
		return func(t *testing.T, addr string) *runningServer {
			return startProxy(t, addr, up.addr, cacheDir, stateDir, logger.With("side", "proxy"))
		}
	})
}

// starter starts the server under test on addr ("127.0.0.1:0" first, the
// same address on a restart).
type starter func(t *testing.T, addr string) *runningServer

func runKernelSuite(t *testing.T, k kernelEnv, known knownSet, setup func(t *testing.T, exportDir string, logger *slog.Logger) starter) {
	work := t.TempDir()
	exportDir := filepath.Join(work, "export")
	for _, d := range []string{exportDir, filepath.Join(exportDir, "readdir", "big")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The stable entries of the readdir check are created here: creating
	// 10 000 files through an emulated guest would take most of the budget.
	for i := 0; i < dirEntries; i++ {
		if err := os.WriteFile(filepath.Join(exportDir, "readdir", "big", fmt.Sprintf("stable-%05d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	prevLog := nfs.Log
	nfs.SetLogger(&nfsLogger{l: logger, level: nfs.InfoLevel})
	t.Cleanup(func() { nfs.SetLogger(prevLog) })

	start := setup(t, exportDir, logger)
	srv := start(t, "127.0.0.1:0")
	t.Cleanup(func() {
		if srv != nil {
			srv.stop()
		}
	})
	serverAddr := srv.addr
	sniffer, err := newRPCSniffer(func() string { return serverAddr })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sniffer.close)
	// The guest mounts the relay, which decodes every call and reply.
	_, port, _ := net.SplitHostPort(sniffer.addr())

	guestBin := filepath.Join(work, "guest")
	buildGuest(t, guestBin)
	initrd := filepath.Join(work, "initrd.gz")
	config := fmt.Sprintf("NFSOPTS=vers=3,proto=tcp,port=%s,mountport=%s,nolock,noacl,addr=10.0.2.2\nGUESTARGS=\"-big-mib=%d -dir-entries=%d -pause\"\n",
		port, port, bigMiB, dirEntries)
	buildInitramfs(t, k, guestBin, config, initrd)

	restart := func(why string) {
		began := time.Now()
		if err := srv.stop(); err != nil {
			t.Errorf("stopping the server (%s): %v", why, err)
		}
		srv = start(t, srv.addr)
		t.Logf("server restarted on %s (%s) in %v", srv.addr, why, time.Since(began).Round(time.Millisecond))
	}

	sums := map[string]shaLine{}
	boot1 := bootGuest(t, k, initrd, "write", func(g *guestRun) {
		// The guest holds files open and waits: restart the server under it
		// and check the fsynced files from the export directory meanwhile.
		for _, s := range g.shas() {
			sums[s.path] = s
		}
		checkExportFiles(t, exportDir, sums, "during the pause of boot 1")
		restart("with the guest paused, files open")
	})
	boot1.rpcCounts, boot1.readdirTrace, boot1.failedCalls = sniffer.report()
	boot1.report(t, writeChecks, known)

	restart("between boots")
	boot2 := bootGuest(t, k, initrd, "verify", nil)
	boot2.rpcCounts, boot2.readdirTrace, boot2.failedCalls = sniffer.report()
	boot2.report(t, verifyChecks, known)

	for _, s := range boot1.shas() {
		sums[s.path] = s
	}
	checkExportFiles(t, exportDir, sums, "after both boots")

	if err := srv.stop(); err != nil {
		t.Errorf("stopping the server: %v", err)
	}
	srv = nil

	t.Run("server_log_no_unknown_procedures", func(t *testing.T) {
		var bad []string
		errorsLogged := 0
		for _, line := range strings.Split(logs.String(), "\n") {
			if unknownProcedure.MatchString(line) {
				bad = append(bad, line)
			}
			if strings.Contains(line, "level=ERROR") {
				errorsLogged++
			}
		}
		t.Logf("server log: %d lines, %d at level ERROR", strings.Count(logs.String(), "\n"), errorsLogged)
		if len(bad) > 0 {
			t.Errorf("the server logged %d calls it does not implement for what the kernel sent, e.g.:\n%s",
				len(bad), strings.Join(bad[:min(len(bad), 10)], "\n"))
		}
	})
	if t.Failed() {
		t.Logf("server log (last 100 lines):\n%s", tail(logs.String(), 100))
	}

	for _, b := range []*guestRun{boot1, boot2} {
		t.Logf("boot %s: first console output after %v, /init after %v (guest uptime %ss), mounted after %v, guest finished after %v, qemu exited after %v",
			b.phase, b.firstLineAt.Round(time.Millisecond), b.initAt.Round(time.Millisecond), b.initUptime, b.mountedAt.Round(time.Millisecond),
			b.guestDoneAt.Round(time.Millisecond), b.exitAt.Round(time.Millisecond))
	}
	for _, b := range []*guestRun{boot1, boot2} {
		for _, l := range b.infos() {
			t.Logf("boot %s: %s", b.phase, l)
		}
		t.Logf("boot %s: calls the kernel made (program procedure → reply):\n\t%s", b.phase, strings.Join(b.rpcCounts, "\n\t"))
	}
}

// shaLine is a file the guest wrote and announced with its checksum.
type shaLine struct {
	path string
	size int64
	sum  string
}

// checkExportFiles re-reads files the guest fsynced straight from the
// export directory: the data reached the server's disk.
func checkExportFiles(t *testing.T, exportDir string, sums map[string]shaLine, when string) {
	t.Helper()
	if len(sums) == 0 {
		t.Errorf("%s: the guest announced no files to check", when)
	}
	for _, s := range sums {
		f, err := os.Open(filepath.Join(exportDir, filepath.FromSlash(s.path)))
		if err != nil {
			t.Errorf("%s: %v", when, err)
			continue
		}
		h := sha256.New()
		n, err := io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Errorf("%s: reading %s: %v", when, s.path, err)
			continue
		}
		if got := hex.EncodeToString(h.Sum(nil)); n != s.size || got != s.sum {
			t.Errorf("%s: export file %s has %d bytes sha256 %s; the guest wrote %d bytes sha256 %s",
				when, s.path, n, got, s.size, s.sum)
		}
	}
}

// guestRun is the record of one boot.
type guestRun struct {
	phase string

	mu     sync.Mutex
	lines  []string // serial console, escape codes stripped
	plan   []string
	checks map[string]string // name → "ok..." or "FAIL ..."
	done   bool
	err    error // qemu failed, timed out, or the guest never finished

	firstLineAt                            time.Duration // first console output (firmware)
	initAt, mountedAt, guestDoneAt, exitAt time.Duration
	initUptime                             string

	rpcCounts    []string // from the relay: "NFS3 GETATTR → NFS3_OK: 12"
	readdirTrace []string // the latest READDIR(PLUS) exchanges
	failedCalls  []string // calls answered other than OK or NOENT
}

func (g *guestRun) shas() []shaLine {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []shaLine
	for _, l := range g.lines {
		f := strings.Fields(l)
		if len(f) == 4 && f[0] == "SHA" {
			n, err := strconv.ParseInt(f[2], 10, 64)
			if err == nil {
				out = append(out, shaLine{f[1], n, f[3]})
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

var checkLine = regexp.MustCompile(`CHECK (\S+): (ok|FAIL)(.*)$`)

// bootGuest boots the kernel with PHASE=phase and collects the console.
// When the guest prints "PAUSE restart", onPause runs and then the guest is
// told to resume (a line on its console).
func bootGuest(t *testing.T, k kernelEnv, initrd, phase string, onPause func(*guestRun)) *guestRun {
	t.Helper()
	g := &guestRun{phase: phase, checks: map[string]string{}}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.qemu,
		"-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", "2",
		"-nographic", "-no-reboot",
		"-kernel", k.vmlinuz(), "-initrd", initrd,
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
		g.mu.Unlock()
		if g.firstLineAt == 0 {
			g.firstLineAt = now
		}
		switch {
		case strings.Contains(line, "INIT start"):
			g.initAt = now
			if _, up, ok := strings.Cut(line, "uptime="); ok {
				g.initUptime = up
			}
		case strings.Contains(line, "INIT mounted"):
			g.mountedAt = now
		case strings.HasPrefix(line, "PLAN "):
			if f := strings.Fields(line); len(f) > 2 {
				g.plan = f[2:]
			}
		case strings.HasPrefix(line, "DONE "):
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
			g.checks[m[1]] = m[2] + m[3]
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

// report turns the boot's checks into subtests.
func (g *guestRun) report(t *testing.T, want []string, known knownSet) {
	t.Helper()
	t.Run("boot_"+g.phase, func(t *testing.T) {
		failed := g.err != nil
		if g.err != nil {
			t.Errorf("%v", g.err)
		}
		planned := map[string]bool{}
		for _, n := range g.plan {
			planned[n] = true
		}
		for _, n := range want {
			if !planned[n] {
				t.Errorf("the guest's plan %v lacks check %s", g.plan, n)
				failed = true
			}
		}
		for _, n := range g.plan {
			res, ok := g.checks[n]
			why, isKnown := known.failures[g.phase+"/"+n]
			if isKnown && ok && !strings.HasPrefix(res, "ok") {
				t.Logf("KNOWN FAILURE %s/%s: %s (%s)", g.phase, n, res, why)
				continue
			}
			t.Run(n, func(t *testing.T) {
				switch {
				case isKnown && ok:
					t.Logf("KNOWN FAILURE NOW PASSES: %s/%s is listed as a known failure (%s) but passed: remove it once it passes reliably", g.phase, n, why)
				case !ok:
					t.Errorf("no result reported (guest stopped or hung; last BEGIN: %s)", g.lastBegin())
				case strings.HasPrefix(res, "ok"):
					t.Logf("ok%s", strings.TrimPrefix(res, "ok"))
				default:
					t.Errorf("%s", res)
				}
			})
			if !ok || !strings.HasPrefix(res, "ok") {
				failed = true
			}
		}
		t.Run("no_unimplemented_calls", func(t *testing.T) {
			if len(g.rpcCounts) == 0 {
				t.Fatalf("the relay saw no RPC traffic")
			}
			var bad []string
			for _, c := range unimplemented(g.rpcCounts) {
				key, _, _ := strings.Cut(c, ":")
				if why, ok := known.unimplemented[key]; ok {
					t.Logf("KNOWN UNIMPLEMENTED %s (%s)", c, why)
					continue
				}
				bad = append(bad, c)
			}
			if len(bad) > 0 {
				t.Errorf("the server answered calls of the kernel as unimplemented:\n%s", strings.Join(bad, "\n"))
			}
		})
		if msgs := g.kernelNFSMessages(); len(msgs) > 0 {
			t.Logf("kernel NFS messages in boot %s:\n%s", g.phase, strings.Join(msgs, "\n"))
		}
		if failed {
			t.Logf("serial console of boot %s:\n%s", g.phase, strings.Join(g.lines, "\n"))
			t.Logf("calls of boot %s the server answered other than OK or NOENT (relay):\n%s", g.phase, strings.Join(g.failedCalls, "\n"))
			if res := g.checks["readdir_churn"]; !strings.HasPrefix(res, "ok") {
				t.Logf("READDIR/READDIRPLUS exchanges of boot %s around NFS3ERR_BAD_COOKIE (relay):\n%s", g.phase, strings.Join(aroundBadCookies(g.readdirTrace, 150), "\n"))
				t.Logf("last READDIR/READDIRPLUS exchanges of boot %s (relay):\n%s", g.phase, strings.Join(tailLines(g.readdirTrace, 20), "\n"))
			}
		}
	})
}

// kernelNFSMessages returns the kernel's NFS complaints on the console,
// such as "NFS: server 10.0.2.2 error: fileid changed" (printed at
// KERN_ERR, so "quiet" does not hide them) and the line after each.
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

func (g *guestRun) lastBegin() string {
	for i := len(g.lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(g.lines[i], "BEGIN ") {
			return strings.TrimPrefix(g.lines[i], "BEGIN ")
		}
	}
	return "none"
}

func tailLines(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
