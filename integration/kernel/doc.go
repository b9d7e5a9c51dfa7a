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
// When qemu, busybox-static or the prepared kernel is missing the test fails
// under CI (CI set, or NFSCACHE_KERNEL_ROOT exported by test.sh) and skips
// with the reason otherwise.
package kernel
