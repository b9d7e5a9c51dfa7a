package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"

	"github.com/nfscache/nfscache/metrics"
	"github.com/nfscache/nfscache/server"
)

// pxBuild builds cmd/nfsd-cache into a test temp dir (the Go build cache
// makes repeated builds a link step).
func pxBuild(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "nfsd-cache")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nfscache/nfscache/cmd/nfsd-cache").CombinedOutput()
	if err != nil {
		t.Fatalf("build nfsd-cache: %v\n%s", err, out)
	}
	return bin
}

// pxLog is a goroutine-safe buffer for a child's stderr.
type pxLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *pxLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *pxLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// pxProc is a running `nfsd-cache proxy` process.
type pxProc struct {
	cmd     *exec.Cmd
	Port    string // the proxy's NFS/MOUNT port
	Metrics string // host:port of /metrics, "" without --metrics
	Banner  string // what it printed on start
	stderr  *pxLog
	exited  chan struct{}
	waitErr error
}

// pxStart runs prefix... bin proxy args... (prefix: e.g. ip netns exec NS)
// and waits for its banner. The process is stopped (SIGTERM) at cleanup if
// still running.
func pxStart(t testing.TB, prefix []string, bin string, args ...string) *pxProc {
	t.Helper()
	argv := append(append(append([]string(nil), prefix...), bin, "proxy"), args...)
	cmd := exec.Command(argv[0], argv[1:]...)
	p := &pxProc{cmd: cmd, stderr: &pxLog{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waitErr = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(60 * time.Second):
				_ = cmd.Process.Kill()
				<-p.exited
			}
		}
	})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var banner []string
	timeout := time.After(60 * time.Second)
	for p.Port == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				<-p.exited
				t.Fatalf("proxy exited before its banner (%v); stdout:\n%s\nstderr:\n%s", p.waitErr, strings.Join(banner, "\n"), p.stderr)
			}
			banner = append(banner, l)
			if m := regexp.MustCompile(`http://([^/ ]+)/metrics`).FindStringSubmatch(l); m != nil {
				p.Metrics = m[1]
			}
			if strings.Contains(l, "libnfs:") {
				p.Port = regexp.MustCompile(`nfsport=(\d+)`).FindStringSubmatch(l)[1]
			}
		case <-timeout:
			t.Fatalf("no proxy banner after 60 s; stderr:\n%s", p.stderr)
		}
	}
	go func() {
		for range lines { // keep draining so the child never blocks on stdout
		}
	}()
	p.Banner = strings.Join(banner, "\n")
	return p
}

// Stop sends SIGTERM and requires a clean exit (status 0: everything
// flushed) within 60 s.
func (p *pxProc) Stop(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		t.Fatalf("proxy did not exit within 60 s of SIGTERM; stderr:\n%s", p.stderr)
	}
	if p.waitErr != nil {
		t.Fatalf("proxy exit after SIGTERM: %v; stderr:\n%s", p.waitErr, p.stderr)
	}
}

// URL is the libnfs URL of file on the proxy.
func (p *pxProc) URL(file string) string { return srvURL(p.Port, file) }

// pxScrape fetches the proxy's /metrics (dial: nil = the host network) and
// parses it.
func pxScrape(t testing.TB, addr string, dial func(ctx context.Context, network, addr string) (net.Conn, error)) (metrics.Report, string) {
	t.Helper()
	cl := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: dial}}
	resp, err := cl.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %v %s", err, resp.Status)
	}
	rep, err := metrics.ParseText(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return rep, string(body)
}

// pxUpstream is our server exporting a directory on a fixed port with a
// persistent state dir, so it can be stopped and restarted like a real
// server reboot (same handles, new write verifier).
type pxUpstream struct {
	Dir, State, Addr string
	mu               sync.Mutex
	srv              *server.Server
	done             chan struct{}
}

func pxStartUpstream(t testing.TB) *pxUpstream {
	t.Helper()
	u := &pxUpstream{Dir: t.TempDir(), State: t.TempDir(), Addr: "127.0.0.1:0"}
	if err := u.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(u.Stop)
	return u
}

// Start serves again on the same address (the first Start picks a port).
func (u *pxUpstream) Start() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	srv, err := server.New(osfs.New(u.Dir, osfs.WithBoundOS()), server.Options{StateDir: u.State})
	if err != nil {
		return err
	}
	var l net.Listener
	for range 100 { // the old listener's port may take a moment to free
		if l, err = net.Listen("tcp", u.Addr); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		srv.Close()
		return err
	}
	u.Addr = l.Addr().String()
	u.srv, u.done = srv, make(chan struct{})
	done := u.done
	go func() { defer close(done); _ = srv.Serve(l) }()
	return nil
}

// Stop closes the server (connections drop); counters restart with Start.
func (u *pxUpstream) Stop() {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.srv == nil {
		return
	}
	u.srv.Close()
	<-u.done
	u.srv = nil
}

// Reads is the READ calls the running upstream answered since its Start.
func (u *pxUpstream) Reads() uint64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.srv.Stats().NFS[server.ProcRead]
}

// pxRandomFile writes n random bytes to path and returns their SHA-256.
func pxRandomFile(t testing.TB, path string, n int) [32]byte {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

// pxRun runs a command (nfs-cat etc.) and returns its stdout; stderr goes
// into the failure message.
func pxRun(t testing.TB, argv ...string) []byte {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, errb.String())
	}
	return out.Bytes()
}

func pxShortSum(s [32]byte) string { return fmt.Sprintf("%x", s[:6]) }
