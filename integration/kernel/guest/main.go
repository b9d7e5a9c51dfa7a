//go:build linux

// Command guest is the workload that the Linux kernel NFS client test
// (integration/kernel) runs inside a qemu guest, against an NFSv3 mount of the
// server under test. The host builds it with CGO_ENABLED=0 and puts it into
// the initramfs; /init mounts the export on /mnt and runs it.
//
// It speaks to the host only through the serial console, one line per event:
//
//	PLAN <phase> <check> <check> ...   the checks this run will report
//	BEGIN <check>                      a check starts (names the culprit of a hang)
//	CHECK <check>: ok                  a check passed
//	CHECK <check>: FAIL <reason>       a check failed
//	INFO <text>                        measurements, for the log
//	SHA <path> <size> <sha256>         a file the host re-reads from the export directory
//	PAUSE restart                      (with -pause) waiting for a line on stdin
//	DONE <phase> failures=<n>
//
// Phase "write" (first boot) runs every check and leaves its files behind;
// with -pause it then holds files open, pauses while the host restarts the
// server, and checks that the kernel's open files and cached handles still
// work (no ESTALE). Phase "verify" (second boot, after another restart)
// checks that everything the first boot left is there, byte for byte.
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
	"syscall"
	"time"
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
	mnt := flag.String("mnt", "/mnt", "NFS mount point")
	bigMiB := flag.Int("big-mib", 64, "size of the large sequential file in MiB")
	dirEntries := flag.Int("dir-entries", 10000, "number of stable-NNNNN entries the host created in readdir/big")
	pause := flag.Bool("pause", false, "write phase: pause for a server restart and check open files afterwards; verify phase: check what those checks left")
	flag.Parse()

	syscall.Umask(0) // modes in checks are exactly what is asked for
	con := &console{}
	g := &guest{root: *mnt, bigMiB: *bigMiB, dirEntries: *dirEntries, con: con}

	checks := g.checks()
	var restartChecks []check
	if *pause {
		if *phase == "write" {
			restartChecks = g.restartChecks()
		} else {
			checks = append(checks, g.restartVerifyCheck())
		}
	}
	if *phase != "write" && *phase != "verify" {
		con.printf("DONE %s failures=1 (unknown phase)", *phase)
		os.Exit(2)
	}

	var names []string
	for _, c := range append(append([]check{}, checks...), restartChecks...) {
		names = append(names, c.name)
	}
	con.printf("PLAN %s %s", *phase, strings.Join(names, " "))

	failures := 0
	run := func(c check) {
		fn := c.write
		if *phase == "verify" {
			fn = c.verify
		}
		if fn == nil {
			con.printf("CHECK %s: ok (nothing to do in phase %s)", c.name, *phase)
			return
		}
		con.printf("BEGIN %s", c.name)
		start := time.Now()
		err := safely(fn)
		if err != nil {
			failures++
			con.printf("CHECK %s: FAIL %s", c.name, oneLine(err.Error()))
			return
		}
		con.printf("CHECK %s: ok (%.1fs)", c.name, time.Since(start).Seconds())
	}
	for _, c := range checks {
		run(c)
	}
	if len(restartChecks) > 0 {
		if err := g.holdForRestart(); err != nil {
			con.printf("INFO could not prepare the restart checks: %v", err)
		}
		con.printf("PAUSE restart")
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		con.printf("INFO resumed after server restart: %q %v", strings.TrimSpace(line), err)
		for _, c := range restartChecks {
			run(c)
		}
		g.releaseHeld()
	}
	con.printf("DONE %s failures=%d", *phase, failures)
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
