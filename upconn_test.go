package main

import (
	"bufio"
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// chunkedData returns the data of a chunked body that chunkParser reads
// from in (one piece), and the bytes after the body's end as net/http
// reads it, or an error.
func chunkedData(in []byte) (data, rest []byte, done bool, err error) {
	var cp chunkParser
	q := in
	for len(q) > 0 && !cp.done() {
		var d []byte
		d, q, err = cp.next(q)
		if err != nil {
			return nil, nil, false, err
		}
		data = append(data, d...)
	}
	return data, in[len(in)-len(q)-cp.extraLen:], cp.done(), nil
}

// stdChunked reads in as the chunked body of a response, as net/http does,
// and returns its data and the bytes left after it.
func stdChunked(in []byte) (data, rest []byte, err error) {
	head := "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
	br := bufio.NewReader(io.MultiReader(strings.NewReader(head), bytes.NewReader(in)))
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, nil, err
	}
	data, err = io.ReadAll(res.Body)
	if err != nil {
		return nil, nil, err
	}
	rest, _ = io.ReadAll(br)
	return data, rest, nil
}

// FuzzChunkParser checks the raw stream's chunk parser against net/http:
// whenever it finds the end of a body, net/http reads the same data and
// stops at the same byte, and it finds the end of every body net/http
// reads whole, trailer section included; fed in pieces, it finds the same.
func FuzzChunkParser(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"5;ext=1\r\nhello\r\n0\r\n\r\n",
		"5 \r\nhello\r\n0\r\nX-T: 1\r\n\r\nextra",
		"A\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n",
		"5\r\nhelloXX0\r\n\r\n",
		"0\r\n\r\n",
		"fffffffffffffffff\r\n",
		"5\nhello\n0\n\n",
		"\r\n",
		"0\n\n0",
		"0\r\n:\r\n\r\n",
		"0\r\nX-T: 1\r\n\r\n",
		"0\r\nX-T: 1\n\r\n",
		"0\r\nX-T: 1\n\nY\r\n\r\n",
		"0\r\nbad line\r\n\r\n",
		"0\r\n\n",
		"0\r\n x: 1\r\n\r\n",
	} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, split uint8) {
		data, rest, done, err := chunkedData(in)
		std, stdRest, stdErr := stdChunked(in)
		if stdErr != nil && strings.Contains(stdErr.Error(), "too much non-data") {
			return // net/http's limit on extension bytes, which the client applies
		}
		if stdErr == nil && errors.Is(err, errTrailer) && len(in) > maxTrailerSection {
			return // the Transport's read buffer is smaller than ReadResponse's here
		}
		if err == nil && done && stdErr != nil {
			t.Fatalf("%q: parser found the end, net/http failed: %v", in, stdErr)
		}
		if err == nil && done {
			if !bytes.Equal(data, std) || !bytes.Equal(rest, stdRest) {
				t.Fatalf("%q: parser data %q rest %q, net/http %q rest %q", in, data, rest, std, stdRest)
			}
		}
		if stdErr == nil && !(err == nil && done) {
			t.Fatalf("%q: net/http read the body (%q), the parser did not: done %v, %v", in, std, done, err)
		}
		// In pieces: the same end, the same data.
		var cp chunkParser
		var pdata []byte
		size := int(split%7) + 1
		for off := 0; off < len(in) && !cp.done(); {
			piece := in[off:min(off+size, len(in))]
			before := cp
			n, held, perr := cp.scan(piece)
			if perr != nil {
				if err == nil && done {
					t.Fatalf("%q in pieces of %d: %v", in, size, perr)
				}
				return
			}
			q := piece[:held]
			for len(q) > 0 {
				var d []byte
				d, q, _ = before.next(q)
				pdata = append(pdata, d...)
			}
			off += n
		}
		if err == nil && done && (!cp.done() || !bytes.Equal(pdata, data)) {
			t.Fatalf("%q in pieces of %d: done %v data %q, want %q", in, size, cp.done(), pdata, data)
		}
	})
}

