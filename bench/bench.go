package bench

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/nfscache/nfscache/internal/ganesha"
)

// Workload names, in table order.
const (
	WorkReadCold   = "seq-read-cold"
	WorkReadWarm   = "seq-read-warm"
	WorkWrite      = "seq-write"
	WorkSmallFiles = "small-files"
	WorkListDir    = "list-dir"
)

// Workloads lists the workloads in table order.
func Workloads() []string {
	return []string{WorkReadCold, WorkReadWarm, WorkWrite, WorkSmallFiles, WorkListDir}
}

// Targets lists the targets in table order.
func Targets() []string {
	return []string{TargetLocal, TargetGoNFS, TargetServe, TargetProxy, TargetGanesha}
}

// Clients lists the clients in table order.
func Clients() []string {
	return []string{ClientOS, ClientOurs, ClientGoNFS, ClientLibnfs}
}

// unit is what a workload's rate counts.
func unit(w string) string {
	switch w {
	case WorkSmallFiles:
		return "files/s"
	case WorkListDir:
		return "entries/s"
	}
	return "MB/s"
}

// describe says what a target is.
func describe(t string) string {
	switch t {
	case TargetLocal:
		return "the export directory read and written with package os: the physical limit"
	case TargetGoNFS:
		return "stock go-nfs v0.0.4, its helloworld setup: NullAuthHandler + CachingHandler(1024) over osfs"
	case TargetServe:
		return "ours: server.New over osfs with a state dir (nfsd-cache serve)"
	case TargetProxy:
		return "ours: billyfs with a cache dir over our serve, re-served by server.New (nfsd-cache proxy)"
	case TargetGanesha:
		return "nfs-ganesha (VFS FSAL) in a loopback-only network namespace"
	}
	return t
}

