package server

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"

	lru "github.com/hashicorp/golang-lru/v2"
	nfs "github.com/willscott/go-nfs"
)

// dirSnapshot is one directory listing, kept so the later pages of a
// READDIR/READDIRPLUS walk (RFC 1813 §3.3.16-17: cookie + cookieverf) are
// served from the listing the first page came from instead of reading
// and sorting the whole directory again for every page (go-nfs's default,
// quadratic in the directory size).
type dirSnapshot struct {
	path string
	ents []fs.FileInfo
}

// dirCacheSize bounds the listings kept; a walk whose listing was evicted
// just reads the directory again (same contents give the same verifier).
const dirCacheSize = 64

func newDirCache() *lru.Cache[uint64, dirSnapshot] {
	c, _ := lru.New[uint64, dirSnapshot](dirCacheSize) // only fails for size <= 0
	return c
}

var _ nfs.CachingHandler = (*laneHandler)(nil)

// VerifierFor names a listing by a hash of its path and names, so an
// unchanged directory keeps its cookie verifier, and remembers it.
func (h *laneHandler) VerifierFor(p string, contents []fs.FileInfo) uint64 {
	sum := sha256.New()
	sum.Write([]byte(p))
	for _, c := range contents {
		sum.Write([]byte{0})
		sum.Write([]byte(c.Name()))
	}
	v := binary.BigEndian.Uint64(sum.Sum(nil))
	if v == 0 {
		v = 1 // 0 means "no verifier" to clients
	}
	h.srv.dirs.Add(v, dirSnapshot{path: p, ents: contents})
	return v
}

// DataForVerifier returns the remembered listing, or nil to re-read.
func (h *laneHandler) DataForVerifier(p string, v uint64) []fs.FileInfo {
	if d, ok := h.srv.dirs.Get(v); ok && d.path == p {
		return d.ents
	}
	return nil
}

// listDir lists the directory at the base path p for READDIR and
// READDIRPLUS. A listing is names (getdents) followed by one lstat per
// name; osfs fails the whole listing when a name vanishes between the
// two (os.DirEntry.Info answers ENOENT), and go-nfs then answers the
// directory NOTDIR: a client listing a directory while another renames or
// removes in it got NFS3ERR_NOTDIR for a perfectly good directory. Here a
// name that vanished in between is left out, as if the listing had been
// taken a moment later (READDIR is not atomic, RFC 1813 §3.3.16).
//
// A disk export lists through os.Root (the directory is opened inside the
// root, and each name is lstat'ed relative to it: one fstatat each);
// other filesystems are asked again while a name keeps vanishing.
func (e *exportFS) listDir(p string) ([]os.FileInfo, error) {
	if e.osRoot != nil {
		return listRootDir(e.osRoot, p)
	}
	var err error
	for range 8 {
		var ents []os.FileInfo
		if ents, err = e.base.ReadDir(p); err == nil || !errors.Is(err, fs.ErrNotExist) {
			return ents, err
		}
		// A name vanished during the listing, or the directory itself
		// is gone: only the first is worth another try.
		if fi, serr := e.base.Lstat(p); serr != nil || !fi.IsDir() {
			return nil, err
		}
	}
	return nil, err
}

func listRootDir(root *os.Root, p string) ([]os.FileInfo, error) {
	dir, err := root.OpenRoot(p)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	f, err := dir.Open(".")
	if err != nil {
		return nil, err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", p, err)
	}
	ents := make([]os.FileInfo, 0, len(names))
	for _, name := range names {
		fi, err := dir.Lstat(name)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // renamed or removed since getdents
		case err != nil:
			return nil, err
		}
		ents = append(ents, fi)
	}
	return ents, nil
}
