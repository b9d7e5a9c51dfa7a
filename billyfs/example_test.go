package billyfs_test

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"

	"github.com/go-git/go-billy/v5/util"

	"github.com/nfscache/nfscache/billyfs"
	"github.com/nfscache/nfscache/server"
)

// A Go program embedding billyfs: an in-process NFSv3 server exports an
// in-memory filesystem on 127.0.0.1, billyfs mounts it with a local cache
// directory, writes a file, reads it back, syncs, and reports its counters.
func Example() {
	// The server (any NFSv3 server works; this one is in-process).
	srv, err := server.New(server.NewMemFS(), server.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go srv.Serve(l)

	cacheDir, err := os.MkdirTemp("", "billyfs-cache")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(cacheDir)

	// Mount the export, caching file data in cacheDir.
	fsys, err := billyfs.New(context.Background(), billyfs.Options{
		Addr:     l.Addr().String(),
		CacheDir: cacheDir,
	})
	if err != nil {
		log.Fatal(err)
	}

	// Write: the data goes into the cache, dirty; Close writes it back to
	// the server and reports any error (a small file takes one FILE_SYNC
	// WRITE; larger ones UNSTABLE WRITEs and a COMMIT).
	if err := util.WriteFile(fsys, "greetings/hello.txt", []byte("hello over NFS\n"), 0o644); err != nil {
		log.Fatal(err)
	}
	// Read back: served from the local cache, no READ goes to the server.
	data, err := util.ReadFile(fsys, "greetings/hello.txt")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(data))

	// Sync writes back everything still dirty (nothing here).
	if err := fsys.Sync(); err != nil {
		log.Fatal(err)
	}
	st := fsys.Stats()
	fmt.Println("WRITE calls:", st.RPC.Procs["WRITE"].Calls, "COMMIT calls:", st.RPC.Procs["COMMIT"].Calls)
	fmt.Println("READ calls:", st.RPC.Procs["READ"].Calls, "served from cache:", st.Cache.ReadHits > 0)

	// Close syncs, releases every cache cookie and fd, and unmounts.
	if err := fsys.Close(); err != nil {
		log.Fatal(err)
	}
	// Output:
	// hello over NFS
	// WRITE calls: 1 COMMIT calls: 0
	// READ calls: 0 served from cache: true
}
