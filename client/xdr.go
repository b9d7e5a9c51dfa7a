package client

import (
	"encoding/binary"
	"errors"
)

// errShort is the sticky error of a decoder that ran past the end of its input
// (a truncated or garbage reply). It never escapes without being wrapped.
var errShort = errors.New("xdr: reply truncated")

// errTooLong is returned when a counted field (opaque, string, array) claims
// more bytes than the protocol or the caller allows.
var errTooLong = errors.New("xdr: field longer than allowed")

// encoder appends XDR (RFC 4506) items to a byte slice. The zero value is ready;
// it never fails, so callers can chain writes without checks.
type encoder struct{ b []byte }

func (e *encoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }

func (e *encoder) boolean(v bool) {
	if v {
		e.u32(1)
	} else {
		e.u32(0)
	}
}

// opaque writes a variable-length opaque: length, bytes, zero padding to 4.
func (e *encoder) opaque(p []byte) {
	e.u32(uint32(len(p)))
	e.b = append(e.b, p...)
	e.pad(len(p))
}

func (e *encoder) str(s string) {
	e.u32(uint32(len(s)))
	e.b = append(e.b, s...)
	e.pad(len(s))
}

// fixed writes a fixed-length opaque (no length prefix).
func (e *encoder) fixed(p []byte) {
	e.b = append(e.b, p...)
	e.pad(len(p))
}

func (e *encoder) pad(n int) {
	for ; n%4 != 0; n++ {
		e.b = append(e.b, 0)
	}
}

// decoder reads XDR items from a byte slice. Errors are sticky: after the
// first short read every method returns zero values and err stays set, so a
// decode function reads straight through and checks err once at the end.
// It never panics, whatever the input.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b)-d.off {
		d.fail(errShort)
		return nil
	}
	p := d.b[d.off : d.off+n : d.off+n]
	d.off += n
	return p
}

func (d *decoder) u32() uint32 {
	p := d.take(4)
	if p == nil {
		return 0
	}
	return binary.BigEndian.Uint32(p)
}

func (d *decoder) u64() uint64 {
	p := d.take(8)
	if p == nil {
		return 0
	}
	return binary.BigEndian.Uint64(p)
}

func (d *decoder) boolean() bool { return d.u32() != 0 }

// opaque reads a variable-length opaque of at most max bytes. The result
// aliases the decoder's buffer.
func (d *decoder) opaque(max int) []byte {
	n := d.u32()
	if d.err != nil {
		return nil
	}
	if uint64(n) > uint64(max) {
		d.fail(errTooLong)
		return nil
	}
	p := d.take(int(n))
	d.take(padLen(int(n)))
	return p
}

func (d *decoder) str(max int) string { return string(d.opaque(max)) }

// fixed reads a fixed-length opaque of n bytes into dst.
func (d *decoder) fixed(dst []byte) {
	p := d.take(len(dst))
	copy(dst, p)
	d.take(padLen(len(dst)))
}

func padLen(n int) int { return (4 - n%4) % 4 }
