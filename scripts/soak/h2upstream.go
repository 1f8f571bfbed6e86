package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// runH2Upstream is `soak h2upstream`: a mock AI upstream over TLS with
// HTTP/2, as the real providers are, serving the bench harness's /hold
// (an idle SSE stream: ": ping" at once and every 5 s) and /stats
// (hold_active, hold_peak, requests), so that `bench hold -upstream` reads
// it. Over HTTP/2 the proxy multiplexes many streams on one upstream
// connection; over the harness's HTTP/1.1 upstream every held stream
// costs the proxy two file descriptors, one to each side.
//
// It writes a self-signed certificate for 127.0.0.1 to -ca-out; start
// the proxy with SSL_CERT_FILE pointing at it.
func runH2Upstream(args []string) error {
	fs := flag.NewFlagSet("h2upstream", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:9443", "listen address (loopback)")
	caOut := fs.String("ca-out", "", "write the certificate (PEM) here, for the proxy's SSL_CERT_FILE (required)")
	fs.Parse(args)
	if *caOut == "" {
		return fmt.Errorf("-ca-out is required")
	}
	cert, err := selfSigned(*caOut)
	if err != nil {
		return err
	}
	var active, peak, requests atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/hold", func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if n := active.Add(1); n > peak.Load() {
			peak.Store(n) // racy max is fine for a gauge
		}
		defer active.Add(-1)
		secs, _ := strconv.Atoi(r.URL.Query().Get("seconds"))
		if secs <= 0 {
			secs = 30
		}
		w.Header().Set("Content-Type", "text/event-stream")
		end := time.After(time.Duration(secs) * time.Second)
		ping := time.NewTicker(5 * time.Second)
		defer ping.Stop()
		for {
			io.WriteString(w, ": ping\n\n")
			w.(http.Flusher).Flush()
			select {
			case <-r.Context().Done():
				return
			case <-end:
				return
			case <-ping.C:
			}
		}
	})
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]int64{"hold_active": active.Load(), "hold_peak": peak.Load(), "requests": requests.Load()})
	})
	srv := &http.Server{
		Addr:              *addr,
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}},
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	fmt.Printf("h2upstream listening on https://%s (certificate in %s)\n", ln.Addr(), *caOut)
	return srv.ServeTLS(ln, "", "")
}

// selfSigned makes a certificate for 127.0.0.1, writes it as PEM to path
// and returns it with its key.
func selfSigned(path string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "soak h2upstream"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
