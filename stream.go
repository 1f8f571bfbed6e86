package main

// Handed-off event streams. An SSE or NDJSON response of unknown length to
// an HTTP/1.1 client spends nearly all its life idle between tokens, and
// while net/http serves it the stream keeps the handler goroutine (with
// the stack ReverseProxy's deep calls grew), the server's background
// reader, and the connection's read, write and chunking buffers. A proxy
// holding thousands of such streams spends most of its memory on them.
//
// So once such a response's headers are in, the proxy hijacks the client
// connection, writes the head itself and hands the stream to a goroutine
// of its own that starts with a small stack: it reads the upstream body
// into a 2 KiB buffer and writes each read as one HTTP/1.1 chunk, in one
// write, at once (every chunk flushed as read, SPEC §3.5); from a
// plain-HTTP/1.1 upstream it passes the chunked body's bytes as read from
// the socket (streamRaw, upconn.go). The proxy's watcher (watch_linux.go)
// watches the client connection, or where there is none a second small
// goroutine reads it: a client that leaves cancels the upstream request at
// once (SPEC §3.8), as net/http's own background read does. When the
// stream ends, the connection goes back to the http.Server through
// connRecycler, so keep-alive works as if net/http had served the stream.
// What this buys is memory per held stream: a small stack and buffer
// instead of net/http's. It is bought once a stream has run
// STREAM_HANDOFF_AFTER (stream_here.go writes it through net/http until
// then, and hijacks it where it stands); with 0, as its head comes.
//
// What is not handed off stays on the ordinary ReverseProxy path: HTTP/2
// clients (no hijacking), HTTP/1.0 clients (no chunking), HEAD, bodies of
// known length, responses that declare trailers, requests whose body is
// still being sent, and requests asking to close the connection. With
// STREAM_HANDOFF=off (Config.StreamHandoff) nothing is. Trailers an
// upstream sends undeclared pass to the client on every path, as
// ReverseProxy passes them (see chunkParser in upconn.go).

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// errHandedOff is what modifyResponse returns for a response the stream
// goroutine took over; handleError then does nothing.
var errHandedOff = errors.New("apiproxy: response handed off to the stream writer")

// errClientGone cancels the upstream request of a handed-off stream whose
// client closed its connection.
var errClientGone = errors.New("apiproxy: the client closed the connection")

// errShutdownCut cancels the handed-off streams still running when
// SHUTDOWN_TIMEOUT ends.
var errShutdownCut = errors.New("apiproxy: shutdown timeout")

// longAgo is a deadline in the past: it ends a blocked read at once.
var longAgo = time.Unix(1, 0)

// lastChunk ends a chunked body without trailers.
var lastChunk = []byte("0\r\n\r\n")

// chunkHead is the room kept before the data in the stream buffer for the
// chunk-size line: up to 8 hex digits and CRLF.
const chunkHead = 10

// streamState is the part of a proxyRequest used only by a handed-off
// stream.
type streamState struct {
	conn    net.Conn
	pending []byte // bytes the client sent after its request (pipelined), replayed to the server
	// early holds what watchClient read from the client during the
	// stream (its next request, sent early), replayed after pending.
	early []byte
	// stopping is set before the stream ends the watcher's read on purpose.
	stopping   atomic.Bool
	clientGone atomic.Bool
	watched    bool // registered with the proxy's watcher (reg)
	reg        watchReg
	watchDone  chan struct{}   // closed when watchClient returns; nil if none runs
	stopCut    func() bool     // unregisters the shutdown cut
	onEvent    func(gone bool) // clientEvent, bound once
	oneByte    [1]byte
	// raw: the stream reads the upstream socket itself (streamRaw), rc
	// its state.
	raw          bool
	rc           rawCopy
	stopWriteCut func() bool     // unregisters the stream's write cut (cutWrites)
	upDone       <-chan struct{} // the upstream request's context's Done, from the stream's start (handOff, serveHere)
	stopHereCut  func() bool     // unregisters the write cut of a stream written through net/http (stream_here.go)
	hereCut      bool            // that cut ran
	// trailer is the upstream response's Trailer map, which the
	// Transport fills in when its reader reaches the body's end:
	// streamCopy sends it after the last chunk. Only the map is kept,
	// not the response.
	trailer http.Header
}

