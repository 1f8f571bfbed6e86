package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
)

// Token usage is read from response bodies as they pass through the proxy
// (SPEC §3 item 11): the bytes are observed, never changed or delayed. The
// parser is a streaming JSON tokenizer with a fixed-size state, fed each
// chunk right after the upstream read returns it, so a response of any size
// and any split into reads costs the same bounded memory.
//
// What is read, by provider:
//
//	OpenAI chat/completions/embeddings  "model", "usage":{prompt_tokens, completion_tokens, total_tokens,
//	                                    prompt_tokens_details:{cached_tokens}}; SSE: the final chunk
//	                                    (stream_options.include_usage)
//	OpenAI Responses                    "model", "usage":{input_tokens, output_tokens, total_tokens,
//	                                    input_tokens_details:{cached_tokens}}, also under "response"
//	                                    in SSE events (response.completed)
//	Anthropic                           "model", "usage":{input_tokens, output_tokens,
//	                                    cache_creation_input_tokens, cache_read_input_tokens}; SSE:
//	                                    message_start ("message":{model, usage}) and message_delta
//	                                    ("usage":{output_tokens, …})
//	Gemini                              "modelVersion", "usageMetadata":{promptTokenCount,
//	                                    candidatesTokenCount, thoughtsTokenCount, totalTokenCount,
//	                                    cachedContentTokenCount}
//	Groq (older streams)                "x_groq":{"usage":{…OpenAI fields}} in the last chunk
//	Cohere v2                           "usage":{"tokens":{input_tokens, output_tokens}}, in SSE
//	                                    under "delta" of the message-end event
//
// Streamed usage is cumulative (Anthropic message_delta, Gemini chunks), so
// for every field the last value seen counts, never the sum.
//
// Once a stream has named its model, an event whose data is one line and
// holds no usage object is passed over untokenized (skippableEvent): most
// of a stream's events are content deltas. The model is then the last one
// named in an event that was tokenized; providers name one model per
// stream.
//
// A gzip-encoded JSON body (OpenAI's SDKs ask for gzip) is kept compressed
// as it passes, up to usageGzipLimit, and a copy is decoded by finishGzip
// after the client has it all. Other encodings are not decoded: unknown.

// usageField names one token count the parser reads.
type usageField uint8

const (
	fPromptTokens       usageField = iota // prompt_tokens (OpenAI chat)
	fCompletionTokens                     // completion_tokens
	fTotalTokens                          // total_tokens (OpenAI)
	fInputTokens                          // input_tokens (Anthropic, OpenAI Responses)
	fOutputTokens                         // output_tokens
	fCacheCreation                        // cache_creation_input_tokens (Anthropic)
	fCacheReadInput                       // cache_read_input_tokens (Anthropic)
	fCachedTokens                         // *_tokens_details.cached_tokens (OpenAI)
	fPromptCount                          // promptTokenCount (Gemini)
	fCandidatesCount                      // candidatesTokenCount
	fThoughtsCount                        // thoughtsTokenCount
	fTotalCount                           // totalTokenCount
	fCachedContentCount                   // cachedContentTokenCount
	numUsageFields
)

const (
	// maxModelName is the longest model name kept; longer ones are cut.
	maxModelName = 96
	// usageScanLimit is how much of a JSON body is tokenized. Past it, only
	// a tail of usageTailSize bytes is kept and searched at the end: usage
	// sits at the end of large bodies (embeddings), and scanning all of a
	// huge body would cost CPU for nothing.
	usageScanLimit = 1 << 20
	usageTailSize  = 16 << 10
	// usageGzipLimit bounds the compressed JSON body kept to be decoded
	// once it has passed; a larger one counts as unknown. usageGunzipLimit
	// bounds what is decoded from it (a zip bomb stops there).
	usageGzipLimit   = 256 << 10
	usageGunzipLimit = 8 << 20
	// usageGzipKeep is the largest compressed buffer kept for reuse.
	usageGzipKeep = 64 << 10
	// jsonMaxDepth bounds the container stack. A document nested deeper
	// is given up on (usage is never deeper than 4).
	jsonMaxDepth = 32
	// jsonKeyMax bounds a captured key; longer keys are of no interest.
	jsonKeyMax = 32
)

