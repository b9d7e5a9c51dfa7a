//go:build linux

package kernel

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// cpioWriter writes a "newc" cpio archive, the format the kernel unpacks
// as an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

func (c *cpioWriter) entry(name string, mode uint32, data []byte, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	var b bytes.Buffer
	b.WriteString(hdr)
	b.WriteString(name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	b.Write(data)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	_, c.err = c.w.Write(b.Bytes())
}

func (c *cpioWriter) dir(name string)               { c.entry(name, modeDir|0o755, nil, 0, 0) }
func (c *cpioWriter) file(name string, data []byte) { c.entry(name, modeFile|0o755, data, 0, 0) }
func (c *cpioWriter) symlink(name, target string) {
	c.entry(name, modeSymlink|0o777, []byte(target), 0, 0)
}
func (c *cpioWriter) charDev(name string, maj, min uint32) {
	c.entry(name, modeCharDev|0o600, nil, maj, min)
}
func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, nil, 0, 0)
	return c.err
}

// moduleLoadOrder returns the modules (paths relative to the modules
// directory) needed for wanted, dependencies first, each once, read from the
// modules.dep that depmod wrote. modules.dep lists a module's whole
// dependency closure, the ones to load last first, as modprobe --show-depends
// shows in reverse.
func moduleLoadOrder(modulesDir string, wanted []string) ([]string, error) {
	f, err := os.Open(filepath.Join(modulesDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{} // module name → dependency paths
	paths := map[string]string{}  // module name → its path
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		name := moduleName(mod)
		paths[name] = mod
		deps[name] = strings.Fields(rest)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var order []string
	loaded := map[string]bool{}
	var load func(name string, depth int) error
	load = func(name string, depth int) error {
		if loaded[name] {
			return nil
		}
		p, ok := paths[name]
		if !ok {
			return fmt.Errorf("module %s is not in modules.dep", name)
		}
		if depth > 50 {
			return fmt.Errorf("module dependency loop at %s", name)
		}
		ds := deps[name]
		for i := len(ds) - 1; i >= 0; i-- {
			if err := load(moduleName(ds[i]), depth+1); err != nil {
				return err
			}
		}
		loaded[name] = true
		order = append(order, p)
		return nil
	}
	for _, w := range wanted {
		if err := load(w, 0); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleName turns "kernel/fs/nfs/nfsv3.ko" into "nfsv3" (modprobe treats
// '-' and '_' alike; modules.dep of this kernel uses '_').
func moduleName(p string) string {
	base := path.Base(p)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(base, ext) {
			base = strings.TrimSuffix(base, ext)
			break
		}
	}
	return strings.ReplaceAll(base, "-", "_")
}

// initScript is /init: busybox mounts the pseudo filesystems, loads the
// modules, configures qemu's user-mode network, mounts each variant's
// export on /mnt/<variant> and runs the guest program on all of them.
// /config supplies VARIANTS, NFSOPTS_<variant> and GUESTARGS; PHASE comes
// from the kernel command line (unknown key=value parameters become init's
// environment). A failed mount leaves an empty directory: the guest sees it
// is not NFS and fails that variant's checks.
const initScript = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /mnt /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
. /config
up() { cut -d' ' -f1 /proc/uptime; }
echo "INIT start uptime=$(up)"
for m in $(cat /modules.order); do
  insmod "/modules/$m" || echo "INIT FAIL insmod $m"
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
mounts=""
for v in $VARIANTS; do
  eval "opts=\$NFSOPTS_$v"
  mkdir -p "/mnt/$v"
  if mount -i -t nfs -o "$opts" 10.0.2.2:/ "/mnt/$v"; then
    echo "INIT mounted $v uptime=$(up)"
  else
    echo "INIT FAIL mount $v exit=$?"
  fi
  mounts="$mounts${mounts:+,}$v=/mnt/$v"
done
/guest -phase="$PHASE" -mounts="$mounts" $GUESTARGS
echo "INIT guest exit=$? uptime=$(up)"
for v in $VARIANTS; do
  umount "/mnt/$v" || echo "INIT FAIL umount $v"
done
echo "INIT poweroff uptime=$(up)"
poweroff -f
`

// buildInitramfs writes a gzipped newc initramfs to out.
func buildInitramfs(t *testing.T, k kernelEnv, guestBin, config, out string) {
	t.Helper()
	modDir := filepath.Join(k.root, "lib", "modules", k.version)
	mods, err := moduleLoadOrder(modDir, []string{"virtio_pci", "virtio_net", "nfsv3"})
	if err != nil {
		t.Fatalf("resolving modules: %v", err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zw := gzip.NewWriter(f)
	c := &cpioWriter{w: zw}
	for _, d := range []string{"bin", "dev", "proc", "sys", "mnt", "tmp", "modules"} {
		c.dir(d)
	}
	c.charDev("dev/console", 5, 1)
	c.charDev("dev/null", 1, 3)
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	c.file("bin/busybox", read(k.busybox))
	c.symlink("bin/sh", "busybox")
	c.file("init", []byte(initScript))
	c.file("config", []byte(config))
	c.file("guest", read(guestBin))
	var order []string
	for _, m := range mods {
		base := path.Base(m)
		if !strings.HasSuffix(base, ".ko") {
			t.Fatalf("module %s is compressed; busybox insmod here loads plain .ko only", m)
		}
		c.file("modules/"+base, read(filepath.Join(modDir, m)))
		order = append(order, base)
	}
	c.file("modules.order", []byte(strings.Join(order, "\n")+"\n"))
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs: modules in load order: %s", strings.Join(order, " "))
}

func TestModuleLoadOrder(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/fs/nfs/nfsv3.ko: kernel/fs/nfs/nfs.ko kernel/net/sunrpc/sunrpc.ko\n" +
		"kernel/fs/nfs/nfs.ko: kernel/net/sunrpc/sunrpc.ko\n" +
		"kernel/net/sunrpc/sunrpc.ko:\n" +
		"kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n" +
		"kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n" +
		"kernel/net/core/failover.ko:\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := moduleLoadOrder(dir, []string{"virtio_net", "nfsv3", "sunrpc"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/net/core/failover.ko", "kernel/drivers/net/net_failover.ko", "kernel/drivers/net/virtio_net.ko",
		"kernel/net/sunrpc/sunrpc.ko", "kernel/fs/nfs/nfs.ko", "kernel/fs/nfs/nfsv3.ko"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("load order\n got %v\nwant %v", got, want)
	}
	if _, err := moduleLoadOrder(dir, []string{"nosuch"}); err == nil {
		t.Fatal("unknown module: no error")
	}
}

func TestCpioNewc(t *testing.T) {
	var b bytes.Buffer
	c := &cpioWriter{w: &b}
	c.file("init", []byte("abc"))
	if err := c.close(); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	// header (110) + "init\0" padded to 116 + "abc" padded to 120
	if !strings.HasPrefix(s, "070701") || len(s) < 120 || s[110:114] != "init" || s[116:119] != "abc" {
		t.Fatalf("bad newc entry: %q", s[:min(len(s), 130)])
	}
	if (len(s))%4 != 0 || !strings.Contains(s, "TRAILER!!!") {
		t.Fatalf("archive not padded or without trailer (len %d)", len(s))
	}
	if got := s[6+6*8 : 6+7*8]; got != "00000003" {
		t.Fatalf("filesize field %q, want 00000003", got)
	}
}
