#!/usr/bin/env bash
# prepare-kernel.sh — fetch and unpack the Debian kernel that the Linux NFS
# client test (integration/kernel) boots under qemu.
#
# The kernel lives in a cache directory OUTSIDE the repository (never commit it):
#   $NFSCACHE_KERNEL_CACHE, else /var/cache/nfscache-kernel when writable,
#   else ${XDG_CACHE_HOME:-$HOME/.cache}/nfscache-kernel.
# Layout: $CACHE/$KVER/{boot/vmlinuz-$KVER, lib/modules/$KVER/...} plus a
# .ready stamp written last, so an interrupted run is redone, and a run with the
# stamp present returns at once. Prints the kernel root directory.
#
# With --print, only print the kernel root if it is ready (exit 1 if not).
#
# Needs: apt-get (the .deb comes from the Debian archive), dpkg-deb, depmod.
set -euo pipefail

KVER=${NFSCACHE_KERNEL_VERSION:-6.1.0-56-amd64}

cache=${NFSCACHE_KERNEL_CACHE:-}
if [ -z "$cache" ]; then
  if mkdir -p /var/cache/nfscache-kernel 2>/dev/null && [ -w /var/cache/nfscache-kernel ]; then
    cache=/var/cache/nfscache-kernel
  else
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/nfscache-kernel
  fi
fi
root=$cache/$KVER
if [ -f "$root/.ready" ]; then
  echo "$root"
  exit 0
fi
if [ "${1:-}" = "--print" ]; then
  echo "prepare-kernel: kernel $KVER not prepared in $root" >&2
  exit 1
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.prepare.XXXXXX")
chmod 755 "$work" # apt-get download as root hands the file to the _apt user
trap 'rm -rf "$work"' EXIT

deb=linux-image-$KVER
echo "prepare-kernel: downloading $deb" >&2
if ! (cd "$work" && apt-get download -q "$deb" >&2); then
  # A fresh machine may have no package lists yet.
  apt-get update -q >&2
  (cd "$work" && apt-get download -q "$deb" >&2)
fi
mkdir -p "$work/root"
dpkg-deb -x "$work"/"$deb"_*.deb "$work/root"
depmod -b "$work/root" "$KVER"
test -f "$work/root/boot/vmlinuz-$KVER"
test -f "$work/root/lib/modules/$KVER/modules.dep"

rm -rf "$root"
mv "$work/root" "$root"
touch "$root/.ready"
echo "prepare-kernel: kernel $KVER ready in $root" >&2
echo "$root"
