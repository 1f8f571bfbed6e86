package main

// Process tests (issue 6, SPEC §8): the real binary, built into the test's
// temporary directory, stopped with SIGTERM while it streams.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// buildBinary builds apiproxy with the Dockerfile's flags into a temporary
// directory and returns its path.
func buildBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "apiproxy")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// proxyProcess is a running apiproxy process of one test.
type proxyProcess struct {
	cmd    *exec.Cmd
	addr   string
	stderr *syncBuffer
	exited chan struct{} // closed once Wait returned
	err    error         // Wait's result, once exited is closed
}

// startBinary runs bin with env (LISTEN_ADDR on a loopback port is
// added), waits until it logs its listen address and returns it. Cleanup
// kills it if the test did not stop it.
func startBinary(t testing.TB, bin string, env ...string) *proxyProcess {
	t.Helper()
	p := &proxyProcess{stderr: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(bin)
	p.cmd.Dir = t.TempDir() // no .env there
	p.cmd.Env = append(os.Environ(), append([]string{"LISTEN_ADDR=127.0.0.1:0", "LOG_FORMAT=json"}, env...)...)
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	eventually(t, func() bool {
		for _, line := range strings.Split(p.stderr.String(), "\n") {
			var l struct{ Msg, Addr string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "apiproxy listening" {
				p.addr = l.Addr
				return true
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("%s exited at start: %v\n%s", bin, p.err, p.stderr.String())
		default:
		}
		return false
	}, "the process to log its listen address")
	return p
}

// wait waits for the process to exit, at most d, and returns its exit code.
func (p *proxyProcess) wait(t testing.TB, d time.Duration) int {
	t.Helper()
	select {
	case <-p.exited:
	case <-time.After(d):
		t.Fatalf("the process did not exit within %v; log:\n%s", d, p.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		t.Fatalf("wait: %v", p.err)
	}
	return 0
}

// flushedStats returns the stats a process that exited left in the
// embedded store under dataDir.
func flushedStats(t testing.TB, dataDir string) *statsData {
	t.Helper()
	store, err := openBoltStore(dataDir)
	if err != nil {
		t.Fatalf("open the store after exit: %v", err)
	}
	defer store.Close()
	d, err := store.LoadStats(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// refusing reports whether nothing accepts connections on addr any more.
func refusing(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return true
	}
	c.Close()
	return false
}

// streamResult is what a client saw of one request.
type streamResult struct {
	accepted bool // response headers arrived
	complete bool // the whole body arrived and ended cleanly
	err      error
}

// TestShutdownUnderLoad sends SIGTERM to a process serving many streams
// and small requests. It must stop accepting connections at once, let
// every stream it accepted run to its end, write the stats, and exit 0.
// No accepted request is lost: each one is complete at the client, was
// served by the upstream, and is in the stats the process flushed.
func TestShutdownUnderLoad(t *testing.T) {
	up := newLoadUpstream(t)
	bin := buildBinary(t)
	dataDir := t.TempDir()
	if out, err := exec.Command(bin, "map", "-data-dir", dataDir, "set", "/p", up.URL).CombinedOutput(); err != nil {
		t.Fatalf("map set: %v\n%s", err, out)
	}
	p := startBinary(t, bin, "DATA_DIR="+dataDir, "SHUTDOWN_TIMEOUT=20s")
	base := "http://" + p.addr

	load := &loadClients{client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}, stop: make(chan struct{})}
	defer load.client.CloseIdleConnections()
	const streams, small = 40, 4
	for range streams {
		load.start(base + "/p/v1/stream")
	}
	for range small {
		load.start(base + "/p/v1/models")
	}
	eventually(t, func() bool { return up.active.Load() >= streams && up.served.Load() >= 100 }, "all streams in flight and 100 requests served")

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	sigterm := time.Now()
	eventually(t, func() bool { return refusing(p.addr) }, "the listener to close after SIGTERM")
	if n := up.active.Load(); n == 0 {
		t.Errorf("no stream was in flight when the listener closed; the test proves nothing")
	}
	close(load.stop)
	code := p.wait(t, testTimeout)
	took := time.Since(sigterm)
	load.wg.Wait()
	if code != 0 {
		t.Errorf("exit code %d, want 0; log:\n%s", code, p.stderr.String())
	}
	// The streams last a second, so the drain must end on its own, not at
	// SHUTDOWN_TIMEOUT (20 s). It can take up to 5 s more than the streams:
	// net/http's Shutdown waits that long for a connection the client
	// opened but has not sent a request on yet (the Transport keeps such
	// a spare dial in its idle pool), so the bound is not the stream time.
	if strings.Contains(p.stderr.String(), "drain timed out") {
		t.Errorf("the drain hit SHUTDOWN_TIMEOUT (took %v); streams of 1 s should have drained long before; log:\n%s", took, p.stderr.String())
	}
	complete := load.check(t)
	t.Logf("%d requests complete; SIGTERM to exit %v", complete, took.Round(time.Millisecond))
	if up.served.Load() != complete {
		t.Errorf("the upstream served %d requests, the clients got %d complete", up.served.Load(), complete)
	}
	d := flushedStats(t, dataDir)
	if got := d.Total["/p|count"]; got != complete {
		t.Errorf("the flushed stats count %d requests to /p, want the %d accepted and completed", got, complete)
	}
	if got := d.Total["/p|errors"]; got != 0 {
		t.Errorf("the flushed stats count %d errors, want 0", got)
	}
	if !strings.Contains(p.stderr.String(), `"msg":"stopped"`) {
		t.Errorf("no \"stopped\" line in the log:\n%s", p.stderr.String())
	}
}

// loadUpstream is TestShutdownUnderLoad's upstream: a path ending in
// /stream is an event stream of loadEvents events loadInterval apart,
// any other a small JSON answer. It counts the streams in flight and the
// requests it served whole.
type loadUpstream struct {
	*upstream
	active, served atomic.Int64
}

const loadEvents, loadInterval = 40, 25 * time.Millisecond // a stream lasts a second

func newLoadUpstream(t *testing.T) *loadUpstream {
	u := &loadUpstream{}
	u.upstream = newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if !strings.HasSuffix(r.URL.Path, "/stream") {
			io.WriteString(w, `{"ok":true}`)
			u.served.Add(1)
			return
		}
		u.active.Add(1)
		defer u.active.Add(-1)
		w.Header().Set("Content-Type", "text/event-stream")
		for i := range loadEvents {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-time.After(loadInterval):
			case <-r.Context().Done():
				return
			}
		}
		io.WriteString(w, "data: [DONE]\n\n")
		u.served.Add(1)
	})
	return u
}

// loadClients send requests, each worker to one URL one after another,
// until stop is closed or a request is refused, and keep what each saw.
type loadClients struct {
	client  *http.Client
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	results []streamResult
}

// start starts a worker sending POSTs to url.
func (l *loadClients) start(url string) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			r := l.send(url)
			l.mu.Lock()
			l.results = append(l.results, r)
			l.mu.Unlock()
			if !r.accepted {
				return // the listener is closed: nothing more will be accepted
			}
		}
	}()
}

