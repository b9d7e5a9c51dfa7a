package server

import "sync/atomic"

// NFSv3 procedure numbers (RFC 1813 §3.3), the indexes of Stats.NFS.
const (
	ProcNull        = 0
	ProcGetAttr     = 1
	ProcSetAttr     = 2
	ProcLookup      = 3
	ProcAccess      = 4
	ProcReadlink    = 5
	ProcRead        = 6
	ProcWrite       = 7
	ProcCreate      = 8
	ProcMkdir       = 9
	ProcSymlink     = 10
	ProcMknod       = 11
	ProcRemove      = 12
	ProcRmdir       = 13
	ProcRename      = 14
	ProcLink        = 15
	ProcReadDir     = 16
	ProcReadDirPlus = 17
	ProcFSStat      = 18
	ProcFSInfo      = 19
	ProcPathConf    = 20
	ProcCommit      = 21
	numNFSProcs     = 22

	procRemove = ProcRemove
	procRmdir  = ProcRmdir
)

// MOUNT v3 procedure numbers (RFC 1813 §5.2), the indexes of Stats.Mount.
const (
	MountProcNull    = 0
	MountProcMnt     = 1
	MountProcDump    = 2
	MountProcUmnt    = 3
	MountProcUmntAll = 4
	MountProcExport  = 5
	numMountProcs    = 6
)

// Stats is a snapshot of a Server's counters since New: a plain value,
// safe to copy and read anywhere. Counters are read one by one, so a
// snapshot taken while serving need not be consistent across fields.
type Stats struct {
	// NFS counts calls per NFSv3 procedure, indexed by ProcRead etc.
	NFS [numNFSProcs]uint64
	// Mount counts calls per MOUNT procedure, indexed by MountProcMnt etc.
	Mount [numMountProcs]uint64
	// BytesRead and BytesWritten count file data moved by READ and WRITE.
	BytesRead, BytesWritten uint64
	// Connections accepted; Rejected by the allow-list; Malformed ones
	// closed because of an unparsable RPC.
	Connections, Rejected, Malformed uint64
	// OpenFiles is the number of files the open-file cache holds now.
	OpenFiles int64
	// FDExhausted counts opens of exported files that failed with
	// EMFILE/ENFILE (too many open files); each was retried after
	// closing an idle cached file (or a short pause).
	FDExhausted uint64
	// Handles is the number of file ids in the handle table.
	Handles int
}

type counters struct {
	nfs                     [numNFSProcs]atomic.Uint64
	mount                   [numMountProcs]atomic.Uint64
	bytesRead, bytesWritten atomic.Uint64
	conns, rejected, bad    atomic.Uint64
}

// Stats returns a snapshot of the server's counters. Safe to call
// concurrently with serving; each counter is read atomically.
func (s *Server) Stats() Stats {
	var st Stats
	for i := range st.NFS {
		st.NFS[i] = s.stats.nfs[i].Load()
	}
	for i := range st.Mount {
		st.Mount[i] = s.stats.mount[i].Load()
	}
	st.BytesRead = s.stats.bytesRead.Load()
	st.BytesWritten = s.stats.bytesWritten.Load()
	st.Connections = s.stats.conns.Load()
	st.Rejected = s.stats.rejected.Load()
	st.Malformed = s.stats.bad.Load()
	st.OpenFiles = s.open.open()
	st.FDExhausted = s.open.fdExhaustedCount()
	st.Handles = s.table.count()
	return st
}
