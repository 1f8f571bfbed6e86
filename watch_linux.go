//go:build linux

package main

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
)

// clientWatcher watches the client connections of handed-off streams for
// the client leaving, all of them from one goroutine blocked in
// epoll_wait, instead of one goroutine per stream blocked in a read
// (stream.go). A read would also take the bytes of a request the client
// pipelined; epoll only looks, and only for a hang-up: bytes the client
// sends (its next request) stay in the socket for the server and do not
// end the watch. It also watches the upstream connections of raw streams
// for a hang-up (watchConn, upconn_linux.go). A client registration fires
// at most once; an upstream connection's stays for as long as the
// connection is open.
//
// A proxy with the stream hand-off on makes one (newClientWatcher), and
// Server.Close closes it: its goroutine returns and its descriptors are
// closed. A nil *clientWatcher watches nothing: register refuses, and
// streams watch their client with a read of their own.
//
// If epoll_wait ever fails (it cannot but for a bug: a bad descriptor or
// buffer), the watcher stops for good rather than leave registrations that
// never fire. Each hang-up registration then fires, which makes its raw
// stream read the socket to its end after every read, without the watch;
// client registrations are dropped (those streams see their client leave
// at their next write); and register refuses from then on, so new streams
// watch their client with a read of their own. failed says why. Closing
// the watcher stops it the same way, with failed still nil.
type clientWatcher struct {
	epfd int
	// wakeR and wakeW are a pipe whose read end is in the epoll set:
	// close writes to it to end the loop, since epoll_wait does not
	// return when its own descriptor is closed.
	wakeR, wakeW int
	// wait is epoll_wait; a test makes it fail.
	wait func(epfd int, events []syscall.EpollEvent, msec int) (int, error)
	done chan struct{} // closed when loop returns

	// fdMu is read-held while a registration is added to or removed from
	// the epoll set, and write-held to close the set: no EpollCtl ever
	// runs on a descriptor number that was closed, and perhaps reused for
	// another file.
	fdMu      sync.RWMutex
	fdsClosed bool // under fdMu
	closeOnce sync.Once

	mu      sync.Mutex // held while a callback runs, so unwatch can wait it out
	regs    map[int32]watchEntry
	next    int32
	stopped bool  // the loop ended: register refuses
	err     error // why the loop failed; nil if it did not

	// clients counts the client registrations made so far.
	clients atomic.Int64
}

// wakeID is the epoll data of the wake pipe; registrations never use it.
const wakeID = 0

// watchEntry is a registration's callback, and whether it is an
// upstream connection's (watchConn), which stays after it fired and fires
// when the watcher stops.
type watchEntry struct {
	onEvent  func(gone bool)
	upstream bool
}

// newClientWatcher starts a watcher's goroutine. The caller closes it.
func newClientWatcher() (*clientWatcher, error) {
	return startClientWatcher(syscall.EpollWait)
}

// startClientWatcher is newClientWatcher with epoll_wait given.
func startClientWatcher(wait func(int, []syscall.EpollEvent, int) (int, error)) (*clientWatcher, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, fmt.Errorf("pipe2: %w", err)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: wakeID}
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(p[0])
		syscall.Close(p[1])
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	w := &clientWatcher{epfd: epfd, wakeR: p[0], wakeW: p[1], wait: wait,
		done: make(chan struct{}), regs: make(map[int32]watchEntry)}
	go w.loop()
	return w, nil
}

// close ends the watcher: its goroutine returns (each hang-up registration
// fires first, as when epoll_wait fails), its descriptors are closed, and
// register refuses from then on. unwatch stays safe to call. Safe to call
// more than once and on nil.
func (w *clientWatcher) close() {
	if w == nil {
		return
	}
	w.closeOnce.Do(func() {
		// The pipe is empty until now, so this write cannot block or fail
		// for room; a loop that already failed does not read it.
		syscall.Write(w.wakeW, []byte{1})
		<-w.done
		w.fdMu.Lock()
		defer w.fdMu.Unlock()
		w.fdsClosed = true
		syscall.Close(w.epfd)
		syscall.Close(w.wakeR)
		syscall.Close(w.wakeW)
	})
}

// watch registers c: onEvent(true) runs once, on the watcher's goroutine,
// when the client closed (or half-closed) or reset the connection. Bytes
// it sends, before or during the stream, do not fire it: they stay in the
// socket for the server, and a client that pipelined its next request is
// still seen leaving. It returns the registration, or ok false when c
// cannot be watched this way.
func (w *clientWatcher) watch(c net.Conn, onEvent func(gone bool)) (reg watchReg, ok bool) {
	sc, isSC := c.(syscall.Conn)
	if w == nil || !isSC {
		return reg, false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return reg, false
	}
	reg, ok = w.register(raw, syscall.EPOLLRDHUP, onEvent, false)
	if ok {
		w.clients.Add(1)
	}
	return reg, ok
}

// clientCount returns how many client registrations were made so far; 0
// on nil.
func (w *clientWatcher) clientCount() int64 {
	if w == nil {
		return 0
	}
	return w.clients.Load()
}