// tokenUsage is what a response said about its tokens. Known is false when
// the response carried no usage (it is counted as unknown, not as 0).
// Tokens[tokPrompt] includes cached prompt tokens (tokCacheRead,
// tokCacheWrite), as OpenAI and Gemini count them; Anthropic's separate
// cache counts are added to it.
type tokenUsage struct {
	Known  bool
	Tokens tokenCounts
	// Model is the model name the response reported, nil if none. It
	// points into the parser's buffer: valid only during the observer call.
	Model []byte
}

// Body kinds the parser understands.
const (
	usageOff uint8 = iota
	usageJSON
	usageSSE
	usageGzipJSON // gzip-encoded JSON: kept compressed, decoded by finishGzip
)

// SSE line states.
const (
	lineStart  uint8 = iota // at the first byte of a line
	linePrefix              // matching "data:"
	lineSpace               // after "data:", an optional space
	lineData                // in a data line: bytes go to the JSON scanner
	lineSkip                // in another field or a comment: skipped
)

// usageParser reads token usage from one response body. It lives in the
// pooled proxyRequest and is reused: reset prepares it for a response,
// feed takes the bytes as they are read, finish returns the result. Its
// memory is fixed apart from the tail buffer, allocated once, the first
// time a JSON body exceeds usageScanLimit, and kept for reuse. Not safe
// for concurrent use.
type usageParser struct {
	mode  uint8
	seen  uint32 // bit per usageField observed
	vals  [numUsageFields]int64
	model [maxModelName]byte
	nm    int // length of model; 0 if none seen

	sc jsonScanner

	// JSON bodies.
	scanned int64  // bytes tokenized so far
	tail    []byte // last bytes of a body larger than usageScanLimit; cap 2*usageTailSize
	tailing bool

	// Gzip-encoded JSON (what OpenAI's SDKs ask for): the compressed bytes,
	// at most usageGzipLimit of them.
	gz []byte

	// SSE.
	line   uint8
	pfx    uint8 // bytes of "data:" matched
	prevCR bool  // the last line ended with '\r' (a '\n' right after it is the same line end)
	inData bool  // the current event has had a data line
}

// reset prepares the parser for a response with header h: it parses JSON
// and SSE bodies that are not compressed, and gzip-encoded JSON bodies of
// at most usageGzipLimit (kept compressed as they pass, decoded by
// finishGzip once the client has them all); it ignores everything else.
// The bytes sent to the client are never changed: only a copy is decoded.
func (u *usageParser) reset(h http.Header) {
	u.mode = usageOff
	u.seen, u.nm, u.scanned, u.tailing = 0, 0, 0, false
	u.vals = [numUsageFields]int64{}
	u.tail = u.tail[:0]
	if cap(u.gz) > usageGzipKeep {
		u.gz = nil
	}
	u.gz = u.gz[:0]
	u.sc.reset()
	u.line, u.pfx, u.prevCR, u.inData = lineStart, 0, false, false
	gzipped := false
	if ce := h["Content-Encoding"]; len(ce) > 0 && ce[0] != "" && !strings.EqualFold(ce[0], "identity") {
		if len(ce) > 1 || !strings.EqualFold(strings.TrimSpace(ce[0]), "gzip") {
			return
		}
		gzipped = true
	}
	base := mediaType(h["Content-Type"])
	switch {
	case strings.EqualFold(base, "application/json"):
		u.mode = usageJSON
		if gzipped {
			u.mode = usageGzipJSON
		}
	case strings.EqualFold(base, "text/event-stream") && !gzipped:
		u.mode = usageSSE
	}
}

// gzipped reports whether the body is gzip-encoded JSON whose usage is
// read by finishGzip rather than finish.
func (u *usageParser) gzipped() bool { return u.mode == usageGzipJSON }

// active reports whether the parser still wants bytes.
func (u *usageParser) active() bool { return u.mode != usageOff }

// feed observes the next bytes of the body.
func (u *usageParser) feed(p []byte) {
	switch u.mode {
	case usageJSON:
		u.feedJSON(p)
	case usageSSE:
		u.feedSSE(p)
	case usageGzipJSON:
		if len(u.gz)+len(p) > usageGzipLimit {
			u.mode, u.gz = usageOff, nil // too large to keep: unknown
			return
		}
		u.gz = append(u.gz, p...)
	}
}

