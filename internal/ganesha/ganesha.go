// Package ganesha runs nfs-ganesha (a userspace NFSv3 server nobody on this
// project wrote) isolated on this machine, for tests (internal/ganeshatest)
// and for `nfsd-cache bench`.
//
// # How it is isolated
//
// Each Server gets its own network namespace with only loopback up
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
// and nfs, then the NFS port accepting; Stop kills the process group by pid.
//
// # How callers reach it
//
// The calling process stays in the host namespaces. Dial (shape of
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
// (nfs-common) and iproute2. Without them Start returns an
// *UnavailableError saying which one is missing.
package ganesha

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

// Options configure a Server; the zero value is the FIELD-NOTES recipe.
type Options struct {
	// SecType is the export's SecType list (default "sys"). go-nfs-client
	// sends AUTH_NULL, so the bench uses "sys, none".
	SecType string
}

// UnavailableError says why ganesha cannot run on this machine (not root,
// a package missing, no network namespaces), as opposed to a failure of a
// ganesha that could run.
type UnavailableError struct{ Reason string }

func (e *UnavailableError) Error() string { return "nfs-ganesha unavailable: " + e.Reason }

// Server is one running nfs-ganesha in its own network namespace.
//
// Concurrency: Dial, Do, Pgid and Logs are safe for concurrent use; Restart,
// Stop and Close must not run concurrently with each other.
type Server struct {
	// Dir is the exported directory, on the host file system.
	Dir string
	// Addr is the host to give a client with Options.Portmap ("127.0.0.1"
	// inside the namespace); NFSAddr is NFS host:port for clients that do
	// not use the portmapper, MountAddr MOUNT's.
	Addr, NFSAddr, MountAddr string
	// NS is the network namespace name (/var/run/netns/NS).
	NS string

	work string // config, logs, wrapper script

	mu  sync.Mutex // guards cmd
	cmd *exec.Cmd
}

// instances numbers namespaces within this process.
var instances atomic.Int64