// TestUpConnHeadCapture: an armed upConn returns a response head alone,
// informational heads before it included, and keeps the body bytes that
// came with it for the next read; net/http reads the response as usual.
// bodyAtHand tells whether body bytes came with the head (the proxy then
// arms no header flush timer).
func TestUpConnHeadCapture(t *testing.T) {
	const body = "5\r\nhello\r\n"
	final := "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
	for _, tt := range []struct {
		name   string
		wire   string
		splits []int // where the upstream's writes end
		status int
		atHand bool // body bytes came in the write that ended the head
	}{
		{"one write", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + final + body, nil, 200, true},
		{"split heads", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + final + body, []int{20, 61}, 200, true},
		{"status line split before its code", "HTTP/1.1 100 Continue\r\n\r\n" + final + body, []int{10, 30}, 200, true},
		{"body split", final + body, []int{len(final) + 3}, 200, true},
		{"body after the head", final + body, []int{len(final)}, 200, false},
		{"LF-only lines", "HTTP/1.1 200 OK\nContent-Type: text/event-stream\nTransfer-Encoding: chunked\n\n" + body, nil, 200, true},
		{"101 is final", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + body, nil, 101, true},
	} {
		for _, armed := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/armed=%v", tt.name, armed), func(t *testing.T) {
				a, b := net.Pipe()
				defer a.Close()
				defer b.Close()
				go func() {
					rest := tt.wire
					for _, at := range tt.splits {
						at -= len(tt.wire) - len(rest)
						if _, err := io.WriteString(b, rest[:at]); err != nil {
							return
						}
						rest = rest[at:]
					}
					io.WriteString(b, rest)
				}()
				c := &upConn{Conn: a}
				if armed {
					c.arm()
				}
				br := bufio.NewReaderSize(c, 2<<10)
				res, err := http.ReadResponse(br, nil)
				for err == nil && res.StatusCode >= 100 && res.StatusCode < 200 && res.StatusCode != 101 {
					res, err = http.ReadResponse(br, nil)
				}
				if err != nil || res.StatusCode != tt.status {
					t.Fatalf("ReadResponse: %v, %v; want status %d", res, err, tt.status)
				}
				if !armed {
					if c.captured {
						t.Error("an upConn that was not armed captured a head")
					}
					return
				}
				if !c.captured || br.Buffered() != 0 || c.armed.Load() {
					t.Fatalf("captured %v, armed %v, %d body bytes in the reader; want the head alone", c.captured, c.armed.Load(), br.Buffered())
				}
				if got := c.bodyAtHand(); got != tt.atHand {
					t.Errorf("bodyAtHand = %v, want %v", got, tt.atHand)
				}
				got := make([]byte, len(body))
				if _, err := io.ReadFull(c, got); err != nil || string(got) != body {
					t.Errorf("body bytes %q, %v", got, err)
				}
			})
		}
	}
}

// rawStreamProxy starts the proxy in front of up and returns the front
// server's address and the proxy.
func rawStreamProxy(t *testing.T, upURL string) (*Server, string) {
	t.Helper()
	s, front := newTestServer(t, map[string]string{"/p": upURL})
	return s, front.Listener.Addr().String()
}

// rawExchange sends a GET over a fresh connection and returns the response
// with its reader.
func rawExchange(t *testing.T, addr, path string) (net.Conn, *bufio.Reader, *http.Response) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(testTimeout))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path)
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	return conn, br, res
}