// finishGzip decodes the compressed JSON body kept by feed with zr (reset
// here; the caller owns it and may pool it), reading through buf, and
// returns its usage like finish. A body that does not decode counts as
// unknown. It runs once the body has passed, so it delays no byte.
func (u *usageParser) finishGzip(zr *gzip.Reader, buf []byte) tokenUsage {
	u.mode = usageJSON
	var src bytes.Reader
	src.Reset(u.gz)
	if err := zr.Reset(&src); err != nil {
		u.mode = usageOff
		return tokenUsage{}
	}
	zr.Multistream(false)
	r := io.LimitReader(zr, usageGunzipLimit)
	for {
		n, err := r.Read(buf)
		u.feedJSON(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			u.mode = usageOff
			return tokenUsage{}
		}
	}
	return u.finish()
}

func (u *usageParser) feedJSON(p []byte) {
	if !u.tailing {
		n := int64(len(p))
		if room := usageScanLimit + usageTailSize - u.scanned; n > room {
			n = room
		}
		u.sc.feed(u, p[:n])
		u.scanned += n
		if u.scanned < usageScanLimit {
			return
		}
		// Tokenizing goes on for one more tail's worth, so that a body
		// that ends within it is still read whole; the tail kept from
		// here is searched only for a larger one.
		if u.scanned >= usageScanLimit+usageTailSize {
			u.tailing = true
		}
	}
	u.keepTail(p)
}

// keepTail appends p to the tail buffer, keeping at least its last
// usageTailSize bytes contiguous. Amortised, each byte is copied twice.
func (u *usageParser) keepTail(p []byte) {
	if u.tail == nil {
		u.tail = make([]byte, 0, 2*usageTailSize)
	}
	if len(p) >= usageTailSize {
		u.tail = append(u.tail[:0], p[len(p)-usageTailSize:]...)
		return
	}
	if len(u.tail)+len(p) > cap(u.tail) {
		keep := usageTailSize - len(p)
		n := copy(u.tail[:keep], u.tail[len(u.tail)-keep:])
		u.tail = u.tail[:n]
	}
	u.tail = append(u.tail, p...)
}

// feedSSE splits the stream into lines without buffering them: the bytes
// of "data:" lines go straight to the JSON scanner, which keeps its state
// across reads; a blank line ends the event and resets it.
func (u *usageParser) feedSSE(p []byte) {
	for len(p) > 0 {
		switch u.line {
		case lineStart:
			c := p[0]
			if c == '\n' && u.prevCR {
				u.prevCR = false
				p = p[1:]
				continue
			}
			u.prevCR = false
			if c == '\n' || c == '\r' {
				u.prevCR = c == '\r'
				u.endEvent()
				p = p[1:]
				continue
			}
			u.line, u.pfx = linePrefix, 0
		case linePrefix:
			if p[0] == "data:"[u.pfx] {
				u.pfx++
				p = p[1:]
				if u.pfx == 5 {
					u.line = lineSpace
				}
				continue
			}
			u.line = lineSkip
		case lineSpace:
			if p[0] == ' ' {
				p = p[1:]
			}
			if !u.inData && u.nm > 0 {
				if e := skippableEvent(p); e >= 0 {
					// The model is known and this event's data, all of
					// it in p, holds no usage: its line is passed over,
					// up to the blank line that ends the event.
					u.line = lineStart
					p = p[e+1:]
					continue
				}
			}
			if u.inData {
				// Data lines of one event are joined with a newline.
				u.sc.feed(u, newline)
			}
			u.inData = true
			u.line = lineData
		case lineData, lineSkip:
			i := lineEnd(p)
			if u.line == lineData {
				u.sc.feed(u, p[:i])
			}
			if i == len(p) {
				return
			}
			u.prevCR = p[i] == '\r'
			u.line = lineStart
			p = p[i+1:]
		}
	}
}

var (
	newline      = []byte{'\n'}
	openBrace    = []byte{'{'}
	blankLine    = []byte("\n\n")
	usageWord    = []byte("usage")
	metadataWord = []byte("Metadata")
)

// lineEnd returns the index of the first '\n' or '\r' in p, or len(p).
func lineEnd(p []byte) int {
	i := bytes.IndexByte(p, '\n')
	if i < 0 {
		i = len(p)
	}
	if j := bytes.IndexByte(p[:i], '\r'); j >= 0 {
		return j
	}
	return i
}