// watchConn registers the connection of raw for its peer closing or
// resetting it, for as long as the connection is open: onEvent(true)
// runs on the watcher's goroutine at each such event (edge-triggered,
// so once for a close and once more for a reset after it), and once
// when the watcher stops. Bytes that arrive do not fire it. Registered
// once per connection rather than per stream, it costs a stream no
// epoll_ctl: the connection leaves the epoll set when it is closed, and
// its owner calls forget then.
func (w *clientWatcher) watchConn(raw syscall.RawConn, onEvent func(gone bool)) (reg watchReg, ok bool) {
	if w == nil {
		return reg, false
	}
	return w.register(raw, syscall.EPOLLRDHUP|epollEdge, onEvent, true)
}

// forget ends a registration of watchConn whose connection is being
// closed, without epoll_ctl: closing the descriptor takes it out of the
// epoll set. Once forget returns, the callback has either run to its end
// or will never run. Safe on nil and after the watcher stopped.
func (w *clientWatcher) forget(reg watchReg) {
	if w == nil {
		return
	}
	w.mu.Lock()
	delete(w.regs, reg.id)
	w.mu.Unlock()
}

// register adds the descriptor of raw to the epoll set. It does so, and
// unwatch removes it, inside raw.Control, which keeps the descriptor open
// meanwhile: once closed, its number may be another connection's.
// upstream marks an upstream connection's registration (watchConn):
// edge-triggered, it stays after it fired, and it fires when the watcher
// stops; any other is one-shot.
func (w *clientWatcher) register(raw syscall.RawConn, events uint32, onEvent func(gone bool), upstream bool) (reg watchReg, ok bool) {
	w.fdMu.RLock()
	defer w.fdMu.RUnlock()
	if w.fdsClosed {
		return reg, false
	}
	w.mu.Lock()
	if w.stopped {
		w.mu.Unlock()
		return reg, false
	}
	w.next++
	if w.next == wakeID {
		w.next++
	}
	id := w.next
	w.regs[id] = watchEntry{onEvent: onEvent, upstream: upstream}
	w.mu.Unlock()
	if !upstream {
		events |= epollOneShot
	}
	ev := syscall.EpollEvent{Events: events, Fd: id}
	var err error
	if cerr := raw.Control(func(fd uintptr) {
		err = syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	}); cerr != nil || err != nil {
		w.mu.Lock()
		delete(w.regs, id)
		w.mu.Unlock()
		return reg, false
	}
	reg = watchReg{id: id, raw: raw}
	// The loop may have stopped while the descriptor was added: a
	// registration it did not see would never fire.
	w.mu.Lock()
	_, pending := w.regs[id]
	lost := w.stopped && pending
	w.mu.Unlock()
	if lost {
		w.remove(reg)
		return watchReg{}, false
	}
	return reg, true
}

// epollOneShot is EPOLLONESHOT (1<<30), which package syscall spells as a
// negative constant on some ports; epollEdge is EPOLLET (1<<31), which it
// spells as a negative constant.
const (
	epollOneShot = 1 << 30
	epollEdge    = 1 << 31
)

// unwatch ends a registration. Once it returns, its callback has either
// run to its end or will never run. A connection closed meanwhile left the
// epoll set when it closed.
func (w *clientWatcher) unwatch(reg watchReg) {
	if w == nil {
		return
	}
	w.fdMu.RLock()
	defer w.fdMu.RUnlock()
	w.remove(reg)
}

// remove is unwatch with fdMu read-held.
func (w *clientWatcher) remove(reg watchReg) {
	w.forget(reg)
	if w.fdsClosed {
		return
	}
	reg.raw.Control(func(fd uintptr) {
		syscall.EpollCtl(w.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

func (w *clientWatcher) loop() {
	defer close(w.done)
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := w.wait(w.epfd, events, -1)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			w.stop(fmt.Errorf("epoll_wait: %w", err))
			return
		}
		for _, ev := range events[:n] {
			if ev.Fd == wakeID {
				w.stop(nil)
				return
			}
			gone := ev.Events&(syscall.EPOLLRDHUP|syscall.EPOLLHUP|syscall.EPOLLERR) != 0
			w.mu.Lock()
			if e, ok := w.regs[ev.Fd]; ok {
				if !e.upstream {
					delete(w.regs, ev.Fd)
				}
				e.onEvent(gone)
			}
			w.mu.Unlock()
		}
	}
}

// stop ends the watcher's registrations when its loop ends: err is why
// epoll_wait failed, or nil when the watcher is being closed. See
// clientWatcher.
func (w *clientWatcher) stop(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped, w.err = true, err
	for id, e := range w.regs {
		delete(w.regs, id)
		if e.upstream {
			e.onEvent(true)
		}
	}
}

// failed returns why the watcher's loop failed, or nil while it runs, once
// it was closed, and on nil.
func (w *clientWatcher) failed() error {
	if w == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// watchReg is one registration with the watcher.
type watchReg struct {
	id  int32
	raw syscall.RawConn
}
