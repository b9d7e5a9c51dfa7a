package server

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
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
	bucketIDs   = []byte("ids")   // id(8) -> entry (see tableEntry)
	bucketPaths = []byte("paths") // path -> id(8), for every name of an id
	// bucketAliases lists the names of an id other than the one its entry
	// holds (names made by LINK): id(8) | rel path -> aliasMark.
	bucketAliases = []byte("aliases")
	keySecret     = []byte("secret")
	keyNextID     = []byte("next-id")
	aliasMark     = []byte{1}
)

// errBadHandle reports a handle that fails to parse or authenticate.
var errBadHandle = errors.New("server: bad file handle")

// errStaleHandle reports an authentic handle whose file is gone.
var errStaleHandle = errors.New("server: stale file handle")

// handleTable is the persistent id↔path table behind file handles.
//
// Identity (RFC 1813 §4.4; knfsd puts inode and generation in its
// handles): next to each path the table records the identity of the file
// it named when its id was assigned (fileKey: fileIdentity, that is the
// inode of a local file or NFSFileID of a RemoteAttributes file, plus the
// birth time of a local file, because filesystems hand a freed inode
// number to the next file created: rm f && touch f usually keeps the
// number; not on overlayfs, see statxMaskFor). A file whose FileInfo has
// neither gets no identity and is resolved by path alone. Guarantees, once attach has given the table its
// exported filesystem:
//
//   - resolve and lookup (every procedure except READ, WRITE and COMMIT,
//     and every handle go-nfs hands out) stat the path (lstat semantics)
//     on every call and compare: when another file now has that name
//     (the file was removed or renamed away and the name reused, outside
//     NFS), the old handle is STALE and its id is forgotten, so the new
//     file gets a fresh id. A path with nothing at it resolves as before
//     (the procedure reports it). What is not caught: a replacement
//     between the check and the procedure's own filesystem call (a race
//     knfsd has too), and one that reuses both the inode number and the
//     birth time (a filesystem without birth times reusing the number).
//   - resolveData (READ, WRITE, COMMIT) does not stat the path: those act
//     on the open-file cache's fd, which checks the identity when it
//     opens the file and refuses an fd whose inode lost its last link
//     (see openFiles for the exact guarantee).
//   - The root is never checked, and an id assigned before identities
//     were recorded gets the identity seen at its next resolve.
//
// Ids move with NFS renames together with their identity (the inode stays
// the same), and the identity is stored in bbolt, so both survive a
// restart.
//
// Hard links (knfsd handles name the inode, so every name of a file has
// the same handle and it lives while any name does): an id has one
// primary name (its entry's path, which resolve returns) and any number
// of aliases, the names LINK made for it through this server (linked),
// kept in the aliases bucket and, like every name, in the paths bucket,
// so LOOKUP of any of them returns the same handle. When the primary name
// is removed or renamed over through NFS, or found gone or replaced at a
// resolve, the id is re-pointed to an alias that still holds the same
// identity instead of being dropped; only when no name is left does the
// handle go STALE. An alias found holding another file (replaced outside
// NFS) is unbound at its LOOKUP; the id keeps its other names. Limits:
//
//   - Links made outside NFS are unknown to the table: such a name gets
//     its own id at LOOKUP, and removing the name an id was issued for
//     makes that id STALE even if the file still has the other name
//     (knfsd would keep it). Finding a name for an inode would take a
//     tree walk (open_by_handle_at gives an fd, not a path for billy).
//   - READ, WRITE and COMMIT do not stat (resolveData): after the primary
//     name was removed outside NFS they answer STALE on an open-file
//     cache miss until a procedure that resolves (GETATTR, ACCESS, ...)
//     has re-pointed the id. Through NFS, REMOVE and RENAME re-point it
//     themselves, right after the name goes on disk.
//   - forget and move pick the alias to re-point to before they take mu
//     (keyAt is never called under it): a LINK of the same file landing
//     in between is not considered, and the id may be dropped although
//     the new name holds its file (that name then gets its own id).
//
// Concurrency: safe for concurrent use. mu serialises table changes so a
// rename's prefix rewrite and a concurrent assignment cannot interleave;
// reads go straight to bbolt read transactions. bbolt is the only thing
// called while mu is held; keyAt and stale are called without it. keyAt,
// stale, rootDir and statxMask are set once by attach, before the server
// serves.
type handleTable struct {
	db     *bolt.DB
	secret []byte
	mu     sync.Mutex
	live   atomic.Int64 // ids in the table, kept so Stats need not walk it

	// keyAt gives the identity of the file at a rel path (not following
	// a final symlink); ok is false when there is none (nothing there,
	// no identity). nil: identities are neither recorded nor checked (a
	// table used without an export).
	keyAt func(p string) (k fileKey, ok bool)
	// stale is told the ids forgotten because their file was replaced,
	// and the ids re-pointed to another name, so cached fds of them are
	// closed (a file without fstat is stat'ed by the name it was opened
	// by).
	stale func(ids ...uint64)
	// rootDir is the export root opened through os.Root, for statx of
	// top-level names; nil for exports that are not disk directories.
	rootDir *os.File
	// statxMask is what a disk export's identities are made of
	// (statxMaskFor).
	statxMask uint32
}

