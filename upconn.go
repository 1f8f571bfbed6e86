package main

// Raw upstream reading for handed-off streams. A system call costs more
// than anything else a proxy does per event of a stream. Read through the
// Transport, each event costs three: the read that returns it, the write
// to the client, and one more read that finds the socket empty before the
// goroutine waits. A handed-off chunked stream over a plain-TCP HTTP/1.1
// upstream connection skips the third: it reads the socket itself, inside
// one syscall.RawConn.Read, and waits for readiness after a read that
// emptied it, as nginx does. The body's bytes go to the client as they
// came, framing included: one read, one write; those that came with the
// response head go in the head's write. What this buys is CPU and latency
// per event. It is not used for TLS or HTTP/2 upstreams, bodies that are
// not chunked, streams that are not handed off (stream.go), outside Linux
// (canReadRaw), nor at all with STREAM_HANDOFF=off, which also leaves the
// Transport's connections without an upConn (newTransport).
//
// For a raw read the Transport's buffered reader must hold none of the
// body when the response reaches the proxy. upConn, the connection the
// Transport dials, makes sure of it: armed by the request that got the
// connection (httptrace GotConn), it returns the bytes of the response
// head, and keeps what follows (the first body bytes, which usually come
// in the same segment) to return on the next read. The bytes and their order are
// unchanged; only where one read ends moves. When the stream ends cleanly,
// the Transport is given the body's last chunk to read, so that it sees a
// complete body and keeps the connection for its next request.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
)

// upConn is a plain-TCP upstream connection. Its reads are the
// Transport's (its read loop, or the goroutine reading a response body)
// until a raw stream takes the socket over, then the stream goroutine's;
// gotConn arms it from the goroutine about to send a request on it, before
// the request is written and so before the response is read. The fields
// below armed are the reader's, and passed on with the response (the
// Transport's channels order it).
type upConn struct {
	net.Conn
	raw syscall.RawConn

	// armed is set by gotConn before the request is written: the bytes
	// read next are a response head. Only the reading goroutine clears it.
	armed atomic.Bool
	head  headScanner
	// captured: the last response head read through this connection was
	// returned alone, and stash holds the bytes that followed it.
	captured bool
	stash    []byte
	stashBuf []byte // stash's storage, reused

	// hang is the connection's hang-up watch (upconn_linux.go), which
	// its first raw stream registers and which stays while the
	// connection is open; closed is set by Close. Both under hangMu.
	hangMu sync.Mutex
	hang   *upHang
	closed bool
}

// upHang is an upstream connection's registration with the proxy's
// watcher (clientWatcher.watchConn), and what it saw. seen and rc are
// under the watcher's mu, which it holds while it runs the callback.
type upHang struct {
	w   *clientWatcher
	reg watchReg
	// seen: the upstream closed or reset the connection, or the watcher
	// stopped.
	seen bool
	// rc is the raw stream reading the connection now, if any: the
	// callback ends its wait.
	rc *rawCopy
}

// Close forgets the connection's hang-up watch, then closes it.
func (c *upConn) Close() error {
	c.hangMu.Lock()
	c.closed = true
	h := c.hang
	c.hangMu.Unlock()
	if h != nil {
		h.w.forget(h.reg)
	}
	return c.Conn.Close()
}

// dialUp wraps the TCP connections a net.Dialer makes: in an upConn if
// up (STREAM_HANDOFF), around a rawTCPConn if raw (RAW_IO, rawio.go).
func dialUp(dial func(ctx context.Context, network, addr string) (net.Conn, error), up, raw bool) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if raw {
			c = rawTCP(c)
		}
		// A *net.TCPConn, or the rawTCPConn around one, whose RawConn
		// the upConn then shares.
		sc, ok := c.(syscall.Conn)
		if !up || !ok {
			return c, nil
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			return c, nil
		}
		return &upConn{Conn: c, raw: rc}, nil
	}
}

// arm prepares c for the head of the response to a request about to be
// written on it.
func (c *upConn) arm() {
	c.head = headScanner{}
	c.captured = false
	c.armed.Store(true)
}

