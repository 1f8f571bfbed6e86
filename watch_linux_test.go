package main

import (
	"errors"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestWatcherStops: when epoll_wait fails, the watcher must not keep
// registrations that would never fire. A hang-up registration fires (its
// raw stream then reads to the socket's end after every read), a client
// registration is dropped without firing (the client did not leave), and
// the watcher refuses new registrations and says why.
func TestWatcherStops(t *testing.T) {
	fail := make(chan struct{})
	w, err := startClientWatcher(func(int, []syscall.EpollEvent, int) (int, error) {
		<-fail
		return 0, syscall.EINVAL
	})
	if err != nil {
		t.Fatal(err)
	}
	var failOnce sync.Once
	failNow := func() { failOnce.Do(func() { close(fail) }) }
	t.Cleanup(func() {
		failNow() // ends the loop if the test stopped early
		w.close()
	})
	upstream, _ := tcpPair(t)
	client, _ := tcpPair(t)
	raw, err := upstream.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	hangup := make(chan bool, 1)
	if _, ok := w.watchConn(raw, func(gone bool) { hangup <- gone }); !ok {
		t.Fatal("watchConn refused before the watcher failed")
	}
	clientEvent := make(chan bool, 1)
	if _, ok := w.watch(client, func(gone bool) { clientEvent <- gone }); !ok {
		t.Fatal("watch refused before the watcher failed")
	}
	if err := w.failed(); err != nil {
		t.Fatalf("failed() = %v before epoll_wait failed", err)
	}

	failNow()
	select {
	case gone := <-hangup:
		if !gone {
			t.Error("the hang-up registration fired with gone false")
		}
	case <-time.After(testTimeout):
		t.Fatal("the hang-up registration never fired after epoll_wait failed")
	}
	if err := w.failed(); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("failed() = %v, want the epoll_wait error", err)
	}
	if _, ok := w.watch(client, func(bool) {}); ok {
		t.Error("watch accepted a registration after the watcher stopped")
	}
	if _, ok := w.watchConn(raw, func(bool) {}); ok {
		t.Error("watchConn accepted a registration after the watcher stopped")
	}
	select {
	case gone := <-clientEvent:
		t.Errorf("the client registration fired (gone %v): the client did not leave", gone)
	default:
	}
}

// TestServerCloseStopsWatcher: a Server with the stream hand-off on starts
// its watcher (a goroutine, an epoll set and a wake pipe) in newServer,
// and Close ends the goroutine and closes the descriptors, even with
// registrations still in the set: a hang-up registration fires, as when
// the watcher fails, and forget after Close is harmless.
func TestServerCloseStopsWatcher(t *testing.T) {
	cfg := testConfig(t, map[string]string{"STREAM_HANDOFF": "on"})
	store, err := openBoltStore(cfg.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	goroutines := runtime.NumGoroutine()
	s, err := newServer(cfg, testLogger(), store, nil)
	if err != nil {
		store.Close()
		t.Fatal(err)
	}
	w := s.proxy.watcher
	if w == nil {
		s.Close()
		t.Fatal("newServer with STREAM_HANDOFF on started no watcher")
	}
	fds := openFDs(t)
	owned := map[int]string{w.epfd: fds[w.epfd], w.wakeR: fds[w.wakeR], w.wakeW: fds[w.wakeW]}
	for fd, target := range owned {
		if target != "anon_inode:[eventpoll]" && !strings.HasPrefix(target, "pipe:") {
			t.Errorf("watcher descriptor %d is %q, want its epoll set or wake pipe", fd, target)
		}
	}
	upstream, _ := tcpPair(t)
	raw, err := upstream.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	hangup := make(chan bool, 1)
	reg, ok := w.watchConn(raw, func(gone bool) { hangup <- gone })
	if !ok {
		t.Fatal("the running watcher refused a registration")
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitClosed(t, w.done, "the watcher's goroutine to return")
	waitClosed(t, hangup, "the hang-up registration to fire at Close")
	w.forget(reg)
	if _, ok := w.watchConn(raw, func(bool) {}); ok {
		t.Error("the closed watcher accepted a registration")
	}
	waitGoroutines(t, goroutines, "after Close")
	after := openFDs(t)
	for fd, target := range owned {
		// A pipe's target names its inode, so a new pipe on the same
		// number differs; nothing else in this test makes an epoll set.
		if after[fd] == target {
			t.Errorf("watcher descriptor %d (%s) still open after Close", fd, target)
		}
	}
}

// openFDs returns the process's open descriptors and what each refers to
// (the target of /proc/self/fd/N).
func openFDs(t *testing.T) map[int]string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc/self/fd: %v", err)
	}
	fds := make(map[int]string, len(entries))
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			fds[fd] = target
		}
	}
	return fds
}
