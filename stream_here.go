package main

// Streams written through net/http before their hand-off. Handing a stream
// off (stream.go) buys memory for as long as the stream is held, and costs
// CPU once, at its start: the hijack stops net/http's background read, the
// stream and its watchers are registered, and at the end the connection
// goes back to the server on a new goroutine. For a stream that ends within
// seconds the memory is held too briefly to matter, and that CPU is most of
// what its start costs beyond a plain ReverseProxy (docs/performance.md,
// "An ordinary day"). So a stream that may be handed off is first written
// here, by the handler, with net/http's ResponseWriter; only a stream still
// running after STREAM_HANDOFF_AFTER (Config.StreamHandoffAfter) is handed
// off, from where it stands.
//
// What stays the same: from a plain-HTTP/1.1 upstream the body is read from
// the socket itself (upconn.go), one read per event; the head and the body
// bytes that came with it go in one write (through net/http, which frames
// them), and each later read passes as it came, framing included, straight
// to the client's socket (from http.Server's ConnContext), while net/http
// writes the body's end with the trailers; a client that leaves cancels the
// upstream request (net/http's background read sees it here); an upstream
// that breaks mid-body breaks the client's connection (the handler aborts);
// the upstream request's end also ends a write blocked on a client that
// does not read (the write cut). A raw stream's wait for its next bytes
// ends at the hand-off time (a read deadline on the upstream socket); a
// stream read through the Transport is handed off after its first read
// past that time. Where there is no client socket to write to, every read
// goes through net/http, and the hand-off waits for a chunk boundary.

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"
)

// minHandOffRetry is the least wait before a deferred hand-off is tried
// again: a tiny STREAM_HANDOFF_AFTER must not make it spin.
const minHandOffRetry = 10 * time.Millisecond

// clientConnKey is the request context key of the client's connection
// (Server.httpServer's ConnContext).
type clientConnKey struct{}

// errServedHere is what modifyResponse returns for a stream written to its
// end through net/http: handleError then writes nothing more.
var errServedHere = errHandedOff

// canServeHere reports whether res is an event stream to write here and
// hand off later: canHandOff but for the request body, which need only be
// sent by the time of the hand-off.
func (pr *proxyRequest) canServeHere(res *http.Response) bool {
	return pr.p.handoffAfter > 0 && pr.cancelUp != nil && pr.streaming && res.ContentLength < 0 &&
		res.StatusCode >= 200 && res.StatusCode != http.StatusNoContent && res.StatusCode != http.StatusNotModified &&
		len(res.Trailer) == 0 && res.Header["Trailer"] == nil
}

// serveHere writes res through net/http until its end, or until its
// hand-off (serve's deferred call then starts stream). It returns
// errServedHere, or aborts the handler when the body broke or the client
// left, so that the client's connection is not taken for a complete
// response.
func (pr *proxyRequest) serveHere(res *http.Response) error {
	p, st := pr.p, &pr.st
	rw := pr.w.rw
	h := rw.Header()
	for k, vv := range res.Header {
		h[k] = vv
	}
	addProxyHeaders(h, p.cors, pr.in)
	rw.WriteHeader(res.StatusCode)
	pr.rec.TTFB = time.Since(pr.rec.Start)
	// ReverseProxy closes res.Body on the error returned; the stream reads
	// the real one (pr.body).
	res.Body = http.NoBody
	// The upstream request's end (UPSTREAM_TIMEOUT, shutdown) must also
	// end a write blocked on a client that does not read: the Transport's
	// close of a raw stream's connection waits for the stream's read.
	st.upDone = res.Request.Context().Done()
	ctl := http.NewResponseController(rw)
	st.stopHereCut = context.AfterFunc(res.Request.Context(), func() { ctl.SetWriteDeadline(longAgo) })

	buf := p.streamBufs.Get().(*[]byte)
	var complete, handed bool
	if up := pr.up; canReadRaw && up != nil && up.captured && !res.Uncompressed &&
		len(res.TransferEncoding) == 1 && res.TransferEncoding[0] == "chunked" {
		complete, handed = pr.serveRawHere(res, up, *buf)
	} else {
		complete, handed = pr.serveCopyHere(res, *buf)
	}
	p.streamBufs.Put(buf)
	if handed {
		return errHandedOff
	}
	if !pr.stopHereCut() {
		// The cut ran: the connection's write deadline is past, and net/http
		// would write the body's end on it in vain. The request was
		// cancelled; the response does not end cleanly.
		complete = false
	}
	pr.body.Close()
	if !complete {
		if pr.clientLeft(res.Request.Context()) {
			pr.rec.Status = 499
		}
		pr.rec.ProxyErr = "aborted"
		panic(http.ErrAbortHandler) // serve's deferred finish records it
	}
	return errServedHere
}

