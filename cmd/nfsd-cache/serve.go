package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	billy "github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/osfs"
	nfs "github.com/willscott/go-nfs"

	"github.com/nfscache/nfscache/server"
)

func runServe(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("serve", flag.ContinueOnError)
	fl.SetOutput(stderr)
	listen := fl.String("listen", "127.0.0.1:2049", "TCP address for NFS and MOUNT (both on this one port)")
	root := fl.String("root", "", "directory to export (default: an empty in-memory filesystem)")
	stateDir := fl.String("state-dir", "", "directory for the persistent file-handle table; handles survive restarts that reuse it (default: temporary)")
	readOnly := fl.Bool("read-only", false, "refuse every change with NFS3ERR_ROFS")
	async := fl.Bool("async", false, "acknowledge stable (FILE_SYNC) writes before they reach the disk, like knfsd's async export: faster, but a host crash loses acknowledged data")
	allow := fl.String("allow", "", "comma-separated client networks allowed to connect, e.g. 10.0.0.0/8,192.168.1.7/32 (default: loopback only)")
	maxOpen := fl.Int("max-open-files", 0, "files kept open for reuse by READ/WRITE (default: half the soft open-file limit, ulimit -n, at most 256)")
	logLevel := fl.String("log-level", "info", "debug, info, warn or error")
	if code, done := parseCommand(fl, args, stderr,
		"Usage: nfsd-cache serve [flags]",
		"",
		"Serves a directory over NFSv3 (MOUNT and NFS on one TCP port, no portmapper).",
		"With no flags: an in-memory export on 127.0.0.1:2049 for loopback clients.",
		"On start it prints the Linux mount command and the libnfs URL to use.",
		"",
	); done {
		return code
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "serve: --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	// go-nfs has its own process-wide logger; follow --log-level.
	if level <= slog.LevelDebug {
		nfs.Log.SetLevel(nfs.DebugLevel)
	} else {
		nfs.Log.SetLevel(nfs.ErrorLevel)
	}

	opts := server.Options{StateDir: *stateDir, ReadOnly: *readOnly, Async: *async, MaxOpenFiles: *maxOpen, Logger: log}
	if *allow != "" {
		for _, c := range strings.Split(*allow, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(c))
			if err != nil {
				fmt.Fprintf(stderr, "serve: --allow: %v\n", err)
				return 2
			}
			opts.Allow = append(opts.Allow, p)
		}
	}
	var fsys billy.Filesystem
	what := "in-memory export"
	if *root != "" {
		st, err := os.Stat(*root)
		if err != nil || !st.IsDir() {
			fmt.Fprintf(stderr, "serve: --root %s: not a directory (%v)\n", *root, err)
			return 1
		}
		fsys = osfs.New(*root, osfs.WithBoundOS())
		what = "directory " + *root
	} else {
		fsys = server.NewMemFS()
	}
	srv, err := server.New(fsys, opts)
	if err != nil {
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		srv.Close()
		fmt.Fprintf(stderr, "serve: %v\n", err)
		return 1
	}
	host, port := mountHost(l.Addr())
	fmt.Fprintf(stdout, "nfsd-cache: serving %s on %s (NFSv3 and MOUNT on port %s)\n", what, l.Addr(), port)
	fmt.Fprintf(stdout, "  Linux:  mount -t nfs -o vers=3,proto=tcp,port=%s,mountport=%s,nolock,noacl,addr=%s %s:/ /mnt\n", port, port, host, host)
	fmt.Fprintf(stdout, "  libnfs: nfs-ls 'nfs://%s//?version=3&nfsport=%s&mountport=%s'\n", host, port, port)
	allowed := "loopback only (127.0.0.0/8, ::1)"
	if *allow != "" {
		allowed = *allow
	}
	fmt.Fprintf(stdout, "  clients allowed: %s (--allow)\n", allowed)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case err := <-done:
		if err != nil {
			log.Error("serve", "err", err)
			srv.Close()
			return 1
		}
	}
	if err := srv.Close(); err != nil {
		log.Error("close", "err", err)
		return 1
	}
	return 0
}

// mountHost names the listening address the way a client should dial it.
func mountHost(a net.Addr) (host, port string) {
	host, port, _ = net.SplitHostPort(a.String())
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	return host, port
}