// fileKey identifies a file: its fileid and, when known, its birth time
// (statx btime of a local file).
type fileKey struct {
	id       uint64
	birth    int64 // ns since the epoch
	hasBirth bool
}

// same reports whether k and o can be the same file: equal ids and,
// when both know it, equal birth times.
func (k fileKey) same(o fileKey) bool {
	return k.id == o.id && (!k.hasBirth || !o.hasBirth || k.birth == o.birth)
}

// keyOfStatx reads the identity of a statx made with mask (the kernel
// may fill in more than asked).
func keyOfStatx(st *unix.Statx_t, mask uint32) fileKey {
	k := fileKey{id: st.Ino}
	if mask&st.Mask&unix.STATX_BTIME != 0 {
		k.birth, k.hasBirth = st.Btime.Sec*1e9+int64(st.Btime.Nsec), true
	}
	return k
}

// overlayfsMagic is statfs f_type of overlayfs (linux/magic.h).
const overlayfsMagic = 0x794c7630

// statxMaskFor is what identities of files on a filesystem of statfs
// type fsType are made of: inode and birth time, except on overlayfs,
// where the first open for writing copies a lower file up into a new
// upper inode (new birth time) that keeps reporting the lower inode's
// number: the file is the same for its users, so only the number counts.
func statxMaskFor(fsType int64) uint32 {
	if fsType == overlayfsMagic {
		return unix.STATX_INO
	}
	return unix.STATX_INO | unix.STATX_BTIME
}

// attach gives the table the export whose identities it records. A disk
// export is asked with statx relative to a directory opened through
// os.Root (confined like every other access; one syscall for a top-level
// name, where osfs's bound Lstat evaluates every symlink of the absolute
// path); any other filesystem through its Lstat and fileIdentity. It also
// lets the open-file cache check identities when it opens a file.
func (t *handleTable) attach(c *exportCore) {
	if root := c.osRoot; root != nil {
		if d, err := root.Open("."); err == nil {
			var sf unix.Statfs_t
			if unix.Fstatfs(int(d.Fd()), &sf) == nil {
				t.statxMask = statxMaskFor(int64(sf.Type))
			} else {
				t.statxMask = unix.STATX_INO
			}
			t.rootDir = d
			mask := t.statxMask
			t.keyAt = func(p string) (fileKey, bool) { return statxKey(root, d, p, mask) }
		}
	}
	if t.keyAt == nil {
		base := c.base
		t.keyAt = func(p string) (fileKey, bool) {
			fi, err := base.Lstat(basePath(p))
			if err != nil {
				return fileKey{}, false
			}
			id, ok := fileIdentity(fi)
			return fileKey{id: id}, ok
		}
	}
	t.stale = c.open.drop
	c.open.table = t
}

// statxKey stats p without following a final symlink: top-level names
// with one statx relative to the root directory, deeper paths through an
// O_PATH fd opened with openat2(RESOLVE_BENEATH) (the kernel keeps the
// walk inside the root and refuses absolute symlinks and "..", as
// os.Root does; three syscalls whatever the depth), or, on kernels
// without openat2, relative to the parent directory opened through
// os.Root.
func statxKey(root *os.Root, rootDir *os.File, p string, mask uint32) (fileKey, bool) {
	var st unix.Statx_t
	dir, name := path.Split(p)
	if dir == "" {
		if err := unix.Statx(int(rootDir.Fd()), name, unix.AT_SYMLINK_NOFOLLOW, int(mask), &st); err != nil {
			return fileKey{}, false
		}
		return keyOfStatx(&st, mask), true
	}
	fd, err := unix.Openat2(int(rootDir.Fd()), p, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS,
	})
	if err == nil {
		defer unix.Close(fd)
		if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW, int(mask), &st); err != nil {
			return fileKey{}, false
		}
		return keyOfStatx(&st, mask), true
	}
	if !errors.Is(err, unix.ENOSYS) {
		return fileKey{}, false
	}
	d, err := root.Open(strings.TrimSuffix(dir, "/"))
	if err != nil {
		return fileKey{}, false
	}
	defer d.Close()
	if err := unix.Statx(int(d.Fd()), name, unix.AT_SYMLINK_NOFOLLOW, int(mask), &st); err != nil {
		return fileKey{}, false
	}
	return keyOfStatx(&st, mask), true
}