// TestStreamRaw: a handed-off event stream from a plain-HTTP upstream is
// read from the upstream socket (streamRaw): events pass one by one as
// the upstream sends them, the body reaches the client whole, framing and
// trailers as sent, its usage is counted, and the upstream connection is
// kept for the next request.
func TestStreamRaw(t *testing.T) {
	step := make(chan struct{})
	remotes := make(chan string, 4)
	big := strings.Repeat("x", 5000) // more than one read of the stream buffer
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		remotes <- r.RemoteAddr
		if r.URL.Path == "/small" {
			io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n") // with the head, in one segment
		w.(http.Flusher).Flush()
		select {
		case <-step:
		case <-r.Context().Done():
			return
		}
		io.WriteString(w, "data: "+big+"\n\n")
		io.WriteString(w, `data: {"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}`+"\n\n")
		w.Header().Set(http.TrailerPrefix+"X-End", "yes")
	})
	s, addr := rawStreamProxy(t, up.URL)

	front, counting := newCountingFront(t, s)
	_, br, res := rawExchange(t, front.Listener.Addr().String(), "/p/stream")
	body := bufio.NewReader(res.Body)
	if ev := readEvent(t, body); ev != "data: 1\n\n" {
		t.Fatalf("first event %q", ev)
	}
	// The first event came with the head: it went with it, in one write.
	if n := counting.writes(); handoffOn(s) && n != 1 {
		t.Errorf("%d writes for the head and the first event, want 1", n)
	}
	step <- struct{}{} // the upstream sends the rest only now
	rest, err := io.ReadAll(body)
	if err != nil {
		t.Fatalf("rest of the stream: %v", err)
	}
	if !strings.HasPrefix(string(rest), "data: "+big+"\n\n") || !strings.Contains(string(rest), `"total_tokens":8`) {
		t.Errorf("rest of the stream is %d bytes, not the big event and the usage", len(rest))
	}
	if res.Trailer.Get("X-End") != "yes" {
		t.Errorf("trailer %v, want X-End: yes passed through", res.Trailer)
	}
	if br.Buffered() != 0 {
		t.Errorf("%d bytes after the end of the body", br.Buffered())
	}
	if n := s.proxy.rawStreams.Load(); handoffOn(s) && n != 1 {
		t.Errorf("%d raw streams, want 1", n)
	}

	// The upstream connection comes back to the Transport's pool (once the
	// stream has ended: it is recorded then).
	client := &http.Client{}
	waitStats(t, client, "http://"+addr, func(v statsView) bool {
		p := v.Endpoints["/p"]
		return p != nil && p.Count == 1
	}, "/stats to count the stream")
	resSmall, err := client.Get("http://" + addr + "/p/small")
	if err != nil {
		t.Fatal(err)
	}
	if b := readAll(t, resSmall); string(b) != "ok" {
		t.Errorf("GET /p/small = %q", b)
	}
	firstAddr, second := <-remotes, <-remotes
	if firstAddr != second {
		t.Errorf("the request after the stream came from %s, the stream from %s: the upstream connection was not kept", second, firstAddr)
	}
	waitStats(t, client, "http://"+addr, func(v statsView) bool {
		p := v.Endpoints["/p"]
		return p != nil && p.Count == 2 && p.Status.S2xx == 2 && p.Tokens.Counts[tokPrompt] == 3 && p.Tokens.Counts[tokCompletion] == 5 && p.Tokens.Counts[tokTotal] == 8
	}, "/stats to count both requests and the stream's tokens")
}

// TestStreamRawFraming: upstream bytes that are not the ordinary framing,
// in the bytes that come with the head and in later reads. Chunk
// extensions pass as sent; a body whose framing breaks, or whose upstream
// closes or resets the connection before the last chunk, breaks the
// client's connection (no last chunk) after the events before the fault;
// bytes after the end do not reach the client, not even as the answer to
// its next request (the raw stream drops the upstream connection).
func TestStreamRawFraming(t *testing.T) {
	for _, tt := range []rawFramingCase{
		{"extension", "9;ext=1\r\ndata: 2\n\n\r\n0\r\n\r\n", nil, "data: 2\n\n", false, false},
		{"trailers", "0\r\nX-T: 1\r\n\r\n", nil, "", false, false},
		{"extra bytes", "0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", nil, "", false, true},
		{"broken framing", "9\r\ndata: 2\n\n\r\n9\r\ndata: 3\n\nXX0\r\n\r\n", nil, "data: 2\n\n", true, false},
		{"closed with the last event", "9\r\ndata: 2\n\n\r\n", func(c net.Conn) { c.Close() }, "data: 2\n\n", true, false},
		{"reset with the last event", "9\r\ndata: 2\n\n\r\n", func(c net.Conn) {
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}, "", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rawOnly && !testConfig(t, nil).StreamHandoff {
				t.Skip("STREAM_HANDOFF=off: ReverseProxy's Transport may read the bytes after the body as the answer to the next request on that connection")
			}
			read := make(chan struct{})
			up := newFramingUpstream(t, tt, read)
			// The fault is caused several times: a race between the last
			// bytes and the hang-up goes either way on a given run.
			for range faultRepeat * 3 {
				checkRawFraming(t, tt, up.URL, read)
			}
		})
	}
}

