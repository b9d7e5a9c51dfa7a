package fscache

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"sync"
)

// The journal is the cache's persistent index, the counterpart of
// cachefiles' per-file xattrs (CACHEFILES_XATTR: the coherency aux data and
// object size) plus the "which ranges hold data" knowledge that cachefiles
// gets from SEEK_DATA/SEEK_HOLE. It is one append-only file of records:
//
//	[u32 payload length][u32 CRC-32C of payload][payload: type byte, fields]
//
// Replay stops at the first torn or corrupt record, and the rewrite at Open
// drops everything from there, so a process killed in the middle of an
// append loses only that record. A present-range record is appended only after the data write to
// the backing file has returned (and, with Options.Durable, after the backing
// file was fdatasync'd), so a range is never recorded as present before its
// bytes are in the backing file. The journal is rewritten compactly (temp
// file, fsync, rename) at Open, at Close, and when it grows far beyond its
// live contents.

type objKey [16]byte

func (k objKey) String() string { return fmt.Sprintf("%x", k[:]) }

const (
	recObject  = 1 // (re)create an object: keys, aux, size; extents reset
	recPresent = 2 // a range became present
	recResize  = 3 // object size changed; extents beyond it dropped
	recAux     = 4 // coherency data and size updated
	recDelete  = 5 // object removed (retired or culled)
	recDiscard = 6 // a range became absent
	recDirty   = 7 // a range holds data not yet committed on the server
	recClean   = 8 // a dirty range was committed on the server (+ verifier)
)

// objRecord is the journal's view of one backing object, as returned by
// lookup and dirtyObjects and taken by encObject. The index itself keeps
// the more compact indexEntry.
type objRecord struct {
	volKey, key, aux []byte
	size             int64
	extents          extentSet
	dirty            extentSet // subset of extents not yet committed remotely
	verifier         []byte    // last server write verifier seen (ClearDirty)
	lastUsed         uint64    // logical clock; smaller = less recently used
}

// indexEntry is one object in the in-memory index. The index holds every
// object on disk, relinquished or not (culling and lookup need them), so
// it is kept small: the volume key is interned (one string per volume),
// cookie key and aux share one allocation, and the dirty state, which few
// objects have, hangs off a pointer. See doc.go, "Memory".
type indexEntry struct {
	vol      string // interned in journal.vols
	keyAux   []byte // cookie key then aux; replaced, never modified in place
	keyLen   uint32
	size     int64
	lastUsed uint64 // logical clock; smaller = less recently used
	extents  extentSet
	extra    *entryDirty // nil: no dirty ranges, no verifier
}

type entryDirty struct {
	dirty    extentSet // subset of extents not yet committed remotely
	verifier []byte    // last server write verifier seen (ClearDirty)
}

func (e *indexEntry) key() []byte { return e.keyAux[:e.keyLen:e.keyLen] }
func (e *indexEntry) aux() []byte { return e.keyAux[e.keyLen:len(e.keyAux):len(e.keyAux)] }

func (e *indexEntry) dirty() extentSet {
	if e.extra == nil {
		return nil
	}
	return e.extra.dirty
}

// setDirty replaces the dirty ranges, dropping extra when it holds nothing.
func (e *indexEntry) setDirty(d extentSet) {
	switch {
	case e.extra != nil:
		e.extra.dirty = d
		if len(d) == 0 && e.extra.verifier == nil {
			e.extra = nil
		}
	case len(d) > 0:
		e.extra = &entryDirty{dirty: d}
	}
}

func joinKeyAux(key, aux []byte) []byte {
	b := make([]byte, 0, len(key)+len(aux))
	return append(append(b, key...), aux...)
}

// record returns a copy of the entry as an objRecord; extents are copied
// only if copyExtents (callers outside j.mu must not share them).
func (e *indexEntry) record(copyExtents bool) objRecord {
	r := objRecord{
		volKey: []byte(e.vol), key: bytes.Clone(e.key()), aux: bytes.Clone(e.aux()),
		size: e.size, extents: e.extents, dirty: e.dirty(), lastUsed: e.lastUsed,
	}
	if e.extra != nil {
		r.verifier = bytes.Clone(e.extra.verifier)
	}
	if copyExtents {
		r.extents, r.dirty = r.extents.clone(), r.dirty.clone()
	}
	return r
}

