//go:build !linux

package main

// canReadRaw: outside Linux there is no watcher to see an upstream hang up,
// so streams read through the Transport (streamCopy).
const canReadRaw = false

func (rc *rawCopy) readSocket(*upConn, []byte) {}

func (rc *rawCopy) write(p []byte) error {
	_, err := rc.pr.st.conn.Write(p)
	return err
}