// mayHandOff reports whether a response to req could be handed off, as far
// as the request tells; it decides whether serve gives the upstream request
// a context of its own that outlives the handler.
func (p *proxy) mayHandOff(w http.ResponseWriter, req *http.Request) bool {
	return p.streamHandoff && req.ProtoMajor == 1 && req.ProtoMinor == 1 &&
		req.Method != http.MethodHead && !req.Close &&
		req.Header["Upgrade"] == nil && w.Header()["Connection"] == nil
}

// canHandOff reports whether res, now that its headers are in, is an event
// stream that the stream goroutine can take over.
func (pr *proxyRequest) canHandOff(res *http.Response) bool {
	return pr.cancelUp != nil && pr.streaming && res.ContentLength < 0 &&
		res.StatusCode >= 200 && res.StatusCode != http.StatusNoContent && res.StatusCode != http.StatusNotModified &&
		len(res.Trailer) == 0 && res.Header["Trailer"] == nil &&
		(pr.reqBody == nil || pr.reqBody.drained.Load())
}

// handOff hijacks the client connection and writes res's head to it. It
// returns false, with nothing written, when the connection cannot be
// hijacked; the response then goes the ordinary way.
func (pr *proxyRequest) handOff(res *http.Response) bool {
	if !pr.hijack() {
		return false
	}
	st, conn := &pr.st, pr.st.conn
	st.upDone = res.Request.Context().Done()
	head := pr.responseHead(res)
	pr.rec.TTFB = time.Since(pr.rec.Start)
	if up := pr.up; canReadRaw && up != nil && up.captured && !res.Uncompressed &&
		len(res.TransferEncoding) == 1 && res.TransferEncoding[0] == "chunked" {
		// The body bytes that came with the head (the first event, as
		// often as not) go with it, in one write.
		st.raw = true
		pr.p.rawStreams.Add(1)
		st.rc = rawCopy{pr: pr, more: true, client: rawConnOf(conn)}
		pr.cutWrites(res.Request.Context())
		st.rc.pass(head.Bytes(), up.stash)
		up.stash, up.stashBuf = nil, nil // the stream may idle for long: keep no buffer
	} else {
		pr.handOffCopy(res)
		if _, err := conn.Write(head.Bytes()); err != nil {
			st.writeFailed()
		}
	}
	pr.dropServerRefs()
	return true
}

// handOffCopy readies a stream read through the Transport (streamCopy) for
// its hand-off.
func (pr *proxyRequest) handOffCopy(res *http.Response) {
	// Trailers the upstream sends undeclared are merged into res.Trailer
	// by the Transport (HTTP/1 and HTTP/2 alike) when the body ends; a nil
	// Trailer would be replaced with a new map there, which the stream,
	// holding no reference to res, would not see.
	if res.Trailer == nil {
		res.Trailer = make(http.Header)
	}
	pr.st.trailer = res.Trailer
	pr.cutWrites(res.Request.Context())
}

// dropServerRefs lets go of net/http's request and response at a hand-off:
// they, and through them the connection's buffers, are garbage once the
// handler returns.
func (pr *proxyRequest) dropServerRefs() {
	pr.w.reset(nil)
	pr.in = nil
}

// rawConnOf returns the raw descriptor of c's socket for raw writes, or nil
// when it has none (rawCopy.write then uses the connection).
func rawConnOf(c net.Conn) syscall.RawConn {
	if sc, ok := socketOf(c).(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			return raw
		}
	}
	return nil
}

// cutWrites makes the end of the upstream request (UPSTREAM_TIMEOUT, the
// shutdown's cut) also end a write of the handed-off stream blocked on a
// client that does not read: else the stream would wait on that client for
// as long as it keeps the connection open, and a raw stream's upstream
// connection would not even close (the Transport's close of it waits for
// the stream's read to return).
func (pr *proxyRequest) cutWrites(upCtx context.Context) {
	st, conn := &pr.st, pr.st.conn
	st.stopWriteCut = context.AfterFunc(upCtx, func() { conn.SetWriteDeadline(longAgo) })
}

// upEnded reports whether the upstream request of a handed-off stream
// ended (its write cut ran, or runs): a write that failed then was cut,
// and the client did not leave.
func (st *streamState) upEnded() bool {
	select {
	case <-st.upDone:
		return true
	default:
		return false
	}
}

