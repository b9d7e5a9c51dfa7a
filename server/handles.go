package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Handle layout (RFC 1813 §2.3.3 allows up to NFS3_FHSIZE = 64 bytes):
//
//	[0]      format version (handleVersion)
//	[1:9]    file id, big endian, never reused
//	[9:13]   generation, random per id
//	[13:32]  HMAC-SHA256(secret, bytes [0:13]) truncated to 19 bytes
const (
	handleVersion = 1
	handleMACLen  = 19 // total 32: go-nfs's XDR reader ignores opaque padding, so handles must be a multiple of 4 bytes
	handleLen     = 13 + handleMACLen
	rootID        = 1
)

var (
	bucketMeta  = []byte("meta")
	bucketIDs   = []byte("ids")   // id(8) -> gen(4) | path
	bucketPaths = []byte("paths") // path -> id(8)
	keySecret   = []byte("secret")
	keyNextID   = []byte("next-id")
)

// errBadHandle reports a handle that fails to parse or authenticate.
var errBadHandle = errors.New("server: bad file handle")

// errStaleHandle reports an authentic handle whose file is gone.
var errStaleHandle = errors.New("server: stale file handle")

// handleTable is the persistent id↔path table behind file handles.
//
// Concurrency: safe for concurrent use. mu serialises table changes so a
// rename's prefix rewrite and a concurrent assignment cannot interleave;
// reads go straight to bbolt read transactions. bbolt is the only thing
// called while mu is held.
type handleTable struct {
	db     *bolt.DB
	secret []byte
	mu     sync.Mutex
	live   atomic.Int64 // ids in the table, kept so Stats need not walk it
}

func openHandleTable(dir string) (*handleTable, error) {
	// NoSync: an assignment lost in an OS crash only makes a handle
	// handed out in the last moments stale; Close syncs.
	db, err := bolt.Open(filepath.Join(dir, "handles.db"), 0o600, &bolt.Options{Timeout: 2 * time.Second, NoSync: true})
	if err != nil {
		return nil, fmt.Errorf("open handle table: %w", err)
	}
	t := &handleTable{db: db}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		ids, err := tx.CreateBucketIfNotExists(bucketIDs)
		if err != nil {
			return err
		}
		paths, err := tx.CreateBucketIfNotExists(bucketPaths)
		if err != nil {
			return err
		}
		if s := meta.Get(keySecret); s != nil {
			t.secret = append([]byte(nil), s...)
			return nil
		}
		t.secret = make([]byte, 32)
		if _, err := rand.Read(t.secret); err != nil {
			return err
		}
		if err := meta.Put(keySecret, t.secret); err != nil {
			return err
		}
		if err := meta.Put(keyNextID, u64(rootID+1)); err != nil {
			return err
		}
		if err := ids.Put(u64(rootID), append(randGen(), ""...)); err != nil {
			return err
		}
		return paths.Put(pathKey(""), u64(rootID))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init handle table: %w", err)
	}
	_ = db.View(func(tx *bolt.Tx) error {
		t.live.Store(int64(tx.Bucket(bucketIDs).Stats().KeyN))
		return nil
	})
	return t, nil
}

func (t *handleTable) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.db.Sync(); err != nil {
		t.db.Close()
		return fmt.Errorf("sync handle table: %w", err)
	}
	return t.db.Close()
}

// pathKey is the paths-bucket key of a rel path: bbolt refuses empty
// keys, so every key starts with "/" (the root is "/").
func pathKey(p string) []byte { return []byte("/" + p) }

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func randGen() []byte {
	g := make([]byte, 4)
	_, _ = rand.Read(g)
	return g
}

func (t *handleTable) mac(b []byte) []byte {
	m := hmac.New(sha256.New, t.secret)
	m.Write(b)
	return m.Sum(nil)[:handleMACLen]
}

func (t *handleTable) encode(id uint64, gen []byte) []byte {
	h := make([]byte, handleLen)
	h[0] = handleVersion
	binary.BigEndian.PutUint64(h[1:9], id)
	copy(h[9:13], gen)
	copy(h[13:], t.mac(h[:13]))
	return h
}

// verify checks a handle's shape and MAC and returns its id and generation.
func (t *handleTable) verify(h []byte) (uint64, []byte, error) {
	if len(h) != handleLen || h[0] != handleVersion {
		return 0, nil, errBadHandle
	}
	if !hmac.Equal(h[13:], t.mac(h[:13])) {
		return 0, nil, errBadHandle
	}
	return binary.BigEndian.Uint64(h[1:9]), h[9:13], nil
}

// resolve maps a handle to its id and current path.
func (t *handleTable) resolve(h []byte) (uint64, string, error) {
	id, gen, err := t.verify(h)
	if err != nil {
		return 0, "", err
	}
	var p string
	err = t.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketIDs).Get(u64(id))
		if len(v) < 4 || !hmac.Equal(v[:4], gen) {
			return errStaleHandle
		}
		p = string(v[4:])
		return nil
	})
	if err != nil {
		return 0, "", err
	}
	return id, p, nil
}

