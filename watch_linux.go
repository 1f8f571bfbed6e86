//go:build linux

package main

import (
	"fmt"
	"net"
	"sync"
	"syscall"
)

// clientWatcher watches the client connections of handed-off streams for
// the client leaving, all of them from one goroutine blocked in
// epoll_wait, instead of one goroutine per stream blocked in a read
// (stream.go). A read would also take the bytes of a request the client
// pipelined; epoll only looks. It also watches the upstream connections of
// raw streams for a hang-up (upconn_linux.go). Each registration fires at
// most once.
//
// If epoll_wait ever fails (it cannot but for a bug: a bad descriptor or
// buffer), the watcher stops for good rather than leave registrations that
// never fire. Each hang-up registration then fires, which makes its raw
// stream read the socket to its end after every read, without the watch;
// client registrations are dropped (those streams see their client leave
// at their next write); and register refuses from then on, so new streams
// watch their client with a read of their own. failed says why.
type clientWatcher struct {
	once sync.Once
	epfd int // -1 when epoll is not available: callers fall back to a read
	// wait is epoll_wait (syscall.EpollWait when nil); a test makes it fail.
	wait func(epfd int, events []syscall.EpollEvent, msec int) (int, error)

	mu   sync.Mutex // held while a callback runs, so unwatch can wait it out
	regs map[int32]watchEntry
	next int32
	err  error // why the loop stopped; set once, under mu
}

// watchEntry is a registration's callback, and whether it watches for a
// hang-up only (watchHangup).
type watchEntry struct {
	onEvent    func(gone bool)
	hangupOnly bool
}

var streamWatcher clientWatcher

// ensure starts the watcher's goroutine, once per process.
func (w *clientWatcher) ensure() { w.once.Do(w.start) }

func (w *clientWatcher) start() {
	w.epfd = -1
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return
	}
	w.epfd = fd
	w.regs = make(map[int32]watchEntry)
	if w.wait == nil {
		w.wait = syscall.EpollWait
	}
	go w.loop()
}

// watch registers c: onEvent runs once, on the watcher's goroutine, with
// gone true when the client closed or reset the connection and false when
// it sent bytes (its next request; they stay in the socket). It returns
// the registration, or ok false when c cannot be watched this way.
func (w *clientWatcher) watch(c net.Conn, onEvent func(gone bool)) (reg watchReg, ok bool) {
	sc, isSC := c.(syscall.Conn)
	if !isSC {
		return reg, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return reg, false
	}
	return w.register(raw, syscall.EPOLLIN|syscall.EPOLLRDHUP, onEvent)
}

// watchHangup registers the connection of raw for its peer closing or
// resetting it only: onEvent(true) runs once, on the watcher's goroutine.
// Bytes that arrive do not fire it.
func (w *clientWatcher) watchHangup(raw syscall.RawConn, onEvent func(gone bool)) (reg watchReg, ok bool) {
	return w.register(raw, syscall.EPOLLRDHUP, onEvent)
}

// register adds the descriptor of raw to the epoll set. It does so, and
// unwatch removes it, inside raw.Control, which keeps the descriptor open
// meanwhile: once closed, its number may be another connection's.
func (w *clientWatcher) register(raw syscall.RawConn, events uint32, onEvent func(gone bool)) (reg watchReg, ok bool) {
	w.ensure()
	if w.epfd < 0 {
		return reg, false
	}
	w.mu.Lock()
	if w.err != nil {
		w.mu.Unlock()
		return reg, false
	}
	w.next++
	id := w.next
	w.regs[id] = watchEntry{onEvent: onEvent, hangupOnly: events == syscall.EPOLLRDHUP}
	w.mu.Unlock()
	ev := syscall.EpollEvent{Events: events | epollOneShot, Fd: id}
	var err error
	if cerr := raw.Control(func(fd uintptr) {
		err = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	}); cerr != nil || err != nil {
		w.mu.Lock()
		delete(w.regs, id)
		w.mu.Unlock()
		return reg, false
	}
	return watchReg{id: id, raw: raw}, true
}

// epollOneShot is EPOLLONESHOT (1<<30), which package syscall spells as a
// negative constant on some ports.
const epollOneShot = 1 << 30

// unwatch ends a registration. Once it returns, its callback has either
// run to its end or will never run. A connection closed meanwhile left the
// epoll set when it closed.
func (w *clientWatcher) unwatch(reg watchReg) {
	w.mu.Lock()
	delete(w.regs, reg.id)
	w.mu.Unlock()
	reg.raw.Control(func(fd uintptr) {
		syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

func (w *clientWatcher) loop() {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := w.wait(w.epfd, events, -1)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			w.stop(err)
			return
		}
		for _, ev := range events[:n] {
			gone := ev.Events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0
			w.mu.Lock()
			if e, ok := w.regs[ev.Fd]; ok {
				delete(w.regs, ev.Fd)
				e.onEvent(gone)
			}
			w.mu.Unlock()
		}
	}
}

// stop ends the watcher after epoll_wait failed with err; see clientWatcher.
func (w *clientWatcher) stop(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = fmt.Errorf("epoll_wait: %w", err)
	for id, e := range w.regs {
		delete(w.regs, id)
		if e.hangupOnly {
			e.onEvent(true)
		}
	}
}

// failed returns why the watcher stopped, or nil while it runs.
func (w *clientWatcher) failed() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// watchReg is one registration with the watcher.
type watchReg struct {
	id  int32
	raw syscall.RawConn
}