// Read serves the stash first. While c is armed it returns no byte past the
// end of the response head, and stashes those it read beyond it.
func (c *upConn) Read(p []byte) (int, error) {
	if len(c.stash) > 0 {
		n := c.cut(p[:copy(p, c.stash)])
		c.stash = c.stash[n:]
		return n, nil
	}
	n, err := c.Conn.Read(p)
	if m := c.cut(p[:n]); m < n {
		c.stashBuf = append(c.stashBuf[:0], p[m:n]...)
		c.stash, n = c.stashBuf, m
	}
	return n, err
}

// bodyAtHand reports whether the bytes that followed the response head
// just read came with it (stashed), so that reading the body's first bytes
// will not wait for the upstream. Called by the goroutine the response was
// passed to, before it reads the body.
func (c *upConn) bodyAtHand() bool {
	return c.captured && len(c.stash) > 0
}

// cut returns how many of b, the bytes a read is about to return, to
// return now: up to the end of the response head while c is armed, all
// of them otherwise.
func (c *upConn) cut(b []byte) int {
	if len(b) == 0 || !c.armed.Load() {
		return len(b)
	}
	end := c.head.feed(b)
	if end < 0 {
		return len(b)
	}
	if c.head.informational() {
		c.head = headScanner{} // the final head follows
	} else {
		c.armed.Store(false)
		c.captured = true
	}
	return end
}

// headScanner finds the end of a response head: the first empty line, as
// net/textproto reads lines ("\n", with or without "\r" before it).
type headScanner struct {
	state int // 1 after "\n", 2 after "\n\r"
	// status holds the start of the status line, for informational.
	status [12]byte
	seen   int
}

// feed scans p, the next bytes of the head, and returns the index just
// past the head's end, or -1 if it does not end in p.
func (h *headScanner) feed(p []byte) int {
	if h.seen < len(h.status) {
		h.seen += copy(h.status[h.seen:], p)
	}
	for i, b := range p {
		switch {
		case b == '\n' && h.state > 0:
			h.state = 0
			return i + 1
		case b == '\n':
			h.state = 1
		case b == '\r' && h.state == 1:
			h.state = 2
		default:
			h.state = 0
		}
	}
	return -1
}

// informational reports whether the head is a 1xx other than 101: another
// head follows it.
func (h *headScanner) informational() bool {
	// "HTTP/1.1 1xx"
	return h.seen >= 10 && h.status[8] == ' ' && h.status[9] == '1' &&
		!(h.seen >= 12 && h.status[10] == '0' && h.status[11] == '1')
}

// replayEnd makes c return a chunked body's last chunk to the Transport,
// whose reader then sees the body end and keeps the connection.
func (c *upConn) replayEnd() {
	c.stash = lastChunk
}

// errUpstreamClosed is an upstream that closed the connection before the
// body's end.
var errUpstreamClosed = errors.New("apiproxy: the upstream closed the connection mid-body")

// errUpstreamCancelled ends a raw stream whose upstream request was
// cancelled (UPSTREAM_TIMEOUT, the client leaving, shutdown).
var errUpstreamCancelled = errors.New("apiproxy: upstream request cancelled")

// errChunked is a chunked body whose framing is not valid.
var errChunked = errors.New("apiproxy: malformed chunked encoding from the upstream")

// errTrailer is a chunked body whose trailer section net/http's Transport
// would refuse: too long, or not valid header lines.
var errTrailer = errors.New("apiproxy: malformed trailer section from the upstream")

// maxTrailerSection is the longest trailer section, its final CRLF CRLF
// included, that the Transport reads: it must end within one fill of the
// connection's read buffer (net/http's readTrailer), whose size is
// newTransport's ReadBufferSize.
const maxTrailerSection = 2 << 10

