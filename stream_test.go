package main

// Handed-off event streams (stream.go): the response to an HTTP/1.1 client
// is written by the stream writer, chunk by chunk as the upstream sends it,
// and the client connection goes back to the server afterwards. With
// STREAM_HANDOFF=off the same behaviour comes from ReverseProxy, and only
// the hand-off's own counters are not checked.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStreamHandOff: GET and POST event streams are handed off; each event
// reaches the client while the upstream waits before the next; the head
// carries the upstream's and the proxy's headers; the connection is reused
// for the next requests (keep-alive through connRecycler). Both with the
// shared watcher and with a read per stream watching the client.
func TestStreamHandOff(t *testing.T) {
	for _, shared := range []bool{true, false} {
		t.Run(fmt.Sprintf("sharedWatch=%v", shared), func(t *testing.T) {
			step := make(chan struct{})
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				if strings.HasSuffix(r.URL.Path, "/small") {
					io.WriteString(w, "ok")
					return
				}
				body, _ := io.ReadAll(r.Body)
				w.Header().Set("Content-Type", "text/event-stream")
				w.Header().Set("X-Upstream", "yes")
				fmt.Fprintf(w, "data: %s\n\n", body)
				w.(http.Flusher).Flush()
				select {
				case <-step:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "data: [DONE]\n\n")
			})
			s, front := newTestServer(t, map[string]string{"/p": up.URL})
			if !shared {
				withoutWatcher(s)
			}
			client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			var reused []bool
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				GotConn: func(i httptrace.GotConnInfo) { reused = append(reused, i.Reused) },
			})
			for _, method := range []string{"GET", "POST"} {
				checkHandOffStream(t, client, ctx, method, front.URL+"/p/v1/stream", step)
			}
			req, _ := http.NewRequestWithContext(ctx, "GET", front.URL+"/p/small", nil)
			res, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if body := readAll(t, res); string(body) != "ok" {
				t.Errorf("GET /p/small after the streams = %q", body)
			}
			res.Body.Close()
			if want := []bool{false, true, true}; fmt.Sprint(reused) != fmt.Sprint(want) {
				t.Errorf("connection reused %v, want %v: the streams' connection did not come back to the server", reused, want)
			}
			// The GET stream is handed off. The POST stream is too, unless
			// its response came before the Transport's last read of the
			// request body: it sends a body of known length straight to the
			// socket and then reads once more, to check for extra bytes,
			// and a stream is handed off only after that read
			// (countingBody.drained). It is then served the ordinary way,
			// as checked above, which happens rarely but does happen.
			if n := s.proxy.handedOff.Load(); handedOffAtOnce(s) && n != 2 && n != 1 {
				t.Errorf("%d streams handed off, want 2 (or 1: see above)", n)
			}
			waitCounts(t, client, front.URL, "/p", endpointCounts{Count: 3, Status: map[string]int64{"2xx": 3}})
		})
	}
}

// checkHandOffStream sends a method request to url (a POST with a body the
// upstream echoes in its first event) and checks the stream: the head, the
// first event, then, once step lets the upstream go on, the last event and
// a clean end.
func checkHandOffStream(t *testing.T, client *http.Client, ctx context.Context, method, url string, step chan<- struct{}) {
	t.Helper()
	payload := ""
	if method == "POST" {
		payload = `{"stream":true}`
	}
	req, _ := http.NewRequestWithContext(ctx, method, url, strings.NewReader(payload))
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	defer res.Body.Close()
	if res.Header.Get("X-Upstream") != "yes" || res.Header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("%s: head lacks the upstream's or the proxy's headers: %v", method, res.Header)
	}
	if len(res.TransferEncoding) != 1 || res.TransferEncoding[0] != "chunked" {
		t.Errorf("%s: Transfer-Encoding %v, want chunked", method, res.TransferEncoding)
	}
	br := bufio.NewReader(res.Body)
	first := readEvent(t, br)
	if want := "data: " + payload + "\n\n"; first != want {
		t.Errorf("%s: first event %q, want %q", method, first, want)
	}
	step <- struct{}{} // the upstream sends the rest only now
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "data: [DONE]\n\n" {
		t.Errorf("%s: rest of the stream %q, %v; want the last event and a clean end", method, rest, err)
	}
}

