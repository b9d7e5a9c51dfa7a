// Package kernel tests the NFS server with the NFS client of a real Linux
// kernel.
//
// This machine's kernel has no NFS client, so the test boots a Debian kernel
// (linux-image-6.1.0-56-amd64, fetched and unpacked outside the repository by
// prepare-kernel.sh) under qemu-system-x86_64 with software emulation (TCG).
// qemu's user-mode network maps the guest's 10.0.2.2 to the host's loopback,
// so the guest mounts the server the test runs in-process on 127.0.0.1:P with
//
//	mount -t nfs -o vers=3,proto=tcp,port=P,mountport=P,nolock,noacl,addr=10.0.2.2 10.0.2.2:/ /mnt
//
// (MOUNT and NFS share port P: no portmapper; nolock: no NLM; noacl: no
// NFSACL probe).
//
// The initramfs holds busybox-static as the shell of /init, the modules
// modules.dep lists for virtio_net, virtio_pci and nfsv3 (insmod'ed in
// dependency order), and the static Go program in ./guest, which runs the
// checks against /mnt and reports each one on the serial console as
// "CHECK name: ok" or "CHECK name: FAIL reason". The host test turns every
// reported check into a subtest.
//
// Sequence: boot 1 writes (every check leaves its files), pauses while the
// host restarts the server with the same state directory, then checks that
// files the kernel holds open and handles it has cached still work (no
// ESTALE). The host restarts the server again; boot 2 mounts afresh and
// verifies, byte for byte, what boot 1 left. The host also re-reads files the
// guest fsynced straight from the export directory, and fails if the
// server's log shows a procedure or program it does not implement for what
// the kernel sends with these mount options.
//
// The guest mounts the server through a relay on 127.0.0.1 (sniffer_test.go)
// that decodes every ONC RPC record: the test logs which calls the kernel
// made and how the server answered each, fails when the server answers a
// call as unimplemented (PROG_UNAVAIL, PROC_UNAVAIL, NFS3ERR_NOTSUPP), and
// prints the READDIR exchanges and failed calls when a check fails. The
// relay also holds the kernel's reconnect while the server restarts, so
// the kernel does not back off for seconds.
//
// knownFailures (server_test.go) lists the checks our server still fails,
// each with the wire evidence; they are logged as KNOWN FAILURE instead of
// failing the test until the server is fixed and the entry removed.
//
// Sizes: NFSCACHE_KERNEL_BIG_MIB (default 32) and NFSCACHE_KERNEL_DIR_ENTRIES
// (default 10000) scale the large file and the big directory.
//
// When qemu, busybox-static or the prepared kernel is missing the test fails
// under CI (CI set, or NFSCACHE_KERNEL_ROOT exported by test.sh) and skips
// with the reason otherwise.
package kernel