// rawFramingCase is an upstream's stream in TestStreamRawFraming, after a
// first event, and what the client must get of it.
type rawFramingCase struct {
	name  string
	after string // sent once the client has read the first event
	end   func(net.Conn)
	want  string // body the client reads after the first event
	fails bool   // the client's read ends in an error, not a clean end
	// rawOnly: only a raw stream keeps what the case checks, so it is
	// skipped with STREAM_HANDOFF=off.
	rawOnly bool
}

// newFramingUpstream starts an upstream that answers a chunked event
// stream whose first event comes with the head, then, once read receives,
// tt.after and tt.end. A connection it keeps serves /next.
func newFramingUpstream(t *testing.T, tt rawFramingCase, read <-chan struct{}) *upstream {
	return newUpstream(t, framingHandler(t, tt, read))
}

// framingHandler is newFramingUpstream's handler.
func framingHandler(t *testing.T, tt rawFramingCase, read <-chan struct{}) http.HandlerFunc {
	const head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
	const event = "9\r\ndata: 1\n\n\r\n"
	const next = "HTTP/1.1 200 OK\r\nX-Next: yes\r\nContent-Length: 4\r\n\r\nnext"
	return func(w http.ResponseWriter, r *http.Request) {
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		if r.URL.Path == "/next" {
			io.WriteString(conn, next)
			return
		}
		io.WriteString(conn, head+event)
		select {
		case <-read:
		case <-r.Context().Done():
			return
		}
		io.WriteString(conn, tt.after)
		if tt.end != nil {
			tt.end(conn)
			return
		}
		for {
			req, err := http.ReadRequest(rw.Reader)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			io.WriteString(conn, next)
		}
	}
}

// checkRawFraming streams from upURL through a new proxy, tells the
// upstream (read) once the first event is in, and checks what the client
// gets after it, that a clean end leaves the connection serving, and the
// stats.
func checkRawFraming(t *testing.T, tt rawFramingCase, upURL string, read chan<- struct{}) {
	t.Helper()
	s, addr := rawStreamProxy(t, upURL)
	conn, br, res := rawExchange(t, addr, "/p/stream")
	body := bufio.NewReader(res.Body)
	if ev := readEvent(t, body); ev != "data: 1\n\n" {
		t.Fatalf("first event %q", ev)
	}
	read <- struct{}{}
	got, err := io.ReadAll(body)
	if tt.fails {
		if err == nil {
			t.Fatalf("client read %q and a clean end; want an error", got)
		}
		if !strings.HasPrefix(string(got), tt.want) {
			t.Errorf("client read %q before the error; want %q first", got, tt.want)
		}
	} else if err != nil || string(got) != tt.want {
		t.Fatalf("client read %q, %v; want %q", got, err, tt.want)
	}
	if tt.name == "trailers" && res.Trailer.Get("X-T") != "1" {
		t.Errorf("trailers %v, want X-T: 1", res.Trailer)
	}
	if !tt.fails {
		// The connection serves the next request: nothing of the
		// upstream's came after the body.
		io.WriteString(conn, "GET /p/next HTTP/1.1\r\nHost: x\r\n\r\n")
		next, err := http.ReadResponse(br, nil)
		if err != nil || next.Header.Get("X-Next") != "yes" {
			t.Fatalf("next response on the connection: %v, %v; want the upstream's answer to /next", next, err)
		}
		next.Body.Close()
	}
	if n := s.proxy.rawStreams.Load(); handoffOn(s) && n != 1 {
		t.Errorf("%d raw streams, want 1", n)
	}
	want := endpointCounts{Count: 2, Status: map[string]int64{"2xx": 2}}
	if tt.fails {
		want = endpointCounts{Count: 1, ErrorCount: 1, Status: map[string]int64{"2xx": 1}}
	}
	waitCounts(t, &http.Client{}, "http://"+addr, "/p", want)
}

// TestStreamRawTimeout: UPSTREAM_TIMEOUT ends a raw stream that idles: the
// upstream request is cancelled and the client's connection broken.
func TestStreamRawTimeout(t *testing.T) {
	t.Run("idle", testStreamRawTimeoutIdle)
	t.Run("stuck client", func(t *testing.T) { testStreamRawTimeoutStuckClient(t, false) })
	t.Run("stuck client, HTTPS upstream", func(t *testing.T) { testStreamRawTimeoutStuckClient(t, true) })
}