// chunkParser follows the framing of a chunked body (RFC 9112 §7.1) as
// its bytes pass, so that a raw stream knows its data (for usage
// accounting) and where it ends, while the client gets the bytes as they
// came. The body's end, its last chunk and trailer section, is checked as
// net/http's Transport checks it, before any of it is passed on (scan).
//
// Trailers: a handed-off response declared none (canHandOff), so any the
// upstream sends are undeclared. Through ReverseProxy (STREAM_HANDOFF=off)
// a Go Transport reads undeclared trailers like declared ones, and the
// server writes them to the client as trailers, re-written by
// http.Header.Write: canonical names, one field per line, sorted, invalid
// names dropped. A raw stream does the same (trailerOut), and a stream
// read through the Transport (streamCopy) writes the trailers the
// Transport read the same way, so every path gives a client the same
// trailers, and what the Transport refuses (an invalid field line, a
// section not ending in CRLF CRLF within maxTrailerSection) breaks the
// client's connection on each.
type chunkParser struct {
	state  int
	size   uint64 // of the chunk being read, or left of it in cpData
	digits int
	line   int // bytes of the size line so far
	// endLine is the length of the last chunk's line, once read.
	endLine int
	// trailer holds the trailer section read so far, when it is not a
	// bare CRLF.
	trailer []byte
	// Once done: sectionLen is how many bytes the trailer section took,
	// trailerOut what to send for them, and extraLen how many of them
	// follow the section as net/http reads it (bytes after the body's end).
	sectionLen int
	trailerOut []byte
	extraLen   int
	// trailerHdr holds the trailers of a section that was not a bare
	// CRLF, as the Transport would read them, for a stream written
	// through net/http (stream_here.go).
	trailerHdr http.Header
}

var crlf = []byte("\r\n")

// maxChunkLine is the limit net/http's chunked reader (a Go client's)
// puts on a chunk-size line, CRLF included.
const maxChunkLine = 4096 + 1

const (
	cpSize   = iota // chunk-size digits
	cpSizeWS        // whitespace after them
	cpExt           // a chunk extension
	cpSizeLF        // the CR ending the line was read
	cpData
	cpDataCR
	cpDataLF
	cpTrailerStart // after the last chunk's line
	cpTrailerCR    // "\r" after it
	cpTrailerLine  // a trailer section, in c.trailer
	cpDone
)

// next consumes p up to the end of the next data bytes, which it returns,
// and returns the rest of p (from the offending byte on an error). done is
// set once the body's end (the last chunk and the trailer section) is
// consumed; rest then holds what followed it, which a valid upstream never
// sends.
func (c *chunkParser) next(p []byte) (data, rest []byte, err error) {
	for i := 0; i < len(p); i++ {
		b := p[i]
		if c.state <= cpSizeLF {
			// The size line, checked as net/http checks it: hex digits,
			// then whitespace or a chunk extension, ending in CRLF.
			c.line++
			if c.line > maxChunkLine {
				return nil, p[i:], errChunked
			}
		}
		switch c.state {
		case cpSize:
			if v, ok := hexValue(b); ok {
				if c.digits == 16 {
					return nil, p[i:], errChunked
				}
				c.size = c.size<<4 | v
				c.digits++
				continue
			}
			if c.digits == 0 {
				return nil, p[i:], errChunked
			}
			switch b {
			case ';':
				c.state = cpExt
			case ' ', '\t':
				c.state = cpSizeWS
			case '\r':
				c.state = cpSizeLF
			default:
				return nil, p[i:], errChunked
			}
		case cpSizeWS:
			switch b {
			case ' ', '\t':
			case '\r':
				c.state = cpSizeLF
			default:
				return nil, p[i:], errChunked
			}
		case cpExt:
			switch b {
			case '\r':
				c.state = cpSizeLF
			case '\n':
				return nil, p[i:], errChunked
			}
		case cpSizeLF:
			if b != '\n' {
				return nil, p[i:], errChunked
			}
			if c.size == 0 {
				// The last chunk: scan notes where it started.
				c.endLine, c.line = c.line, 0
				c.state = cpTrailerStart
				return nil, p[i+1:], nil
			}
			c.line = 0
			c.state = cpData
		case cpData:
			n := uint64(len(p) - i)
			if n > c.size {
				n = c.size
			}
			c.size -= n
			if c.size == 0 {
				c.state = cpDataCR
			}
			return p[i : i+int(n)], p[i+int(n):], nil
		case cpDataCR:
			if b != '\r' {
				return nil, p[i:], errChunked
			}
			c.state = cpDataLF
		case cpDataLF:
			if b != '\n' {
				return nil, p[i:], errChunked
			}
			c.state, c.size, c.digits = cpSize, 0, 0
		case cpTrailerStart:
			// As net/http's readTrailer: a CRLF ends the body at once;
			// anything else starts a trailer section, which must end in
			// CRLF CRLF within maxTrailerSection.
			if b == '\r' {
				c.state = cpTrailerCR
			} else {
				c.trailer = append(c.trailer[:0], b)
				c.state = cpTrailerLine
			}
		case cpTrailerCR:
			if b == '\n' {
				c.state, c.sectionLen, c.trailerOut = cpDone, 2, crlf
				return nil, p[i+1:], nil
			}
			c.trailer = append(c.trailer[:0], '\r', b)
			c.state = cpTrailerLine
		case cpTrailerLine:
			c.trailer = append(c.trailer, b)
			if bytes.HasSuffix(c.trailer, doubleCRLF) {
				if err := c.endTrailer(); err != nil {
					return nil, p[i:], err
				}
				return nil, p[i+1:], nil
			}
			if len(c.trailer) >= maxTrailerSection {
				return nil, p[i:], errTrailer
			}
		case cpDone:
			return nil, p[i:], nil
		}
	}
	return nil, nil, nil
}