// send sends one request to url and reads its answer whole.
func (l *loadClients) send(url string) streamResult {
	var r streamResult
	req, _ := http.NewRequest("POST", url, strings.NewReader(`{"stream":true}`))
	res, err := l.client.Do(req)
	if err != nil {
		r.err = err
		return r
	}
	r.accepted = true
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	stream := strings.HasSuffix(url, "/stream")
	done := stream && bytes.HasSuffix(body, []byte("data: [DONE]\n\n")) || !stream && string(body) == `{"ok":true}`
	r.complete = err == nil && res.StatusCode == http.StatusOK && done
	if err == nil && !r.complete {
		err = fmt.Errorf("status %d, body %q", res.StatusCode, body)
	}
	r.err = err
	return r
}

// check fails the test for every accepted request that was not complete,
// once the workers have ended, and returns how many were complete.
func (l *loadClients) check(t *testing.T) (complete int64) {
	t.Helper()
	for _, r := range l.results {
		if !r.accepted {
			continue
		}
		if r.complete {
			complete++
		} else {
			t.Errorf("an accepted request was lost: %v", r.err)
		}
	}
	return complete
}

// TestShutdownTimeoutCutsStreams: streams still running when
// SHUTDOWN_TIMEOUT ends are cut (the clients see a broken stream, not a
// clean end), the upstream requests are cancelled, their stats are
// flushed, and the process still exits 0.
func TestShutdownTimeoutCutsStreams(t *testing.T) {
	const streams = 5
	var active atomic.Int64
	cancelled := make(chan struct{}, streams)
	up := newUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		active.Add(1)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		cancelled <- struct{}{}
	})
	bin := buildBinary(t)
	dataDir := t.TempDir()
	if out, err := exec.Command(bin, "map", "-data-dir", dataDir, "set", "/p", up.URL).CombinedOutput(); err != nil {
		t.Fatalf("map set: %v\n%s", err, out)
	}
	const drain = 500 * time.Millisecond
	p := startBinary(t, bin, "DATA_DIR="+dataDir, "SHUTDOWN_TIMEOUT="+drain.String())
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	errs := make(chan error, streams)
	for range streams {
		go func() {
			res, err := client.Get("http://" + p.addr + "/p/v1/stream")
			if err != nil {
				errs <- err
				return
			}
			_, err = io.ReadAll(res.Body)
			res.Body.Close()
			errs <- err
		}()
	}
	eventually(t, func() bool { return active.Load() == streams }, "all streams in flight")
	p.cmd.Process.Signal(syscall.SIGTERM)
	sigterm := time.Now()
	if code := p.wait(t, testTimeout); code != 0 {
		t.Errorf("exit code %d, want 0; log:\n%s", code, p.stderr.String())
	}
	if took := time.Since(sigterm); took < drain {
		t.Errorf("exited %v after SIGTERM, before SHUTDOWN_TIMEOUT %v", took, drain)
	}
	for range streams {
		if err := <-errs; err == nil {
			t.Errorf("a stream cut by the shutdown ended cleanly at the client")
		}
		waitClosed(t, cancelled, "the upstream request to be cancelled")
	}
	d := flushedStats(t, dataDir)
	if got := d.Total["/p|count"]; got != streams {
		t.Errorf("the flushed stats count %d requests, want the %d cut streams", got, streams)
	}
	// Cut by the proxy, not left by their clients: no 499 (the streams,
	// younger than STREAM_HANDOFF_AFTER, are still in their handlers).
	if got := d.Total["/p|client_closed"]; got != 0 {
		t.Errorf("%d cut streams counted as clients that left (499), want 0", got)
	}
}