func testStreamRawTimeoutIdle(t *testing.T) {
	up, cancelled := newIdleStreamUpstream(t)
	s, front := newTestServerConfig(t, testConfig(t, map[string]string{"UPSTREAM_TIMEOUT": "1s"}), map[string]string{"/p": up.URL})
	_, _, res := rawExchange(t, front.Listener.Addr().String(), "/p/stream")
	body := bufio.NewReader(res.Body)
	readEvent(t, body)
	if _, err := io.ReadAll(body); err == nil {
		t.Error("the stream ended cleanly at the timeout; want the client's connection broken")
	}
	select {
	case <-cancelled:
	case <-time.After(testTimeout):
		t.Fatal("the upstream request was not cancelled at the timeout")
	}
	if n := s.proxy.rawStreams.Load(); handoffOn(s) && n != 1 {
		t.Errorf("%d raw streams, want 1", n)
	}
}

// newCountingFront serves s as newFront does, on a listener whose
// connections count their writes.
func newCountingFront(t *testing.T, s *Server) (*httptest.Server, *countingListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	counting := &countingListener{Listener: ln}
	front := httptest.NewUnstartedServer(s)
	front.Listener = s.listener(counting)
	front.Config = s.httpServer()
	front.Start()
	t.Cleanup(func() { closeFront(t, front) })
	return front, counting
}

// countingListener counts the writes to the connections it accepted.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, n: &l.n}, nil
}

func (l *countingListener) writes() int64 { return l.n.Load() }

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// testStreamRawTimeoutStuckClient: UPSTREAM_TIMEOUT also ends a raw stream
// whose client does not read, while the stream is blocked writing to it:
// the upstream connection closes (the Transport's close waits for the
// stream's read of it to return). From an HTTPS upstream (read through the
// Transport), the blocked write ends too. Either way the request is
// recorded as cut (an error), not as a client that left (499), when the
// proxy writes the stream itself.
func testStreamRawTimeoutStuckClient(t *testing.T, https bool) {
	ended := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { ended <- struct{}{} }()
		w.Header().Set("Content-Type", "text/event-stream")
		event := "data: " + strings.Repeat("x", 64<<10) + "\n\n"
		for r.Context().Err() == nil {
			if _, err := io.WriteString(w, event); err != nil {
				return
			}
			if http.NewResponseController(w).Flush() != nil {
				return
			}
		}
	})
	var upURL string
	var tlsUp *httptest.Server
	if https {
		tlsUp = newTLSUpstream(t, false, h)
		upURL = tlsUp.URL
	} else {
		upURL = newUpstream(t, h).URL
	}
	s, front := newTestServerConfig(t, testConfig(t, map[string]string{"UPSTREAM_TIMEOUT": "1s"}), map[string]string{"/p": upURL})
	if tlsUp != nil {
		trustUpstream(t, s, tlsUp)
	}
	conn, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "GET /p/stream HTTP/1.1\r\nHost: x\r\n\r\n")
	// The client reads nothing: the proxy's writes block once the
	// socket buffers are full.
	select {
	case <-ended:
	case <-time.After(testTimeout):
		t.Fatal("the upstream was still sending after the timeout")
	}
	if n := s.proxy.rawStreams.Load(); handoffOn(s) && !https && n != 1 {
		t.Errorf("%d raw streams, want 1", n)
	}
	// The proxy's write ends too: the request is recorded while the
	// client still holds its connection open. (Through ReverseProxy alone,
	// STREAM_HANDOFF=off, nothing ends that write: net/http's server has
	// no write timeout.)
	if handoffOn(s) {
		waitCounts(t, &http.Client{}, front.URL, "/p", endpointCounts{Count: 1, ErrorCount: 1, Status: map[string]int64{"2xx": 1}})
	}
}

