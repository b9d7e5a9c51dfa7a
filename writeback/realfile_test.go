package writeback

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// fileFS is a Filesystem whose backing store is a real file per inode on
// the local disk, with an in-memory page cache the writers fill. It is the
// simplest real peer for writeback: what reaches the file is what WritePages
// really wrote.
type fileFS struct {
	mu    sync.Mutex
	cache map[*Inode]*pageCache
	files map[*Inode]*os.File
	dir   string
}

// pageCache holds a file's data in fixed 1 MiB blocks.
type pageCache struct {
	blocks map[int64][]byte
	size   int64
}

const cacheBlock = 1 << 20

func (pc *pageCache) writeAt(data []byte, off int64) {
	for len(data) > 0 {
		b := pc.blocks[off/cacheBlock]
		if b == nil {
			b = make([]byte, cacheBlock)
			pc.blocks[off/cacheBlock] = b
		}
		n := copy(b[off%cacheBlock:], data)
		data, off = data[n:], off+int64(n)
		pc.size = max(pc.size, off)
	}
}

// readAt appends [off, end) (clipped to the size) to dst.
func (pc *pageCache) readAt(dst []byte, off, end int64) []byte {
	end = min(end, pc.size)
	for off < end {
		b := pc.blocks[off/cacheBlock]
		n := min(end-off, cacheBlock-off%cacheBlock)
		if b == nil {
			dst = append(dst, make([]byte, n)...)
		} else {
			dst = append(dst, b[off%cacheBlock:off%cacheBlock+n]...)
		}
		off += n
	}
	return dst
}

func newFileFS(dir string) *fileFS {
	return &fileFS{cache: make(map[*Inode]*pageCache), files: make(map[*Inode]*os.File), dir: dir}
}

func (fs *fileFS) open(ino *Inode) (*os.File, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f := fs.files[ino]; f != nil {
		return f, nil
	}
	f, err := os.OpenFile(filepath.Join(fs.dir, fmt.Sprint(ino.Owner())), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	fs.files[ino] = f
	return f, nil
}

// write stores data in the page cache; the caller then marks it dirty.
func (fs *fileFS) write(ino *Inode, off int64, data []byte) {
	fs.mu.Lock()
	pc := fs.cache[ino]
	if pc == nil {
		pc = &pageCache{blocks: make(map[int64][]byte)}
		fs.cache[ino] = pc
	}
	pc.writeAt(data, off)
	fs.mu.Unlock()
	ino.ExtendSize(off + int64(len(data)))
}

// contents returns everything written to ino's page cache.
func (fs *fileFS) contents(ino *Inode) []byte {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.cache[ino].readAt(nil, 0, fs.cache[ino].size)
}

const fileChunk = 1 << 20

func (fs *fileFS) WritePages(ctx context.Context, ino *Inode, extents []Extent) (int64, error) {
	f, err := fs.open(ino)
	if err != nil {
		return 0, err
	}
	var written int64
	var tmp []byte
	for _, e := range extents {
		for off := e.Off; off < e.End; off += fileChunk {
			end := min(off+fileChunk, e.End)
			fs.mu.Lock()
			tmp = fs.cache[ino].readAt(tmp[:0], off, end) // the last page runs past EOF
			fs.mu.Unlock()
			if _, err := f.WriteAt(tmp, off); err != nil {
				return written, err
			}
			written += end - off
		}
	}
	return written, nil
}

func (fs *fileFS) WriteInode(ctx context.Context, ino *Inode, wbc *Control) error {
	return nil
}

func (fs *fileFS) close() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	for _, f := range fs.files {
		f.Close()
	}
}

// TestWritebackToRealFile: concurrent random writers under a small dirty
// limit and a short expiry; after Close, each file on disk equals what was
// written to its page cache, byte for byte.
func TestWritebackToRealFile(t *testing.T) {
	fs := newFileFS(t.TempDir())
	defer fs.close()
	f := New(fs, Options{DirtyExpire: 5 * time.Millisecond, Interval: 2 * time.Millisecond, DirtyLimitBytes: 64 << 10})
	inodes := []*Inode{f.NewInode("a"), f.NewInode("b")}
	const size = 512 << 10
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 3))
			data := make([]byte, 20000)
			for range 150 {
				ino := inodes[rng.IntN(len(inodes))]
				off := rng.Int64N(size)
				n := 1 + rng.Int64N(min(int64(len(data)), size-off))
				for k := range data[:n] {
					data[k] = byte(rng.Uint32())
				}
				fs.write(ino, off, data[:n])
				if err := f.MarkDirty(context.Background(), ino, off, n, nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ino := range inodes {
		file, err := fs.open(ino)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(file.Name())
		if err != nil {
			t.Fatal(err)
		}
		want := fs.contents(ino)
		if !bytes.Equal(got, want) {
			t.Fatalf("file %v: %d bytes on disk differ from the %d written", ino.Owner(), len(got), len(want))
		}
	}
	s := f.Stats()
	t.Logf("stats %+v", s)
	if s.DirtyBytes != 0 || s.DirtyInodes != 0 {
		t.Fatalf("dirty after Close: %+v", s)
	}
}

// BenchmarkWritebackToFile writes b.N × 64 KiB sequentially into a real
// file three ways in the same run: straight with os.File.WriteAt (direct);
// through the test page cache, writing each chunk synchronously with the
// same WritePages (write-through: the cost of the harness's copies); and
// through the page cache and the Flusher, flushed by Close (writeback).
// It reports the three rates and writeback's ratio to each baseline.
func BenchmarkWritebackToFile(b *testing.B) {
	const chunk = 64 << 10
	dir := b.TempDir()
	data := bytes.Repeat([]byte("writeback"), chunk/9+1)[:chunk]
	ctx := context.Background()

	direct, err := os.Create(filepath.Join(dir, "direct"))
	if err != nil {
		b.Fatal(err)
	}
	defer direct.Close()
	start := time.Now()
	for k := range b.N {
		if _, err := direct.WriteAt(data, int64(k)*chunk); err != nil {
			b.Fatal(err)
		}
	}
	directSec := time.Since(start).Seconds()

	fs := newFileFS(dir)
	defer fs.close()
	through := NewInode("through")
	start = time.Now()
	for k := range b.N {
		off := int64(k) * chunk
		fs.write(through, off, data)
		if _, err := fs.WritePages(ctx, through, []Extent{{off, off + chunk}}); err != nil {
			b.Fatal(err)
		}
	}
	throughSec := time.Since(start).Seconds()

	f := New(fs, Options{DirtyLimitBytes: 32 << 20})
	ino := f.NewInode("wb")
	start = time.Now()
	for k := range b.N {
		off := int64(k) * chunk
		fs.write(ino, off, data)
		if err := f.MarkDirty(ctx, ino, off, chunk, nil); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	wbSec := time.Since(start).Seconds()

	mb := float64(b.N) * chunk / 1e6
	b.ReportMetric(mb/wbSec, "writeback-MB/s")
	b.ReportMetric(mb/throughSec, "writethrough-MB/s")
	b.ReportMetric(mb/directSec, "direct-MB/s")
	b.ReportMetric(throughSec/wbSec, "ratio-vs-writethrough")
	b.ReportMetric(directSec/wbSec, "ratio-vs-direct")
	b.ReportMetric(float64(f.Stats().PagesWritten)*PageSize/mb/1e6, "bytes-written/bytes-dirtied")
}
