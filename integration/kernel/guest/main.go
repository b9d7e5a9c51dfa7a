//go:build linux

// Command guest is the workload that the Linux kernel NFS client test
// (integration/kernel) runs inside a qemu guest, against NFSv3 mounts of the
// servers under test. The host builds it with CGO_ENABLED=0 and puts it into
// the initramfs; /init mounts each export (one per variant: "serve" on
// /mnt/serve, "proxy" on /mnt/proxy) and runs it.
//
// It speaks to the host only through the serial console, one line per
// event; <v> is the variant (the mount) a line is about:
//
//	PLAN <phase> <v> <check> <check> ...   the checks this run will report for <v>
//	BEGIN <v>/<check>                      a check starts (names the culprit of a hang)
//	CHECK <v>/<check>: ok                  a check passed
//	CHECK <v>/<check>: FAIL <reason>       a check failed
//	INFO <v> <text>                        measurements, for the log
//	SHA <v> <path> <size> <sha256>         a file the host re-reads from the export directory
//	STATFS <v> <bsize> <blocks> <bfree> <bavail> <files> <ffree>   statfs(2) of the mount
//	PAUSE restart                          (with -pause) waiting for a line on stdin
//	DONE <phase> failures=<n>
//
// The variants run concurrently, each its checks in order: the guest's
// time is that of the slowest variant, not the sum (the host's servers and
// the guest's two vCPUs do the work; checks only drop caches, which never
// changes what another check sees).
//
// Phase "write" (first boot) runs every check and leaves its files behind;
// with -pause it then holds files open on every mount, pauses while the
// host restarts the servers, and checks that the kernel's open files and
// cached handles still work (no ESTALE). Phase "verify" (second boot, after
// another restart) checks that everything the first boot left is there,
// byte for byte.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// console serialises lines on the serial console so that concurrent
// goroutines never interleave within a line.
type console struct{ mu sync.Mutex }

func (c *console) printf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

// check is one named assertion group. write runs in the first boot, verify
// in the second; either may be nil when a phase has nothing to do.
type check struct {
	name   string
	write  func() error
	verify func() error
}

func main() {
	phase := flag.String("phase", "", `"write" (first boot) or "verify" (second boot)`)
	mounts := flag.String("mounts", "serve=/mnt", "comma-separated variant=mountpoint pairs, one per NFS mount")
	bigMiB := flag.Int("big-mib", 64, "size of the large sequential file in MiB")
	dirEntries := flag.Int("dir-entries", 10000, "number of stable-NNNNN entries the host created in readdir/big")
	pause := flag.Bool("pause", false, "write phase: pause for a server restart and check open files afterwards; verify phase: check what those checks left")
	flag.Parse()

	syscall.Umask(0) // modes in checks are exactly what is asked for
	con := &console{}
	if *phase != "write" && *phase != "verify" {
		con.printf("DONE %s failures=1 (unknown phase)", *phase)
		os.Exit(2)
	}
	var failures atomic.Int64
	var gs []*guest
	for _, m := range strings.Split(*mounts, ",") {
		name, root, ok := strings.Cut(m, "=")
		if !ok || name == "" || root == "" {
			con.printf("DONE %s failures=1 (bad -mounts entry %q)", *phase, m)
			os.Exit(2)
		}
		g := &guest{name: name, root: root, phase: *phase, bigMiB: *bigMiB, dirEntries: *dirEntries, con: con, failures: &failures}
		g.mountErr = isNFS(root)
		gs = append(gs, g)
	}

	for _, g := range gs {
		g.plan = g.checks()
		if *pause {
			if *phase == "write" {
				g.restartPlan = g.restartChecks()
			} else {
				g.plan = append(g.plan, g.restartVerifyCheck())
			}
		}
		var names []string
		for _, c := range append(append([]check{}, g.plan...), g.restartPlan...) {
			names = append(names, c.name)
		}
		con.printf("PLAN %s %s %s", *phase, g.name, strings.Join(names, " "))
	}

	each(gs, func(g *guest) {
		for _, c := range g.plan {
			g.run(c)
		}
	})
	if *pause && *phase == "write" {
		each(gs, func(g *guest) {
			if g.mountErr != nil {
				return
			}
			if err := g.holdForRestart(); err != nil {
				g.infof("could not prepare the restart checks: %v", err)
			}
		})
		con.printf("PAUSE restart")
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		con.printf("INFO all resumed after server restart: %q %v", strings.TrimSpace(line), err)
		each(gs, func(g *guest) {
			for _, c := range g.restartPlan {
				g.run(c)
			}
			g.releaseHeld()
		})
	}
	con.printf("DONE %s failures=%d", *phase, failures.Load())
}

// each runs fn for every variant concurrently and waits for all.
func each(gs []*guest, fn func(*guest)) {
	var wg sync.WaitGroup
	for _, g := range gs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(g)
		}()
	}
	wg.Wait()
}

// run runs one check of the current phase and reports it.
func (g *guest) run(c check) {
	fn := c.write
	if g.phase == "verify" {
		fn = c.verify
	}
	id := g.name + "/" + c.name
	if g.mountErr != nil {
		g.failures.Add(1)
		g.con.printf("CHECK %s: FAIL %s", id, oneLine(g.mountErr.Error()))
		return
	}
	if fn == nil {
		g.con.printf("CHECK %s: ok (nothing to do in phase %s)", id, g.phase)
		return
	}
	g.con.printf("BEGIN %s", id)
	start := time.Now()
	err := safely(fn)
	if err != nil {
		g.failures.Add(1)
		g.con.printf("CHECK %s: FAIL %s", id, oneLine(err.Error()))
		return
	}
	g.con.printf("CHECK %s: ok (%.1fs)", id, time.Since(start).Seconds())
}

// isNFS reports why root is not an NFS mount (the mount in /init failed and
// the checks would run on the initramfs), or nil.
func isNFS(root string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return fmt.Errorf("not mounted: %w", err)
	}
	if st.Type != nfsSuperMagic {
		return fmt.Errorf("%s is not an NFS mount (f_type %#x; see INIT FAIL on the console)", root, st.Type)
	}
	return nil
}

// safely runs fn and turns a panic into an error, so one broken check never
// hides the ones after it.
func safely(fn func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return fn()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// errno extracts the syscall.Errno from err, or 0.
func errno(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}
