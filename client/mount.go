package client

import (
	"context"
	"fmt"
)

// MOUNT v3 (RFC 1813 Appendix I) procedures.
const (
	mountProcMnt    = 1
	mountProcUmnt   = 3
	mountProcExport = 5
)

// mount runs MOUNTPROC3_MNT for the export and returns the root handle.
func (c *Client) mount(ctx context.Context) (Handle, error) {
	d, err := c.oneShot(ctx, c.mountAddr, progMount, mntVersion, mountProcMnt, "MNT", func(e *encoder) {
		e.str(c.opts.Export)
	})
	if err != nil {
		return nil, fmt.Errorf("client: mount %q: %w", c.opts.Export, err)
	}
	st := Status(d.u32())
	if d.err == nil && st != StatusOK {
		return nil, fmt.Errorf("client: mount %q: %w", c.opts.Export, &Error{Proc: "MNT", Status: st})
	}
	h := decodeHandle(d)
	if d.err != nil || len(h) == 0 {
		return nil, fmt.Errorf("client: mount %q: %w: bad MNT reply", c.opts.Export, ErrProtocol)
	}
	return h, nil
}

func (c *Client) unmount(ctx context.Context) error {
	_, err := c.oneShot(ctx, c.mountAddr, progMount, mntVersion, mountProcUmnt, "UMNT", func(e *encoder) {
		e.str(c.opts.Export)
	})
	return err
}

// Export is one entry of the server's export list.
type Export struct {
	Dir    string
	Groups []string
}

// Exports lists the server's exports (MOUNTPROC3_EXPORT).
func (c *Client) Exports(ctx context.Context) ([]Export, error) {
	d, err := c.oneShot(ctx, c.mountAddr, progMount, mntVersion, mountProcExport, "EXPORT", nil)
	if err != nil {
		return nil, fmt.Errorf("client: EXPORT: %w", err)
	}
	var out []Export
	for d.boolean() {
		ex := Export{Dir: d.str(1024)}
		for d.boolean() {
			ex.Groups = append(ex.Groups, d.str(255))
			if len(ex.Groups) > 4096 {
				return nil, fmt.Errorf("client: EXPORT: %w: too many groups", ErrProtocol)
			}
		}
		out = append(out, ex)
		if len(out) > 65536 {
			return nil, fmt.Errorf("client: EXPORT: %w: too many exports", ErrProtocol)
		}
	}
	if d.err != nil {
		return nil, fmt.Errorf("client: EXPORT: %w: %w", ErrProtocol, d.err)
	}
	return out, nil
}
