package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	nfs "github.com/willscott/go-nfs"

	"github.com/nfscache/nfscache/bench"
)

// byteSize is a flag.Value for sizes like 256MiB, 4M, 1GiB or 1048576.
type byteSize int64

func (s *byteSize) String() string { return strconv.FormatInt(int64(*s), 10) }

func (s *byteSize) Set(v string) error {
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(v, u.suffix) {
			v, mult = strings.TrimSuffix(v, u.suffix), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("not a positive size: %q", v)
	}
	*s = byteSize(n * mult)
	return nil
}

func runBench(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("bench", flag.ContinueOnError)
	fl.SetOutput(stderr)
	size := byteSize(256 << 20)
	fl.Var(&size, "size", "size of the big file for the sequential read/write workloads (e.g. 256MiB, 4M)")
	files := fl.Int("files", 2000, "files in the small-files workload (each: create, write 4 KiB, stat, read, remove)")
	dirEntries := fl.Int("dir-entries", 10000, "entries of the listed directory")
	repeat := fl.Int("repeat", 3, "repeats of every measurement (the table shows median and min)")
	out := fl.String("out", "bench-results", "directory for results.json, results.svg and results.md")
	dir := fl.String("dir", "", "parent directory of the exports and caches (default: the system temp dir); its disk is what is measured")
	targets := fl.String("targets", "", "comma-separated subset of "+strings.Join(bench.Targets(), ",")+" (default: all)")
	if code, done := parseCommand(fl, args, stderr,
		"Usage: nfsd-cache bench [flags]",
		"",
		"Starts on 127.0.0.1 stock go-nfs, our serve, our proxy and nfs-ganesha (when installed,",
		"in its own network namespace), runs the same workloads against each with our client,",
		"go-nfs-client and libnfs (when installed), and the local disk as the physical limit.",
		"Prints a Markdown table and the ratios; writes JSON, SVG and the table into --out.",
		"Progress goes to stderr. Nothing is asserted: it measures and reports.",
		"",
	); done {
		return code
	}
	opts := bench.Options{
		Size: int64(size), Files: *files, DirEntries: *dirEntries, Repeat: *repeat, Dir: *dir,
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	if *targets != "" {
		opts.Targets = strings.Split(*targets, ",")
	}
	// go-nfs (the stock target, and under our server) has a process-wide
	// logger; keep its per-request noise out of the progress.
	nfs.Log.SetLevel(nfs.ErrorLevel)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	if err := rep.WriteTable(stdout); err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	if err := rep.WriteFiles(*out); err != nil {
		fmt.Fprintf(stderr, "bench: %v\n", err)
		return 1
	}
	fmt.Fprintf(stdout, "\nWrote %s/results.json, results.svg, results.md\n", *out)
	return 0
}
