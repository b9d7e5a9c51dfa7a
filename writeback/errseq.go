package writeback

// ErrCursor is a position in an inode's writeback error sequence, the
// analogue of an errseq_t sampled into file->f_wb_err. Each syncer (an open
// file, or the inode's own Sync) keeps one and sees every error recorded
// after its position exactly once. A cursor is a plain value owned by its
// syncer; CheckErr updates it under the inode lock, so concurrent checks
// of one cursor against one inode are safe.
type ErrCursor uint64

// SampleErr returns a cursor for a new syncer (errseq_sample at open). If
// the latest error has not been reported to anyone yet, the cursor is
// placed before it, so the new syncer still reports it.
func (i *Inode) SampleErr() ErrCursor {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.errSeq > 0 && !i.errSeen {
		return ErrCursor(i.errSeq - 1)
	}
	return ErrCursor(i.errSeq)
}

// CheckErr returns the latest writeback error recorded since *c and
// advances *c (errseq_check_and_advance), or nil if none was recorded.
func (i *Inode) CheckErr(c *ErrCursor) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.checkErrLocked(c)
}

func (i *Inode) checkErrLocked(c *ErrCursor) error {
	if uint64(*c) == i.errSeq {
		return nil
	}
	*c = ErrCursor(i.errSeq)
	i.errSeen = true
	return i.err
}

// recordErrLocked is errseq_set (mapping_set_error), also recording the
// error on the flusher for SyncAll (sb->s_wb_err).
func (i *Inode) recordErrLocked(err error) {
	i.errSeq++
	i.errSeen = false
	i.err = err
	if f := i.f; f != nil {
		f.mu.Lock()
		f.errSeq++
		f.err = err
		f.mu.Unlock()
	}
}