// fdKey is the identity of an open file, made the way keyAt makes it:
// statx of its fd (*os.File underneath) when the table statx's paths,
// else fileIdentity of its fstat fi.
func (t *handleTable) fdKey(f any, fi os.FileInfo) (fileKey, bool) {
	if fder, ok := f.(interface{ Fd() uintptr }); ok && t.rootDir != nil {
		var st unix.Statx_t
		if err := unix.Statx(int(fder.Fd()), "", unix.AT_EMPTY_PATH, int(t.statxMask), &st); err == nil {
			return keyOfStatx(&st, t.statxMask), true
		}
	}
	id, ok := fileIdentity(fi)
	return fileKey{id: id}, ok
}

// tableEntry is one value of the ids bucket:
//
//	gen(4) | path                                      no identity
//	gen(4) | 0x00 | flags(1) | id(8) [| birth(8)] | path
//
// flags bit 0: a birth time follows. A path never contains NUL, so the
// forms cannot be confused (tables written before identities were
// recorded hold only the first).
type tableEntry struct {
	gen    [4]byte
	key    fileKey
	hasKey bool
	path   string
}

const flagBirth = 1

func decodeEntry(v []byte) (tableEntry, bool) {
	var e tableEntry
	if len(v) < 4 {
		return e, false
	}
	copy(e.gen[:], v)
	v = v[4:]
	if len(v) > 0 && v[0] == 0 {
		if len(v) < 10 {
			return e, false
		}
		flags := v[1]
		e.key.id, e.hasKey = binary.BigEndian.Uint64(v[2:10]), true
		v = v[10:]
		if flags&flagBirth != 0 {
			if len(v) < 8 {
				return e, false
			}
			e.key.birth, e.key.hasBirth = int64(binary.BigEndian.Uint64(v)), true
			v = v[8:]
		}
	}
	e.path = string(v)
	return e, true
}

