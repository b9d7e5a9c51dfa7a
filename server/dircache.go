package server

import (
	"crypto/sha256"
	"encoding/binary"
	"io/fs"

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
