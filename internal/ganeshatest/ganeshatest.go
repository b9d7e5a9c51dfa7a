// Package ganeshatest runs nfs-ganesha (package internal/ganesha: its own
// network namespace, private /run, rpcbind) for tests: Start exports a fresh
// temporary directory, stops everything at the end of the test, and skips
// the test, saying why, where ganesha cannot run (not root, packages
// missing); test.sh installs them, so CI runs these tests. A ganesha that
// could run but fails is a test failure, not a skip.
package ganeshatest

import (
	"errors"
	"testing"

	"github.com/nfscache/nfscache/internal/ganesha"
)

// Fixed ports inside the namespace, and the MOUNT path of the export.
const (
	NFSPort   = ganesha.NFSPort
	MountPort = ganesha.MountPort
	Export    = ganesha.Export
)

// Ganesha is one running nfs-ganesha; see ganesha.Server for its fields
// (Dir, Addr, NFSAddr, MountAddr, NS) and methods (Dial, Do, Restart, Stop,
// Pgid) and their concurrency contract.
type Ganesha struct {
	*ganesha.Server
}

// Start starts rpcbind and ganesha exporting a fresh temporary directory,
// waits until they answer, and registers Close with t.Cleanup.
func Start(t testing.TB) *Ganesha {
	t.Helper()
	s, err := ganesha.Start(t.TempDir(), t.TempDir(), ganesha.Options{})
	var unavailable *ganesha.UnavailableError
	if errors.As(err, &unavailable) {
		t.Skipf("ganeshatest: %v; nfs-ganesha tests did not run", err)
	}
	if err != nil {
		t.Fatalf("ganeshatest: %v", err)
	}
	t.Cleanup(s.Close)
	return &Ganesha{Server: s}
}
