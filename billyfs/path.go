package billyfs

import (
	"context"
	"errors"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-git/go-billy/v5"
	"github.com/nfscache/nfscache/client"
)

// maxSymlinkFollows is Linux's MAXSYMLINKS.
const maxSymlinkFollows = 40

// cleanRel turns a billy name into a clean slash path relative to the FS
// root ("" is the root). Like go-billy's chroot helper, a leading "/" means
// the FS root, and a name leading above the root is
// billy.ErrCrossedBoundary.
func cleanRel(name string) (string, error) {
	n := strings.TrimLeft(filepath.ToSlash(name), "/")
	n = path.Clean(n)
	if n == ".." || strings.HasPrefix(n, "../") {
		return "", billy.ErrCrossedBoundary
	}
	if n == "." {
		return "", nil
	}
	return n, nil
}

func joinSlash(base, rel string) string { return path.Join(base, rel) }

func splitSlash(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}

// displayName is the name a File reports: the cleaned name relative to the
// FS root, in the OS's separators (as go-billy's chroot helper reports it).
func displayName(rel string) string {
	if rel == "" {
		return "."
	}
	return filepath.FromSlash(rel)
}

// node is the result of resolving a path.
type node struct {
	fh    client.Handle
	attr  client.Attr
	fresh bool // attr came from the server during this resolution
}

// resolve walks rel from the FS root. With followFinal a symbolic link in
// the last component is followed; links in earlier components always are.
// A stale cached handle makes it forget cached names and retry once.
func (f *FS) resolve(ctx context.Context, rel string, followFinal bool) (node, error) {
	for attempt := 0; ; attempt++ {
		n, err := f.s.walk(ctx, f.base, joinSlash(f.base, rel), followFinal)
		if attempt == 0 && errors.Is(err, syscall.ESTALE) {
			f.s.purgeNames()
			continue
		}
		return n, err
	}
}

// walk resolves the absolute (export-root) path full. Links found inside
// base must stay inside it (billy.ErrCrossedBoundary otherwise): absolute
// link targets are export-root paths, as Symlink stores them.
func (s *state) walk(ctx context.Context, base, full string, followFinal bool) (node, error) {
	parts := splitSlash(full)
	cur := node{fh: s.clnt.Root()}
	var resolved []string
	haveAttr := false
	follows := 0
	for len(parts) > 0 {
		name := parts[0]
		parts = parts[1:]
		child, err := s.lookup(ctx, cur.fh, name)
		if err != nil {
			return node{}, err
		}
		if child.attr.Type == client.TypeLnk && (len(parts) > 0 || followFinal) {
			follows++
			if follows > maxSymlinkFollows {
				return node{}, syscall.ELOOP
			}
			target, err := s.readlink(ctx, child.fh)
			if err != nil {
				return node{}, err
			}
			var tgt string
			if strings.HasPrefix(target, "/") {
				tgt = path.Clean(target)
			} else {
				tgt = path.Join("/", path.Join(resolved...), target)
			}
			if base != "/" && within(base, "/"+strings.Join(resolved, "/")) && !within(base, tgt) {
				return node{}, billy.ErrCrossedBoundary
			}
			parts = append(splitSlash(tgt), parts...)
			resolved = nil
			cur = node{fh: s.clnt.Root()}
			haveAttr = false
			continue
		}
		cur = child
		haveAttr = true
		resolved = append(resolved, name)
	}
	if !haveAttr {
		a, err := s.getattr(ctx, cur.fh, false)
		if err != nil {
			return node{}, err
		}
		cur.attr = a
	}
	return cur, nil
}

// within reports whether p is base or below it.
func within(base, p string) bool {
	return p == base || strings.HasPrefix(p, strings.TrimSuffix(base, "/")+"/")
}

// lookup finds name in dir through the name cache, else with LOOKUP.
func (s *state) lookup(ctx context.Context, dir client.Handle, name string) (node, error) {
	if negative, fresh := s.cachedNegative(dir, name); negative {
		if fresh {
			return node{}, syscall.ENOENT
		}
		// expired: ask the server again
	} else if fh, ok := s.cachedChild(dir, name); ok {
		if a, ok := s.cachedAttr(fh); ok {
			return node{fh: fh, attr: a}, nil
		}
		a, err := s.getattr(ctx, fh, true)
		if err == nil {
			return node{fh: fh, attr: a, fresh: !s.upstreamDown()}, nil
		}
		if isConnErr(err) {
			return node{}, err // nothing learnt about the name
		}
		s.dropChild(dir, name)
		if !errors.Is(err, syscall.ESTALE) {
			return node{}, err
		}
	}
	var out node
	err := s.revalidate(ctx, func(ctx context.Context) error {
		seq := s.nameSeq()
		r, err := s.clnt.Lookup(ctx, dir, name)
		if errors.Is(err, syscall.ENOENT) && s.opts.AttrTimeout >= 0 {
			s.putNegative(dir, name, seq)
		}
		if err != nil {
			return err
		}
		var a client.Attr
		if r.Attr != nil {
			a = *r.Attr
			s.putAttr(r.Handle, r.Attr)
		} else if a, err = s.getattr(ctx, r.Handle, true); err != nil {
			return err
		}
		s.putChild(dir, name, r.Handle)
		out = node{fh: r.Handle, attr: a, fresh: true}
		return nil
	}, func() bool {
		fh, ok := s.staleChild(dir, name)
		if !ok {
			return false
		}
		a, ok := s.staleAttr(fh)
		out = node{fh: fh, attr: a}
		return ok
	})
	if err != nil {
		return node{}, err
	}
	return out, nil
}

