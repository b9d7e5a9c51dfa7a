package fscache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testOptions returns options with culling driven only by the tests: the
// cache filesystem reports plenty of room unless a test says otherwise.
func testOptions() Options {
	return Options{
		CullInterval: -1,
		statfs:       func(string) (float64, float64, error) { return 50, 50, nil },
	}
}

func openTest(t testing.TB, dir string, opts Options) *Cache {
	t.Helper()
	c, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func mustVolume(t testing.TB, c *Cache, key string) *Volume {
	t.Helper()
	v, err := c.AcquireVolume([]byte(key))
	if err != nil {
		t.Fatalf("AcquireVolume: %v", err)
	}
	return v
}

func mustCookie(t testing.TB, v *Volume, key, aux string, size int64) *Cookie {
	t.Helper()
	ck, err := v.AcquireCookie([]byte(key), []byte(aux), size)
	if err != nil {
		t.Fatalf("AcquireCookie(%q): %v", key, err)
	}
	return ck
}

// pattern is deterministic, never-zero content for byte offsets of a file:
// a zero byte read back means a hole (never written).
func pattern(seed byte, off int64, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		x := uint64(off+int64(i))*2654435761 + uint64(seed)*40503
		p[i] = byte(x>>13) | 1
	}
	return p
}

// backingFDs counts this process's open descriptors that point into the
// cache's backing-file directory, by reading /proc/self/fd.
func backingFDs(t testing.TB, c *Cache) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("read /proc/self/fd: %v", err)
	}
	prefix := c.BackingDir() + string(filepath.Separator)
	n := 0
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil {
			continue // closed meanwhile (e.g. the ReadDir fd itself)
		}
		if strings.HasPrefix(target, prefix) {
			n++
		}
	}
	return n
}

// checkRead reads [off, off+len(want)) and requires exactly want back.
func checkRead(ck *Cookie, off int64, want []byte) error {
	got := make([]byte, len(want))
	n, err := ck.ReadAt(got, off)
	if err != nil {
		return fmt.Errorf("ReadAt(%d,%d) = %d, %w", off, len(want), n, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("ReadAt(%d,%d): data differs", off, len(want))
	}
	return nil
}

func isNotCached(err error) bool { return errors.Is(err, ErrNotCached) }

var ctxBG = context.Background()

func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

func pause() { time.Sleep(time.Millisecond) }