// readEvent reads one SSE event, up to its blank line.
func readEvent(t *testing.T, br *bufio.Reader) string {
	t.Helper()
	var b strings.Builder
	for {
		line, err := br.ReadString('\n')
		b.WriteString(line)
		if err != nil {
			t.Fatalf("reading an event: %v (got %q)", err, b.String())
		}
		if line == "\n" {
			return b.String()
		}
	}
}

// TestStreamHandOffPipelined: a request the client sends on the same
// connection before the stream ended, in the same packet as the stream's
// request or while it runs, is served after it, in order.
func TestStreamHandOffPipelined(t *testing.T) {
	step := make(chan struct{}, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/small") {
			io.WriteString(w, "small")
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		if r.URL.Query().Get("wait") != "" {
			<-step
		}
		io.WriteString(w, "data: 2\n\n")
	})
	s, front := newTestServer(t, map[string]string{"/p": up.URL})
	const stream, small = "GET /p/stream%s HTTP/1.1\r\nHost: x\r\n\r\n", "GET /p/small HTTP/1.1\r\nHost: x\r\n\r\n"

	check := func(t *testing.T, br *bufio.Reader, beforeEnd func()) {
		t.Helper()
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if beforeEnd != nil {
			beforeEnd()
		}
		if body := readAll(t, res); string(body) != "data: 1\n\ndata: 2\n\n" {
			t.Errorf("stream body %q", body)
		}
		res, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("the pipelined request got no response: %v", err)
		}
		if body := readAll(t, res); string(body) != "small" {
			t.Errorf("pipelined response body %q, want %q", body, "small")
		}
	}

	t.Run("same packet", func(t *testing.T) {
		conn, err := net.Dial("tcp", front.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, fmt.Sprintf(stream, "")+small)
		check(t, bufio.NewReader(conn), nil)
	})
	t.Run("during the stream", func(t *testing.T) {
		conn, err := net.Dial("tcp", front.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, fmt.Sprintf(stream, "?wait=1"))
		check(t, bufio.NewReader(conn), func() {
			io.WriteString(conn, small)
			step <- struct{}{}
		})
	})
	if n := s.proxy.handedOff.Load(); handedOffAtOnce(s) && n != 2 {
		t.Errorf("%d streams handed off, want 2", n)
	}
}

// TestStreamHandOffClientLeaves: with either way of watching the client, a
// client that closes its connection while a handed-off stream idles
// cancels the upstream request, and the stream counts as a disconnect.
func TestStreamHandOffClientLeaves(t *testing.T) {
	for _, shared := range []bool{true, false} {
		t.Run(fmt.Sprintf("sharedWatch=%v", shared), func(t *testing.T) {
			up, cancelled := newIdleStreamUpstream(t)
			s, front := newTestServer(t, map[string]string{"/p": up.URL})
			if !shared {
				withoutWatcher(s)
			}
			conn, err := net.Dial("tcp", front.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			io.WriteString(conn, "GET /p/stream HTTP/1.1\r\nHost: x\r\n\r\n")
			br := bufio.NewReader(conn)
			res, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			readEvent(t, bufio.NewReader(res.Body))
			conn.Close()
			select {
			case <-cancelled:
			case <-time.After(testTimeout):
				t.Fatal("the upstream request was not cancelled after the client left")
			}
			client := &http.Client{}
			waitCounts(t, client, front.URL, "/p", endpointCounts{Count: 1, ClientClosed: 1})
			if n := s.proxy.handedOff.Load(); handedOffAtOnce(s) && n != 1 {
				t.Errorf("%d streams handed off, want 1", n)
			}
		})
	}
}

// TestStreamHandOffWhileUploading: an upstream that starts its event
// stream before it has read the request body. The response cannot be
// handed off while the Transport still reads the client's body (the
// handler must stay), so it is served the ordinary way, and both
// directions arrive whole.
func TestStreamHandOffWhileUploading(t *testing.T) {
	// As a stream to hand off at its first read (STREAM_HANDOFF_AFTER=1ns),
	// whose hand-off must wait for the body, and as the test runs it.
	t.Run("after 1ns", func(t *testing.T) { testStreamWhileUploading(t, map[string]string{"STREAM_HANDOFF_AFTER": "1ns"}) })
	t.Run("configured", func(t *testing.T) { testStreamWhileUploading(t, nil) })
}

func testStreamWhileUploading(t *testing.T, env map[string]string) {
	const size = 1 << 20
	got := make(chan int, 1)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		http.NewResponseController(w).EnableFullDuplex()
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		n, _ := io.Copy(io.Discard, r.Body)
		got <- int(n)
		io.WriteString(w, "data: 2\n\n")
	})
	_, front := newTestServerConfig(t, testConfig(t, env), map[string]string{"/p": up.URL})
	pr, pw := io.Pipe()
	go func() {
		pw.Write(make([]byte, size/2))
		pw.Write(make([]byte, size/2))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", front.URL+"/p/stream", pr)
	req.ContentLength = size
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || string(body) != "data: 1\n\ndata: 2\n\n" {
		t.Errorf("stream %q, %v; want both events and a clean end", body, err)
	}
	if n := <-got; n != size {
		t.Errorf("the upstream read %d bytes of the body, want %d", n, size)
	}
}

