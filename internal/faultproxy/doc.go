// Package faultproxy is a fault-injecting TCP proxy for tests: it listens on
// 127.0.0.1, forwards every accepted connection to one target address, and
// on request breaks the byte streams the way real networks and crashing
// peers do:
//
//   - Cut: both sockets are reset (SO_LINGER 0, so the peers see RST), as
//     when a host or middlebox drops a connection mid-RPC.
//   - Truncate: exactly the first N bytes of one direction are forwarded,
//     then that direction is closed (FIN) and the rest of what its sender
//     writes is dropped, so the receiver sees a record that stops in the
//     middle followed by EOF, as when a peer dies after a partial write.
//     The other direction goes on until its sender closes.
//   - Stall: forwarding stops for a while after N bytes, then resumes with
//     nothing lost (a long delay mid-stream, e.g. a congested or paused
//     path); SetLatency adds a constant delay to every chunk instead.
//
// A Fault is armed once and fires once: on the first connection whose
// forwarded bytes in the chosen Direction, counted from the moment Arm was
// called, reach Fault.After. That lets a test say "cut the connection in
// the middle of the next WRITE's data" without knowing connection
// boundaries (ONC RPC record marking, RFC 5531 §11, means a cut at an
// arbitrary byte lands inside a record).
//
// Options.Tap sees every forwarded chunk, so the proxy also records real
// sessions (the integration fuzz seeds are calls captured this way).
//
// Concurrency: a Proxy is safe for concurrent use. mu guards the armed
// fault, the byte counter and the connection set; it is never held while
// reading, writing or sleeping.
package faultproxy
