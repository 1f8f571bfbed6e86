package main

// The JSON of a request log record, appended by hand. Every record is
// encoded once per sink (the store, REQUEST_LOG) and once per API answer;
// encoding/json's reflection and the fields' MarshalJSON methods cost a
// measurable share of a small request's CPU (docs/performance.md, "The
// request log"). appendJSON writes the same bytes as encoding/json
// would for the record's tags and types (FuzzLogRecordJSON checks it
// against encoding/json on every input) in a fraction of that, into a
// buffer the caller reuses. Decoding stays encoding/json's.

import (
	"math"
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"
)

// MarshalJSON writes r as appendJSON does, its id included.
func (r logRecord) MarshalJSON() ([]byte, error) {
	return r.appendJSON(make([]byte, 0, 512), true), nil
}

// appendJSON appends r's JSON object to b: every field in the order of
// logRecord, "id" only when withID (a store keeps the id as its key).
func (r *logRecord) appendJSON(b []byte, withID bool) []byte {
	b = append(b, '{')
	if withID {
		b = append(b, `"id":`...)
		b = appendJSONString(b, r.ID)
		b = append(b, ',')
	}
	b = append(b, `"time":"`...)
	b = time.Time(r.Time).UTC().AppendFormat(b, requestLogTimeFormat)
	b = append(b, `","prefix":`...)
	b = appendJSONString(b, r.Prefix)
	b = append(b, `,"method":`...)
	b = appendJSONString(b, r.Method)
	b = append(b, `,"path":`...)
	b = appendJSONString(b, r.Path)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	b = append(b, `,"code":`...)
	b = appendJSONString(b, r.Code)
	b = append(b, `,"key_id":`...)
	b = appendOptString(b, r.KeyID)
	b = append(b, `,"key_name":`...)
	b = appendOptString(b, r.KeyName)
	b = append(b, `,"model":`...)
	b = appendOptString(b, r.Model)
	b = append(b, `,"stream":`...)
	b = strconv.AppendBool(b, r.Stream)
	b = append(b, `,"prompt_tokens":`...)
	b = strconv.AppendInt(b, r.PromptTokens, 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, r.CompletionTokens, 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, r.TotalTokens, 10)
	b = append(b, `,"latency_ms":`...)
	b = appendJSONFloat(b, r.LatencyMS)
	b = append(b, `,"ttfb_ms":`...)
	b = appendJSONFloat(b, r.TTFBMS)
	b = append(b, `,"bytes_in":`...)
	b = strconv.AppendInt(b, r.BytesIn, 10)
	b = append(b, `,"bytes_out":`...)
	b = strconv.AppendInt(b, r.BytesOut, 10)
	b = append(b, `,"target":`...)
	if r.Target < 0 {
		b = append(b, "null"...)
	} else {
		b = strconv.AppendInt(b, int64(r.Target), 10)
	}
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(r.Attempts), 10)
	b = append(b, `,"client_closed":`...)
	b = strconv.AppendBool(b, r.ClientClosed)
	b = append(b, `,"client_ip":"`...)
	if ip := netip.Addr(r.ClientIP); ip.IsValid() {
		b = ip.AppendTo(b)
	}
	return append(b, `"}`...)
}

// appendOptString appends s as a JSON string, or null when it is empty.
func appendOptString(b []byte, s optString) []byte {
	if s == "" {
		return append(b, "null"...)
	}
	return appendJSONString(b, string(s))
}

// appendJSONFloat appends f as encoding/json writes a float64 (ES6
// number formatting); NaN and infinities, which encoding/json refuses and
// a duration never is, are written as 0.
func appendJSONFloat(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(b, '0')
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// Clean up e-09 to e-9, as encoding/json does.
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}

// appendJSONString appends s as encoding/json writes a string with HTML
// escaping on (its default): quotes, backslashes and control characters
// escaped, <, > and & as \u003c, \u003e and \u0026, U+2028 and U+2029
// escaped, and each byte of invalid UTF-8 as \ufffd.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
