#!/usr/bin/env bash
# prepare-kernel.sh — fetch and unpack the Debian kernel that the Linux NFS
# client test (integration/kernel) boots under qemu.
#
# The kernel lives in a cache directory OUTSIDE the repository (never commit it):
#   $NFSCACHE_KERNEL_CACHE, else /var/cache/nfscache-kernel when writable,
#   else ${XDG_CACHE_HOME:-$HOME/.cache}/nfscache-kernel.
# Layout: $CACHE/$KVER/{boot/vmlinuz-$KVER, boot/vmlinux-$KVER, lib/modules/$KVER/...}
# plus a .ready stamp written last, so an interrupted run is redone, and a run
# with the stamp present returns at once (after adding vmlinux to a cache made
# before it was extracted). Prints the kernel root directory.
#
# vmlinux is the kernel decompressed out of vmlinuz (as the kernel's
# scripts/extract-vmlinux does): qemu boots it through its PVH entry point,
# which saves the ~10 s the xz-compressed vmlinuz spends decompressing itself
# under TCG on every boot. The test falls back to vmlinuz without it.
#
# With --print, only print the kernel root if it is ready (exit 1 if not).
#
# Needs: apt-get (the .deb comes from the Debian archive), dpkg-deb, depmod,
# xz (for vmlinux; optional).
set -euo pipefail

# extract_vmlinux VMLINUZ OUT: decompress the xz stream inside a bzImage.
extract_vmlinux() {
  local off
  command -v xz >/dev/null || return 1
  off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$1" | head -n 1 | cut -d: -f1)
  [ -n "$off" ] || return 1
  # xz stops at the end of the stream and complains about the bytes after it.
  tail -c +$((off + 1)) "$1" | xz -dc >"$2.tmp" 2>/dev/null || true
  if [ "$(head -c 4 "$2.tmp" | tail -c 3)" != ELF ]; then
    rm -f "$2.tmp"
    return 1
  fi
  mv "$2.tmp" "$2"
}

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
  if [ "${1:-}" != "--print" ] && [ ! -f "$root/boot/vmlinux-$KVER" ]; then
    extract_vmlinux "$root/boot/vmlinuz-$KVER" "$root/boot/vmlinux-$KVER" ||
      echo "prepare-kernel: could not extract vmlinux (the test boots the slower vmlinuz)" >&2
  fi
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
extract_vmlinux "$work/root/boot/vmlinuz-$KVER" "$work/root/boot/vmlinux-$KVER" ||
  echo "prepare-kernel: could not extract vmlinux (the test boots the slower vmlinuz)" >&2

rm -rf "$root"
mv "$work/root" "$root"
touch "$root/.ready"
echo "prepare-kernel: kernel $KVER ready in $root" >&2
echo "$root"
