// Package ganeshatest runs nfs-ganesha (a userspace NFSv3 server nobody on
// this project wrote) for tests, isolated so that several can run at once.
//
// # How it is isolated
//
// Each Ganesha gets its own network namespace with only loopback up
// (`ip netns add`, `ip link set lo up`), so its fixed ports (NFS 22049,
// MOUNT 22048, portmapper 111) never collide with the host or with another
// instance. Inside it, a private mount namespace (`unshare --mount`) puts a
// tmpfs on /run: rpcbind's lock file and unix socket (/run/rpcbind.*) are
// not network-namespaced, and ganesha registers with rpcbind through that
// socket, so without this two instances (or the host's rpcbind) would meet.
// The namespace holds `rpcbind -f` (never -h: it crashes with a double
// free) and `ganesha.nfsd -F` with the configuration of FIELD-NOTES.md
// (NFSv3 over TCP only, no NLM/RQUOTA, VFS FSAL, Attr_Expiration_Time=0).
// Readiness is `rpcinfo -p 127.0.0.1` inside the namespace listing mountd
// and nfs; Stop kills the process group by pid.
//
// # How tests reach it
//
// The test process stays in the host namespaces. Dial (shape of
// net.Dialer.DialContext, so it plugs into client.Options.Dial) creates the
// socket on an OS thread that has entered the namespace with setns(2): the
// goroutine locks its thread, enters the namespace, dials and exits without
// unlocking, which makes the Go runtime discard that thread. The socket
// keeps working from every thread afterwards. Do(fn) runs any function on
// such a thread (for clients that dial by themselves).
//
// # Requirements
//
// Root, and the Debian packages nfs-ganesha, nfs-ganesha-vfs, rpcbind
// (nfs-common) and iproute2. Without them Start skips the test, saying
// which one is missing; test.sh installs them, so CI runs these tests.
package ganeshatest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Fixed ports inside the namespace.
const (
	NFSPort   = 22049
	MountPort = 22048
)

// Export is the MOUNT path of the exported directory (ganesha's pseudo path).
const Export = "/export"

// Ganesha is one running nfs-ganesha in its own network namespace.
//
// Concurrency: Dial and Do are safe for concurrent use; Restart and Stop
// must not run concurrently with each other.
type Ganesha struct {
	// Dir is the exported directory, on the host file system: tests may
	// check file contents directly.
	Dir string
	// Addr is the host to give a client with Options.Portmap ("127.0.0.1"
	// inside the namespace); NFSAddr is NFS host:port for clients that do
	// not use the portmapper, MountAddr MOUNT's.
	Addr, NFSAddr, MountAddr string
	// NS is the network namespace name (/var/run/netns/NS).
	NS string

	work string // config, logs, pid files
	t    testing.TB

	mu  sync.Mutex
	cmd *exec.Cmd
}

var seq atomic.Int64

// Start starts rpcbind and ganesha exporting a fresh temporary directory,
// waits until they answer, and registers Stop with t.Cleanup. It skips the
// test (with the reason) when ganesha cannot run here.
func Start(t testing.TB) *Ganesha {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("ganeshatest: needs root for network namespaces (nfs-ganesha tests did not run)")
	}
	for _, bin := range []string{"ganesha.nfsd", "rpcbind", "rpcinfo", "ip", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("ganeshatest: %s not installed (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind nfs-common iproute2); nfs-ganesha tests did not run", bin)
		}
	}
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so"); err != nil {
		if m, _ := filepath.Glob("/usr/lib/*/ganesha/libfsalvfs.so"); len(m) == 0 {
			t.Skip("ganeshatest: nfs-ganesha-vfs (libfsalvfs.so) not installed; nfs-ganesha tests did not run")
		}
	}
	g := &Ganesha{
		Dir:  t.TempDir(),
		work: t.TempDir(),
		NS:   fmt.Sprintf("gt%d-%d", os.Getpid(), seq.Add(1)),
		t:    t,
	}
	g.Addr = "127.0.0.1"
	g.NFSAddr = net.JoinHostPort(g.Addr, strconv.Itoa(NFSPort))
	g.MountAddr = net.JoinHostPort(g.Addr, strconv.Itoa(MountPort))
	// The export directory must be reachable by ganesha running as root.
	if err := os.Chmod(g.Dir, 0o777); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "add", g.NS).CombinedOutput(); err != nil {
		t.Skipf("ganeshatest: cannot create a network namespace (%v: %s); nfs-ganesha tests did not run", err, out)
	}
	t.Cleanup(func() {
		g.Stop()
		_ = exec.Command("ip", "netns", "delete", g.NS).Run()
	})
	if out, err := exec.Command("ip", "netns", "exec", g.NS, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("ganeshatest: lo up: %v: %s", err, out)
	}
	if err := g.writeConfig(); err != nil {
		t.Fatal(err)
	}
	if err := g.start(); err != nil {
		t.Fatalf("ganeshatest: %v", err)
	}
	return g
}