// TestClientClosesRightAfterResponse: clients that close their connection
// the moment they have read a response race the end of its request (the
// client's context ends while the proxy finishes): the process keeps
// serving and every request is counted.
func TestClientClosesRightAfterResponse(t *testing.T) {
	up := newUpstream(t, nil)
	_, front := newTestServer(t, map[string]string{"/p": up.URL})
	const n = 300
	errs := make(chan error, n)
	for range n {
		go func() {
			conn, err := net.Dial("tcp", front.Listener.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			io.WriteString(conn, "GET /p/x HTTP/1.1\r\nHost: x\r\n\r\n")
			res, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err == nil {
				_, err = io.ReadAll(res.Body)
			}
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	client := &http.Client{}
	waitCounts(t, client, front.URL, "/p", endpointCounts{Count: n, Status: map[string]int64{"2xx": n}})
}

// TestStreamHandoffSwitch: STREAM_HANDOFF=off serves event streams through
// ReverseProxy alone: no watcher, no recycler, no upConn around dialed
// connections, nothing handed off or read raw, and the stream still
// reaches the client event by event. On (STREAM_HANDOFF_AFTER=0), the same
// stream is handed off.
func TestStreamHandoffSwitch(t *testing.T) {
	for _, on := range []bool{true, false} {
		word := map[bool]string{true: "on", false: "off"}[on]
		t.Run("STREAM_HANDOFF="+word, func(t *testing.T) {
			step := make(chan struct{})
			up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				w.Header().Set("X-Upstream", "yes")
				io.WriteString(w, "data: \n\n")
				w.(http.Flusher).Flush()
				select {
				case <-step:
				case <-r.Context().Done():
					return
				}
				io.WriteString(w, "data: [DONE]\n\n")
			})
			cfg := testConfig(t, map[string]string{"STREAM_HANDOFF": word, "STREAM_HANDOFF_AFTER": "0"})
			s, front := newTestServerConfig(t, cfg, map[string]string{"/p": up.URL})
			if (s.recycler != nil) != on || s.proxy.watcher != nil && !on || s.proxy.watcher == nil && on && canReadRaw {
				t.Errorf("watcher %p, recycler %p; want both with the hand-off on (the watcher where epoll is), neither off", s.proxy.watcher, s.recycler)
			}
			conn, err := newTransport(cfg).DialContext(context.Background(), "tcp", up.Addr())
			if err != nil {
				t.Fatal(err)
			}
			if _, wrapped := conn.(*upConn); wrapped != on {
				t.Errorf("dialed a %T; want an *upConn only with the hand-off on", conn)
			}
			conn.Close()

			client := &http.Client{}
			checkHandOffStream(t, client, context.Background(), "GET", front.URL+"/p/v1/stream", step)
			client.CloseIdleConnections()
			want := int64(0)
			if on {
				want = 1
			}
			if n, raw := s.proxy.handedOff.Load(), s.proxy.rawStreams.Load(); n != want || raw != want && canReadRaw {
				t.Errorf("%d streams handed off, %d raw; want %d and %d", n, raw, want, want)
			}
		})
	}
}

// TestStreamHandOffManyPipelined: a client that pipelines thousands of
// stream requests on one connection gets every response, in order and
// whole, in time linear in their number: the connection each stream gives
// back to the server is wrapped once at most (replayConn), and its client
// is still watched by the shared watcher, its head and events written by
// the fast path.
func TestStreamHandOffManyPipelined(t *testing.T) {
	const n = 8000
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: "+r.URL.Query().Get("i")+"\n\n")
		w.(http.Flusher).Flush() // chunked: no length known with the head
	})
	s := newTestServerOnly(t, testConfig(t, nil), map[string]string{"/p": up.URL})
	var maxDepth atomic.Int64
	front := httptest.NewUnstartedServer(s)
	front.Config = s.httpServer()
	front.Listener = s.listener(front.Listener)
	front.Config.ConnState = func(c net.Conn, state http.ConnState) {
		if d := int64(replayDepth(c)); state == http.StateNew && d > maxDepth.Load() {
			maxDepth.Store(d) // only the one client connection's goroutine changes it
		}
	}
	front.Start()
	serveRecycled(front, s)
	t.Cleanup(func() { closeFront(t, front) })

	conn, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * testTimeout))
	go func() {
		var b bytes.Buffer
		for i := range n {
			fmt.Fprintf(&b, "GET /p/stream?i=%d HTTP/1.1\r\nHost: x\r\n\r\n", i)
		}
		conn.Write(b.Bytes())
	}()
	br := bufio.NewReader(conn)
	for i := range n {
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		body, err := io.ReadAll(res.Body)
		if want := fmt.Sprintf("data: %d\n\n", i); err != nil || string(body) != want {
			t.Fatalf("response %d: %q, %v; want %q", i, body, err, want)
		}
	}
	if d := maxDepth.Load(); d > 1 {
		t.Errorf("the connection came back to the server wrapped %d deep, want 1 at most", d)
	}
	if !handedOffAtOnce(s) {
		return
	}
	if got := s.proxy.handedOff.Load(); got != n {
		t.Errorf("%d streams handed off, want %d", got, n)
	}
	if w := s.proxy.watcher; w != nil {
		// The last stream may register after its client read it whole:
		// the head write can carry the entire body.
		eventually(t, func() bool { return w.clientCount() >= n }, "the watcher to watch every client, those with pipelined bytes included")
		if got := w.clientCount(); got != n {
			t.Errorf("the watcher watched %d clients, want %d", got, n)
		}
	}
}