// skippableEvent returns the index of the newline that ends the data line
// at the start of p if that line is an event's only one, ended in p by a
// blank line ("\n\n"), and holds no usage object: no "usage" (or
// "usageMetadata") followed by '{'; otherwise -1. Most
// chunks of a stream are such (content deltas, OpenAI's "usage":null), so
// tokenizing them was most of the parser's work on a stream. Anything
// else (an event split across reads, several data lines, "\r\n" line
// ends) is tokenized as before: the check errs towards tokenizing.
func skippableEvent(p []byte) int {
	e := bytes.Index(p, blankLine)
	if e < 0 || lineEnd(p) != e {
		return -1
	}
	ev := p[:e]
	for {
		i := bytes.Index(ev, usageWord)
		if i < 0 {
			return e
		}
		ev = bytes.TrimPrefix(ev[i+len(usageWord):], metadataWord)
		j := 0
		for j < len(ev) && (ev[j] == '"' || ev[j] == ':' || isJSONSpace(ev[j])) {
			j++
		}
		if j == len(ev) || ev[j] == '{' {
			return -1
		}
	}
}

// endEvent ends an SSE event: its data is one JSON document.
func (u *usageParser) endEvent() {
	if u.inData {
		u.sc.reset()
		u.inData = false
	}
}

// finish ends the body (at EOF, or when it is closed early) and returns
// what was read. The parser is off afterwards until the next reset.
func (u *usageParser) finish() tokenUsage {
	if u.mode == usageJSON && u.tailing {
		u.scanTail()
	}
	u.mode = usageOff
	return u.result()
}

// Keys whose value the tail search looks for; see scanTail.
var tailKeys = [][]byte{[]byte(`"usage"`), []byte(`"usageMetadata"`), []byte(`"model"`), []byte(`"modelVersion"`)}

// scanTail reads usage from the tail of a body too large to tokenize: it
// finds the earliest of the last occurrences of the usage and model keys
// and tokenizes from there as if it were the start of the top-level object
// (they are top-level keys, and what follows them closes that object).
func (u *usageParser) scanTail() {
	t := u.tail
	if len(t) > usageTailSize {
		t = t[len(t)-usageTailSize:]
	}
	start := -1
	for _, k := range tailKeys {
		if i := lastKey(t, k); i >= 0 && (start < 0 || i < start) {
			start = i
		}
	}
	if start < 0 {
		return
	}
	var sc jsonScanner
	sc.reset()
	sc.feed(u, openBrace)
	sc.feed(u, t[start:])
}

// lastKey returns the index of the last occurrence of key in t that is an
// object key (not escaped inside a string, followed by a colon), or -1.
func lastKey(t, key []byte) int {
	for end := len(t); ; {
		i := bytes.LastIndex(t[:end], key)
		if i < 0 {
			return -1
		}
		end = i
		if i > 0 && t[i-1] == '\\' {
			continue
		}
		j := i + len(key)
		for j < len(t) && isJSONSpace(t[j]) {
			j++
		}
		if j < len(t) && t[j] == ':' {
			return i
		}
	}
}

// result turns the fields seen into counts of each token kind.
func (u *usageParser) result() tokenUsage {
	has := func(f usageField) bool { return u.seen&(1<<f) != 0 }
	v := &u.vals
	var r tokenUsage
	if u.nm > 0 {
		r.Model = u.model[:u.nm]
	}
	t := &r.Tokens
	switch {
	case has(fPromptTokens) || has(fCompletionTokens):
		t[tokPrompt], t[tokCompletion], t[tokCacheRead] = v[fPromptTokens], v[fCompletionTokens], v[fCachedTokens]
	case has(fInputTokens) || has(fOutputTokens) || has(fCacheCreation) || has(fCacheReadInput):
		// Anthropic's input_tokens leaves the cache out; OpenAI Responses'
		// includes it (and reports no cache_*_input_tokens).
		t[tokPrompt] = v[fInputTokens] + v[fCacheCreation] + v[fCacheReadInput]
		t[tokCompletion] = v[fOutputTokens]
		t[tokCacheRead], t[tokCacheWrite] = v[fCacheReadInput]+v[fCachedTokens], v[fCacheCreation]
	case has(fPromptCount) || has(fCandidatesCount) || has(fTotalCount):
		t[tokPrompt] = v[fPromptCount]
		t[tokCompletion] = v[fCandidatesCount] + v[fThoughtsCount]
		t[tokCacheRead] = v[fCachedContentCount]
	default:
		return r
	}
	r.Known = true
	switch {
	case has(fTotalTokens):
		t[tokTotal] = v[fTotalTokens]
	case has(fTotalCount):
		t[tokTotal] = v[fTotalCount]
	default:
		t[tokTotal] = t[tokPrompt] + t[tokCompletion]
	}
	return r
}