// TestStreamRawBig: a raw stream of many megabytes, more than the sockets
// buffer, so that writes to the client go part-way and wait: the client
// gets every byte, in order, and a clean end, and its connection serves
// the next request.
func TestStreamRawBig(t *testing.T) {
	const events, size = 128, 64 << 10
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/small" {
			io.WriteString(w, "ok")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range events {
			fmt.Fprintf(w, "data: %d %s\n\n", i, strings.Repeat(string(rune('a'+i%26)), size))
			w.(http.Flusher).Flush()
		}
	})
	s, addr := rawStreamProxy(t, up.URL)
	conn, br, res := rawExchange(t, addr, "/p/stream")
	body := bufio.NewReader(res.Body)
	for i := range events {
		want := fmt.Sprintf("data: %d %s\n\n", i, strings.Repeat(string(rune('a'+i%26)), size))
		got := make([]byte, len(want))
		if _, err := io.ReadFull(body, got); err != nil || string(got) != want {
			t.Fatalf("event %d: %v (%d bytes, starting %q)", i, err, len(got), got[:min(len(got), 16)])
		}
	}
	if rest, err := io.ReadAll(body); err != nil || len(rest) != 0 {
		t.Fatalf("after the events: %q, %v; want a clean end", rest, err)
	}
	io.WriteString(conn, "GET /p/small HTTP/1.1\r\nHost: x\r\n\r\n")
	next, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b := readAll(t, next); string(b) != "ok" {
		t.Errorf("next request on the connection: %q", b)
	}
	if n := s.proxy.rawStreams.Load(); handoffOn(s) && n != 1 {
		t.Errorf("%d raw streams, want 1", n)
	}
}

// TestStreamRawTrailers: the trailer section of a raw stream is checked as
// the Transport checks it, and every path gives the client the same:
// undeclared but valid trailers pass as trailers, in net/http's spelling;
// a malformed section, or a last chunk or section ending in a bare LF,
// breaks the client's connection (no clean end) and counts as an upstream
// error. The paths: from a plain-HTTP upstream, a raw stream handed off at
// once (on), one written through net/http (here, stream_here.go) and
// ReverseProxy (off); from an HTTPS upstream, HTTP/1.1 or HTTP/2, a stream
// read through the Transport, handed off (streamCopy, on) or not (here),
// and ReverseProxy (off). An HTTP/2 upstream sends only the well-formed cases: its framing
// has no room for the others.
func TestStreamRawTrailers(t *testing.T) {
	closeConn := func(c net.Conn) { c.Close() }
	for _, tt := range []struct {
		name    string
		after   string
		fails   bool
		trailer http.Header
	}{
		{"undeclared trailers", "0\r\nSet-Cookie: evil=1\r\nX-Trailer: injected\r\n\r\n", false,
			http.Header{"Set-Cookie": {"evil=1"}, "X-Trailer": {"injected"}}},
		{"non-canonical trailer", "0\r\nx-t:   1\r\nx-t: 2\r\n\r\n", false, http.Header{"X-T": {"1", "2"}}},
		{"no trailer", "0\r\n\r\n", false, nil},
		{"malformed trailer line", "0\r\nX-Trailer injected\r\n\r\n", true, nil},
		{"trailer line folded", "0\r\n folded: 1\r\n\r\n", true, nil},
		{"bare-LF last chunk", "0\n\n", true, nil},
		{"bare-LF end of the trailer section", "0\r\n\n", true, nil},
		{"bare-LF trailer line", "0\r\nX-T: 1\n\n", true, nil},
		{"trailer section too long", "0\r\nX-T: " + strings.Repeat("x", maxTrailerSection) + "\r\n\r\n", true, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			upstreams := []string{"http", "https"}
			if !tt.fails {
				upstreams = append(upstreams, "h2")
			}
			var paths []string
			var got []trailerOutcome
			for _, upKind := range upstreams {
				for _, mode := range []string{"on", "here", "off"} {
					path := upKind + " upstream, STREAM_HANDOFF=" + mode
					read := make(chan struct{})
					var upURL string
					var trust *httptest.Server
					switch upKind {
					case "http":
						upURL = newFramingUpstream(t, rawFramingCase{after: tt.after, end: closeConn}, read).URL
					case "https":
						trust = newTLSUpstream(t, false, framingHandler(t, rawFramingCase{after: tt.after, end: closeConn}, read))
						upURL = trust.URL
					case "h2":
						trust = newTLSUpstream(t, true, trailerHandler(tt.trailer, read))
						upURL = trust.URL
					}
					env := map[string]string{"STREAM_HANDOFF": mode, "STREAM_HANDOFF_AFTER": "0"}
					if mode == "here" {
						env = map[string]string{"STREAM_HANDOFF": "on", "STREAM_HANDOFF_AFTER": "1h"}
					}
					s, front := newTestServerConfig(t, testConfig(t, env), map[string]string{"/p": upURL})
					if trust != nil {
						trustUpstream(t, s, trust)
					}
					_, _, res := rawExchange(t, front.Listener.Addr().String(), "/p/stream")
					body := bufio.NewReader(res.Body)
					if ev := readEvent(t, body); ev != "data: 1\n\n" {
						t.Fatalf("%s: first event %q", path, ev)
					}
					read <- struct{}{}
					rest, err := io.ReadAll(body)
					out := trailerOutcome{string(rest), err != nil, res.Trailer}
					if err == nil && len(res.Trailer) == 0 {
						out.trailer = nil
					}
					paths, got = append(paths, path), append(got, out)
					if mode != "off" {
						handed, raw := s.proxy.handedOff.Load(), s.proxy.rawStreams.Load()
						wantHanded := int64(0)
						if mode == "on" {
							wantHanded = 1
						}
						if handed != wantHanded {
							t.Errorf("%s: %d streams handed off, want %d", path, handed, wantHanded)
						}
						wantRaw := int64(0)
						if upKind == "http" && canReadRaw {
							wantRaw = 1
						}
						if raw != wantRaw {
							t.Errorf("%s: %d raw streams, want %d", path, raw, wantRaw)
						}
					}
					want := endpointCounts{Count: 1, Status: map[string]int64{"2xx": 1}}
					if tt.fails {
						want.ErrorCount = 1
					}
					waitCounts(t, &http.Client{}, front.URL, "/p", want)
				}
			}
			first := got[0]
			if first.failed != tt.fails || first.body != "" || fmt.Sprint(first.trailer) != fmt.Sprint(tt.trailer) {
				t.Errorf("%s: client read %q, failed %v, trailers %v; want failed %v, trailers %v", paths[0], first.body, first.failed, first.trailer, tt.fails, tt.trailer)
			}
			for i := 1; i < len(got); i++ {
				if fmt.Sprint(got[i]) != fmt.Sprint(first) {
					t.Errorf("the paths disagree: %s %+v, %s %+v", paths[0], first, paths[i], got[i])
				}
			}
		})
	}
}

