#!/usr/bin/env bash
# test.sh — run the whole nfscache test suite on a fresh Debian machine.
#
# Installs what the tests need (as root, via apt-get), prepares the Debian
# kernel used by the Linux-client test under qemu (cached outside the repo),
# then runs go vet and go test -race over every package.
#
#   ./test.sh            # everything
#   ./test.sh -run Foo   # extra arguments go to `go test`
set -euo pipefail
cd "$(dirname "$0")"

pkgs=(libnfs-utils nfs-ganesha nfs-ganesha-vfs nfs-common rpcbind
      qemu-system-x86 busybox-static cpio kmod iproute2)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

export NFSCACHE_KERNEL_ROOT="$(integration/kernel/prepare-kernel.sh || true)" # Debian kernel for integration/kernel (qemu), cached outside the repo
echo "test.sh: go vet ./..."
go vet ./...
echo "test.sh: go test -race ./..."
go test -race -timeout 40m "$@" ./...
