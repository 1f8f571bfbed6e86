package main

import (
	"bytes"
	"encoding/json"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// refRecord is logRecord in encoding/json's own types: what appendJSON
// must write, byte for byte.
type refRecord struct {
	ID               string  `json:"id"`
	Time             string  `json:"time"`
	Prefix           string  `json:"prefix"`
	Method           string  `json:"method"`
	Path             string  `json:"path"`
	Status           int     `json:"status"`
	Code             string  `json:"code"`
	KeyID            *string `json:"key_id"`
	KeyName          *string `json:"key_name"`
	Model            *string `json:"model"`
	Stream           bool    `json:"stream"`
	PromptTokens     int64   `json:"prompt_tokens"`
	CompletionTokens int64   `json:"completion_tokens"`
	TotalTokens      int64   `json:"total_tokens"`
	LatencyMS        float64 `json:"latency_ms"`
	TTFBMS           float64 `json:"ttfb_ms"`
	BytesIn          int64   `json:"bytes_in"`
	BytesOut         int64   `json:"bytes_out"`
	Target           *int    `json:"target"`
	Attempts         int     `json:"attempts"`
	ClientClosed     bool    `json:"client_closed"`
	ClientIP         string  `json:"client_ip"`
}

// refJSON is encoding/json's encoding of r.
func refJSON(t testing.TB, r *logRecord) []byte {
	t.Helper()
	opt := func(s optString) *string {
		if s == "" {
			return nil
		}
		v := string(s)
		return &v
	}
	ref := refRecord{ID: r.ID, Time: time.Time(r.Time).UTC().Format(requestLogTimeFormat),
		Prefix: r.Prefix, Method: r.Method, Path: r.Path, Status: r.Status, Code: r.Code,
		KeyID: opt(r.KeyID), KeyName: opt(r.KeyName), Model: opt(r.Model), Stream: r.Stream,
		PromptTokens: r.PromptTokens, CompletionTokens: r.CompletionTokens, TotalTokens: r.TotalTokens,
		LatencyMS: r.LatencyMS, TTFBMS: r.TTFBMS, BytesIn: r.BytesIn, BytesOut: r.BytesOut,
		Attempts: r.Attempts, ClientClosed: r.ClientClosed, ClientIP: r.ClientIP.String()}
	if r.Target >= 0 {
		v := int(r.Target)
		ref.Target = &v
	}
	b, err := json.Marshal(ref)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLogJSON: appendJSON writes what encoding/json writes, with and
// without the id, and what it writes decodes back to r.
func checkLogJSON(t testing.TB, r *logRecord) {
	t.Helper()
	got, want := r.appendJSON(nil, true), refJSON(t, r)
	if !bytes.Equal(got, want) {
		t.Fatalf("appendJSON:\n%s\nencoding/json:\n%s", got, want)
	}
	if m, _ := json.Marshal(r); !bytes.Equal(m, want) {
		t.Fatalf("json.Marshal:\n%s\nencoding/json:\n%s", m, want)
	}
	idField := append([]byte(`"id":`), refJSONString(t, r.ID)...)
	noID := bytes.Replace(want, append(idField, ','), nil, 1)
	if got := r.appendJSON(nil, false); !bytes.Equal(got, noID) {
		t.Fatalf("without the id:\n%s\nwant:\n%s", got, noID)
	}
	var back logRecord
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatalf("decode %s: %v", got, err)
	}
	if !validUTF8Record(r) || math.IsNaN(r.LatencyMS) || math.IsNaN(r.TTFBMS) {
		return
	}
	back.Time = r.Time // the JSON holds milliseconds
	if time.Time(r.Time).Truncate(time.Millisecond).Equal(time.Time(r.Time)) && back != *r {
		t.Fatalf("round trip:\n%+v\nwant:\n%+v", back, *r)
	}
}

func refJSONString(t testing.TB, s string) []byte {
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func validUTF8Record(r *logRecord) bool {
	for _, s := range []string{r.ID, r.Prefix, r.Method, r.Path, r.Code, string(r.KeyID), string(r.KeyName), string(r.Model)} {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}

func TestLogRecordJSON(t *testing.T) {
	base := logRecord{ID: "187d2c4b9e3a1f00", Time: logTime(time.Date(2026, 12, 2, 8, 0, 0, 123_000_000, time.UTC)),
		Prefix: "/openai", Method: "POST", Path: "/v1/chat/completions", Status: 200,
		KeyID: "k_1", KeyName: "team-a", Model: "gpt-4o", Stream: true, PromptTokens: 12,
		CompletionTokens: 30, TotalTokens: 42, LatencyMS: 812.4, TTFBMS: 310.7, BytesIn: 230,
		BytesOut: 4100, Target: 0, Attempts: 1, ClientIP: logAddr(netip.MustParseAddr("203.0.113.7"))}
	cases := map[string]func(r *logRecord){
		"as is":         func(r *logRecord) {},
		"nulls":         func(r *logRecord) { r.KeyID, r.KeyName, r.Model, r.Target, r.ClientIP = "", "", "", noIndex, logAddr{} },
		"escapes":       func(r *logRecord) { r.Model = "a\"b\\c\n\t\x01<tag>&\u2028\u2029é😀" },
		"invalid utf-8": func(r *logRecord) { r.Path = "/a\xffb\xc3" },
		"ipv6":          func(r *logRecord) { r.ClientIP = logAddr(netip.MustParseAddr("2001:db8::1")) },
		"floats":        func(r *logRecord) { r.LatencyMS, r.TTFBMS = 1e21, 1e-7 },
		"big floats":    func(r *logRecord) { r.LatencyMS, r.TTFBMS = 123456789.1, 0.1 },
		"other zone": func(r *logRecord) {
			r.Time = logTime(time.Date(2026, 1, 2, 3, 4, 5, 6_000_000, time.FixedZone("X", -5*3600)))
		},
		"negative": func(r *logRecord) { r.Status, r.BytesIn, r.Target = -1, -5, 3 },
		"long":     func(r *logRecord) { r.Path = strings.Repeat("/segment", 500) },
	}
	for name, change := range cases {
		t.Run(name, func(t *testing.T) {
			r := base
			change(&r)
			checkLogJSON(t, &r)
		})
	}
}

// FuzzLogRecordJSON: whatever the strings and figures, appendJSON writes
// exactly what encoding/json writes.
func FuzzLogRecordJSON(f *testing.F) {
	f.Add("/openai", "/v1/chat", "gpt-4o", "team-a", "", 812.4, int64(42), 0)
	f.Add("/a<b>", "/\xff\x00\"", "m\u2028", "", "rate_limited", 1e-9, int64(-1), -1)
	f.Fuzz(func(t *testing.T, prefix, path, model, keyName, code string, lat float64, tokens int64, target int) {
		r := logRecord{ID: "0000000000000001", Time: logTime(time.Unix(1, 0)), Prefix: prefix, Method: "GET",
			Path: path, Code: code, Model: optString(model), KeyName: optString(keyName), KeyID: optString(keyName),
			LatencyMS: lat, TTFBMS: lat / 3, TotalTokens: tokens, Target: optIndex(max(target, -1))}
		if math.IsNaN(lat) || math.IsInf(lat, 0) {
			return // encoding/json refuses them; a duration is never one
		}
		checkLogJSON(t, &r)
	})
}

// BenchmarkLogRecordJSON: one record's JSON into a reused buffer.
func BenchmarkLogRecordJSON(b *testing.B) {
	r := logRecord{ID: "187d2c4b9e3a1f00", Time: logTime(time.Now()), Prefix: "/openai", Method: "POST",
		Path: "/v1/chat/completions", Status: 200, KeyID: "k_1", KeyName: "team-a", Model: "gpt-4o",
		LatencyMS: 812.4, TTFBMS: 310.7, Target: 0, Attempts: 1, ClientIP: logAddr(netip.MustParseAddr("203.0.113.7"))}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = r.appendJSON(buf[:0], true)
	}
}
