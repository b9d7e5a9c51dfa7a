package ganeshatest_test

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/nfscache/nfscache/internal/ganeshatest"
)

// TestStartRestartStop: ganesha answers inside its namespace and not on the
// host, survives a restart on the same ports, and Stop leaves no process.
func TestStartRestartStop(t *testing.T) {
	g := ganeshatest.Start(t)
	ctx := context.Background()
	for _, addr := range []string{g.NFSAddr, g.MountAddr} {
		c, err := g.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatalf("dial %s inside the namespace: %v", addr, err)
		}
		c.Close()
	}
	out, err := exec.Command("ip", "netns", "exec", g.NS, "rpcinfo", "-p", "127.0.0.1").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "22049") {
		t.Fatalf("rpcinfo in the namespace: %v\n%s", err, out)
	}
	if err := g.Restart(); err != nil {
		t.Fatal(err)
	}
	c, err := g.Dial(ctx, "tcp", g.NFSAddr)
	if err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	c.Close()
	pgid := g.Pgid()
	g.Stop()
	if err := syscall.Kill(-pgid, 0); err == nil {
		t.Fatalf("processes of group %d still alive after Stop", pgid)
	}
	if _, err := g.Dial(ctx, "tcp", g.NFSAddr); err == nil {
		t.Fatalf("NFS port still accepting after Stop")
	}
}