// replayDepth returns how many replayConns c is wrapped in.
func replayDepth(c net.Conn) int {
	d := 0
	for {
		rc, ok := c.(*replayConn)
		if !ok {
			return d
		}
		d++
		c = rc.Conn
	}
}

// TestStreamHandOffPipelinedClientLeaves: a client that sent its next
// request, with the stream's or during it, and then closes the connection
// while the stream idles is seen leaving at once, as one that did not: the
// upstream request is cancelled long before any next event. Both with the
// shared watcher and with a read per stream. With STREAM_HANDOFF=off
// net/http's background read stops at the first byte of a request sent
// during a response, so only the same-packet case applies there.
func TestStreamHandOffPipelinedClientLeaves(t *testing.T) {
	const stream, next = "GET /p/stream HTTP/1.1\r\nHost: x\r\n\r\n", "GET /p/next HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, shared := range []bool{true, false} {
		for _, during := range []bool{false, true} {
			t.Run(fmt.Sprintf("sharedWatch=%v/during=%v", shared, during), func(t *testing.T) {
				up, cancelled := newIdleStreamUpstream(t)
				s, front := newTestServer(t, map[string]string{"/p": up.URL})
				if !handedOffAtOnce(s) && (during || !shared) {
					t.Skip("not handed off (STREAM_HANDOFF=off, or a stream younger than STREAM_HANDOFF_AFTER): net/http watches the client; see above")
				}
				if !shared {
					withoutWatcher(s)
				}
				conn, err := net.Dial("tcp", front.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if during {
					io.WriteString(conn, stream)
				} else {
					io.WriteString(conn, stream+next)
				}
				res, err := http.ReadResponse(bufio.NewReader(conn), nil)
				if err != nil {
					t.Fatal(err)
				}
				readEvent(t, bufio.NewReader(res.Body))
				if during {
					io.WriteString(conn, next)
				}
				conn.Close()
				waitClosed(t, cancelled, "the upstream request to be cancelled after the client left")
				waitCounts(t, &http.Client{}, front.URL, "/p", endpointCounts{Count: 1, ClientClosed: 1, Status: map[string]int64{}})
			})
		}
	}
}

