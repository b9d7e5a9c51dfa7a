package integration

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	nfsc "github.com/willscott/go-nfs-client/nfs"

	"github.com/nfscache/nfscache/server"
)

const srvBigSize = 50 << 20

// 50 MB up and down with libnfs (nfs-cp, nfs-cat, nfs-ls, no
// auto-traverse-mounts=0: MOUNT EXPORT is answered) and with
// go-nfs-client; checksums equal everywhere.
func TestServerLibnfsRoundTrip(t *testing.T) {
	nfsCp, nfsCat, nfsLs := srvLibnfs(t, "nfs-cp"), srvLibnfs(t, "nfs-cat"), srvLibnfs(t, "nfs-ls")
	export, local := t.TempDir(), t.TempDir()
	s, port := srvStart(t, export, server.Options{})
	src := filepath.Join(local, "src")
	data := make([]byte, srvBigSize)
	rand.Read(data)
	os.WriteFile(src, data, 0o644)
	want := sha256.Sum256(data)

	srvRun(t, nfsCp, src, srvURL(port, "/up.bin"))
	if got := srvSum(t, filepath.Join(export, "up.bin")); got != want {
		t.Fatal("nfs-cp upload: checksum differs on the export")
	}
	cat := exec.Command(nfsCat, srvURL(port, "/up.bin"))
	h := sha256.New()
	cat.Stdout = h
	if err := cat.Run(); err != nil {
		t.Fatalf("nfs-cat: %v", err)
	}
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("nfs-cat download: checksum differs")
	}
	srvRun(t, nfsCp, srvURL(port, "/up.bin"), filepath.Join(local, "down"))
	if srvSum(t, filepath.Join(local, "down")) != want {
		t.Fatal("nfs-cp download: checksum differs")
	}

	// go-nfs-client: upload and download with 1 MiB calls.
	v := srvMount(t, port)
	f, err := v.OpenFile("/gonfs.bin", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(data); off += 1 << 20 {
		if _, err := f.Write(data[off:min(off+1<<20, len(data))]); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if srvSum(t, filepath.Join(export, "gonfs.bin")) != want {
		t.Fatal("go-nfs-client upload: checksum differs")
	}
	r, err := v.Open("/up.bin")
	if err != nil {
		t.Fatal(err)
	}
	h.Reset()
	if _, err := io.CopyBuffer(h, r, make([]byte, 1<<20)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatal("go-nfs-client download: checksum differs")
	}

	// Namespace operations, seen by libnfs and on disk.
	if _, err := v.Mkdir("/dir", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := v.Rename("/gonfs.bin", "/dir/moved.bin"); err != nil {
		t.Fatal(err)
	}
	if err := v.Symlink("moved.bin", "/dir/link"); err != nil {
		t.Fatal(err)
	}
	if err := v.Setattr("/dir/moved.bin", nfsc.Sattr3{Size: nfsc.SetSize{SetIt: true, Size: 4096}}); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(filepath.Join(export, "dir/moved.bin")); err != nil || st.Size() != 4096 {
		t.Fatalf("truncate not on disk: %v %v", st, err)
	}
	if tgt, err := os.Readlink(filepath.Join(export, "dir/link")); err != nil || tgt != "moved.bin" {
		t.Fatalf("symlink on disk: %q %v", tgt, err)
	}
	ls := string(srvRun(t, nfsLs, "-R", srvURL(port, "/")))
	for _, name := range []string{"up.bin", "moved.bin", "link"} {
		if !strings.Contains(ls, name) {
			t.Fatalf("nfs-ls -R lacks %s:\n%s", name, ls)
		}
	}
	if err := v.Remove("/dir/link"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(export, "dir/moved.bin")); err != nil {
		t.Fatal("removing the symlink removed its target")
	}
	if err := v.RmDir("/dir"); err == nil {
		t.Fatal("rmdir of a non-empty directory succeeded")
	} else if !nfsc.IsNotEmptyError(err) {
		t.Fatalf("rmdir of a non-empty directory: %v, want NOTEMPTY", err)
	}
	if err := v.Remove("/dir/moved.bin"); err != nil {
		t.Fatal(err)
	}
	if err := v.RmDir("/dir"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(export, "dir")); !os.IsNotExist(err) {
		t.Fatalf("dir still on disk: %v", err)
	}
	st := s.Stats()
	if st.Mount[server.MountProcExport] == 0 || st.NFS[server.ProcRead] == 0 || st.BytesRead < 3*srvBigSize {
		t.Fatalf("server stats do not show the traffic: %+v", st)
	}
}

// nfsd-cache serve with no flags but --listen: prints the mount line and
// the libnfs URL, serves that URL, exits 0 on SIGTERM.
func TestServerServeCommand(t *testing.T) {
	nfsLs := srvLibnfs(t, "nfs-ls")
	bin := filepath.Join(t.TempDir(), "nfsd-cache")
	build := exec.Command("go", "build", "-o", bin, "github.com/nfscache/nfscache/cmd/nfsd-cache")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "serve", "--listen", "127.0.0.1:0", "--log-level", "warn")
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stdout)
	var lines []string
	for len(lines) < 3 && sc.Scan() {
		lines = append(lines, sc.Text())
	}
	out := strings.Join(lines, "\n")
	if !regexp.MustCompile(`mount -t nfs -o vers=3,proto=tcp,port=\d+,mountport=\d+,nolock,noacl,addr=127.0.0.1 127.0.0.1:/ /mnt`).MatchString(out) {
		t.Fatalf("no Linux mount line in:\n%s", out)
	}
	url := regexp.MustCompile(`nfs://[^' ]+`).FindString(out)
	if url == "" {
		t.Fatalf("no libnfs URL in:\n%s", out)
	}
	srvRun(t, nfsLs, url)
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
}