func (g *Ganesha) writeConfig() error {
	conf := fmt.Sprintf(`NFS_CORE_PARAM {
	Protocols = 3; NFS_Port = %d; MNT_Port = %d;
	Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false;
	mount_path_pseudo = true;
}
NFS_KRB5 { Active_krb5 = false; }
NFSV4 { RecoveryBackend = fs; RecoveryRoot = %s; }
EXPORT {
	Export_Id = 1; Path = %s; Pseudo = %s; Protocols = 3; Transports = TCP;
	Access_Type = RW; Squash = No_Root_Squash; SecType = sys;
	Attr_Expiration_Time = 0;
	FSAL { Name = VFS; }
}
`, NFSPort, MountPort, filepath.Join(g.work, "recovery"), g.Dir, Export)
	// The wrapper runs in a private mount namespace: a tmpfs on /run keeps
	// rpcbind's lock and socket private; it exits (killing both) on TERM.
	script := fmt.Sprintf(`set -e
mount -t tmpfs none /run
mkdir -p /run/ganesha
rpcbind -f &
RB=$!
trap 'kill $GA $RB 2>/dev/null; wait' TERM INT
for i in $(seq 100); do [ -S /run/rpcbind.sock ] && break; sleep 0.02; done
ganesha.nfsd -F -L %s -f %s -p /run/ganesha/ganesha.pid &
GA=$!
wait $GA
kill $RB 2>/dev/null
wait
`, filepath.Join(g.work, "ganesha.log"), filepath.Join(g.work, "ganesha.conf"))
	if err := os.WriteFile(filepath.Join(g.work, "ganesha.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(g.work, "run.sh"), []byte(script), 0o755)
}

func (g *Ganesha) start() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	out, err := os.OpenFile(filepath.Join(g.work, "run.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command("ip", "netns", "exec", g.NS, "unshare", "--mount", "--propagation", "private",
		"sh", filepath.Join(g.work, "run.sh"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start ganesha: %w", err)
	}
	g.cmd = cmd
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		o, _ := exec.Command("ip", "netns", "exec", g.NS, "rpcinfo", "-p", "127.0.0.1").CombinedOutput()
		if bytes.Contains(o, []byte("mountd")) && bytes.Contains(o, []byte(" nfs")) {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("ganesha exited during start-up:\n%s", g.logs())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ganesha not ready after 30 s (rpcinfo: %s):\n%s", o, g.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// rpcinfo can list mountd a moment before the NFS port accepts.
	for time.Now().Before(deadline) {
		c, err := g.Dial(context.Background(), "tcp", g.NFSAddr)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("ganesha NFS port never accepted:\n%s", g.logs())
}

// logs returns the tail of ganesha's log and the wrapper's output.
func (g *Ganesha) logs() string {
	var b strings.Builder
	for _, f := range []string{"run.out", "ganesha.log"} {
		data, _ := os.ReadFile(filepath.Join(g.work, f))
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s\n", f, data)
	}
	return b.String()
}

// Stop terminates ganesha and rpcbind (SIGTERM to the process group, SIGKILL
// after 10 s) and waits for them. The namespace stays until the test ends.
func (g *Ganesha) Stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil {
		return
	}
	pgid := g.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for syscall.Kill(-pgid, 0) == nil {
			time.Sleep(20 * time.Millisecond)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
	g.cmd = nil
}

// Pgid is the process group of the running rpcbind+ganesha (0 if stopped).
func (g *Ganesha) Pgid() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cmd == nil {
		return 0
	}
	return g.cmd.Process.Pid
}

// Restart stops ganesha and starts it again on the same directory and ports
// (a server reboot: its write verifier changes, file handles stay valid).
func (g *Ganesha) Restart() error {
	g.Stop()
	return g.start()
}

// Do runs fn on an OS thread inside the namespace. Sockets fn creates live
// in the namespace; fn must not start goroutines that create sockets.
func (g *Ganesha) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread is discarded when this goroutine ends,
		// so no other goroutine ever runs in the namespace by accident.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/var/run/netns", g.NS))
		if err != nil {
			errc <- fmt.Errorf("ganeshatest: open netns: %w", err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("ganeshatest: setns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Dial connects to addr from inside the namespace; it has the shape of
// net.Dialer.DialContext for client.Options.Dial.
func (g *Ganesha) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := g.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
