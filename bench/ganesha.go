package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Ports of nfs-ganesha inside its network namespace (the same recipe as
// internal/ganeshatest, which needs a testing.TB and so cannot be used by
// a command).
const (
	ganeshaNFSPort   = 22049
	ganeshaMountPort = 22048
	ganeshaExport    = "/export"
)

// ganesha is one nfs-ganesha (with its own rpcbind) in a loopback-only
// network namespace with a private /run.
//
// Concurrency: dial and do are safe for concurrent use; stop runs once.
type ganesha struct {
	dir, work, ns string
	cmd           *exec.Cmd
}

// startGanesha exports dir. It returns an error saying what is missing
// when ganesha cannot run here (not root, packages not installed).
func startGanesha(dir, work string) (*ganesha, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root for a network namespace")
	}
	for _, bin := range []string{"ganesha.nfsd", "rpcbind", "rpcinfo", "ip", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not installed (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind nfs-common iproute2)", bin)
		}
	}
	if m, _ := filepath.Glob("/usr/lib/*/ganesha/libfsalvfs.so"); len(m) == 0 {
		return nil, errors.New("nfs-ganesha-vfs (libfsalvfs.so) not installed")
	}
	g := &ganesha{dir: dir, work: work, ns: fmt.Sprintf("nb%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)}
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, err
	}
	if out, err := exec.Command("ip", "netns", "add", g.ns).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add: %v: %s", err, bytes.TrimSpace(out))
	}
	if out, err := exec.Command("ip", "netns", "exec", g.ns, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		g.stop()
		return nil, fmt.Errorf("lo up: %v: %s", err, bytes.TrimSpace(out))
	}
	if err := g.start(); err != nil {
		g.stop()
		return nil, err
	}
	return g, nil
}

func (g *ganesha) start() error {
	conf := fmt.Sprintf(`NFS_CORE_PARAM {
	Protocols = 3; NFS_Port = %d; MNT_Port = %d;
	Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false;
	mount_path_pseudo = true;
}
NFS_KRB5 { Active_krb5 = false; }
NFSV4 { RecoveryBackend = fs; RecoveryRoot = %s; }
EXPORT {
	Export_Id = 1; Path = %s; Pseudo = %s; Protocols = 3; Transports = TCP;
	Access_Type = RW; Squash = No_Root_Squash; SecType = sys, none;
	Attr_Expiration_Time = 0;
	FSAL { Name = VFS; }
}
`, ganeshaNFSPort, ganeshaMountPort, filepath.Join(g.work, "recovery"), g.dir, ganeshaExport)
	// A private mount namespace with a tmpfs on /run keeps rpcbind's lock
	// and socket away from the host's (they are not network-namespaced).
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
	if err := os.WriteFile(filepath.Join(g.work, "run.sh"), []byte(script), 0o755); err != nil {
		return err
	}
	out, err := os.Create(filepath.Join(g.work, "run.out"))
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command("ip", "netns", "exec", g.ns, "unshare", "--mount", "--propagation", "private",
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
		o, _ := exec.Command("ip", "netns", "exec", g.ns, "rpcinfo", "-p", "127.0.0.1").CombinedOutput()
		if bytes.Contains(o, []byte("mountd")) && bytes.Contains(o, []byte(" nfs")) {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("ganesha exited during start-up (logs in %s)", g.work)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ganesha not ready after 30 s (logs in %s)", g.work)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for time.Now().Before(deadline) {
		if c, err := g.dial(context.Background(), "tcp", g.nfsAddr()); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("ganesha's NFS port never accepted (logs in %s)", g.work)
}

func (g *ganesha) nfsAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ganeshaNFSPort))
}
func (g *ganesha) mountAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ganeshaMountPort))
}

// stop kills ganesha and rpcbind (TERM, KILL after 10 s) and deletes the
// namespace.
func (g *ganesha) stop() {
	if g.cmd != nil {
		pgid := g.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		deadline := time.Now().Add(10 * time.Second)
		for syscall.Kill(-pgid, 0) == nil {
			if time.Now().After(deadline) {
				_ = syscall.Kill(-pgid, syscall.SIGKILL)
			}
			time.Sleep(20 * time.Millisecond)
		}
		g.cmd = nil
	}
	_ = exec.Command("ip", "netns", "delete", g.ns).Run()
}

// do runs fn on an OS thread inside the namespace; sockets fn creates
// live there. The thread is never unlocked, so the runtime discards it.
func (g *ganesha) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/var/run/netns", g.ns))
		if err != nil {
			errc <- fmt.Errorf("open netns: %w", err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// dial has the shape of net.Dialer.DialContext for client.Options.Dial.
func (g *ganesha) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := g.do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