func (e tableEntry) encode() []byte {
	b := make([]byte, 0, 4+18+len(e.path))
	b = append(b, e.gen[:]...)
	if e.hasKey {
		flags := byte(0)
		if e.key.hasBirth {
			flags |= flagBirth
		}
		b = append(b, 0, flags)
		b = binary.BigEndian.AppendUint64(b, e.key.id)
		if e.key.hasBirth {
			b = binary.BigEndian.AppendUint64(b, uint64(e.key.birth))
		}
	}
	return append(b, e.path...)
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
		if _, err := tx.CreateBucketIfNotExists(bucketAliases); err != nil {
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
		root := tableEntry{}
		copy(root.gen[:], randGen())
		if err := ids.Put(u64(rootID), root.encode()); err != nil {
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
	if t.rootDir != nil {
		t.rootDir.Close()
	}
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

// resolveData maps a handle to its id and current path without looking
// at the file: READ, WRITE and COMMIT use it, and the open-file cache
// checks the file's identity (see openFiles.acquire).
func (t *handleTable) resolveData(h []byte) (uint64, string, error) {
	id, e, err := t.entryOf(h)
	if err != nil {
		return 0, "", err
	}
	return id, e.path, nil
}

// entryOf verifies h and reads its table entry.
func (t *handleTable) entryOf(h []byte) (uint64, tableEntry, error) {
	id, gen, err := t.verify(h)
	if err != nil {
		return 0, tableEntry{}, err
	}
	e, ok := t.entry(id)
	if !ok || !hmac.Equal(e.gen[:], gen) {
		return 0, tableEntry{}, errStaleHandle
	}
	return id, e, nil
}

// entry reads the entry of id.
func (t *handleTable) entry(id uint64) (tableEntry, bool) {
	var e tableEntry
	ok := false
	_ = t.db.View(func(tx *bolt.Tx) error {
		e, ok = decodeEntry(tx.Bucket(bucketIDs).Get(u64(id)))
		return nil
	})
	return e, ok
}

// fileState is what a name holds, compared with the identity of an id.
type fileState int

const (
	fileSame     fileState = iota // the id's file, or unknown (see check)
	fileGone                      // nothing there, or a file without identity
	fileReplaced                  // another file
)

// check compares the file at p, one of id's names, with the identity of
// id's entry e. Unknown (no export, the root, no identity recorded) counts
// as the same; an entry without identity gets the one seen now at its
// primary name.
func (t *handleTable) check(id uint64, e tableEntry, p string) fileState {
	if t.keyAt == nil || id == rootID {
		return fileSame
	}
	cur, ok := t.keyAt(p)
	switch {
	case !ok:
		return fileGone
	case !e.hasKey:
		if p == e.path {
			t.recordKey(id, e, cur)
		}
		return fileSame
	case cur.same(e.key):
		return fileSame
	}
	return fileReplaced
}

// resolve maps a handle to its id and current path, and checks that the
// file at that path is the one the handle was given for. When it is not
// (gone or replaced outside NFS), another name LINK made for the file
// becomes the id's path if it still holds the file; otherwise a handle
// whose name now belongs to another file is STALE (and forgotten), and
// one whose name holds nothing resolves as before (the procedure reports
// what it finds).
func (t *handleTable) resolve(h []byte) (uint64, string, error) {
	for range 3 {
		id, e, err := t.entryOf(h)
		if err != nil {
			return 0, "", err
		}
		switch t.check(id, e, e.path) {
		case fileSame:
			return id, e.path, nil
		case fileGone:
			// Without a recorded identity no alias can be checked (and
			// the filesystem likely has none): skip the alias read.
			if !e.hasKey || !t.repoint(id, e) {
				return id, e.path, nil
			}
		case fileReplaced:
			if !t.repoint(id, e) && t.forgetReplaced(id, e) {
				return 0, "", errStaleHandle
			}
		}
		// The entry changed while we looked (an NFS rename moved it, or
		// it was re-pointed to an alias): check its new path.
	}
	return 0, "", errStaleHandle
}

// recordKey stores k for id if its entry is still e.
func (t *handleTable) recordKey(id uint64, e tableEntry, k fileKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	_ = t.db.Update(func(tx *bolt.Tx) error {
		ids := tx.Bucket(bucketIDs)
		cur, ok := decodeEntry(ids.Get(u64(id)))
		if !ok || cur != e {
			return nil
		}
		cur.key, cur.hasKey = k, true
		return ids.Put(u64(id), cur.encode())
	})
}

// forgetReplaced drops id, whose path names another file now, if its
// entry is still e; it reports false when the entry changed meanwhile. A
// missing entry counts as dropped. Only id (with all its names) goes: ids
// below a replaced directory are checked when they are next used.
func (t *handleTable) forgetReplaced(id uint64, e tableEntry) bool {
	t.mu.Lock()
	dropped := false
	err := t.db.Update(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketIDs).Get(u64(id))
		if v == nil {
			return nil
		}
		cur, ok := decodeEntry(v)
		if ok && cur != e {
			return errEntryChanged
		}
		if err := dropID(tx, u64(id), e); err != nil {
			return err
		}
		dropped = true
		return nil
	})
	t.mu.Unlock()
	if dropped {
		t.live.Add(-1)
		if t.stale != nil {
			t.stale(id)
		}
	}
	return err == nil
}

var errEntryChanged = errors.New("table entry changed")

// aliasKey is the aliases-bucket key of name p of id (idb: u64(id)).
func aliasKey(idb []byte, p string) []byte {
	k := make([]byte, 0, len(idb)+len(p))
	return append(append(k, idb...), p...)
}

// aliasesIn lists the aliases of id (idb: u64(id)), copied out of bbolt.
func aliasesIn(aliases *bolt.Bucket, idb []byte) []string {
	var out []string
	c := aliases.Cursor()
	for k, _ := c.Seek(idb); k != nil && len(k) >= len(idb) && string(k[:len(idb)]) == string(idb); k, _ = c.Next() {
		out = append(out, string(k[len(idb):]))
	}
	return out
}

// dropID deletes the entry of id (idb: u64(id)), which was e, and every
// name bound to it.
func dropID(tx *bolt.Tx, idb []byte, e tableEntry) error {
	paths, ids, aliases := tx.Bucket(bucketPaths), tx.Bucket(bucketIDs), tx.Bucket(bucketAliases)
	if err := ids.Delete(idb); err != nil {
		return err
	}
	for _, n := range append(aliasesIn(aliases, idb), e.path) {
		if err := aliases.Delete(aliasKey(idb, n)); err != nil {
			return err
		}
		if v := paths.Get(pathKey(n)); v != nil && string(v) == string(idb) {
			if err := paths.Delete(pathKey(n)); err != nil {
				return err
			}
		}
	}
	return nil
}

// promote makes alias a the primary name of id (idb: u64(id)) in place
// of e.path, if a is still an alias of id; it reports whether it did.
// The old primary name is unbound.
func promote(tx *bolt.Tx, idb []byte, e tableEntry, a string) (bool, error) {
	paths, ids, aliases := tx.Bucket(bucketPaths), tx.Bucket(bucketIDs), tx.Bucket(bucketAliases)
	if aliases.Get(aliasKey(idb, a)) == nil {
		return false, nil
	}
	if v := paths.Get(pathKey(a)); v == nil || string(v) != string(idb) {
		return false, nil
	}
	if v := paths.Get(pathKey(e.path)); v != nil && string(v) == string(idb) {
		if err := paths.Delete(pathKey(e.path)); err != nil {
			return false, err
		}
	}
	if err := aliases.Delete(aliasKey(idb, a)); err != nil {
		return false, err
	}
	e.path = a
	return true, ids.Put(idb, e.encode())
}

// aliasHolds reports whether alias a still names the file of entry e:
// the identity at a is e's (any file, when e has no identity). Without an
// export nothing can be checked and the alias is believed.
func (t *handleTable) aliasHolds(e tableEntry, a string) bool {
	if t.keyAt == nil {
		return true
	}
	k, ok := t.keyAt(a)
	return ok && (!e.hasKey || k.same(e.key))
}

// repoint makes an alias of id that still holds its file the primary
// name, in place of e.path, which no longer does. It reports false when
// no alias does or the entry is no longer e.
func (t *handleTable) repoint(id uint64, e tableEntry) bool {
	var names []string
	_ = t.db.View(func(tx *bolt.Tx) error {
		names = aliasesIn(tx.Bucket(bucketAliases), u64(id))
		return nil
	})
	for _, a := range names {
		if !t.aliasHolds(e, a) {
			continue
		}
		t.mu.Lock()
		done := false
		_ = t.db.Update(func(tx *bolt.Tx) error {
			cur, ok := decodeEntry(tx.Bucket(bucketIDs).Get(u64(id)))
			if !ok || cur != e {
				return nil
			}
			var err error
			done, err = promote(tx, u64(id), cur, a)
			return err
		})
		t.mu.Unlock()
		if done && t.stale != nil {
			t.stale(id)
		}
		return done
	}
	return false
}

// unbindAlias removes alias p of id, which holds another file now: the id
// lives on under its other names.
func (t *handleTable) unbindAlias(id uint64, p string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	_ = t.db.Update(func(tx *bolt.Tx) error {
		paths, aliases := tx.Bucket(bucketPaths), tx.Bucket(bucketAliases)
		idb := u64(id)
		if aliases.Get(aliasKey(idb, p)) == nil {
			return nil
		}
		if err := aliases.Delete(aliasKey(idb, p)); err != nil {
			return err
		}
		if v := paths.Get(pathKey(p)); v != nil && string(v) == string(idb) {
			return paths.Delete(pathKey(p))
		}
		return nil
	})
}

// lookup returns the handle of an already known path (any name of its
// id), if the file at p is still the one its id was assigned to (see
// resolve).
func (t *handleTable) lookup(p string) ([]byte, uint64, bool) {
	for range 3 {
		var e tableEntry
		var id uint64
		found := false
		_ = t.db.View(func(tx *bolt.Tx) error {
			v := tx.Bucket(bucketPaths).Get(pathKey(p))
			if v == nil {
				return nil
			}
			id = binary.BigEndian.Uint64(v)
			e, found = decodeEntry(tx.Bucket(bucketIDs).Get(v))
			return nil
		})
		if !found {
			return nil, 0, false
		}
		if t.check(id, e, p) != fileReplaced {
			return t.encode(id, e.gen[:]), id, true
		}
		// Another file has the name p now.
		switch {
		case p != e.path:
			t.unbindAlias(id, p)
		case t.repoint(id, e):
		case t.forgetReplaced(id, e):
			return nil, 0, false
		}
	}
	return nil, 0, false
}

// keyOf is the identity of the file at p now, if it has one.
func (t *handleTable) keyOf(p string) (fileKey, bool) {
	if t.keyAt == nil || p == "" {
		return fileKey{}, false
	}
	return t.keyAt(p)
}

// assign returns the handle of p, giving it a fresh id (with the identity
// of the file there now) if it has none.
func (t *handleTable) assign(p string) ([]byte, error) {
	if h, _, ok := t.lookup(p); ok {
		return h, nil
	}
	key, hasKey := t.keyOf(p)
	t.mu.Lock()
	var a assigned
	err := t.db.Update(func(tx *bolt.Tx) error {
		var err error
		a, err = t.assignIn(tx, p, key, hasKey)
		return err
	})
	t.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("assign handle for %q: %w", p, err)
	}
	t.live.Add(int64(a.added) - int64(len(a.replaced)))
	if len(a.replaced) > 0 && t.stale != nil {
		t.stale(a.replaced...)
	}
	return a.h, nil
}

