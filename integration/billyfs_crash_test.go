package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nfscache/nfscache/billyfs"
)

// The crash test re-executes this test binary as a child (env switch
// crashChildEnv) that writes through billyfs with a cache directory on the
// parent's live server, reports each write it considers durable on stdout,
// and is then SIGKILLed. The parent reopens billyfs on the same cache
// directory (replaying the dirty records) and checks the server.
const (
	crashChildEnv = "NFSCACHE_BILLYFS_CRASH_CHILD" // server address
	crashCacheEnv = "NFSCACHE_BILLYFS_CRASH_CACHE" // cache directory
)

// crashContent is the deterministic content of a crash-test file.
func crashContent(name string, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + len(name)*13 + int(name[0]))
	}
	return b
}

// crashFiles: name → size. "synced" is Sync'ed (on the server before the
// crash); the others are only written (dirty in the cache); "conflict" is
// changed on the server while the child is dead.
var crashFiles = []struct {
	name string
	size int
	sync bool
}{
	{"synced.bin", 300 << 10, true},
	{"dirty-small.bin", 5000, false},
	{"dirty-big.bin", 700 << 10, false},
	{"conflict.bin", 64 << 10, false},
}

func crashChild() {
	fsys, err := billyfs.New(context.Background(), billyfs.Options{
		Addr:        os.Getenv(crashChildEnv),
		CacheDir:    os.Getenv(crashCacheEnv),
		DirtyExpire: time.Hour, // nothing is written back unless Sync'ed
	})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	for _, cf := range crashFiles {
		f, err := fsys.Create(cf.name)
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
		data := crashContent(cf.name, cf.size)
		// Several writes, the last one overlapping an earlier one.
		for off := 0; off < len(data); off += 64 << 10 {
			if _, err := f.Write(data[off:min(off+64<<10, len(data))]); err != nil {
				fmt.Println("ERROR", err)
				os.Exit(2)
			}
		}
		if _, err := f.(interface {
			WriteAt([]byte, int64) (int, error)
		}).WriteAt(data[:100], 0); err != nil {
			fmt.Println("ERROR", err)
			os.Exit(2)
		}
		if cf.sync {
			if err := f.(interface{ Sync() error }).Sync(); err != nil {
				fmt.Println("ERROR", err)
				os.Exit(2)
			}
		}
		// Write returned after the dirty record was committed to the
		// cache's journal: durable against process death.
		fmt.Println("DURABLE", cf.name, cf.size)
	}
	fmt.Println("READY")
	time.Sleep(time.Minute) // killed by the parent long before
	os.Exit(3)
}

func TestBillyfsCrashDirtyDataSurvivesSIGKILL(t *testing.T) {
	if os.Getenv(crashChildEnv) != "" {
		crashChild()
		return
	}
	srv := bfsStartServer(t)
	cacheDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestBillyfsCrashDirtyDataSurvivesSIGKILL$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+srv.Addr, crashCacheEnv+"="+cacheDir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	durable := map[string]int{}
	sc := bufio.NewScanner(out)
	ready := false
	for sc.Scan() {
		line := sc.Text()
		t.Logf("child: %s", line)
		var name string
		var n int
		if _, err := fmt.Sscanf(line, "DURABLE %s %d", &name, &n); err == nil {
			durable[name] = n
		}
		if line == "READY" {
			ready = true
			break
		}
		if strings.HasPrefix(line, "ERROR") {
			break
		}
	}
	// The server's copy of conflict.bin changes while the client is dead
	// (after the kill, so the child cannot see it).
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if !ready {
		t.Fatalf("child did not finish its writes (durable: %v)", durable)
	}
	serverVersion := []byte("the server's own version, written while the client was dead\n")
	if err := os.WriteFile(filepath.Join(srv.Dir, "conflict.bin"), serverVersion, 0o644); err != nil {
		t.Fatal(err)
	}
	// Before recovery the dirty files are empty on the server: the bytes
	// exist only in the cache.
	if st, err := os.Stat(filepath.Join(srv.Dir, "dirty-big.bin")); err != nil || st.Size() != 0 {
		t.Fatalf("dirty-big.bin on the server before recovery: %v %v (want empty: the test would prove nothing)", st, err)
	}

	fsys := bfsMount(t, srv, billyfs.Options{CacheDir: cacheDir})
	st := fsys.Stats()
	if st.Recovered != 2 || st.Conflicts != 1 {
		t.Errorf("Recovered=%d Conflicts=%d, want 2 and 1", st.Recovered, st.Conflicts)
	}
	for _, cf := range crashFiles {
		n, ok := durable[cf.name]
		if !ok {
			t.Errorf("child never reported %s durable", cf.name)
			continue
		}
		got, err := os.ReadFile(filepath.Join(srv.Dir, cf.name))
		if err != nil {
			t.Fatal(err)
		}
		want := crashContent(cf.name, n)
		if cf.name == "conflict.bin" {
			want = serverVersion
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s on the server: %d bytes, want %d (equal=%v)", cf.name, len(got), len(want), bytes.Equal(got, want))
		}
	}
	ents, err := os.ReadDir(filepath.Join(cacheDir, "conflicts"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 {
		t.Fatalf("conflicts dir holds %d files, want 1", len(ents))
	}
	kept, err := os.ReadFile(filepath.Join(cacheDir, "conflicts", ents[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(kept, crashContent("conflict.bin", durable["conflict.bin"])) {
		t.Errorf("conflict copy: %d bytes, not the child's data", len(kept))
	}
	// A second mount finds nothing left to recover.
	if err := fsys.Close(); err != nil {
		t.Fatal(err)
	}
	again := bfsMount(t, srv, billyfs.Options{CacheDir: cacheDir})
	if st := again.Stats(); st.Recovered != 0 || st.Conflicts != 0 {
		t.Errorf("second mount: Recovered=%d Conflicts=%d, want 0 and 0", st.Recovered, st.Conflicts)
	}
}