// journal is guarded by mu, which is a leaf lock (see doc.go).
type journal struct {
	mu      sync.Mutex
	path    string
	f       *os.File
	size    int64 // bytes in the journal file
	live    int64 // size of the journal right after the last compaction
	objects map[objKey]*indexEntry
	vols    map[string]string // interned volume keys of objects
	used    int64             // sum of present bytes over all objects
	clock   uint64
	durable bool
	broken  error // sticky: the file could not be restored after a failed append
	buf     []byte
	// compactAt is the file size at which commit next tries to compact
	// after a failed compaction (0: no failure pending).
	compactAt int64
	// dirUnsynced: a compaction renamed the new index into place but could
	// not fsync the directory; sync retries it before reporting
	// durability.
	dirUnsynced bool
}

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func openJournal(dir string, durable bool) (*journal, error) {
	j := &journal{path: filepath.Join(dir, "index"), objects: make(map[objKey]*indexEntry), vols: make(map[string]string), durable: durable}
	data, err := os.ReadFile(j.path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("fscache: read index: %w", err)
	}
	j.replay(data)
	if err := j.compactLocked(); err != nil {
		return nil, err
	}
	return j, nil
}

// replay applies every intact record of data; it stops at the first torn one.
func (j *journal) replay(data []byte) {
	for len(data) >= 8 {
		n := binary.LittleEndian.Uint32(data)
		sum := binary.LittleEndian.Uint32(data[4:])
		if n == 0 || uint64(n) > uint64(len(data)-8) {
			return
		}
		payload := data[8 : 8+n]
		if crc32.Checksum(payload, crcTable) != sum {
			return
		}
		// An intact record that does not apply (e.g. for an object deleted
		// earlier) is skipped; only a torn or corrupt one ends the replay.
		_ = j.apply(payload)
		data = data[8+n:]
	}
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = io.ErrUnexpectedEOF
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = io.ErrUnexpectedEOF
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = io.ErrUnexpectedEOF
		return nil
	}
	v := bytes.Clone(d.b[:n])
	d.b = d.b[n:]
	return v
}

func (d *decoder) key() (k objKey) {
	if d.err != nil {
		return
	}
	if len(d.b) < len(k) {
		d.err = io.ErrUnexpectedEOF
		return
	}
	copy(k[:], d.b)
	d.b = d.b[len(k):]
	return
}

// intern returns the one string the index keeps for volume key vol.
// Volumes are few; the map is never pruned.
func (j *journal) intern(vol []byte) string {
	if v, ok := j.vols[string(vol)]; ok {
		return v
	}
	v := string(vol)
	j.vols[v] = v
	return v
}

// apply updates the in-memory index from one record payload.
func (j *journal) apply(p []byte) error {
	if len(p) < 1 {
		return io.ErrUnexpectedEOF
	}
	d := decoder{b: p[1:]}
	k := d.key()
	j.clock++
	switch p[0] {
	case recObject:
		vol, key, aux, size := d.bytes(), d.bytes(), d.bytes(), d.varint()
		if d.err != nil {
			return d.err
		}
		if old := j.objects[k]; old != nil {
			j.used -= old.extents.bytes()
		}
		j.objects[k] = &indexEntry{vol: j.intern(vol), keyAux: joinKeyAux(key, aux), keyLen: uint32(len(key)), size: size, lastUsed: j.clock}
	case recPresent:
		off, n := d.varint(), d.varint()
		o := j.objects[k]
		if d.err != nil || o == nil || off < 0 || n <= 0 {
			return errors.Join(d.err, fmt.Errorf("fscache: bad present record for %v", k))
		}
		before := o.extents.bytes()
		o.extents = o.extents.add(off, off+n)
		j.used += o.extents.bytes() - before
		o.size = max(o.size, off+n)
		o.lastUsed = j.clock
	case recResize:
		size := d.varint()
		o := j.objects[k]
		if d.err != nil || o == nil {
			return errors.Join(d.err, fmt.Errorf("fscache: bad resize record for %v", k))
		}
		before := o.extents.bytes()
		o.extents = o.extents.truncate(size)
		o.setDirty(o.dirty().truncate(size))
		j.used += o.extents.bytes() - before
		o.size = size
	case recAux:
		aux, size := d.bytes(), d.varint()
		o := j.objects[k]
		if d.err != nil || o == nil {
			return errors.Join(d.err, fmt.Errorf("fscache: bad aux record for %v", k))
		}
		if size < o.size {
			before := o.extents.bytes()
			o.extents = o.extents.truncate(size)
			o.setDirty(o.dirty().truncate(size))
			j.used += o.extents.bytes() - before
		}
		o.keyAux, o.size = joinKeyAux(o.key(), aux), size
	case recDiscard:
		off, n := d.varint(), d.varint()
		o := j.objects[k]
		if d.err != nil || o == nil {
			return errors.Join(d.err, fmt.Errorf("fscache: bad discard record for %v", k))
		}
		before := o.extents.bytes()
		o.extents = o.extents.remove(off, off+n)
		o.setDirty(o.dirty().remove(off, off+n))
		j.used += o.extents.bytes() - before
	case recDirty:
		off, n := d.varint(), d.varint()
		o := j.objects[k]
		if d.err != nil || o == nil || off < 0 || n <= 0 {
			return errors.Join(d.err, fmt.Errorf("fscache: bad dirty record for %v", k))
		}
		o.setDirty(o.dirty().add(off, off+n))
	case recClean:
		off, n, ver := d.varint(), d.varint(), d.bytes()
		o := j.objects[k]
		if d.err != nil || o == nil {
			return errors.Join(d.err, fmt.Errorf("fscache: bad clean record for %v", k))
		}
		if ver != nil {
			if o.extra == nil {
				o.extra = &entryDirty{}
			}
			o.extra.verifier = ver
		}
		if n > 0 {
			o.setDirty(o.dirty().remove(off, off+n))
		}
	case recDelete:
		if d.err != nil {
			return d.err
		}
		if o := j.objects[k]; o != nil {
			j.used -= o.extents.bytes()
			delete(j.objects, k)
		}
	default:
		return fmt.Errorf("fscache: unknown index record type %d", p[0])
	}
	return nil
}