// assignAll is assign for many names (the entries of one READDIRPLUS
// reply): names the table knows are looked up one by one (lookup: the
// identity check, re-pointing and forgetting as for assign), and the new
// ones get their ids in one bbolt transaction, not one each (a fresh
// directory of 10 000 names took 10 000 transactions). hs[i] is the
// handle of ps[i], nil when errs[i] says why; a handle is returned only
// after the transaction that recorded it committed. When the batch fails
// as a whole, each new name is tried on its own (assign), so one name
// the table cannot take does not cost the others their handles.
func (t *handleTable) assignAll(ps []string) (hs [][]byte, errs []error) {
	hs, errs = make([][]byte, len(ps)), make([]error, len(ps))
	known := make([]bool, len(ps))
	_ = t.db.View(func(tx *bolt.Tx) error {
		paths := tx.Bucket(bucketPaths)
		for i, p := range ps {
			known[i] = paths.Get(pathKey(p)) != nil
		}
		return nil
	})
	type fresh struct {
		i      int
		key    fileKey
		hasKey bool
	}
	var news []fresh
	for i, p := range ps {
		if known[i] {
			if h, _, ok := t.lookup(p); ok {
				hs[i] = h
				continue
			}
		}
		// Unknown, or forgotten just now (replaced): a new id. The
		// identity is read before mu is taken, as assign does.
		key, hasKey := t.keyOf(p)
		news = append(news, fresh{i, key, hasKey})
	}
	if len(news) == 0 {
		return hs, errs
	}
	got := make([]assigned, len(news))
	t.mu.Lock()
	err := t.db.Update(func(tx *bolt.Tx) error {
		for j, n := range news {
			a, err := t.assignIn(tx, ps[n.i], n.key, n.hasKey)
			if err != nil {
				return fmt.Errorf("assign handle for %q: %w", ps[n.i], err)
			}
			got[j] = a
		}
		return nil
	})
	t.mu.Unlock()
	if err != nil {
		for _, n := range news {
			hs[n.i], errs[n.i] = t.assign(ps[n.i])
		}
		return hs, errs
	}
	added := 0
	var replaced []uint64
	for j, n := range news {
		hs[n.i] = got[j].h
		added += got[j].added
		replaced = append(replaced, got[j].replaced...)
	}
	t.live.Add(int64(added) - int64(len(replaced)))
	if len(replaced) > 0 && t.stale != nil {
		t.stale(replaced...)
	}
	return hs, errs
}

