package billyfs_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nfscache/nfscache/billyfs"
)

// Many goroutines on one FS at once, as a server calling billyfs from many
// connections does: writers of disjoint regions of shared files (each
// through its own open File), readers, Stat/ReadDir, and FS.Sync running
// concurrently. With a small MaxOpenFiles and a short dirty expiry the
// flusher, the pins and the fd LRU are all busy. Afterwards the server has
// every byte.
func TestConcurrentUse(t *testing.T) {
	for _, cache := range []bool{true, false} {
		t.Run(fmt.Sprint("cache=", cache), func(t *testing.T) {
			srv := startServer(t)
			opts := billyfs.Options{DirtyExpire: 20 * time.Millisecond, DirtyLimitBytes: 1 << 20, MaxOpenFiles: 4}
			if cache {
				opts.CacheDir = t.TempDir()
			}
			fsys := mount(t, srv, opts)
			const (
				files   = 4
				writers = 4 // per file
				region  = 64 << 10
			)
			want := make([][]byte, files)
			for i := range want {
				want[i] = randBytes(int64(200+i), writers*region)
				f, err := fsys.Create(fmt.Sprintf("shared%d", i))
				must(t, err)
				must(t, f.Close())
			}
			var wg sync.WaitGroup
			errs := make(chan error, 100)
			for i := 0; i < files; i++ {
				for w := 0; w < writers; w++ {
					wg.Add(1)
					go func(i, w int) {
						defer wg.Done()
						f, err := fsys.OpenFile(fmt.Sprintf("shared%d", i), os.O_RDWR, 0)
						if err != nil {
							errs <- err
							return
						}
						part := want[i][w*region : (w+1)*region]
						// Write the region in 4 KiB-unaligned pieces,
						// reading back as we go.
						for off := 0; off < region; off += 5000 {
							end := min(off+5000, region)
							if _, err := f.(io.WriterAt).WriteAt(part[off:end], int64(w*region+off)); err != nil {
								errs <- err
								return
							}
							b := make([]byte, end-off)
							if _, err := f.ReadAt(b, int64(w*region+off)); err != nil || !bytes.Equal(b, part[off:end]) {
								errs <- fmt.Errorf("file %d writer %d: read back at %d: %v", i, w, off, err)
								return
							}
						}
						if err := f.Close(); err != nil {
							errs <- err
						}
					}(i, w)
				}
			}
			wg.Add(2)
			go func() {
				defer wg.Done()
				for k := 0; k < 20; k++ {
					if _, err := fsys.ReadDir("/"); err != nil {
						errs <- err
						return
					}
					if _, err := fsys.Stat("shared0"); err != nil {
						errs <- err
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				for k := 0; k < 5; k++ {
					if err := fsys.Sync(); err != nil {
						errs <- err
						return
					}
				}
			}()
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			must(t, fsys.Sync())
			for i := range want {
				got, err := os.ReadFile(filepath.Join(srv.Dir, fmt.Sprintf("shared%d", i)))
				must(t, err)
				if !bytes.Equal(got, want[i]) {
					t.Fatalf("shared%d on the server: %d bytes, equal=%v", i, len(got), bytes.Equal(got, want[i]))
				}
			}
			if cache {
				st := fsys.Stats()
				if st.Cache.PeakOpenFiles > 4 || st.Cache.WritebackReopens != 0 {
					t.Fatalf("peak fds %d (bound 4), writeback reopens %d", st.Cache.PeakOpenFiles, st.Cache.WritebackReopens)
				}
			}
		})
	}
}