func appendRecord(b []byte, payload []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.LittleEndian.AppendUint32(b, crc32.Checksum(payload, crcTable))
	return append(b, payload...)
}

func encObject(k objKey, o *objRecord) []byte {
	return encObjectFields(k, o.volKey, o.key, o.aux, o.size)
}

func encObjectFields(k objKey, volKey, key, aux []byte, size int64) []byte {
	p := append([]byte{recObject}, k[:]...)
	p = binary.AppendUvarint(p, uint64(len(volKey)))
	p = append(p, volKey...)
	p = binary.AppendUvarint(p, uint64(len(key)))
	p = append(p, key...)
	p = binary.AppendUvarint(p, uint64(len(aux)))
	return binary.AppendVarint(append(p, aux...), size)
}

func encPresent(k objKey, off, n int64) []byte {
	p := append([]byte{recPresent}, k[:]...)
	p = binary.AppendVarint(p, off)
	return binary.AppendVarint(p, n)
}

func encDiscard(k objKey, off, n int64) []byte {
	p := append([]byte{recDiscard}, k[:]...)
	p = binary.AppendVarint(p, off)
	return binary.AppendVarint(p, n)
}

func encDirty(k objKey, off, n int64) []byte {
	p := append([]byte{recDirty}, k[:]...)
	p = binary.AppendVarint(p, off)
	return binary.AppendVarint(p, n)
}

func encClean(k objKey, off, n int64, verifier []byte) []byte {
	p := append([]byte{recClean}, k[:]...)
	p = binary.AppendVarint(p, off)
	p = binary.AppendVarint(p, n)
	p = binary.AppendUvarint(p, uint64(len(verifier)))
	return append(p, verifier...)
}

func encResize(k objKey, size int64) []byte {
	p := append([]byte{recResize}, k[:]...)
	return binary.AppendVarint(p, size)
}

func encAux(k objKey, aux []byte, size int64) []byte {
	p := append([]byte{recAux}, k[:]...)
	p = binary.AppendUvarint(p, uint64(len(aux)))
	p = append(p, aux...)
	return binary.AppendVarint(p, size)
}

func encDelete(k objKey) []byte { return append([]byte{recDelete}, k[:]...) }

// commit appends one record durably-in-order and applies it to the index.
// On a failed or short write the file is cut back to its previous length so
// that a later record never follows a torn one.
func (j *journal) commit(payload []byte) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.broken != nil {
		return j.broken
	}
	if j.f == nil {
		return ErrClosed
	}
	j.buf = appendRecord(j.buf[:0], payload)
	n, err := j.f.Write(j.buf)
	if err == nil && j.durable {
		err = j.f.Sync()
	}
	if err != nil {
		if n > 0 {
			if terr := j.f.Truncate(j.size); terr != nil {
				j.broken = fmt.Errorf("fscache: index torn and not repairable: %w", terr)
			}
		}
		return fmt.Errorf("fscache: append index: %w", err)
	}
	j.size += int64(n)
	if err := j.apply(payload); err != nil {
		return err
	}
	if j.size > 2*j.live+(1<<20) && j.size >= j.compactAt { // amortized: each rewrite follows >= live+1MiB of appends
		// The record is in the file and applied: a failed compaction
		// (EMFILE or ENOSPC for its temporary file, say) leaves the
		// journal as it was and must not fail this commit — the caller
		// would undo what the index now says. Retry after another MiB.
		if err := j.compactLocked(); err != nil {
			j.compactAt = j.size + 1<<20
		} else {
			j.compactAt = 0
		}
	}
	return nil
}