// assigned is what assignIn did: the handle, whether it made a new id,
// and the ids it dropped because their file was replaced.
type assigned struct {
	h        []byte
	added    int
	replaced []uint64
}

// assignIn gives p, whose file has identity key (if hasKey), a handle
// within tx: the id p is bound to if that id's identity matches, else a
// fresh one (an alias of another file is unbound from p, a primary name
// assigned to a replaced file drops that id). t.mu must be held.
func (t *handleTable) assignIn(tx *bolt.Tx, p string, key fileKey, hasKey bool) (assigned, error) {
	var a assigned
	paths, ids, meta := tx.Bucket(bucketPaths), tx.Bucket(bucketIDs), tx.Bucket(bucketMeta)
	if v := paths.Get(pathKey(p)); v != nil { // assigned meanwhile
		idb := append([]byte(nil), v...)
		id := binary.BigEndian.Uint64(idb)
		e, ok := decodeEntry(ids.Get(idb))
		if !ok {
			return a, fmt.Errorf("handle table: id %d has no entry", id)
		}
		if !hasKey || !e.hasKey || e.key.same(key) {
			a.h = t.encode(id, e.gen[:])
			return a, nil
		}
		if e.path != p {
			// An alias of another file: that file keeps its id.
			if err := tx.Bucket(bucketAliases).Delete(aliasKey(idb, p)); err != nil {
				return a, err
			}
		} else {
			// Assigned to the file that had this name before.
			if err := dropID(tx, idb, e); err != nil {
				return a, err
			}
			a.replaced = append(a.replaced, id)
		}
	}
	id := binary.BigEndian.Uint64(meta.Get(keyNextID))
	if err := meta.Put(keyNextID, u64(id+1)); err != nil {
		return a, err
	}
	e := tableEntry{key: key, hasKey: hasKey, path: p}
	copy(e.gen[:], randGen())
	if err := ids.Put(u64(id), e.encode()); err != nil {
		return a, err
	}
	if err := paths.Put(pathKey(p), u64(id)); err != nil {
		return a, err
	}
	a.h = t.encode(id, e.gen[:])
	a.added = 1
	return a, nil
}

