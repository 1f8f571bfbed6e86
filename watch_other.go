//go:build !linux

package main

import (
	"net"
	"syscall"
)

// clientWatcher has no shared watcher outside Linux: handed-off streams
// watch their client with a read of their own (stream.go).
type clientWatcher struct{}

type watchReg struct{}

// newClientWatcher returns no watcher: a nil *clientWatcher watches nothing.
func newClientWatcher() (*clientWatcher, error) { return nil, nil }

func (w *clientWatcher) close() {}

func (w *clientWatcher) watch(net.Conn, func(bool)) (watchReg, bool) { return watchReg{}, false }

func (w *clientWatcher) watchConn(syscall.RawConn, func(bool)) (watchReg, bool) {
	return watchReg{}, false
}

func (w *clientWatcher) forget(watchReg) {}

func (w *clientWatcher) unwatch(watchReg) {}

func (w *clientWatcher) failed() error { return nil }

func (w *clientWatcher) clientCount() int64 { return 0 }
