package main

import (
	"errors"
	"net"
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
	w := &clientWatcher{wait: func(int, []syscall.EpollEvent, int) (int, error) {
		<-fail
		return 0, syscall.EINVAL
	}}
	var failOnce sync.Once
	failNow := func() { failOnce.Do(func() { close(fail) }) }
	t.Cleanup(func() {
		failNow() // ends the loop if the test stopped early
		if w.epfd >= 0 {
			syscall.Close(w.epfd)
		}
	})
	upstream, _ := tcpPair(t)
	client, _ := tcpPair(t)
	raw, err := upstream.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	hangup := make(chan bool, 1)
	if _, ok := w.watchHangup(raw, func(gone bool) { hangup <- gone }); !ok {
		t.Fatal("watchHangup refused before the watcher failed")
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
	if _, ok := w.watchHangup(raw, func(bool) {}); ok {
		t.Error("watchHangup accepted a registration after the watcher stopped")
	}
	select {
	case gone := <-clientEvent:
		t.Errorf("the client registration fired (gone %v): the client did not leave", gone)
	default:
	}
}
