package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/nfscache/nfscache/metrics"
)

func runStats(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("stats", flag.ContinueOnError)
	fl.SetOutput(stderr)
	addr := fl.String("metrics", "127.0.0.1:9100", "the proxy's --metrics address (HOST:PORT), or a full URL")
	timeout := fl.Duration("timeout", 10*time.Second, "give up on the scrape after this long")
	if code, done := parseCommand(fl, args, stderr,
		"Usage: nfsd-cache stats [--metrics HOST:PORT]",
		"",
		"Scrapes a running proxy's /metrics and prints it for humans: the",
		"/proc/fs/fscache/stats lines, then hit ratio, dirty data and per-procedure",
		"RPC counts (upstream, with mean latency; and served).",
		"",
	); done {
		return code
	}
	url := *addr
	if !strings.Contains(url, "://") {
		url = "http://" + url + "/metrics"
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "stats: %v\n", err)
		return 2
	}
	// Ask for the text format: it is what ParseText reads.
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "stats: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "stats: %s: %s\n", url, resp.Status)
		return 1
	}
	rep, err := metrics.ParseText(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		fmt.Fprintf(stderr, "stats: %s: %v\n", url, err)
		return 1
	}
	fmt.Fprint(stdout, rep.String())
	return 0
}
