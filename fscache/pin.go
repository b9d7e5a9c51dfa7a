package fscache

import "github.com/nfscache/nfscache/writeback"

// The writeback pin helpers of include/linux/fscache.h (commit 08276bda,
// "vfs, fscache: Implement pinning of cache usage for writeback"). The
// filesystem calls them; writeback itself only knows the PinningCacheWB
// bit and Control.UnpinnedCacheWB.

// SetPageDirty is fscache_dirty_folio (formerly fscache_set_page_dirty):
// call it after marking a range of ino dirty. If ino does not yet hold
// PinningCacheWB, it takes a use on the cookie for writeback and sets the
// bit, so the backing file is held open (opened now, in the dirtier's
// context) until writeback has cleaned the inode. It never lets pinned
// backing files exceed Options.MaxPinned: at the limit it calls
// Options.PinPressure and waits until writeback unpins another cookie —
// the dirtier is throttled instead of opening more files.
//
// On error (cache closed, backing file cannot be opened) nothing is
// pinned and the bit is left clear: the cache has stepped aside for this
// inode, and the filesystem must not expect the dirty data in the cache.
func SetPageDirty(ino *writeback.Inode, ck *Cookie) error {
	if ino.State()&writeback.PinningCacheWB != 0 {
		return nil
	}
	// Take the use first, then publish the bit: the bit must never be set
	// without the use behind it. If another dirtier won the race, give our
	// use back.
	if err := ck.pinUse(); err != nil {
		return err
	}
	if !ino.SetPinningCacheWB() {
		return ck.unuse(true, nil, -1)
	}
	return nil
}

// UnpinWriteback is fscache_unpin_writeback: call it from the filesystem's
// WriteInode. If writeback cleaned the inode's last dirty page and cleared
// PinningCacheWB (wbc.UnpinnedCacheWB), the writeback pin's use is dropped.
func UnpinWriteback(wbc *writeback.Control, ck *Cookie) error {
	if !wbc.UnpinnedCacheWB {
		return nil
	}
	return ck.unuse(true, nil, -1)
}

// ClearInodeWriteback is fscache_clear_inode_writeback: call it when the
// inode is evicted. If the inode still holds PinningCacheWB, the bit is
// cleared and the pin's use dropped, recording aux and the inode's size as
// the cookie's coherency data.
func ClearInodeWriteback(ino *writeback.Inode, ck *Cookie, aux []byte) error {
	if !ino.ClearPinningCacheWB() {
		return nil
	}
	return ck.unuse(true, aux, ino.Size())
}