// linked records p, a name LINK (RFC 1813 §3.3.15) just made for the file
// of id, as an alias of id: LOOKUP of p returns id's handle, and the id
// survives the removal of its other names (knfsd's handles name the
// inode, and the Linux client keeps using the linked file's handle for
// the new name). Whatever the table still knew at p (a file removed
// outside NFS: LINK found the name free) is forgotten.
func (t *handleTable) linked(id uint64, p string) error {
	if id == rootID || p == "" {
		return nil
	}
	t.mu.Lock()
	var replaced []uint64
	err := t.db.Update(func(tx *bolt.Tx) error {
		paths, ids, aliases := tx.Bucket(bucketPaths), tx.Bucket(bucketIDs), tx.Bucket(bucketAliases)
		idb := u64(id)
		e, ok := decodeEntry(ids.Get(idb))
		if !ok || e.path == p {
			return nil
		}
		if v := paths.Get(pathKey(p)); v != nil && string(v) != string(idb) {
			old := append([]byte(nil), v...)
			oe, ok := decodeEntry(ids.Get(old))
			switch {
			case !ok:
			case oe.path == p:
				if err := dropID(tx, old, oe); err != nil {
					return err
				}
				replaced = append(replaced, binary.BigEndian.Uint64(old))
			default:
				if err := aliases.Delete(aliasKey(old, p)); err != nil {
					return err
				}
			}
		}
		if err := paths.Put(pathKey(p), idb); err != nil {
			return err
		}
		return aliases.Put(aliasKey(idb, p), aliasMark)
	})
	t.mu.Unlock()
	if err != nil {
		return fmt.Errorf("record link %q: %w", p, err)
	}
	t.live.Add(-int64(len(replaced)))
	if len(replaced) > 0 && t.stale != nil {
		t.stale(replaced...)
	}
	return nil
}

// isUnder reports whether name is p or below it.
func isUnder(name, p string) bool {
	return name == p || strings.HasPrefix(name, p+"/")
}

// aliasCandidates picks, for every id whose primary name is p or below
// it, an alias that is not excluded and still holds the id's file
// (aliasHolds), to re-point the id to when that name goes. It reads the
// table, then stats the aliases without mu.
func (t *handleTable) aliasCandidates(p string, excluded func(string) bool) map[uint64]string {
	type candidate struct {
		id    uint64
		e     tableEntry
		names []string
	}
	var cs []candidate
	_ = t.db.View(func(tx *bolt.Tx) error {
		ids, aliases := tx.Bucket(bucketIDs), tx.Bucket(bucketAliases)
		for _, kv := range subtree(tx.Bucket(bucketPaths), p) {
			e, ok := decodeEntry(ids.Get(kv.id))
			if !ok || e.path != string(kv.path[1:]) {
				continue
			}
			var names []string
			for _, a := range aliasesIn(aliases, kv.id) {
				if !excluded(a) {
					names = append(names, a)
				}
			}
			if len(names) > 0 {
				cs = append(cs, candidate{binary.BigEndian.Uint64(kv.id), e, names})
			}
		}
		return nil
	})
	alt := map[uint64]string{}
	for _, c := range cs {
		for _, a := range c.names {
			if t.aliasHolds(c.e, a) {
				alt[c.id] = a
				break
			}
		}
	}
	return alt
}