var doubleCRLF = []byte("\r\n\r\n")

// endTrailer reads the trailer section, whole in c.trailer, as net/http's
// Transport reads it (textproto's ReadMIMEHeader, which may stop at an
// empty line before the section's CRLF CRLF), and sets what the client is
// sent for it.
func (c *chunkParser) endTrailer() error {
	r := bytes.NewReader(c.trailer)
	br := bufio.NewReader(r)
	hdr, err := textproto.NewReader(br).ReadMIMEHeader()
	if err != nil {
		return errTrailer
	}
	var out bytes.Buffer
	http.Header(hdr).Write(&out)
	out.Write(crlf)
	c.state, c.sectionLen, c.trailerOut = cpDone, len(c.trailer), out.Bytes()
	c.trailerHdr = http.Header(hdr)
	c.extraLen = br.Buffered() + r.Len()
	return nil
}

// scan consumes p and returns how many of its bytes belong to the body:
// all of them unless the body ends in p, or those before an error. The
// bytes from held on belong to the body's end (the last chunk and its
// trailer section), which is passed on only once whole and checked.
func (c *chunkParser) scan(p []byte) (n, held int, err error) {
	q := p
	held = -1
	if c.state >= cpTrailerStart {
		held = 0
	}
	for len(q) > 0 && c.state != cpDone {
		var rest []byte
		_, rest, err = c.next(q)
		if held < 0 && c.state >= cpTrailerStart {
			held = max(0, len(p)-len(rest)-c.endLine)
		}
		if err != nil {
			q = rest
			break
		}
		q = rest
	}
	n = len(p) - len(q)
	if held < 0 {
		held = n
	}
	return n, held, err
}

// done reports whether the body's end has been consumed.
func (c *chunkParser) done() bool { return c.state == cpDone }

// atChunkStart reports whether the next byte starts a chunk-size line.
func (c *chunkParser) atChunkStart() bool { return c.state == cpSize && c.digits == 0 && c.line == 0 }

func hexValue(b byte) (uint64, bool) {
	switch {
	case '0' <= b && b <= '9':
		return uint64(b - '0'), true
	case 'a' <= b && b <= 'f':
		return uint64(b-'a') + 10, true
	case 'A' <= b && b <= 'F':
		return uint64(b-'A') + 10, true
	}
	return 0, false
}

// streamRaw copies a chunked body from the upstream socket to the client as
// it comes, framing included (readSocket), and reports whether it reached
// the body's end. handOff passed the bytes that came with the head.
func (pr *proxyRequest) streamRaw(b []byte) (complete bool) {
	st, up, rc := &pr.st, pr.up, &pr.st.rc
	if rc.more && !st.clientGone.Load() {
		rc.readSocket(up, b)
	}
	return rc.finish(up, b)
}

// finish ends a raw stream whose reading stopped, and reports whether the
// body reached its end. The upstream connection goes back to the
// Transport when it can serve another request.
func (rc *rawCopy) finish(up *upConn, b []byte) (complete bool) {
	pr, st := rc.pr, &rc.pr.st
	// A client that leaves once it has the last chunk does not make the
	// response incomplete; bytes after the end are the upstream's fault and
	// go nowhere.
	complete = rc.cp.done() && !rc.writeFailed
	endErr := rc.err
	if complete {
		endErr = io.EOF
	} else if endErr == nil {
		endErr = errClientGone
	}
	pr.body.account(nil, endErr)
	if complete && !rc.extra && !rc.hangup.Load() && !st.clientGone.Load() {
		// The Transport reads a last chunk and so sees the body end: it
		// keeps the connection. The stash holds exactly that chunk, and
		// the Transport's reader holds nothing (upConn.cut), so this
		// reads only the stash.
		up.replayEnd()
		for {
			if _, err := pr.body.ReadCloser.Read(b); err != nil {
				break
			}
		}
	}
	return complete
}