// Scanner states.
const (
	jsValue  uint8 = iota // expecting a value
	jsObjKey              // in an object, expecting a key or '}'
	jsKey                 // in a key string
	jsColon               // after a key
	jsAfter               // after a value: ',' or a closing bracket
	jsString              // in a string value
	jsNumber
	jsLiteral // true, false, null
	jsBad     // malformed: everything is ignored until reset
)

// What an open container is, as far as usage is concerned.
const (
	ctxOther     uint8 = iota // an object of no interest
	ctxArray                  // any array
	ctxRoot                   // the top-level object
	ctxContainer              // a top-level object that may hold model and usage; see classify
	ctxUsage                  // "usage" or "usageMetadata"
	ctxDetails                // "prompt_tokens_details" or "input_tokens_details"
)

// What the current key means; values from keyField are usageFields.
const (
	keyNone uint8 = iota + 64
	keyModel
	keyUsage
	keyContainer
	keyDetails
)

// jsonScanner tokenizes JSON incrementally, with a fixed-size state, and
// reports to a usageParser the numbers and strings under the keys it
// cares about. Input may be split anywhere. After a complete top-level
// value it accepts another (concatenated documents).
type jsonScanner struct {
	state   uint8
	key     uint8 // meaning of the key whose value comes next
	capture bool  // capturing the current string: a key into buf, a model name into the parser's model
	esc     bool  // in a string, after a backslash
	neg     bool
	intPart bool // still in the integer part of a number
	depth   int
	num     int64
	n       int // bytes captured
	ctx     [jsonMaxDepth]uint8
	buf     [jsonKeyMax]byte
}

func (s *jsonScanner) reset() {
	s.state, s.key, s.depth, s.capture, s.esc = jsValue, keyNone, 0, false, false
}

func (s *jsonScanner) top() uint8 {
	if s.depth == 0 {
		return ctxOther
	}
	return s.ctx[s.depth-1]
}

func (s *jsonScanner) push(c uint8) {
	if s.depth == jsonMaxDepth {
		s.state = jsBad
		return
	}
	s.ctx[s.depth] = c
	s.depth++
}