// unbindName removes name kv (a paths-bucket key and its id) from the
// table: an alias just goes; a primary name hands the id to its
// alternative in alt (repointed) or, without one, drops the id with all
// its names (dropped).
func unbindName(tx *bolt.Tx, kv pathID, alt map[uint64]string) (dropped, repointed bool, err error) {
	if err := tx.Bucket(bucketPaths).Delete(kv.path); err != nil {
		return false, false, err
	}
	e, ok := decodeEntry(tx.Bucket(bucketIDs).Get(kv.id))
	if !ok {
		return false, false, nil
	}
	name := string(kv.path[1:])
	if e.path != name {
		return false, false, tx.Bucket(bucketAliases).Delete(aliasKey(kv.id, name))
	}
	if a, ok := alt[binary.BigEndian.Uint64(kv.id)]; ok {
		done, err := promote(tx, kv.id, e, a)
		if err != nil || done {
			return false, done, err
		}
	}
	return true, false, dropID(tx, kv.id, e)
}

// forget drops p and everything below it after a removal; returns the
// ids dropped, which are never handed out again. An id with another name
// that still holds its file (an alias LINK made) is re-pointed there
// instead.
func (t *handleTable) forget(p string) ([]uint64, error) {
	alt := t.aliasCandidates(p, func(n string) bool { return isUnder(n, p) })
	t.mu.Lock()
	var dropped, repointed []uint64
	err := t.db.Update(func(tx *bolt.Tx) error {
		for _, kv := range subtree(tx.Bucket(bucketPaths), p) {
			d, r, err := unbindName(tx, kv, alt)
			if err != nil {
				return err
			}
			id := binary.BigEndian.Uint64(kv.id)
			if d {
				dropped = append(dropped, id)
			}
			if r {
				repointed = append(repointed, id)
			}
		}
		return nil
	})
	t.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("forget %q: %w", p, err)
	}
	t.live.Add(-int64(len(dropped)))
	if len(repointed) > 0 && t.stale != nil {
		t.stale(repointed...)
	}
	return dropped, nil
}

// sameFile reports the id both from and to are names of, if they are.
func (t *handleTable) sameFile(from, to string) (uint64, bool) {
	var id uint64
	same := false
	_ = t.db.View(func(tx *bolt.Tx) error {
		paths := tx.Bucket(bucketPaths)
		vf, vt := paths.Get(pathKey(from)), paths.Get(pathKey(to))
		if vf != nil && vt != nil && string(vf) == string(vt) {
			id, same = binary.BigEndian.Uint64(vf), true
		}
		return nil
	})
	return id, same
}

// move re-points from (and everything below it) to to, after a rename.
// Whatever was known at to is forgotten first (an id with another name
// still holding its file is re-pointed there and counts as moved). It
// returns the ids whose path changed and the ids dropped. A rename
// between two names of one file does nothing (rename(2)), unless from
// is gone afterwards.
func (t *handleTable) move(from, to string) (moved, dropped []uint64, err error) {
	if _, ok := t.sameFile(from, to); ok {
		if t.keyAt == nil {
			return nil, nil, nil
		}
		if _, ok := t.keyAt(from); ok {
			return nil, nil, nil
		}
		dropped, err := t.forget(from)
		return nil, dropped, err
	}
	alt := t.aliasCandidates(to, func(n string) bool { return isUnder(n, to) || isUnder(n, from) })
	t.mu.Lock()
	defer t.mu.Unlock()
	err = t.db.Update(func(tx *bolt.Tx) error {
		paths, ids, aliases := tx.Bucket(bucketPaths), tx.Bucket(bucketIDs), tx.Bucket(bucketAliases)
		for _, kv := range subtree(paths, to) {
			d, r, err := unbindName(tx, kv, alt)
			if err != nil {
				return err
			}
			id := binary.BigEndian.Uint64(kv.id)
			if d {
				dropped = append(dropped, id)
			}
			if r {
				moved = append(moved, id)
			}
		}
		for _, kv := range subtree(paths, from) {
			nk := string(pathKey(to)) + string(kv.path[len(pathKey(from)):])
			if err := paths.Delete(kv.path); err != nil {
				return err
			}
			if err := paths.Put([]byte(nk), kv.id); err != nil {
				return err
			}
			e, ok := decodeEntry(ids.Get(kv.id))
			if !ok {
				continue
			}
			if old := string(kv.path[1:]); e.path != old {
				// An alias: it moves, the id keeps its primary name.
				if err := aliases.Delete(aliasKey(kv.id, old)); err != nil {
					return err
				}
				if err := aliases.Put(aliasKey(kv.id, nk[1:]), aliasMark); err != nil {
					return err
				}
			} else {
				e.path = nk[1:] // the identity moves with the file
				if err := ids.Put(kv.id, e.encode()); err != nil {
					return err
				}
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