// staleChild is the last handle validated for dir/name if an outage lets
// it stand in.
func (s *state) staleChild(dir client.Handle, name string) (client.Handle, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.dentries.Peek(dkey(dir, name))
	if !ok || d.fh == nil || !s.staleOK(d.at) {
		return nil, false // a negative entry is never a stale answer
	}
	return d.fh, true
}

// dirUpdated is called after we changed dir's entries: dirChanged, then,
// like nfs_post_op_update_inode, the directory's post-operation attributes
// from the reply's wcc_data are adopted, so the next walk through dir needs
// no GETATTR. Replies to concurrent operations may arrive out of order: the
// attributes are taken only if their ctime is later than the cached one
// (otherwise the entry stays outdated and the next use asks the server).
func (s *state) dirUpdated(dir client.Handle, wcc client.Wcc) {
	s.dirChanged(dir)
	a := wcc.After
	if a == nil || !s.keep() {
		return
	}
	s.mu.Lock()
	if e, ok := s.attrs.Peek(string(dir)); !ok || a.Ctime.After(e.attr.Ctime) {
		s.attrs.Add(string(dir), attrEntry{attr: *a, at: time.Now(), valid: true})
	}
	s.mu.Unlock()
}

// cachedNegative reports whether dir/name is cached as missing (a dentry
// with no handle, stored when LOOKUP answered NOENT), and whether that
// answer is still within the attribute timeout. Like the Linux client's
// negative dentries, it saves the LOOKUPs of names looked up again and
// again (a create's own lookups, a compiler's include path); our own
// creates replace it (putChild) or drop it, and a name created behind
// our back is seen once the timeout has passed.
func (s *state) cachedNegative(dir client.Handle, name string) (negative, fresh bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.dentries.Get(dkey(dir, name))
	if !ok || d.fh != nil {
		return false, false
	}
	return true, s.opts.AttrTimeout >= 0 && time.Since(d.at) <= s.opts.AttrTimeout
}

// dropNegative forgets a negative entry for dir/name, keeping a positive
// one: the name exists (EEXIST).
func (s *state) dropNegative(dir client.Handle, name string) {
	s.mu.Lock()
	if d, ok := s.dentries.Peek(dkey(dir, name)); ok && d.fh == nil {
		s.dentries.Remove(dkey(dir, name))
	}
	s.mu.Unlock()
}

// readlink returns a symbolic link's target (READLINK), or during an
// outage the one last read.
func (s *state) readlink(ctx context.Context, fh client.Handle) (string, error) {
	var target string
	err := s.revalidate(ctx, func(ctx context.Context) error {
		t, _, err := s.clnt.Readlink(ctx, fh)
		if err != nil {
			return err
		}
		target = t
		if s.serveStale() {
			s.mu.Lock()
			s.links.Add(string(fh), linkEntry{target: t, at: time.Now()})
			s.mu.Unlock()
		}
		return nil
	}, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		l, ok := s.links.Peek(string(fh))
		target = l.target
		return ok && s.staleOK(l.at)
	})
	return target, err
}

// parentOf splits rel into its parent (relative) and final name.
func parentOf(rel string) (string, string) {
	dir, name := path.Split(rel)
	return strings.TrimSuffix(dir, "/"), name
}

// resolveParent resolves rel's parent directory (creating it and its
// parents with mode 0755 if mkdir, as osfs does for Create/Symlink/Rename).
func (f *FS) resolveParent(ctx context.Context, rel string, mkdir bool) (client.Handle, string, error) {
	if rel == "" {
		return nil, "", syscall.EINVAL
	}
	dir, name := parentOf(rel)
	if mkdir {
		if err := f.mkdirAll(ctx, dir, 0o755); err != nil {
			return nil, "", err
		}
	}
	n, err := f.resolve(ctx, dir, true)
	if err != nil {
		return nil, "", err
	}
	if n.attr.Type != client.TypeDir {
		return nil, "", syscall.ENOTDIR
	}
	return n.fh, name, nil
}

// mkdirAll creates rel and its missing parents.
func (f *FS) mkdirAll(ctx context.Context, rel string, perm uint32) error {
	if rel == "" {
		if f.base == "/" {
			return nil
		}
		// A chroot's own root may not exist yet (Chroot does not create
		// it; osfs creates it with the first file).
		root := &FS{s: f.s, base: "/"}
		return root.mkdirAll(ctx, strings.TrimPrefix(f.base, "/"), perm)
	}
	n, err := f.resolve(ctx, rel, true)
	if err == nil {
		if n.attr.Type != client.TypeDir {
			return syscall.ENOTDIR
		}
		return nil
	}
	if !errors.Is(err, syscall.ENOENT) {
		return err
	}
	dir, name := parentOf(rel)
	if err := f.mkdirAll(ctx, dir, perm); err != nil {
		return err
	}
	pn, err := f.resolve(ctx, dir, true)
	if err != nil {
		return err
	}
	if pn.attr.Type != client.TypeDir {
		return syscall.ENOTDIR
	}
	mode := perm & 0o7777
	r, err := f.s.clnt.Mkdir(ctx, pn.fh, name, client.SetAttr{Mode: &mode})
	f.s.dropChild(pn.fh, name) // a negative entry, if any, is wrong now
	f.s.dirUpdated(pn.fh, r.DirWcc)
	if errors.Is(err, syscall.EEXIST) {
		n, err := f.resolve(ctx, rel, true)
		if err != nil {
			return err
		}
		if n.attr.Type != client.TypeDir {
			return syscall.ENOTDIR
		}
		return nil
	}
	if err != nil {
		return err
	}
	if r.Handle != nil {
		f.s.putChild(pn.fh, name, r.Handle)
		f.s.putAttr(r.Handle, r.Attr)
	}
	return nil
}
