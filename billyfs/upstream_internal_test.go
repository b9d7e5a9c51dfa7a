package billyfs

import (
	"context"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/nfscache/nfscache/client"
)

// Only "could not reach the upstream" starts an outage; an answer from it,
// whatever its status, does not.
func TestIsConnErr(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{&client.Error{Proc: "LOOKUP", Status: client.StatusFromErrno(syscall.ENOENT)}, false},
		{&client.Error{Proc: "WRITE", Status: client.StatusFromErrno(syscall.EIO)}, false},
		{fmt.Errorf("x: %w", syscall.EACCES), false},
		{context.Canceled, false},
		{&client.TimeoutError{Proc: "READ", Timeout: time.Second}, true},
		{fmt.Errorf("RENAME: %w", client.ErrConnLost), true},
		{context.DeadlineExceeded, true},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{fmt.Errorf("write pages: %w", errUpstreamDown), true},
	} {
		if got := isConnErr(c.err); got != c.want {
			t.Errorf("isConnErr(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