// touch moves an object to the most-recently-used end for culling.
func (j *journal) touch(k objKey) {
	j.mu.Lock()
	j.clock++
	if o := j.objects[k]; o != nil {
		o.lastUsed = j.clock
	}
	j.mu.Unlock()
}

// lookup returns a copy of an object's record.
func (j *journal) lookup(k objKey) (objRecord, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	o := j.objects[k]
	if o == nil {
		return objRecord{}, false
	}
	return o.record(true), true
}

func (j *journal) usedBytes() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.used
}

func (j *journal) count() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.objects)
}

// lru returns every object key, least recently used first.
func (j *journal) lru() []objKey {
	j.mu.Lock()
	type kv struct {
		k objKey
		t uint64
	}
	all := make([]kv, 0, len(j.objects))
	for k, o := range j.objects {
		all = append(all, kv{k, o.lastUsed})
	}
	j.mu.Unlock()
	sort.Slice(all, func(a, b int) bool { return all[a].t < all[b].t })
	keys := make([]objKey, len(all))
	for i := range all {
		keys[i] = all[i].k
	}
	return keys
}

// compactLocked rewrites the journal as one object record plus its present
// ranges per object, then atomically replaces the old file.
func (j *journal) compactLocked() error {
	tmp := j.path + ".tmp"
	var b []byte
	keys := make([]objKey, 0, len(j.objects))
	for k := range j.objects {
		keys = append(keys, k)
	}
	// Oldest first, so replaying the compacted file restores the LRU order.
	sort.Slice(keys, func(a, c int) bool { return j.objects[keys[a]].lastUsed < j.objects[keys[c]].lastUsed })
	for _, k := range keys {
		o := j.objects[k]
		b = appendRecord(b, encObjectFields(k, []byte(o.vol), o.key(), o.aux(), o.size))
		for _, e := range o.extents {
			b = appendRecord(b, encPresent(k, e.off, e.end-e.off))
		}
		for _, e := range o.dirty() {
			b = appendRecord(b, encDirty(k, e.off, e.end-e.off))
		}
		if o.extra != nil && o.extra.verifier != nil {
			b = appendRecord(b, encClean(k, 0, 0, o.extra.verifier))
		}
		// The object record sets size from its fields; present records may
		// only grow it, so the stored size is already exact.
	}
	// The new file's descriptor is opened before the rename and becomes
	// the append descriptor: nothing can fail between the rename and the
	// switch, so a record is never appended to the replaced (unlinked)
	// file. O_APPEND: later records go after the compacted ones.
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("fscache: write index: %w", err)
	}
	if _, err = f.Write(b); err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = os.Rename(tmp, j.path)
	}
	if err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("fscache: install index: %w", err)
	}
	if j.f != nil {
		j.f.Close()
	}
	j.f, j.size, j.live = f, int64(len(b)), int64(len(b))
	j.dirUnsynced = true
	return j.syncDirLocked()
}

// syncDirLocked makes the last compaction's rename durable.
func (j *journal) syncDirLocked() error {
	if !j.dirUnsynced {
		return nil
	}
	if err := syncDir(filepath.Dir(j.path)); err != nil {
		return err
	}
	j.dirUnsynced = false
	return nil
}

// sync makes every appended record durable (fsync of the index).
func (j *journal) sync() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.broken != nil {
		return j.broken
	}
	if j.f == nil {
		return ErrClosed
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("fscache: sync index: %w", err)
	}
	return j.syncDirLocked()
}

// dirtyObjects returns copies of the records of objects of volume vol
// holding dirty ranges.
func (j *journal) dirtyObjects(vol []byte) []objRecord {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []objRecord
	for _, o := range j.objects {
		if len(o.dirty()) > 0 && o.vol == string(vol) {
			out = append(out, o.record(true))
		}
	}
	return out
}

// holdsData reports whether object k has present or dirty ranges.
func (j *journal) holdsData(k objKey) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	o := j.objects[k]
	return o != nil && (len(o.extents) > 0 || len(o.dirty()) > 0)
}

// isDirty reports whether object k has dirty ranges.
func (j *journal) isDirty(k objKey) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	o := j.objects[k]
	return o != nil && len(o.dirty()) > 0
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.compactLocked()
	if cerr := j.f.Close(); err == nil {
		err = cerr
	}
	j.f = nil
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("fscache: sync dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fscache: sync dir: %w", err)
	}
	return nil
}