// rawCopy is the state of one streamRaw.
type rawCopy struct {
	pr          *proxyRequest
	cp          chunkParser
	client      syscall.RawConn // the client connection's, if it has one
	more        bool            // the body has not ended
	err         error           // why the body ended before its end
	extra       bool            // the upstream sent bytes after the body's end
	writeFailed bool            // a write to the client failed
	// hangup is set by the proxy's watcher when the upstream closed or reset
	// the connection (readSocket).
	hangup atomic.Bool
	// end holds the bytes of the body's end read so far, until it is
	// whole (chunkParser.scan).
	end []byte
	// rw is net/http's ResponseWriter while the stream is written through
	// it (stream_here.go); nil once handed off. viaRW: the next pass goes
	// through rw (the first, with the head). handOffNow is set when
	// readSocket stopped for the hand-off.
	rw         http.ResponseWriter
	viaRW      bool
	handOffNow bool
	// headPending: the first pass wrote the head's data through rw,
	// unflushed (writeHead).
	headPending bool
}

// pass writes p, the next bytes of the body as received, to the client,
// after prefix and in the same write, then accounts their data. It
// clears more once the body ended or the client is gone. A stream still
// written through net/http (rc.rw) leaves the body's end to net/http, and
// writes its first pass, or every pass where it has no socket to write to,
// through net/http (passHere). The pass that reaches the end is written at
// once like the others, not left for net/http's write of the end: that
// comes after the request is recorded (docs/performance.md, "The last
// event waits for no record").
func (rc *rawCopy) pass(prefix, p []byte) bool {
	before := rc.cp
	n, held, err := rc.cp.scan(p)
	if err == nil && !rc.cp.done() {
		rc.end = append(rc.end, p[held:n]...)
	}
	if rc.rw != nil && (rc.client == nil || rc.viaRW) {
		return rc.passHere(before, p[:held], n < len(p), err)
	}
	out := p[:held]
	switch {
	case err != nil, !rc.cp.done():
	case rc.rw != nil:
		// Written through net/http, which writes the body's end itself,
		// with the trailers (serveRawHere).
	case len(rc.end) == 0 && bytes.Equal(p[n-rc.cp.sectionLen:n], rc.cp.trailerOut):
		out = p[:n] // the end came whole in p, and passes as it came
	default:
		end := append(rc.end, p[held:n]...)
		end = end[:len(end)-rc.cp.sectionLen]
		out = slices.Concat(prefix, out, end, rc.cp.trailerOut)
		prefix = nil
	}
	if len(prefix) > 0 {
		out = append(prefix, out...)
	}
	if len(out) > 0 {
		if werr := rc.write(out); werr != nil {
			rc.failWrite()
			return false
		}
	}
	rc.accountData(before, p[:held])
	rc.ended(n < len(p), err)
	return rc.more
}

// accountData accounts the data of p, body bytes the parser read from its
// state before.
func (rc *rawCopy) accountData(before chunkParser, p []byte) {
	for cp, q := before, p; len(q) > 0; {
		var data []byte
		data, q, _ = cp.next(q)
		if len(data) > 0 {
			rc.pr.body.account(data, nil)
		}
	}
}

// ended notes where a pass left the body: broken (err), or at its end,
// with bytes after it (extra) or not.
func (rc *rawCopy) ended(extra bool, err error) {
	switch {
	case err != nil:
		rc.err = err
		rc.more = false
	case rc.cp.done():
		rc.extra = extra || rc.cp.extraLen > 0
		rc.more = false
	}
}

// failWrite records a write to the client that failed: the client left,
// unless the upstream request was cancelled (the write cut of stream.go).
func (rc *rawCopy) failWrite() {
	rc.writeFailed, rc.more = true, false
	if rc.pr.st.upEnded() {
		rc.err = errUpstreamCancelled
	} else {
		rc.pr.st.clientGone.Store(true)
	}
}
