package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	nfs "github.com/willscott/go-nfs"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/metrics"
	"github.com/nfscache/nfscache/server"
)

func runProxy(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fl.SetOutput(stderr)
	upstream := fl.String("upstream", "", "upstream NFSv3 server: HOST:PORT[:/export] (MOUNT and NFS on PORT), or with --portmap HOST[:/export] (required)")
	portmap := fl.Bool("portmap", false, "ask the upstream's portmapper (port 111) for its MOUNT and NFS ports (knfsd, nfs-ganesha)")
	cacheDir := fl.String("cache-dir", "", "local cache directory; file data lives in DIR/fscache (required)")
	listen := fl.String("listen", "127.0.0.1:2049", "TCP address clients mount (NFS and MOUNT on this one port)")
	stateDir := fl.String("state-dir", "", "persistent file-handle table: handles stay valid across restarts that reuse it (default: DIR/handles under --cache-dir)")
	maxSize := fl.String("cache-max-size", "", "bound on cached data, e.g. 500M, 10G, 1T (default: culled by free space only)")
	maxOpen := fl.Int("max-open-files", 0, "bound on open cache backing files, and on files the server keeps open (default: 64 backing files; the server half of ulimit -n, at most 256)")
	maxCached := fl.Int("max-cached-inodes", 0, "bound on cached metadata (attributes, names, listings, link targets) and idle inodes, least recently used evicted first; about 600 B each (default 100000)")
	attrTimeout := fl.Duration("attr-timeout", 0, "how long upstream attributes and names are cached; opens always revalidate (default 3s, negative: never cache)")
	upTimeout := fl.Duration("upstream-timeout", 0, "how long a call to the upstream waits and retries (through reconnects) before failing with a timeout error (default 60s)")
	conns := fl.Int("connections", 0, "TCP connections to the upstream (nconnect, default 4)")
	serveStale := fl.Duration("serve-stale", 0, "during an upstream outage, answer from cached attributes, names and data validated at most this long ago (default 0: off)")
	outageDetect := fl.Duration("outage-detect", 0, "with --serve-stale: how long a revalidation waits for the upstream before it is declared down (default 3s)")
	allow := fl.String("allow", "", "comma-separated client networks allowed to connect, e.g. 10.0.0.0/8 (default: loopback only)")
	metricsAddr := fl.String("metrics", "", "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9100 (default: off)")
	logLevel := fl.String("log-level", "info", "debug, info, warn or error")
	if code, done := parseCommand(fl, args, stderr,
		"Usage: nfsd-cache proxy --upstream HOST:PORT[:/export] [--portmap] --cache-dir DIR [flags]",
		"",
		"Re-exports an upstream NFSv3 server through a local disk cache, like an",
		"FS-Cache backed knfsd re-export. Clients mount the proxy exactly as they",
		"would mount the upstream (NFSv3 and MOUNT on --listen, no portmapper).",
		"",
		"  - Reads are served from the cache after the first fetch; every open",
		"    revalidates with the upstream (close-to-open) and a changed file is",
		"    fetched again.",
		"  - Writes go into the cache and are written back to the upstream; a",
		"    client's COMMIT returns only once the data is on the upstream.",
		"  - File handles persist in --state-dir, so clients keep working across",
		"    proxy restarts. SIGINT/SIGTERM flush every dirty byte before exit.",
		"  - Upstream outage: calls that need the upstream wait (reconnecting",
		"    by itself) up to --upstream-timeout, then fail. With --serve-stale D,",
		"    files, names and listings validated within D keep being served",
		"    from the cache; writes are kept dirty in the cache and written",
		"    back when the upstream returns; other calls fail with EIO after",
		"    --upstream-timeout. Outage start and end are logged once.",
		"",
		"Example:",
		"  nfsd-cache proxy --upstream filer:2049:/export --cache-dir /var/cache/nfs \\",
		"      --listen 0.0.0.0:2049 --allow 10.0.0.0/8 --cache-max-size 100G --metrics 127.0.0.1:9100",
		"  nfsd-cache stats --metrics 127.0.0.1:9100",
		"",
	); done {
		return code
	}
	bad := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "proxy: "+format+"\n", a...)
		return 2
	}
	if *upstream == "" || *cacheDir == "" {
		return bad("--upstream and --cache-dir are required (see --help)")
	}
	addr, export, err := parseUpstream(*upstream, *portmap)
	if err != nil {
		return bad("--upstream: %v", err)
	}
	var cacheMax int64
	if *maxSize != "" {
		if cacheMax, err = parseSize(*maxSize); err != nil {
			return bad("--cache-max-size: %v", err)
		}
	}
	if *serveStale < 0 {
		return bad("--serve-stale: %v is negative", *serveStale)
	}
	if *outageDetect < 0 {
		return bad("--outage-detect: %v is negative", *outageDetect)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return bad("--log-level: %v", err)
	}
	var nets []netip.Prefix
	if *allow != "" {
		for _, c := range strings.Split(*allow, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(c))
			if err != nil {
				return bad("--allow: %v", err)
			}
			nets = append(nets, p)
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	if level <= slog.LevelDebug {
		nfs.Log.SetLevel(nfs.DebugLevel)
	} else {
		nfs.Log.SetLevel(nfs.ErrorLevel)
	}
	if *stateDir == "" {
		*stateDir = filepath.Join(*cacheDir, "handles")
	}
	if err := os.MkdirAll(*cacheDir, 0o700); err != nil {
		fmt.Fprintf(stderr, "proxy: --cache-dir: %v\n", err)
		return 1
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	mountCtx, cancel := context.WithTimeout(ctx, max(*upTimeout, 30*time.Second))
	fsys, err := billyfs.New(mountCtx, billyfs.Options{
		Addr:            addr,
		Portmap:         *portmap,
		Export:          export,
		CacheDir:        filepath.Join(*cacheDir, "fscache"),
		MaxOpenFiles:    *maxOpen,
		MaxCachedInodes: *maxCached,
		CacheMaxBytes:   cacheMax,
		AttrTimeout:     *attrTimeout,
		Connections:     *conns,
		Timeout:         *upTimeout,
		ServeStale:      *serveStale,
		OutageDetect:    *outageDetect,
		Logger:          log,
	})
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "proxy: %v\n", err)
		return 1
	}
	srv, err := server.New(fsys, server.Options{StateDir: *stateDir, Allow: nets, MaxOpenFiles: *maxOpen, Logger: log})
	if err != nil {
		fsys.Close()
		fmt.Fprintf(stderr, "proxy: %v\n", err)
		return 1
	}
	// closeAll stops serving first (no new writes), then flushes every
	// dirty byte to the upstream and releases the cache.
	closeAll := func() int {
		code := 0
		if err := srv.Close(); err != nil {
			log.Error("closing server", "err", err)
			code = 1
		}
		if err := fsys.Close(); err != nil {
			log.Error("flushing to the upstream", "err", err)
			code = 1
		}
		return code
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(stderr, "proxy: %v\n", err)
		closeAll()
		return 1
	}
	var mhttp *http.Server
	if *metricsAddr != "" {
		ml, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			fmt.Fprintf(stderr, "proxy: --metrics: %v\n", err)
			l.Close()
			closeAll()
			return 1
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.New(metrics.Options{FS: fsys, Server: srv, Logger: log}).Handler())
		mhttp = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := mhttp.Serve(ml); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics", "err", err)
			}
		}()
		defer mhttp.Close()
		fmt.Fprintf(stdout, "nfsd-cache: metrics on http://%s/metrics\n", ml.Addr())
	}
	host, port := mountHost(l.Addr())
	fmt.Fprintf(stdout, "nfsd-cache: proxying %s:%s through cache %s on %s (NFSv3 and MOUNT on port %s)\n", addr, export, *cacheDir, l.Addr(), port)
	fmt.Fprintf(stdout, "  Linux:  mount -t nfs -o vers=3,proto=tcp,port=%s,mountport=%s,nolock,noacl,addr=%s %s:/ /mnt\n", port, port, host, host)
	fmt.Fprintf(stdout, "  libnfs: nfs-ls 'nfs://%s//?version=3&nfsport=%s&mountport=%s'\n", host, port, port)

	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case <-ctx.Done():
		log.Info("shutting down: flushing dirty data to the upstream")
	case err := <-done:
		if err != nil {
			log.Error("serve", "err", err)
			closeAll()
			return 1
		}
	}
	return closeAll()
}

// parseUpstream splits HOST:PORT[:/export] (HOST[:PORT][:/export] with the
// portmapper) into the dial address and the MOUNT path.
func parseUpstream(s string, portmap bool) (addr, export string, err error) {
	addr, export = s, "/"
	if i := strings.Index(s, ":/"); i >= 0 {
		addr, export = s[:i], s[i+1:]
	}
	if addr == "" {
		return "", "", fmt.Errorf("%q has no host", s)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		if !portmap {
			return "", "", fmt.Errorf("%q: want HOST:PORT[:/export] (or --portmap): %w", s, err)
		}
	}
	return addr, export, nil
}

// parseSize reads a byte count with an optional binary suffix K, M, G, T
// (KiB… TiB; a trailing "B" or "iB" is accepted).
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v <= 0 || v*float64(mult) > float64(1<<62) {
		return 0, fmt.Errorf("%q is not a positive size like 512M or 10G", s)
	}
	return int64(v * float64(mult)), nil
}