// Start starts rpcbind and ganesha exporting dir (made world-writable so
// ganesha, running as root without squashing, can use it), keeping its
// configuration and logs in work, and waits until they answer. Close
// stops it and deletes the namespace.
func Start(dir, work string, opts Options) (*Server, error) {
	if os.Geteuid() != 0 {
		return nil, &UnavailableError{"needs root for network namespaces"}
	}
	for _, bin := range []string{"ganesha.nfsd", "rpcbind", "rpcinfo", "ip", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, &UnavailableError{bin + " not installed (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind nfs-common iproute2)"}
		}
	}
	if m, _ := filepath.Glob("/usr/lib/*/ganesha/libfsalvfs.so"); len(m) == 0 {
		return nil, &UnavailableError{"nfs-ganesha-vfs (libfsalvfs.so) not installed"}
	}
	if opts.SecType == "" {
		opts.SecType = "sys"
	}
	s := &Server{
		Dir:  dir,
		work: work,
		NS:   fmt.Sprintf("gn%d-%d", os.Getpid(), instances.Add(1)),
		Addr: "127.0.0.1",
	}
	s.NFSAddr = net.JoinHostPort(s.Addr, strconv.Itoa(NFSPort))
	s.MountAddr = net.JoinHostPort(s.Addr, strconv.Itoa(MountPort))
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, err
	}
	if out, err := exec.Command("ip", "netns", "add", s.NS).CombinedOutput(); err != nil {
		return nil, &UnavailableError{fmt.Sprintf("cannot create a network namespace (%v: %s)", err, bytes.TrimSpace(out))}
	}
	if out, err := exec.Command("ip", "netns", "exec", s.NS, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		s.Close()
		return nil, fmt.Errorf("ganesha: lo up: %v: %s", err, bytes.TrimSpace(out))
	}
	if err := s.writeConfig(opts); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.start(); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *Server) writeConfig(opts Options) error {
	conf := fmt.Sprintf(`NFS_CORE_PARAM {
	Protocols = 3; NFS_Port = %d; MNT_Port = %d;
	Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false;
	mount_path_pseudo = true;
}
NFS_KRB5 { Active_krb5 = false; }
NFSV4 { RecoveryBackend = fs; RecoveryRoot = %s; }
EXPORT {
	Export_Id = 1; Path = %s; Pseudo = %s; Protocols = 3; Transports = TCP;
	Access_Type = RW; Squash = No_Root_Squash; SecType = %s;
	Attr_Expiration_Time = 0;
	FSAL { Name = VFS; }
}
`, NFSPort, MountPort, filepath.Join(s.work, "recovery"), s.Dir, Export, opts.SecType)
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
`, filepath.Join(s.work, "ganesha.log"), filepath.Join(s.work, "ganesha.conf"))
	if err := os.WriteFile(filepath.Join(s.work, "ganesha.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(s.work, "run.sh"), []byte(script), 0o755)
}

func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	out, err := os.OpenFile(filepath.Join(s.work, "run.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd := exec.Command("ip", "netns", "exec", s.NS, "unshare", "--mount", "--propagation", "private",
		"sh", filepath.Join(s.work, "run.sh"))
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("ganesha: start: %w", err)
	}
	s.cmd = cmd
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		o, _ := exec.Command("ip", "netns", "exec", s.NS, "rpcinfo", "-p", "127.0.0.1").CombinedOutput()
		if bytes.Contains(o, []byte("mountd")) && bytes.Contains(o, []byte(" nfs")) {
			break
		}
		select {
		case <-exited:
			return fmt.Errorf("ganesha exited during start-up:\n%s", s.Logs())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ganesha not ready after 30 s (rpcinfo: %s):\n%s", o, s.Logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// rpcinfo can list mountd a moment before the NFS port accepts.
	for time.Now().Before(deadline) {
		c, err := s.Dial(context.Background(), "tcp", s.NFSAddr)
		if err == nil {
			c.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("ganesha NFS port never accepted:\n%s", s.Logs())
}

// Logs returns the tail of ganesha's log and the wrapper's output.
func (s *Server) Logs() string {
	var b strings.Builder
	for _, f := range []string{"run.out", "ganesha.log"} {
		data, _ := os.ReadFile(filepath.Join(s.work, f))
		if len(data) > 4000 {
			data = data[len(data)-4000:]
		}
		fmt.Fprintf(&b, "--- %s ---\n%s\n", f, data)
	}
	return b.String()
}

// Stop terminates ganesha and rpcbind (SIGTERM to the process group, SIGKILL
// after 10 s) and waits for them. The namespace stays (see Restart, Close).
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	pgid := s.cmd.Process.Pid
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
	s.cmd = nil
}

// Close stops ganesha and deletes its network namespace.
func (s *Server) Close() {
	s.Stop()
	_ = exec.Command("ip", "netns", "delete", s.NS).Run()
}

// Pgid is the process group of the running rpcbind+ganesha (0 if stopped).
func (s *Server) Pgid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Restart stops ganesha and starts it again on the same directory and ports
// (a server reboot: its write verifier changes, file handles stay valid).
func (s *Server) Restart() error {
	s.Stop()
	return s.start()
}

// Do runs fn on an OS thread inside the namespace. Sockets fn creates live
// in the namespace; fn must not start goroutines that create sockets.
func (s *Server) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread is discarded when this goroutine ends,
		// so no other goroutine ever runs in the namespace by accident.
		runtime.LockOSThread()
		f, err := os.Open(filepath.Join("/var/run/netns", s.NS))
		if err != nil {
			errc <- fmt.Errorf("ganesha: open netns: %w", err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("ganesha: setns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Dial connects to addr from inside the namespace; it has the shape of
// net.Dialer.DialContext for client.Options.Dial.
func (s *Server) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := s.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