// writeFailed notes a failed write to the client: the client left, unless
// the upstream request had ended (the write cut ended the write). It never
// clears a departure the watcher already saw: the watcher ends the
// upstream request itself when the client leaves.
func (st *streamState) writeFailed() {
	if !st.upEnded() {
		st.clientGone.Store(true)
	}
}

// hijack takes the client connection of a stream being handed off from
// net/http, with the bytes the client sent after its request, and makes
// the upstream request outlive the handler. It returns false when the
// connection cannot be hijacked.
func (pr *proxyRequest) hijack() bool {
	hj, ok := pr.w.rw.(http.Hijacker)
	if !ok {
		return false
	}
	conn, brw, err := hj.Hijack()
	if err != nil {
		return false
	}
	st := &pr.st
	st.conn = conn
	if n := brw.Reader.Buffered(); n > 0 {
		b, _ := brw.Reader.Peek(n)
		st.pending = append(st.pending[:0], b...)
	}
	// From here the upstream request lives until the stream ends, not
	// until the handler returns: the watcher and the shutdown cut cancel it.
	pr.stopParent()
	if base := pr.p.base; base != nil {
		// Like stopParent, the cut may run after pr went back to the pool.
		cancel := pr.cancelUp
		st.stopCut = context.AfterFunc(base, func() {
			cancel(errShutdownCut)
			conn.SetWriteDeadline(longAgo) // a write blocked on a client that does not read returns
		})
	}
	pr.p.handedOff.Add(1)
	return true
}

// responseHead returns the HTTP/1.1 head a handed-off stream writes for
// res: its status and headers with the proxy's added (SPEC §3.5), a Date
// if the upstream sent none, and chunked framing; "Connection: close" when
// the connection cannot go back to the server.
func (pr *proxyRequest) responseHead(res *http.Response) *bytes.Buffer {
	h := res.Header
	addProxyHeaders(h, pr.p.cors, pr.in)
	if _, ok := h["Date"]; !ok {
		h["Date"] = []string{time.Now().UTC().Format(http.TimeFormat)}
	}
	var head bytes.Buffer
	head.Grow(512)
	head.WriteString("HTTP/1.1 ")
	head.WriteString(strconv.Itoa(res.StatusCode))
	head.WriteByte(' ')
	if text := http.StatusText(res.StatusCode); text != "" {
		head.WriteString(text)
	} else {
		head.WriteString("status code " + strconv.Itoa(res.StatusCode))
	}
	head.WriteString("\r\n")
	h.Write(&head) // sorted, as net/http writes them; invalid names dropped
	head.WriteString("Transfer-Encoding: chunked\r\n")
	if pr.p.recycle == nil {
		head.WriteString("Connection: close\r\n")
	}
	head.WriteString("\r\n")
	return &head
}

// stream copies a handed-off response body to the client, one chunk per
// read, then gives the connection back to the server (or closes it) and
// records the request. It owns pr and one count of p.active.
func (pr *proxyRequest) stream() {
	p, st := pr.p, &pr.st
	// A client that already sent its next request is watched too: the
	// watcher looks for a hang-up only, and watchClient keeps what it reads.
	if !st.clientGone.Load() {
		st.reg, st.watched = p.watcher.watch(socketOf(st.conn), st.onEvent)
		if err := p.watcher.failed(); !st.watched && err != nil {
			p.watchFailed.Do(func() {
				p.logger.Error("the stream watcher stopped: each stream now watches its client from a goroutine of its own", "err", err)
			})
		}
		if !st.watched {
			st.watchDone = make(chan struct{})
			go pr.watchClient()
		}
	}

	buf := p.streamBufs.Get().(*[]byte)
	var complete bool
	if st.raw {
		complete = pr.streamRaw(*buf)
	} else {
		complete = pr.streamCopy(*buf)
	}
	p.streamBufs.Put(buf)

	if st.watched {
		p.watcher.unwatch(st.reg)
	} else if st.watchDone != nil {
		st.stopping.Store(true)
		st.conn.SetReadDeadline(longAgo)
		<-st.watchDone
	}
	// A cut that ran (or runs now) may leave a write deadline in the past:
	// that connection is not given back.
	writeCut := st.stopCut != nil && !st.stopCut()
	if st.stopWriteCut != nil && !st.stopWriteCut() {
		writeCut = true
	}
	pr.body.Close()
	if complete && !writeCut && !st.clientGone.Load() && p.recycle != nil && st.conn.SetDeadline(time.Time{}) == nil {
		c := replayNext(st.conn, st.pending, st.early)
		if !p.recycle.give(c) {
			c.Close()
		}
	} else {
		// An upstream that broke mid-body breaks the client's connection
		// too: no last chunk, so the client cannot take it for complete.
		st.conn.Close()
	}
	if !complete {
		pr.rec.ProxyErr = "aborted"
		if st.clientGone.Load() {
			pr.rec.Status = 499
		}
	}
	pr.finish(true)
}