// serveRawHere is serveHere for a body read from the upstream socket.
func (pr *proxyRequest) serveRawHere(res *http.Response, up *upConn, b []byte) (complete, handed bool) {
	p, rc := pr.p, &pr.st.rc
	p.rawStreams.Add(1)
	*rc = rawCopy{pr: pr, more: true, rw: pr.w.rw, viaRW: true}
	// After the head, events pass to the client's socket as they came,
	// framing included, as a handed-off raw stream passes them; net/http
	// writes the body's end.
	if c, ok := pr.in.Context().Value(clientConnKey{}).(net.Conn); ok {
		rc.client = rawConnOf(c)
	}
	// The body bytes that came with the head go with it, in one write.
	rc.pass(nil, up.stash)
	rc.writeHead()
	up.stash, up.stashBuf = nil, nil // the stream may idle for long: keep no buffer
	// Set after the first write, which it does not concern, so as not to
	// delay it.
	up.Conn.SetReadDeadline(time.Now().Add(p.handoffAfter))
	for rc.more && !pr.st.clientGone.Load() {
		rc.readSocket(up, b)
		if !rc.handOffNow {
			break
		}
		rc.handOffNow = false
		rc.setReadDeadline(up, time.Time{})
		if pr.stopHereCut() && pr.hijack() {
			pr.handOffRaw(res)
			return false, true
		}
		// Not hijacked: written here to the end, its deadline cleared.
	}
	up.Conn.SetReadDeadline(time.Time{})
	complete = rc.finish(up, b)
	if complete {
		setTrailers(pr.w.rw, rc.cp.trailerHdr)
	}
	return complete, false
}

// passHere writes through net/http p, the body bytes a pass consumed
// (before is the parser's state before them; extra and err are the
// pass's): the data of its chunks, which net/http frames, in one write,
// with the head on the first pass (which writeHead then flushes). A first
// pass that ends inside a chunk, whose rest will pass raw, writes the head
// alone and p raw after it, so that the client's framing stays the
// upstream's.
func (rc *rawCopy) passHere(before chunkParser, p []byte, extra bool, err error) bool {
	first := rc.viaRW
	rc.viaRW = false
	var werr error
	if first && rc.client != nil && err == nil && !rc.cp.done() && !rc.cp.atChunkStart() {
		if werr = flushError(rc.rw); werr == nil && len(p) > 0 {
			werr = rc.write(p)
		}
		if werr == nil {
			rc.accountData(before, p)
		}
	} else {
		for cp, q := before, p; len(q) > 0 && werr == nil; {
			var data []byte
			data, q, _ = cp.next(q)
			if len(data) > 0 {
				_, werr = rc.rw.Write(data)
				rc.pr.body.account(data, nil)
			}
		}
		if werr == nil {
			if first {
				rc.headPending = true // writeHead flushes it
			} else {
				werr = flushError(rc.rw)
			}
		}
	}
	if werr != nil {
		rc.failWrite()
		return false
	}
	rc.ended(extra, err)
	return rc.more
}

// writeHead flushes what the first pass through net/http left pending:
// the head, with the data written after it. serveRawHere calls it rather
// than passHere, because net/http formats the head under this flush
// (chunkWriter.writeHeader, nearly 3 KiB of stack), and from serveRawHere
// the stack is 1 KiB shallower (see proxyRequest.here). A first pass that
// ends inside a chunk, rarer, flushes the head itself.
func (rc *rawCopy) writeHead() {
	if rc.headPending {
		rc.headPending = false
		if flushError(rc.rw) != nil {
			rc.failWrite()
		}
	}
}

