package client

import (
	"sync/atomic"
	"time"
)

// NFS procedure numbers (RFC 1813 §3.3).
const (
	procNull        = 0
	procGetattr     = 1
	procSetattr     = 2
	procLookup      = 3
	procAccess      = 4
	procReadlink    = 5
	procRead        = 6
	procWrite       = 7
	procCreate      = 8
	procMkdir       = 9
	procSymlink     = 10
	procMknod       = 11
	procRemove      = 12
	procRmdir       = 13
	procRename      = 14
	procLink        = 15
	procReaddir     = 16
	procReaddirplus = 17
	procFSStat      = 18
	procFSInfo      = 19
	procPathconf    = 20
	procCommit      = 21
	numNFSProcs     = 22
)

var nfsProcNames = [numNFSProcs]string{
	"NULL", "GETATTR", "SETATTR", "LOOKUP", "ACCESS", "READLINK", "READ", "WRITE",
	"CREATE", "MKDIR", "SYMLINK", "MKNOD", "REMOVE", "RMDIR", "RENAME", "LINK",
	"READDIR", "READDIRPLUS", "FSSTAT", "FSINFO", "PATHCONF", "COMMIT",
}

func procName(p uint32) string {
	if p < numNFSProcs {
		return nfsProcNames[p]
	}
	return "NFSPROC_UNKNOWN"
}

// ProcStats counts one procedure's calls.
type ProcStats struct {
	Calls   uint64        // calls completed (successfully or not)
	Errors  uint64        // calls that returned a transport/RPC error (not NFS status errors)
	Latency time.Duration // total time from send to reply, summed over Calls
}

// Stats is a snapshot of a Client's counters.
type Stats struct {
	// Procs is keyed by procedure name ("READ", "MNT", …); only procedures
	// that were called appear.
	Procs           map[string]ProcStats
	BytesRead       uint64 // data bytes received by READ
	BytesWritten    uint64 // data bytes acknowledged by WRITE
	BytesResent     uint64 // data bytes rewritten after a write verifier change
	Retransmissions uint64 // calls resent after a dropped connection
	Reconnects      uint64 // connections re-established
}

type procCounter struct {
	calls, errors, nanos atomic.Uint64
}

// stats holds atomic counters; NFS procedures are indexed by number, other
// programs' procedures by a small fixed set.
type stats struct {
	nfs                             [numNFSProcs]procCounter
	mnt, umnt, export, getport      procCounter
	bytesRead, bytesWritten, resent atomic.Uint64
}

func (s *stats) counter(prog, proc uint32) *procCounter {
	switch prog {
	case progNFS:
		if proc < numNFSProcs {
			return &s.nfs[proc]
		}
	case progMount:
		switch proc {
		case 1:
			return &s.mnt
		case 3:
			return &s.umnt
		case 5:
			return &s.export
		}
	case progPortmap:
		return &s.getport
	}
	return nil
}

func (s *stats) record(prog, proc uint32, d time.Duration, err error) {
	pc := s.counter(prog, proc)
	if pc == nil {
		return
	}
	pc.calls.Add(1)
	pc.nanos.Add(uint64(d))
	if err != nil {
		pc.errors.Add(1)
	}
}

// Stats returns a snapshot of the client's counters. Safe for concurrent use.
func (c *Client) Stats() Stats {
	s := Stats{
		Procs:        make(map[string]ProcStats),
		BytesRead:    c.stats.bytesRead.Load(),
		BytesWritten: c.stats.bytesWritten.Load(),
		BytesResent:  c.stats.resent.Load(),
	}
	add := func(name string, pc *procCounter) {
		if n := pc.calls.Load(); n > 0 {
			s.Procs[name] = ProcStats{Calls: n, Errors: pc.errors.Load(), Latency: time.Duration(pc.nanos.Load())}
		}
	}
	for i := range c.stats.nfs {
		add(nfsProcNames[i], &c.stats.nfs[i])
	}
	add("MNT", &c.stats.mnt)
	add("UMNT", &c.stats.umnt)
	add("EXPORT", &c.stats.export)
	add("GETPORT", &c.stats.getport)
	for _, cn := range c.conns {
		cn.mu.Lock()
		s.Retransmissions += cn.retrans
		s.Reconnects += cn.reconns
		cn.mu.Unlock()
	}
	return s
}
