package billyfs

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"syscall"

	"github.com/nfscache/nfscache/client"
	"github.com/nfscache/nfscache/fscache"
)

// recoverDirty writes back the dirty ranges a previous FS on this cache
// directory accepted but did not commit before it died (see "Crash
// safety" in doc.go). It runs once in New, before any file is opened, so
// no live cookie holds these objects. Failures are logged and leave the
// records in place for the next New.
func (s *state) recoverDirty(ctx context.Context) {
	for _, d := range s.vol.DirtyCookies() {
		fh := client.Handle(d.Key)
		name := "fh-" + hex.EncodeToString(d.Key)
		attr, err := s.clnt.Getattr(ctx, fh)
		switch {
		case err != nil && errors.Is(err, syscall.ESTALE):
			s.conflict(d, name, "remote file is gone")
		case err != nil:
			s.log.Warn("billyfs: recovering dirty data: GETATTR failed; kept for the next mount", "handle", name, "err", err)
		case attr == nil:
			s.log.Warn("billyfs: recovering dirty data: no attributes; kept for the next mount", "handle", name)
		case !bytes.Equal(aux(*attr), d.Aux):
			s.conflict(d, name, "remote file changed since the local write")
		default:
			if err := s.writeBackDirty(ctx, fh, d); err != nil {
				s.log.Warn("billyfs: recovering dirty data: write-back failed; kept for the next mount", "handle", name, "err", err)
				continue
			}
			s.recovered.Add(1)
			s.log.Info("billyfs: recovered dirty data after a crash", "handle", name, "ranges", len(d.Ranges))
		}
	}
}

func (s *state) conflict(d fscache.DirtyObject, name, why string) {
	path, ranges, err := s.vol.MoveToConflicts(d.Key, name)
	if err != nil {
		s.log.Warn("billyfs: keeping conflicting dirty data failed", "handle", name, "err", err)
		return
	}
	s.conflicts.Add(1)
	s.log.Warn("billyfs: dirty data from before a crash kept as a conflict file; the server's version is untouched",
		"handle", name, "reason", why, "path", path, "dirty_ranges", len(ranges))
}

// writeBackDirty sends the recorded dirty ranges with UNSTABLE WRITEs
// (resent by the client on a verifier change) and COMMITs them.
func (s *state) writeBackDirty(ctx context.Context, fh client.Handle, d fscache.DirtyObject) (err error) {
	ck, err := s.vol.AcquireDirtyCookie(d.Key)
	if err != nil {
		return err
	}
	defer func() {
		if rerr := ck.Relinquish(false); rerr != nil && err == nil {
			err = rerr
		}
	}()
	if err := ck.Use(true); err != nil {
		return err
	}
	newAux, size := d.Aux, d.Size
	defer func() {
		if uerr := ck.Unuse(newAux, size); uerr != nil && err == nil {
			err = uerr
		}
	}()
	for _, r := range d.Ranges {
		b := make([]byte, r.Len)
		if _, err := ck.ReadAt(b, r.Off); err != nil {
			return fmt.Errorf("reading dirty range %d+%d: %w", r.Off, r.Len, err)
		}
		if _, err := s.clnt.WriteAtFrom(ctx, fh, b, r.Off, cookieReader{ck}); err != nil {
			return err
		}
	}
	res, err := s.clnt.Commit(ctx, fh, 0, 0)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range d.Ranges {
		errs = append(errs, ck.ClearDirty(r.Off, r.Len, res.Verifier[:]))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	after := res.Wcc.After
	if after == nil {
		if after, err = s.clnt.Getattr(ctx, fh); err != nil {
			return err
		}
	}
	if after != nil {
		newAux, size = aux(*after), int64(after.Size)
	}
	return nil
}
