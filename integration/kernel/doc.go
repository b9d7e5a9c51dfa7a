// Package kernel tests the NFS servers with the NFS client of a real Linux
// kernel.
//
// This machine's kernel has no NFS client, so the test boots a Debian kernel
// (linux-image-6.1.0-56-amd64, fetched and unpacked outside the repository by
// prepare-kernel.sh) under qemu-system-x86_64 with software emulation (TCG).
// prepare-kernel.sh also extracts the uncompressed vmlinux, which qemu boots
// through its PVH entry point: the xz-compressed vmlinuz spends ~10 s
// decompressing itself under TCG on every boot (the test falls back to it).
// qemu's user-mode network maps the guest's 10.0.2.2 to the host's loopback.
//
// One guest mounts every variant at once, each on its own port P:
//
//	mount -t nfs -o vers=3,proto=tcp,port=P,mountport=P,nolock,noacl,addr=10.0.2.2 10.0.2.2:/ /mnt/<variant>
//
// (MOUNT and NFS share port P: no portmapper; nolock: no NLM; noacl: no
// NFSACL probe). The variants:
//
//   - serve on /mnt/serve: our server (package server) over a directory;
//   - proxy on /mnt/proxy: our server over billyfs (with its local cache),
//     whose upstream is a second instance of our server over another
//     directory — nfsd-cache proxy, in-process.
//
// The initramfs holds busybox-static as the shell of /init, the modules
// modules.dep lists for virtio_net, virtio_pci and nfsv3 (insmod'ed in
// dependency order), and the static Go program in ./guest, which runs the
// same checks against every mount concurrently (one goroutine per variant)
// and reports each one on the serial console as "CHECK serve/rename: ok" or
// "CHECK proxy/rename: FAIL reason". The host turns every reported check
// into a subtest TestLinuxKernelClient/<variant>/<phase>/<check> and logs a
// summary line per check ("proxy write/rename ok (1.0s)").
//
// The checks (guest/checks.go): statfs, create, offsets (pwrite/pread,
// holes), bigfile (large sequential write, fsync, cold read with a checksum
// per MiB), append (two O_APPEND descriptors), truncate (down and up),
// chmod_utimes (modes, atime and mtime with nanoseconds), hardlink (LINK,
// shared inode number and nlink), symlink, rename (to a new name while open,
// over an existing open file, across directories, directories over empty and
// non-empty ones), unlink_open (the client's sillyrename), mkdir_rmdir
// (nested trees), readdir_churn (10 000 entries listed in small getdents
// batches while files are created and removed; Linux looped on BAD_COOKIE
// with older go-nfs), mmap (shared read and write, msync), fsync (and
// fdatasync, of a directory too), excl_create (O_EXCL: CREATE EXCLUSIVE).
//
// Sequence: boot 1 ("write") runs every check (each leaves its files), then
// holds files and directories open on every mount and pauses while the
// host restarts every server with the same state directory (the proxy
// keeps its cache directory too); then checks that files the kernel holds
// open and handles it has cached still work (no ESTALE). Between the boots
// the host restarts serve, and the proxy together with its upstream; boot 2
// ("verify") mounts afresh and verifies, byte for byte, what boot 1 left.
//
// The host's own checks per variant (phase "host"): the files the guest
// fsynced are byte-identical on the disk where the variant's data lands —
// serve's export, and for the proxy the upstream's export — during the
// pause of boot 1 and after both boots; statfs(2) in the guest shows the
// totals of that disk's filesystem (through the proxy: the upstream's, on
// /dev/shm when that is another filesystem, so they differ from the
// cache's); and after the proxy shut down the upstream's export holds
// exactly the tree the same workload left in serve's export (names, types,
// permissions, link counts, symlink targets, bytes). The test also fails
// if a server's log shows a procedure or program it does not implement for
// what the kernel sends with these mount options.
//
// Each mount goes through its own relay on 127.0.0.1 (sniffer_test.go)
// that decodes every ONC RPC record, and so does the proxy's connection to
// its upstream: the test logs which calls the kernel made (and which the
// proxy made upstream) and how they were answered, fails when a server
// answers a call as unimplemented (PROG_UNAVAIL, PROC_UNAVAIL,
// NFS3ERR_NOTSUPP), and prints the READDIR exchanges and failed calls when
// a check fails. With NFSCACHE_KERNEL_TRACE=DIR it writes every NFS call
// with handles, names, reply attributes and latency, per variant and boot
// (and for the proxy's upstream), plus the console with the host's
// timestamps, to DIR. The
// relay also holds the kernel's reconnect while the server restarts, so
// the kernel does not back off for seconds.
//
// knownServe and knownProxy (server_test.go) list the checks each variant
// still fails, each with the wire evidence; they are logged as KNOWN
// FAILURE instead of failing the test until the server is fixed and the
// entry removed. Any other failure fails the test.
//
// Knobs: NFSCACHE_KERNEL_VARIANTS (default "serve,proxy"; one variant alone
// isolates it when investigating), NFSCACHE_KERNEL_BIG_MIB (default 16) and
// NFSCACHE_KERNEL_DIR_ENTRIES (default 10000) scale the large file and the
// big directory. NFSCACHE_KERNEL_ROOT names the prepared kernel (its
// directory or the cache directory above it).
//
// When qemu, busybox-static or the prepared kernel is missing the test fails
// under CI (CI set, or NFSCACHE_KERNEL_ROOT exported by test.sh) and skips
// with the reason otherwise.
package kernel