// Options configures Run. The zero value runs the full-size benchmark.
type Options struct {
	// Size of the big file for the sequential workloads; default 256 MiB.
	Size int64
	// Files for the small-files workload; default 2000.
	Files int
	// DirEntries in the listed directory; default 10000.
	DirEntries int
	// Repeat is how many times each measurement runs; default 3.
	Repeat int
	// Dir is the parent of the exports and caches (a temporary directory
	// is made in it and removed at the end); default os.TempDir().
	Dir string
	// Targets restricts the run to these targets (names from Targets);
	// empty: all. The proxy needs serve, and runs it if asked for.
	Targets []string
	// Logger receives progress; nil discards.
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.Size <= 0 {
		o.Size = 256 << 20
	}
	if o.Files <= 0 {
		o.Files = 2000
	}
	if o.DirEntries <= 0 {
		o.DirEntries = 10000
	}
	if o.Repeat <= 0 {
		o.Repeat = 3
	}
	if o.Dir == "" {
		o.Dir = os.TempDir()
	}
	if len(o.Targets) == 0 {
		o.Targets = Targets()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

const bigName = "big"

// Run starts every target, runs every workload with every client that
// makes sense on it, Repeat times, and returns the results. A target that
// cannot start (nfs-ganesha not installed) and a measurement that fails
// are recorded in the report with the reason; Run fails only when it
// cannot prepare the files at all or ctx ends.
func Run(ctx context.Context, opts Options) (*Report, error) {
	opts.defaults()
	for _, t := range opts.Targets {
		if !slices.Contains(Targets(), t) {
			return nil, fmt.Errorf("bench: unknown target %q (want one of %v)", t, Targets())
		}
	}
	log := opts.Logger
	work, err := os.MkdirTemp(opts.Dir, "nfscache-bench-")
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(work)

	rep := &Report{
		Started: time.Now().UTC(), GoVersion: runtime.Version(), NumCPU: runtime.NumCPU(),
		Size: opts.Size, Files: opts.Files, DirEntries: opts.DirEntries, Repeat: opts.Repeat,
	}
	pat := &pattern{block: make([]byte, blockSize)}
	_, _ = rand.Read(pat.block)

	// Start the targets; each gets its own export directory with the same
	// content.
	started := map[string]target{}
	unavailable := map[string]string{}
	want := func(t string) bool {
		return slices.Contains(opts.Targets, t) || (t == TargetServe && slices.Contains(opts.Targets, TargetProxy))
	}
	mkdir := func(name string) string {
		d := filepath.Join(work, name)
		// A failure here shows up as a clear error of the first use of d.
		_ = os.MkdirAll(d, 0o755)
		return d
	}
	prepare := func(name string, start func(dir string) (target, error)) {
		if !want(name) {
			return
		}
		dir := mkdir(name)
		log.Info("bench: preparing", "target", name, "dir", dir)
		if err := prepareExport(dir, pat, opts); err != nil {
			unavailable[name] = "preparing the export: " + err.Error()
			return
		}
		t, err := start(dir)
		if err != nil {
			unavailable[name] = err.Error()
			log.Warn("bench: target unavailable", "target", name, "err", err)
			return
		}
		started[name] = t
	}
	defer func() {
		for _, name := range slices.Backward(Targets()) {
			if t, ok := started[name]; ok {
				t.close()
			}
		}
	}()
	prepare(TargetLocal, func(dir string) (target, error) { return &localTarget{d: dir}, nil })
	prepare(TargetGoNFS, func(dir string) (target, error) { return startGoNFS(dir) })
	prepare(TargetServe, func(dir string) (target, error) { return startServe(dir, mkdir("serve-state"), log) })
	if want(TargetProxy) {
		if up, ok := started[TargetServe].(*serveTarget); ok {
			p, err := startProxy(up, mkdir("proxy"), log)
			if err != nil {
				unavailable[TargetProxy] = err.Error()
			} else {
				started[TargetProxy] = p
			}
		} else {
			unavailable[TargetProxy] = "its upstream (serve) is unavailable"
		}
	}
	prepare(TargetGanesha, func(dir string) (target, error) {
		// go-nfs-client sends AUTH_NULL, so the export also allows none.
		g, err := ganesha.Start(dir, mkdir("ganesha-work"), ganesha.Options{SecType: "sys, none"})
		if err != nil {
			return nil, err
		}
		return &ganeshaTarget{g: g}, nil
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	clients := map[string]nfsClient{ClientOS: osClient{}, ClientOurs: oursClient{}, ClientGoNFS: goNFSClient{}}
	lib := libnfsClient{src: filepath.Join(work, "upload-src")}
	var libErr error
	if lib.cat, libErr = exec.LookPath("nfs-cat"); libErr == nil {
		if lib.cp, libErr = exec.LookPath("nfs-cp"); libErr == nil {
			lib.ls, libErr = exec.LookPath("nfs-ls")
		}
	}
	if libErr == nil {
		libErr = writeBig(lib.src, pat, opts.Size)
	}
	if libErr == nil {
		clients[ClientLibnfs] = lib
	}

	// One row per (workload, client, target), every one of them present.
	rows := map[[3]string]*Row{}
	for _, w := range Workloads() {
		for _, c := range Clients() {
			for _, t := range opts.Targets {
				r := &Row{Workload: w, Client: c, Target: t, Unit: unit(w)}
				switch cl, ok := clients[c]; {
				case !ok:
					r.Status, r.Reason = StatusSkipped, "not installed (apt-get install libnfs-utils)"
				case cl.skip(t, w) != "":
					r.Status, r.Reason = StatusSkipped, cl.skip(t, w)
				case unavailable[t] != "":
					r.Status, r.Reason = StatusUnavailable, unavailable[t]
				}
				rows[[3]string{w, c, t}] = r
				rep.Rows = append(rep.Rows, r)
			}
		}
	}
	for _, t := range opts.Targets {
		ti := TargetInfo{Name: t, Description: describe(t), Available: unavailable[t] == ""}
		if !ti.Available {
			ti.Reason = unavailable[t]
		}
		rep.Targets = append(rep.Targets, ti)
	}

	record := func(w, c, t string, amount float64, d time.Duration, err error) {
		r := rows[[3]string{w, c, t}]
		if err != nil {
			r.Errors = append(r.Errors, err.Error())
			log.Warn("bench: failed", "workload", w, "client", c, "target", t, "err", err)
			return
		}
		v := amount / d.Seconds()
		r.Values = append(r.Values, v)
		log.Info("bench", "workload", w, "client", c, "target", t, "value", strconv.FormatFloat(v, 'f', 1, 64)+" "+r.Unit, "elapsed", d.Round(time.Millisecond))
	}
	for i := range opts.Repeat {
		log.Info("bench: round", "round", i+1, "of", opts.Repeat)
		for _, t := range opts.Targets {
			tg, ok := started[t]
			if !ok {
				continue
			}
			for _, c := range Clients() {
				cl, ok := clients[c]
				if !ok || cl.skip(t, "") != "" {
					continue
				}
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				runClient(ctx, tg, t, c, cl, i, pat, opts, record)
			}
		}
	}
	for _, r := range rep.Rows {
		r.summarize()
	}
	rep.Ratios = ratios(rep)
	rep.Elapsed = time.Since(rep.Started).Round(time.Second).String()
	return rep, nil
}

// runClient runs every workload of one client against one target once.
func runClient(ctx context.Context, tg target, t, c string, cl nfsClient, round int, pat *pattern, opts Options,
	record func(w, c, t string, amount float64, d time.Duration, err error)) {
	// timed runs one measurement and says whether it succeeded.
	timed := func(w string, fn func(s session) (float64, error)) bool {
		if cl.skip(t, w) != "" {
			return false
		}
		s, err := cl.open(ctx, tg.endpoint())
		if err != nil {
			record(w, c, t, 0, 0, fmt.Errorf("connect: %w", err))
			return false
		}
		defer s.close()
		start := time.Now()
		amount, err := fn(s)
		record(w, c, t, amount, time.Since(start), err)
		return err == nil
	}
	readBig := func(s session) (float64, error) {
		n, err := s.read(ctx, bigName)
		if err == nil && n != opts.Size {
			err = fmt.Errorf("read %d of %d bytes", n, opts.Size)
		}
		return float64(n) / 1e6, err
	}
	if err := tg.makeCold(bigName); err != nil {
		record(WorkReadCold, c, t, 0, 0, fmt.Errorf("dropping caches: %w", err))
		record(WorkReadWarm, c, t, 0, 0, fmt.Errorf("dropping caches: %w", err))
	} else {
		timed(WorkReadCold, readBig)
		timed(WorkReadWarm, readBig)
	}

	// Names are never reused: the files are removed behind the servers'
	// backs (with os), and a server may still hold the old one open.
	name := fmt.Sprintf("w-%s-%s-%d", t, sanitize(c), round)
	wrote := timed(WorkWrite, func(s session) (float64, error) {
		if err := s.write(ctx, name, opts.Size, pat); err != nil {
			return 0, err
		}
		return float64(opts.Size) / 1e6, nil
	})
	// Check, outside the timing, that the export has it all once the
	// client's COMMIT (or close) returned (for the proxy: on the
	// upstream); then drop it.
	p := filepath.Join(tg.dir(), name)
	if fi, err := os.Stat(p); wrote && (err != nil || fi.Size() != opts.Size) {
		got := int64(0)
		if err == nil {
			got = fi.Size()
		}
		record(WorkWrite, c, t, 0, 0, fmt.Errorf("after the client's commit the export holds %d of %d bytes (%v)", got, opts.Size, err))
	}
	_ = os.Remove(p)

	timed(WorkSmallFiles, func(s session) (float64, error) {
		err := s.smallFiles(ctx, "small", fmt.Sprintf("s-%s-%d-", sanitize(c), round), opts.Files)
		return float64(opts.Files), err
	})
	timed(WorkListDir, func(s session) (float64, error) {
		n, err := s.list(ctx, "list")
		if err == nil && n < opts.DirEntries {
			err = fmt.Errorf("listed %d of %d entries", n, opts.DirEntries)
		}
		return float64(n), err
	})
}

func sanitize(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}

// prepareExport fills dir: the big file, an empty "small" directory and
// "list" with DirEntries empty files.
func prepareExport(dir string, pat *pattern, opts Options) error {
	if err := writeBig(filepath.Join(dir, bigName), pat, opts.Size); err != nil {
		return err
	}
	if err := os.Mkdir(filepath.Join(dir, "small"), 0o777); err != nil {
		return err
	}
	list := filepath.Join(dir, "list")
	if err := os.Mkdir(list, 0o777); err != nil {
		return err
	}
	for i := range opts.DirEntries {
		f, err := os.Create(filepath.Join(list, fmt.Sprintf("entry-%06d", i)))
		if err != nil {
			return err
		}
		f.Close()
	}
	// ganesha and the servers run as root, but keep the tree usable by
	// anyone in case they do not.
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p == list {
			return filepath.SkipDir
		}
		return os.Chmod(p, 0o777)
	})
}

func writeBig(path string, pat *pattern, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := pat.chunk(blockSize)
	for off := int64(0); off < size; off += blockSize {
		if _, err := f.Write(buf[:min(blockSize, size-off)]); err != nil {
			f.Close()
			return err
		}
	}
	return errors.Join(f.Sync(), f.Close())
}