// serveCopyHere is serveHere for a body read through the Transport: one
// write per read, handed off after the first read past the hand-off time.
func (pr *proxyRequest) serveCopyHere(res *http.Response, b []byte) (complete, handed bool) {
	rw := pr.w.rw
	if !pr.w.bodyAtHand {
		// The head goes now; a body slow to come must not hold it.
		if flushError(rw) != nil {
			return false, false
		}
	}
	due := time.Now().Add(pr.p.handoffAfter)
	for {
		n, err := pr.body.ReadCloser.Read(b)
		if n > 0 {
			_, werr := rw.Write(b[:n])
			if werr == nil {
				werr = flushError(rw)
			}
			if werr != nil {
				pr.body.account(b[:n], nil)
				pr.st.writeFailed()
				return false, false
			}
		}
		pr.body.account(b[:n], err)
		if err == io.EOF {
			setTrailers(rw, res.Trailer)
			return true, false
		}
		if err != nil {
			return false, false // the upstream broke, or the client left
		}
		if !due.IsZero() && time.Now().After(due) && pr.mayHandOffNow() {
			if pr.stopHereCut() && pr.hijack() {
				pr.handOffCopy(res)
				pr.dropServerRefs()
				return false, true
			}
			due = time.Time{}
		}
	}
}

// clientLeft reports whether a stream written here that did not end
// cleanly ended because its client left: a write to it failed while the
// upstream request stood, or the client's context ended, and with it the
// upstream request (whose cause is then not UPSTREAM_TIMEOUT's), outside a
// shutdown's cut. A write that failed also ends the client's context
// (net/http), so that alone does not tell.
func (pr *proxyRequest) clientLeft(upCtx context.Context) bool {
	if pr.st.clientGone.Load() {
		return true
	}
	if pr.in.Context().Err() == nil || pr.p.cutting.Load() {
		return false
	}
	cause := context.Cause(upCtx)
	return cause == nil || errors.Is(cause, context.Canceled)
}

// flushError flushes what rw holds to the client and reports a failed
// write, as http.ResponseController does, without allocating one.
func flushError(rw http.ResponseWriter) error {
	if f, ok := rw.(interface{ FlushError() error }); ok {
		return f.FlushError()
	}
	return http.NewResponseController(rw).Flush()
}

// setTrailers sets h as trailers of the response rw writes, as
// ReverseProxy passes an upstream's trailers.
func setTrailers(rw http.ResponseWriter, h http.Header) {
	for k, vv := range h {
		k = http.TrailerPrefix + k
		for _, v := range vv {
			rw.Header().Add(k, v)
		}
	}
}

// stopHereCut unregisters the write cut of a stream written here, and
// reports whether it had not run. (Should a hijack then fail, which
// net/http's HTTP/1.1 connections do not, the stream goes on here with no
// cut.)
func (pr *proxyRequest) stopHereCut() bool {
	if stop := pr.st.stopHereCut; stop != nil {
		pr.st.stopHereCut = nil
		pr.st.hereCut = !stop()
	}
	return !pr.st.hereCut
}

// mayHandOffNow reports whether a stream written here may be handed off at
// once: its request body is all sent, the raw stream's framing is at a
// chunk's start, and the request was not cancelled (its write cut not run).
func (pr *proxyRequest) mayHandOffNow() bool {
	if pr.st.stopHereCut == nil || pr.reqBody != nil && !pr.reqBody.drained.Load() {
		return false
	}
	// A raw stream writing to the socket already passes the upstream's
	// framing; one writing through net/http must stop between chunks.
	rc := &pr.st.rc
	return rc.rw == nil || rc.client != nil || rc.cp.atChunkStart()
}

// setReadDeadline sets the upstream socket's read deadline to t, unless
// the watcher saw a hang-up: its wake-up (a deadline in the past) stays,
// even when it came while the deadline was being set.
func (rc *rawCopy) setReadDeadline(up *upConn, t time.Time) {
	up.Conn.SetReadDeadline(t)
	if rc.hangup.Load() {
		up.Conn.SetReadDeadline(longAgo)
	}
}

// handOffRaw hands off a raw stream written here so far: from now on its
// bytes pass to the client as they come (streamRaw).
func (pr *proxyRequest) handOffRaw(res *http.Response) {
	st := &pr.st
	st.raw = true
	st.rc.rw = nil
	st.rc.client = rawConnOf(st.conn)
	pr.cutWrites(res.Request.Context())
	pr.dropServerRefs()
}