// streamCopy copies the body through the Transport's reader, one chunk per
// read, and reports whether it reached the body's end. The last chunk
// carries the trailers the Transport read, as net/http's server writes
// them (http.Header.Write: canonical, sorted, invalid names dropped), as
// ReverseProxy and a raw stream pass them.
func (pr *proxyRequest) streamCopy(b []byte) (complete bool) {
	st := &pr.st
	for !st.clientGone.Load() {
		n, err := pr.body.ReadCloser.Read(b[chunkHead : len(b)-2])
		var werr error
		if n > 0 {
			start := chunkHead - 2
			b[start], b[start+1] = '\r', '\n'
			for m := n; m > 0; m >>= 4 {
				start--
				b[start] = hexDigits[m&15]
			}
			end := chunkHead + n
			b[end], b[end+1] = '\r', '\n'
			_, werr = st.conn.Write(b[start : end+2])
		}
		pr.body.account(b[chunkHead:chunkHead+n], err)
		if werr != nil {
			st.writeFailed()
			break
		}
		if err == io.EOF {
			end := lastChunk
			if len(st.trailer) > 0 {
				end = appendLastChunk(b[:0], st.trailer)
			}
			if _, werr := st.conn.Write(end); werr != nil {
				st.writeFailed()
			} else {
				complete = true
			}
			break
		}
		if err != nil {
			break // the upstream broke, or the watcher cancelled it
		}
	}
	return complete
}

const hexDigits = "0123456789abcdef"

// appendLastChunk appends to b a last chunk carrying trailer h, in one
// piece so that it goes in one write.
func appendLastChunk(b []byte, h http.Header) []byte {
	out := bytes.NewBuffer(append(b, "0\r\n"...))
	h.Write(out)
	out.WriteString("\r\n")
	return out.Bytes()
}

// maxEarlyBytes bounds what watchClient keeps of the bytes a client sends
// during a stream (its next requests, sent early). Past it watchClient
// stops reading, so that a client cannot make the proxy buffer without
// limit; such a client is seen leaving at the stream's next write.
const maxEarlyBytes = 64 << 10

// watchClient reads from the client's socket while the stream runs, where
// the proxy has no watcher, or it refused. The read ends when the client
// closes the connection (the upstream request is cancelled) or when stream
// ends it with a deadline. Bytes the client sends meanwhile (its next
// request, sent early) are kept in early for the server, and the read goes
// on: a client that pipelined is seen leaving too. It reads the socket
// itself, not a replayConn's buffer: the bytes there were sent before.
func (pr *proxyRequest) watchClient() {
	st := &pr.st
	defer close(st.watchDone)
	sock := socketOf(st.conn)
	for {
		var n int
		var err error
		if len(st.early) == 0 {
			// One byte: most clients send nothing during a stream, and
			// the wait then holds no buffer.
			n, err = sock.Read(st.oneByte[:])
			st.early = append(st.early, st.oneByte[:n]...)
		} else {
			if len(st.early) >= maxEarlyBytes {
				return
			}
			st.early = slices.Grow(st.early, 512)
			end := min(cap(st.early), maxEarlyBytes)
			n, err = sock.Read(st.early[len(st.early):end])
			st.early = st.early[:len(st.early)+n]
		}
		if err != nil {
			if !st.stopping.Load() {
				st.clientGone.Store(true)
				pr.cancelUp(errClientGone)
			}
			return
		}
	}
}