// TestBinaryStartChecks: the binary refuses an ADMIN_TOKEN shorter than
// 16 characters at start, saying why without printing it, and
// `apiproxy healthcheck` (the Docker HEALTHCHECK) exits 0 only while the
// server answers /healthz.
func TestBinaryStartChecks(t *testing.T) {
	bin := buildBinary(t)
	const short = "short-tok-15chr"
	cmd := exec.Command(bin)
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(), "ADMIN_TOKEN="+short, "LISTEN_ADDR=127.0.0.1:0", "DATA_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("with a 15-character ADMIN_TOKEN the binary ran (%v); output:\n%s", err, out)
	}
	if !strings.Contains(string(out), "ADMIN_TOKEN") || !strings.Contains(string(out), "at least 16 characters") {
		t.Errorf("the refusal does not say why: %s", out)
	}
	if strings.Contains(string(out), short) {
		t.Errorf("the refusal prints the token: %s", out)
	}

	p := startBinary(t, bin, "DATA_DIR="+t.TempDir())
	health := func() error {
		cmd := exec.Command(bin, "healthcheck")
		cmd.Dir = t.TempDir()
		cmd.Env = append(os.Environ(), "LISTEN_ADDR="+p.addr)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	}
	if err := health(); err != nil {
		t.Errorf("healthcheck of a running server: %v", err)
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, testTimeout); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if err := health(); err == nil {
		t.Errorf("healthcheck of a stopped server succeeded")
	}
}

// TestShutdownTunnels: a WebSocket tunnel is a hijacked connection, which
// http.Server.Shutdown neither waits for nor closes. run must still let it
// work while the drain lasts, close it when SHUTDOWN_TIMEOUT ends (the
// upstream side too), and count it in the final stats flush.
func TestShutdownTunnels(t *testing.T) {
	upstreamClosed := make(chan struct{})
	up := newRawUpstream(t, func(conn net.Conn, rw *bufio.ReadWriter) {
		defer close(upstreamClosed)
		io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		io.Copy(conn, rw) // echo until the proxy closes its side
	})
	cfg := testConfig(t, nil)
	cfg.ShutdownTimeout = time.Second
	seedMapping(t, cfg, "/ws", up.URL)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, runErr := startRun(t, ctx, cfg)

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(testTimeout))
	io.WriteString(conn, "GET /ws/v1/realtime HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil || res.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", res, err)
	}
	echo := func(msg string) error {
		if _, err := io.WriteString(conn, msg); err != nil {
			return err
		}
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(br, buf); err != nil {
			return err
		}
		if string(buf) != msg {
			return fmt.Errorf("echo %q, want %q", buf, msg)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatalf("tunnel before the shutdown: %v", err)
	}
	cancel()
	start := time.Now()
	eventually(t, func() bool { return refusing(addr) }, "the listener to close")
	if err := echo("during the drain"); err != nil {
		t.Errorf("tunnel during the drain: %v", err)
	}
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("run = %v", err)
		}
	case <-time.After(testTimeout):
		t.Fatalf("run did not return with a tunnel open")
	}
	if took := time.Since(start); took < cfg.ShutdownTimeout {
		t.Errorf("run returned %v after the cancel, before SHUTDOWN_TIMEOUT %v: the tunnel was not drained", took, cfg.ShutdownTimeout)
	}
	if n, err := br.Read(make([]byte, 1)); err == nil {
		t.Errorf("the tunnel still carries data after the shutdown (%d bytes)", n)
	}
	waitClosed(t, upstreamClosed, "the upstream side of the tunnel to be closed")

	store2, err := openBoltStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	defer store2.Close()
	d, err := store2.LoadStats(context.Background(), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Total["/ws|count"]; got != 1 {
		t.Errorf("the flushed stats count %d requests to /ws, want the tunnel", got)
	}
}