// lookup returns the handle of an already known path.
func (t *handleTable) lookup(p string) ([]byte, uint64, bool) {
	var h []byte
	var id uint64
	_ = t.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketPaths).Get(pathKey(p))
		if v == nil {
			return nil
		}
		id = binary.BigEndian.Uint64(v)
		e := tx.Bucket(bucketIDs).Get(v)
		if len(e) >= 4 {
			h = t.encode(id, e[:4])
		}
		return nil
	})
	return h, id, h != nil
}

// assign returns the handle of p, giving it a fresh id if it has none.
func (t *handleTable) assign(p string) ([]byte, error) {
	if h, _, ok := t.lookup(p); ok {
		return h, nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var h []byte
	added := false
	err := t.db.Update(func(tx *bolt.Tx) error {
		paths, ids, meta := tx.Bucket(bucketPaths), tx.Bucket(bucketIDs), tx.Bucket(bucketMeta)
		if v := paths.Get(pathKey(p)); v != nil { // assigned meanwhile
			id := binary.BigEndian.Uint64(v)
			e := ids.Get(v)
			if len(e) < 4 {
				return fmt.Errorf("handle table: id %d has no entry", id)
			}
			h = t.encode(id, e[:4])
			return nil
		}
		id := binary.BigEndian.Uint64(meta.Get(keyNextID))
		if err := meta.Put(keyNextID, u64(id+1)); err != nil {
			return err
		}
		gen := randGen()
		if err := ids.Put(u64(id), append(append([]byte(nil), gen...), p...)); err != nil {
			return err
		}
		if err := paths.Put(pathKey(p), u64(id)); err != nil {
			return err
		}
		h = t.encode(id, gen)
		added = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("assign handle for %q: %w", p, err)
	}
	if added {
		t.live.Add(1)
	}
	return h, nil
}

// forget drops p and everything below it; returns the ids dropped.
// Their ids are never handed out again.
func (t *handleTable) forget(p string) ([]uint64, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var dropped []uint64
	err := t.db.Update(func(tx *bolt.Tx) error {
		paths, ids := tx.Bucket(bucketPaths), tx.Bucket(bucketIDs)
		for _, kv := range subtree(paths, p) {
			if err := paths.Delete(kv.path); err != nil {
				return err
			}
			if err := ids.Delete(kv.id); err != nil {
				return err
			}
			dropped = append(dropped, binary.BigEndian.Uint64(kv.id))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("forget %q: %w", p, err)
	}
	t.live.Add(-int64(len(dropped)))
	return dropped, nil
}

// move re-points from (and everything below it) to to, after a rename.
// Whatever was known at to is forgotten first. It returns the ids whose
// path changed and the ids dropped.
func (t *handleTable) move(from, to string) (moved, dropped []uint64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	err = t.db.Update(func(tx *bolt.Tx) error {
		paths, ids := tx.Bucket(bucketPaths), tx.Bucket(bucketIDs)
		for _, kv := range subtree(paths, to) {
			if err := paths.Delete(kv.path); err != nil {
				return err
			}
			if err := ids.Delete(kv.id); err != nil {
				return err
			}
			dropped = append(dropped, binary.BigEndian.Uint64(kv.id))
		}
		for _, kv := range subtree(paths, from) {
			nk := string(pathKey(to)) + string(kv.path[len(pathKey(from)):])
			if err := paths.Delete(kv.path); err != nil {
				return err
			}
			if err := paths.Put([]byte(nk), kv.id); err != nil {
				return err
			}
			e := ids.Get(kv.id)
			if len(e) < 4 {
				continue
			}
			ne := append(append([]byte(nil), e[:4]...), nk[1:]...)
			if err := ids.Put(kv.id, ne); err != nil {
				return err
			}
			moved = append(moved, binary.BigEndian.Uint64(kv.id))
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("move %q to %q: %w", from, to, err)
	}
	t.live.Add(-int64(len(dropped)))
	return moved, dropped, nil
}

type pathID struct{ path, id []byte }

// subtree lists the keys of p itself and of every path below it. Keys
// are copied: bbolt memory is only valid inside the transaction and we
// delete while walking.
func subtree(paths *bolt.Bucket, p string) []pathID {
	if p == "" {
		return nil // the root is never removed or renamed
	}
	var out []pathID
	k := pathKey(p)
	if v := paths.Get(k); v != nil {
		out = append(out, pathID{k, append([]byte(nil), v...)})
	}
	prefix := append(k, '/')
	c := paths.Cursor()
	for k, v := c.Seek(prefix); k != nil && strings.HasPrefix(string(k), string(prefix)); k, v = c.Next() {
		out = append(out, pathID{append([]byte(nil), k...), append([]byte(nil), v...)})
	}
	return out
}

// count reports how many ids are live.
func (t *handleTable) count() int { return int(t.live.Load()) }
