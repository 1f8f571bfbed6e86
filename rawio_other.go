//go:build !linux

package main

import "net"

// canRawIO: outside Linux the sockets are net.Conn's (rawio.go).
const canRawIO = false

func rawTCP(c net.Conn) net.Conn { return c }