// newTLSUpstream starts an HTTPS backend running h, speaking HTTP/2 if h2
// (and HTTP/1.1 only otherwise). Cleanup cuts its connections and closes
// it.
func newTLSUpstream(t *testing.T, h2 bool, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || (r.ProtoMajor == 2) != h2 {
			t.Errorf("HTTPS upstream got %s (TLS %v), want HTTP/2 %v", r.Proto, r.TLS != nil, h2)
		}
		h(w, r)
	}))
	srv.EnableHTTP2 = h2
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshakes cut by Close
	srv.StartTLS()
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

// trustUpstream makes s's Transport trust up's certificate. It must run
// before s's first request to up: the Transport reads its TLS config at
// each dial.
func trustUpstream(t *testing.T, s *Server, up *httptest.Server) {
	t.Helper()
	tr, ok := s.proxy.transport.(*http.Transport)
	if !ok {
		t.Fatalf("the proxy's transport is a %T, want an *http.Transport", s.proxy.transport)
	}
	pool := x509.NewCertPool()
	pool.AddCert(up.Certificate())
	tr.TLSClientConfig.RootCAs = pool
}

// trailerHandler answers an event stream whose first event is flushed
// with the head, then, once read receives, ends with trailer as
// undeclared trailers, in lower case as HTTP/2 sends them.
func trailerHandler(trailer http.Header, read <-chan struct{}) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-read:
		case <-r.Context().Done():
			return
		}
		for k, vv := range trailer {
			w.Header()[http.TrailerPrefix+strings.ToLower(k)] = vv
		}
	}
}

// trailerOutcome is what a client got of a stream's end.
type trailerOutcome struct {
	body    string
	failed  bool
	trailer http.Header
}