// clientEvent is the watcher's callback: the client left (gone).
func (pr *proxyRequest) clientEvent(gone bool) {
	if gone {
		pr.st.clientGone.Store(true)
		pr.cancelUp(errClientGone)
	}
}

// reset clears a stream's state for the pool.
func (st *streamState) reset() {
	st.conn, st.stopCut, st.watchDone, st.watched, st.raw = nil, nil, nil, false, false
	st.rc, st.stopWriteCut, st.upDone, st.stopHereCut, st.hereCut, st.trailer = rawCopy{}, nil, nil, nil, false, nil
	st.pending = st.pending[:0]
	if cap(st.early) > 512 {
		st.early = nil // a large one is not kept in the pool
	}
	st.early = st.early[:0]
	st.stopping.Store(false)
	st.clientGone.Store(false)
}

// replayConn is a client connection given back to the server with bytes
// the client had already sent: buf[off:] is read first, then the socket.
// A connection is wrapped once at most (replayNext): a client that
// pipelines stream after stream would otherwise get one layer per stream,
// each read recursing through all of them. Not safe for concurrent reads,
// as net.Conn reads never are in net/http.
type replayConn struct {
	net.Conn // the socket
	buf      []byte
	off      int
}

func (c *replayConn) Read(p []byte) (int, error) {
	if c.off < len(c.buf) {
		n := copy(p, c.buf[c.off:])
		c.off += n
		if c.off == len(c.buf) {
			c.buf, c.off = nil, 0
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// buffered returns how many bytes are left to replay.
func (c *replayConn) buffered() int { return len(c.buf) - c.off }

// unread puts b back before the bytes left to replay. The bytes a server
// still held at the hijack are, while bytes are left to replay, the last
// ones it read from c: the offset then moves back over them, and nothing
// is copied, so a client pipelining many streams costs linear time.
func (c *replayConn) unread(b []byte) {
	if len(b) == 0 {
		return
	}
	if len(b) <= c.off && bytes.Equal(c.buf[c.off-len(b):c.off], b) {
		c.off -= len(b)
		return
	}
	c.buf = append(bytes.Clone(b), c.buf[c.off:]...)
	c.off = 0
}

// socketOf returns the connection under a replayConn, or c: the watcher
// and raw writes need its descriptor, and bytes left to replay are the
// server's to read, not the stream's.
func socketOf(c net.Conn) net.Conn {
	if rc, ok := c.(*replayConn); ok {
		return rc.Conn
	}
	return c
}

// replayNext returns the connection to give back to the server after a
// stream on c: the bytes the server held at the hijack (pending) are read
// first, then those left in c's replay buffer if c is a replayConn, then
// those watchClient took from the socket (early), then the socket. c is
// wrapped only if some are left, and never twice.
func replayNext(c net.Conn, pending, early []byte) net.Conn {
	rc, ok := c.(*replayConn)
	if !ok {
		if len(pending) == 0 && len(early) == 0 {
			return c
		}
		rc = &replayConn{Conn: c}
	}
	rc.unread(pending)
	rc.buf = append(rc.buf, early...)
	if rc.buffered() == 0 {
		return rc.Conn
	}
	return rc
}

// connRecycler is a net.Listener that yields the client connections of
// finished handed-off streams, so that the http.Server (Serve'd on it too)
// reads their next request: keep-alive works as if net/http had served
// the stream. Closing it (Server.Shutdown does, and Server.Close) makes
// give refuse.
type connRecycler struct {
	conns     chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

func newConnRecycler() *connRecycler {
	return &connRecycler{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *connRecycler) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *connRecycler) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return nil
}

// Addr is a placeholder: the connections come from the server's own
// listener, whose address they carry (net/http does not use a listener's
// Addr to serve).
func (l *connRecycler) Addr() net.Addr { return recycledAddr{} }

// recycledAddr is connRecycler's address.
type recycledAddr struct{}

func (recycledAddr) Network() string { return "recycled" }
func (recycledAddr) String() string  { return "recycled connections" }

// give hands c to the server and reports whether it took it; when it did
// not (the server is shutting down), c is still the caller's.
func (l *connRecycler) give(c net.Conn) bool {
	select {
	case <-l.done:
		return false
	default:
	}
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}
