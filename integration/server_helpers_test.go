package integration

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-git/go-billy/v5/osfs"
	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/nfscache/nfscache/server"
)

// srvStart serves dir (osfs bound mode) with our server on 127.0.0.1:0.
func srvStart(t testing.TB, dir string, opts server.Options) (*server.Server, string) {
	t.Helper()
	s, err := server.New(osfs.New(dir, osfs.WithBoundOS()), opts)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		<-done
	})
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return s, port
}

// srvURL is the libnfs URL of file on a server that answers MOUNT EXPORT.
func srvURL(port, file string) string {
	return fmt.Sprintf("nfs://127.0.0.1/%s?version=3&nfsport=%s&mountport=%s", file, port, port)
}

// srvLibnfs finds a libnfs tool or explains why the test cannot run.
func srvLibnfs(t testing.TB, tool string) string {
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("%s not installed (apt-get install -y libnfs-utils); the go-nfs-client tests cover the server without it", tool)
	}
	return p
}

func srvRun(t testing.TB, name string, args ...string) []byte {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func srvSum(t testing.TB, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// srvMount mounts "/" of 127.0.0.1:port with go-nfs-client.
func srvMount(t testing.TB, port string) *nfsc.Target {
	t.Helper()
	v, c, err := mountTheirs("127.0.0.1:" + port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return v
}

// mountTheirs mounts "/" of addr with go-nfs-client; the caller closes
// the returned rpc.Client. go-nfs-client binds a source port from a
// time-seeded RNG, so concurrent dials can collide: those are retried.
func mountTheirs(addr string) (*nfsc.Target, *rpc.Client, error) {
	var c *rpc.Client
	var err error
	for range 50 {
		if c, err = rpc.DialTCP("tcp", addr, false); err == nil || !errors.Is(err, syscall.EADDRINUSE) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err != nil {
		return nil, nil, err
	}
	v, err := (&nfsc.Mount{Client: c}).Mount("/", rpc.AuthNull)
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return v, c, nil
}