// BenchmarkStreamStart is the start and end of a short event stream (two
// events, the first with the head) through a real loopback connection,
// one client connection kept alive, through apiproxy (with stream hand-off
// as configured) and, for reference, through a plain httputil proxy in
// the same process. allocs/op and cpu-µs/op count the whole process
// (client and upstream included), so compare the two, not the absolutes.
// It is the per-stream cost that a burst of new streams queues on
// (docs/performance.md, "An ordinary day").
func BenchmarkStreamStart(b *testing.B) {
	up := newUpstream(b, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"n\":1}\n\n")
		w.(http.Flusher).Flush()
		io.WriteString(w, "data: [DONE]\n\n")
	})
	_, front := newTestServer(b, map[string]string{"/s": up.URL})
	target, _ := url.Parse(up.URL)
	plain := httputil.NewSingleHostReverseProxy(target)
	plain.FlushInterval = -1
	plain.BufferPool = &plainBuffers{sync.Pool{New: func() any { return make([]byte, 32<<10) }}}
	ref := httptest.NewServer(http.StripPrefix("/s", plain))
	b.Cleanup(ref.Close)
	for _, tc := range []struct{ name, url string }{{"apiproxy", front.URL}, {"httputil", ref.URL}} {
		b.Run(tc.name, func(b *testing.B) {
			client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer client.CloseIdleConnections()
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				res, err := client.Post(tc.url+"/s/v1/chat/completions", "application/json", strings.NewReader(`{"stream":true}`))
				if err != nil {
					b.Fatal(err)
				}
				if n, _ := io.Copy(io.Discard, res.Body); n != int64(len("data: {\"n\":1}\n\ndata: [DONE]\n\n")) || res.StatusCode != http.StatusOK {
					b.Fatalf("status %d, %d body bytes", res.StatusCode, n)
				}
				res.Body.Close()
			}
			b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
		})
	}
}

// plainBuffers is the reference proxy's copy buffers, pooled as the bench
// harness's baseline pools them, so that the comparison is not of one
// 32 KiB allocation per stream.
type plainBuffers struct{ sync.Pool }

func (p *plainBuffers) Get() []byte  { return p.Pool.Get().([]byte) }
func (p *plainBuffers) Put(b []byte) { p.Pool.Put(b) }

// TestStreamWriteFailed checks what a failed write to the client records:
// a client that left, unless the upstream request had ended (the write cut
// ended the write); and a departure the watcher saw, which ends the
// upstream request itself, stays recorded through the failed write after it.
func TestStreamWriteFailed(t *testing.T) {
	ended := make(chan struct{})
	close(ended)
	for _, tc := range []struct {
		name          string
		upEnded, seen bool
		want          bool
	}{
		{"upstream request standing", false, false, true},
		{"cut by the upstream request's end", true, false, false},
		{"client seen leaving by the watcher", true, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var st streamState
			st.upDone = make(chan struct{})
			if tc.upEnded {
				st.upDone = ended
			}
			st.clientGone.Store(tc.seen)
			st.writeFailed()
			if got := st.clientGone.Load(); got != tc.want {
				t.Errorf("clientGone = %v, want %v", got, tc.want)
			}
		})
	}
}
