package writeback

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// memFS is the filesystem side of the tests: a "page cache" holding a
// version number per page (what the application last wrote), a backing
// store receiving WritePages, and a fake cache-pin counter standing in for
// fscache's cookie use. It injects faults (failures, partial writes,
// delays, blocking) into the callbacks; the writeback code under test is
// real.
type memFS struct {
	t *testing.T

	mu         sync.Mutex
	cache      map[*Inode]map[int64]uint64 // page index -> version
	store      map[*Inode]map[int64]uint64
	uses       map[*Inode]int // cache uses held by pins
	pinnedNow  int            // inodes holding at least one cache use
	peakPinned int            // max over time of pinnedNow
	ver        uint64
	fail       int   // fail this many WritePages calls
	partial    int64 // bytes a failing call reports as written
	delay      time.Duration
	block      chan struct{} // if set, WritePages waits for it to close
	entered    chan struct{} // if set, signalled when WritePages starts
	calls      int
	inodeWr    int
	badPin     error // first pin-protocol violation seen

	onWritePages func(ino *Inode)
}

func newMemFS(t *testing.T) *memFS {
	return &memFS{
		t:     t,
		cache: make(map[*Inode]map[int64]uint64),
		store: make(map[*Inode]map[int64]uint64),
		uses:  make(map[*Inode]int),
	}
}

// write puts new data into the page cache for [off, off+n) and returns the
// range; the caller then marks it dirty.
func (m *memFS) write(ino *Inode, off, n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.ver++
	pages := m.cache[ino]
	if pages == nil {
		pages = make(map[int64]uint64)
		m.cache[ino] = pages
	}
	r := pageRange(off, n)
	for p := r.Off / PageSize; p < r.End/PageSize; p++ {
		pages[p] = m.ver
	}
	ino.ExtendSize(off + n)
}

// pin is the fake fscache.SetPageDirty, in the order SetPinningCacheWB's
// doc asks for: take the use first, then set the bit, and give the use back
// if the bit was already set. A use taken after the bit is set could be
// dropped by a racing writeback before it was taken.
func (m *memFS) pin(ino *Inode) func() {
	return func() {
		if ino.State()&PinningCacheWB != 0 {
			return
		}
		m.mu.Lock()
		m.uses[ino]++
		if m.uses[ino] == 1 {
			m.pinnedNow++
			m.peakPinned = max(m.peakPinned, m.pinnedNow)
		}
		m.mu.Unlock()
		if !ino.SetPinningCacheWB() {
			m.mu.Lock()
			m.uses[ino]--
			if m.uses[ino] == 0 {
				m.pinnedNow--
			}
			m.mu.Unlock()
		}
	}
}

func (m *memFS) WritePages(ctx context.Context, ino *Inode, extents []Extent) (int64, error) {
	m.mu.Lock()
	m.calls++
	block, entered, delay, hook := m.block, m.entered, m.delay, m.onWritePages
	m.mu.Unlock()
	if hook != nil {
		hook(ino)
	}
	if entered != nil {
		entered <- struct{}{}
	}
	if block != nil {
		<-block
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, e := range extents {
		if e.Off%PageSize != 0 || e.End%PageSize != 0 || e.End <= e.Off || k > 0 && extents[k-1].End >= e.Off {
			m.t.Errorf("WritePages got bad extents %+v", extents)
		}
	}
	limit := int64(1<<63 - 1)
	var err error
	if m.fail > 0 {
		m.fail--
		limit = m.partial
		err = errors.New("injected write failure")
	}
	st := m.store[ino]
	if st == nil {
		st = make(map[int64]uint64)
		m.store[ino] = st
	}
	var done int64
	for _, e := range extents {
		for p := e.Off / PageSize; p < e.End/PageSize && done+PageSize <= limit; p++ {
			st[p] = m.cache[ino][p]
			done += PageSize
		}
	}
	if err != nil {
		return done, err
	}
	return done, nil
}

func (m *memFS) WriteInode(ctx context.Context, ino *Inode, wbc *Control) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.inodeWr++
	if wbc.UnpinnedCacheWB {
		m.uses[ino]--
		if m.uses[ino] == 0 {
			m.pinnedNow--
		}
		if m.uses[ino] < 0 && m.badPin == nil {
			m.badPin = errors.New("unpinned an inode that held no use")
		}
	}
	return nil
}

// lost returns the pages whose latest version never reached the store.
func (m *memFS) lost(ino *Inode) []int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []int64
	for p, v := range m.cache[ino] {
		if m.store[ino][p] != v {
			out = append(out, p)
		}
	}
	return out
}

func (m *memFS) usesOf(ino *Inode) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.uses[ino]
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