// endValue moves on after a complete value.
func (s *jsonScanner) endValue() {
	s.key = keyNone
	if s.depth == 0 {
		s.state = jsValue
	} else {
		s.state = jsAfter
	}
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\n' || c == '\r' || c == '\t' }

// feed tokenizes p, reporting to u.
func (s *jsonScanner) feed(u *usageParser, p []byte) {
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch s.state {
		case jsValue:
			switch {
			case isJSONSpace(c):
			case c == '{':
				ctx := ctxOther
				switch {
				case s.depth == 0:
					ctx = ctxRoot
				case s.key == keyUsage:
					ctx = ctxUsage
				case s.key == keyContainer:
					ctx = ctxContainer
				case s.key == keyDetails:
					ctx = ctxDetails
				}
				s.state, s.key = jsObjKey, keyNone
				s.push(ctx)
			case c == '[':
				s.key = keyNone
				s.push(ctxArray)
			case c == ']' && s.top() == ctxArray:
				s.depth--
				s.endValue()
			case c == '"':
				s.state, s.esc, s.n = jsString, false, 0
				if s.key == keyModel {
					s.capture, u.nm = true, 0
				}
			case c == '-' || '0' <= c && c <= '9':
				s.state, s.num, s.neg, s.intPart = jsNumber, 0, c == '-', true
				if c != '-' {
					s.num = int64(c - '0')
				}
			case 'a' <= c && c <= 'z':
				s.state = jsLiteral
			default:
				s.state = jsBad
			}
		case jsObjKey:
			switch {
			case isJSONSpace(c):
			case c == '"':
				s.state, s.esc, s.n, s.capture = jsKey, false, 0, true
			case c == '}':
				s.depth--
				s.endValue()
			default:
				s.state = jsBad
			}
		case jsKey, jsString:
			if !s.capture && !s.esc {
				// Fast path through string content nobody reads: jump to
				// the next quote unless a backslash comes first.
				q := bytes.IndexByte(p[i:], '"')
				if q < 0 {
					q = len(p) - i
				}
				if b := bytes.IndexByte(p[i:i+q], '\\'); b >= 0 {
					q = b
				}
				i += q
				if i == len(p) {
					return
				}
				c = p[i]
			}
			switch {
			case s.esc:
				s.esc = false
				s.captureByte(u, c)
			case c == '\\':
				s.esc = true
			case c == '"':
				if s.state == jsKey {
					s.key = s.classify()
					s.state = jsColon
				} else {
					if s.capture {
						u.nm = min(s.n, len(u.model))
					}
					s.capture = false
					s.endValue()
				}
			default:
				s.captureByte(u, c)
			}
		case jsColon:
			switch {
			case isJSONSpace(c):
			case c == ':':
				s.state = jsValue
			default:
				s.state = jsBad
			}
		case jsAfter:
			switch {
			case isJSONSpace(c):
			case c == ',':
				if s.top() == ctxArray {
					s.state = jsValue
				} else {
					s.state = jsObjKey
				}
				s.key = keyNone
			case c == '}' && s.top() != ctxArray, c == ']' && s.top() == ctxArray:
				s.depth--
				s.endValue()
			default:
				s.state = jsBad
			}
		case jsNumber:
			switch {
			case '0' <= c && c <= '9':
				if s.intPart && s.num < 1<<53 {
					s.num = s.num*10 + int64(c-'0')
				}
			case c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-':
				s.intPart = false
			default:
				if s.key < keyNone && !s.neg {
					u.vals[s.key] = s.num
					u.seen |= 1 << s.key
				}
				s.endValue()
				i-- // c belongs to what follows the number
			}
		case jsLiteral:
			if c < 'a' || c > 'z' {
				s.endValue()
				i--
			}
		case jsBad:
			return
		}
	}
}

func (s *jsonScanner) captureByte(u *usageParser, c byte) {
	if !s.capture {
		return
	}
	buf := s.buf[:]
	if s.state == jsString {
		buf = u.model[:]
	}
	if s.n < len(buf) {
		buf[s.n] = c
	}
	s.n++ // past len(buf): a key too long to matter, a model name cut
}

// classify gives the key just read its meaning in the current object.
func (s *jsonScanner) classify() uint8 {
	s.capture = false
	if s.n > len(s.buf) {
		return keyNone
	}
	k := s.buf[:s.n]
	switch s.top() {
	case ctxRoot, ctxContainer:
		switch string(k) {
		case "model", "modelVersion":
			return keyModel
		case "usage", "usageMetadata":
			return keyUsage
		case "message", "response", "x_groq", "delta":
			if s.top() == ctxRoot {
				return keyContainer
			}
		}
	case ctxUsage:
		switch string(k) {
		case "prompt_tokens":
			return uint8(fPromptTokens)
		case "completion_tokens":
			return uint8(fCompletionTokens)
		case "total_tokens":
			return uint8(fTotalTokens)
		case "input_tokens":
			return uint8(fInputTokens)
		case "output_tokens":
			return uint8(fOutputTokens)
		case "cache_creation_input_tokens":
			return uint8(fCacheCreation)
		case "cache_read_input_tokens":
			return uint8(fCacheReadInput)
		case "promptTokenCount":
			return uint8(fPromptCount)
		case "candidatesTokenCount":
			return uint8(fCandidatesCount)
		case "thoughtsTokenCount":
			return uint8(fThoughtsCount)
		case "totalTokenCount":
			return uint8(fTotalCount)
		case "cachedContentTokenCount":
			return uint8(fCachedContentCount)
		case "prompt_tokens_details", "input_tokens_details":
			return keyDetails
		case "tokens":
			// Cohere v2: usage.tokens holds input_tokens and
			// output_tokens (usage.billed_units the billed subset).
			return keyUsage
		}
	case ctxDetails:
		if string(k) == "cached_tokens" {
			return uint8(fCachedTokens)
		}
	}
	return keyNone
}
