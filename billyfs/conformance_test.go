package billyfs_test

import (
	"context"
	"testing"

	"github.com/go-git/go-billy/v5"
	"github.com/go-git/go-billy/v5/test"
	"github.com/go-git/go-billy/v5/util"
	. "gopkg.in/check.v1"

	"github.com/nfscache/nfscache/billyfs"
)

// go-billy v5's own conformance suite (test.NewFilesystemSuite: Basic, Dir,
// Symlink, TempFile, Chroot), run against billyfs on a live server, once
// with a local cache and once without. Every suite test runs unmodified
// except TestTempFileMany and TestTempFileManyWithUtil, which create
// 1024×100 files; here they run the same loop 10×100 times (1 000 files) to
// keep the package's test time near a minute under -race.
func TestConformance(t *testing.T) { TestingT(t) }

type conformanceSuite struct {
	test.FilesystemSuite
	cache bool
	srv   *testServer
	fs    *billyfs.FS
	t     *testing.T
}

var (
	_ = Suite(&conformanceSuite{cache: true})
	_ = Suite(&conformanceSuite{cache: false})
)

func (s *conformanceSuite) SetUpTest(c *C) {
	s.srv = startServerC(c)
	opts := billyfs.Options{Addr: s.srv.Addr}
	if s.cache {
		opts.CacheDir = c.MkDir()
		opts.MaxOpenFiles = 16
	}
	fsys, err := billyfs.New(context.Background(), opts)
	c.Assert(err, IsNil)
	s.fs = fsys
	s.FilesystemSuite = test.NewFilesystemSuite(fsys)
}

func (s *conformanceSuite) TearDownTest(c *C) {
	c.Assert(s.fs.Close(), IsNil)
	s.srv.stop()
}

// tempFileManyRounds replaces the suite's 1024 rounds of 100 files.
const tempFileManyRounds = 10

func (s *conformanceSuite) TestTempFileMany(c *C) {
	for i := 0; i < tempFileManyRounds; i++ {
		var fs []billy.File
		for j := 0; j < 100; j++ {
			f, err := s.FS.TempFile("test-dir", "test-prefix")
			c.Assert(err, IsNil)
			fs = append(fs, f)
		}
		for _, f := range fs {
			c.Assert(f.Close(), IsNil)
			c.Assert(s.FS.Remove(f.Name()), IsNil)
		}
	}
}

func (s *conformanceSuite) TestTempFileManyWithUtil(c *C) {
	for i := 0; i < tempFileManyRounds; i++ {
		var fs []billy.File
		for j := 0; j < 100; j++ {
			f, err := util.TempFile(s.FS, "test-dir", "test-prefix")
			c.Assert(err, IsNil)
			fs = append(fs, f)
		}
		for _, f := range fs {
			c.Assert(f.Close(), IsNil)
			c.Assert(s.FS.Remove(f.Name()), IsNil)
		}
	}
}
