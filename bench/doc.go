// Package bench is `nfsd-cache bench`: it answers "how fast, compared to
// what?" by running the same workloads, with the same clients, against
// our NFS server, our caching proxy and the alternatives, side by side,
// on 127.0.0.1, in one process.
//
// # Targets
//
//   - local-disk: the export directory itself, with package os. The
//     physical limit any server on this machine is bounded by.
//   - go-nfs: stock github.com/willscott/go-nfs v0.0.4 in its documented
//     helloworld setup (NullAuthHandler + CachingHandler(1024) over
//     osfs), what most Go NFS servers ship.
//   - serve: ours, server.New over osfs with a state dir, i.e.
//     `nfsd-cache serve --root DIR --state-dir S`.
//   - proxy: ours, what `nfsd-cache proxy` is: billyfs with a local cache
//     directory (fscache + writeback) mounted on the serve target,
//     re-served by server.New. Reads after the first come from the cache.
//   - ganesha: nfs-ganesha with the VFS FSAL, when installed (root only),
//     in a loopback-only network namespace with its own rpcbind; clients
//     dial it from a thread that entered the namespace (setns(2)), and
//     libnfs runs under `ip netns exec`. Started with internal/ganesha
//     (the same package the tests use), with SecType "sys, none" because
//     go-nfs-client sends AUTH_NULL.
//
// A target that cannot start is reported unavailable with the reason; it
// never stops the run.
//
// # Clients and workloads
//
// Clients: nfscache/client (our pipelined client: 8 MiB ReadAt/WriteAt
// calls split into concurrent 1 MiB READ/WRITE RPCs, UNSTABLE writes and
// one COMMIT, RFC 1813 §3.3.7 and §3.3.21), go-nfs-client (1 MiB calls,
// one at a time, FILE_SYNC writes), libnfs nfs-cat / nfs-cp / nfs-ls -R
// (one process per call) and os (local disk only). Workloads:
//
//   - seq-read-cold: read the big file after dropping its pages from the
//     server's page cache (posix_fadvise(POSIX_FADV_DONTNEED) on that file
//     only, nothing else on the machine) and, for the proxy, after
//     restarting it with an empty cache, so the data crosses the upstream;
//   - seq-read-warm: read it again right away (for the proxy: from its
//     cache);
//   - seq-write: write a new file of the same size and make it durable the
//     client's way (COMMIT, FILE_SYNC, fsync); afterwards, outside the
//     timing, the export must hold every byte (for the proxy: on the
//     upstream, i.e. the proxy's COMMIT wrote back — close-to-open);
//   - small-files: per file CREATE, a 4 KiB FILE_SYNC WRITE, GETATTR,
//     READ, REMOVE (files/s); not run with libnfs, where process start-up
//     would be measured;
//   - list-dir: READDIRPLUS of a directory of --dir-entries files
//     (entries/s); every entry must be listed.
//
// Every measurement is repeated Options.Repeat times, rounds outermost so
// that the machine's noise spreads over all targets; the table shows the
// median and the minimum. Ratios are medians over medians with the same
// client: ours vs stock go-nfs, ours vs nfs-ganesha, and the proxy's warm
// cache vs the local disk and vs its upstream. Nothing is asserted about
// speed: the command measures and reports. Failures (a client's error, a
// short read, a listing missing entries, a written file that is not on
// the export after the commit) are recorded per row with the reason.
//
// # Output
//
// Report.WriteTable prints Markdown (one row per workload and client, one
// column per target, "median (min)", notes for what was not measured);
// WriteJSON every value; WriteSVG a bar chart, one panel per workload on
// its own scale (hand-written SVG, no dependency). WriteFiles writes all
// three into a directory.
//
// # Concurrency
//
// Run is synchronous and uses its own ports, directories and network
// namespace, so independent Runs may overlap (the numbers then disturb
// each other). A Report is plain data: safe for concurrent reads once
// Run has returned. Progress goes to Options.Logger.
package bench
