package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"testing"
)

// Fixtures shaped like the providers' real responses (API reference
// examples), with a few traps: usage-like text inside strings, usage:null
// chunks, cumulative stream usage, "\r\n" line ends.
const (
	openAIChatJSON = `{
  "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
  "object": "chat.completion",
  "created": 1741570283,
  "model": "gpt-4o-2024-08-06",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Here is JSON: {\"usage\": {\"prompt_tokens\": 999}, \"model\": \"fake\"} and a backslash \\ done",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
  },
  "service_tier": "default",
  "system_fingerprint": "fp_fc9f1d7035"
}`

	openAIChatSSE = "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n" +
		"data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \\\"usage\\\":{\\\"total_tokens\\\":5}\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n" +
		": keep-alive comment\n\n" +
		"data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n" +
		"data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n" +
		"data: [DONE]\n\n"

	openAIResponsesSSE = "event: response.created\n" +
		"data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"in_progress\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[],\"usage\":null}}\n\n" +
		"event: response.output_text.delta\n" +
		"data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi there!\"}\n\n" +
		"event: response.completed\n" +
		"data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"completed\",\"model\":\"gpt-4.1-2025-04-14\",\"output\":[{\"id\":\"msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654\",\"type\":\"message\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi there!\",\"annotations\":[]}]}],\"usage\":{\"input_tokens\":37,\"input_tokens_details\":{\"cached_tokens\":32},\"output_tokens\":11,\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":48}}}\n\n"

	anthropicJSON = `{"id":"msg_013Zva2CMHLNnXjNJJKqJ2EF","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hi! My name is Claude."}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":2095,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"cache_creation":{"ephemeral_5m_input_tokens":100,"ephemeral_1h_input_tokens":0},"output_tokens":503,"service_tier":"standard"}}`

	anthropicSSE = "event: message_start\n" +
		"data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-opus-4-1-20250805\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":1}}}\n\n" +
		"event: content_block_start\n" +
		"data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n" +
		"event: ping\n" +
		"data: {\"type\": \"ping\"}\n\n" +
		"event: content_block_delta\n" +
		"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n" +
		"event: content_block_delta\n" +
		"data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"! \\\"usage\\\":{\\\"output_tokens\\\":7}\"}}\n\n" +
		"event: content_block_stop\n" +
		"data: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
		"event: message_delta\n" +
		"data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null,\"stop_sequence\":null},\"usage\":{\"output_tokens\":10}}\n\n" +
		"event: message_delta\n" +
		"data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":10,\"cache_read_input_tokens\":5,\"output_tokens\":15}}\n\n" +
		"event: message_stop\n" +
		"data: {\"type\":\"message_stop\"}\n\n"

	geminiJSON = `{
  "candidates": [
    {
      "content": {"parts": [{"text": "AI learns patterns from data."}], "role": "model"},
      "finishReason": "STOP",
      "avgLogprobs": -0.1234
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 8,
    "candidatesTokenCount": 12,
    "totalTokenCount": 45,
    "thoughtsTokenCount": 25,
    "cachedContentTokenCount": 4,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}]
  },
  "modelVersion": "gemini-2.5-flash",
  "responseId": "mn5DaMSqNuCH1PIPwe-c6Ag"
}`

	geminiSSE = "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"The\"}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 8,\"totalTokenCount\": 8,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 8}]},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"a\"}\r\n\r\n" +
		"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \" sky is blue\"}],\"role\": \"model\"}}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 20,\"totalTokenCount\": 28},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"a\"}\r\n\r\n" +
		"data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \".\"}],\"role\": \"model\"},\"finishReason\": \"STOP\"}],\"usageMetadata\": {\"promptTokenCount\": 8,\"candidatesTokenCount\": 35,\"totalTokenCount\": 43,\"promptTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 8}],\"candidatesTokensDetails\": [{\"modality\": \"TEXT\",\"tokenCount\": 35}]},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"a\"}\r\n\r\n"

	groqSSE = "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1730241104,\"model\":\"llama-3.1-8b-instant\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"finish_reason\":null}],\"x_groq\":{\"id\":\"req_01\"}}\n\n" +
		"data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1730241104,\"model\":\"llama-3.1-8b-instant\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"x_groq\":{\"id\":\"req_01\",\"usage\":{\"queue_time\":0.017,\"prompt_tokens\":42,\"prompt_time\":0.002,\"completion_tokens\":7,\"completion_time\":0.006,\"total_tokens\":49,\"total_time\":0.008}}}\n\n" +
		"data: [DONE]\n\n"

	cohereSSE = "event: message-start\n" +
		"data: {\"id\":\"29f14a5a\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\",\"content\":[]}}}\n\n" +
		"event: content-delta\n" +
		"data: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"text\":\"Hello\"}}}}\n\n" +
		"event: message-end\n" +
		"data: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"COMPLETE\",\"usage\":{\"billed_units\":{\"input_tokens\":3,\"output_tokens\":9},\"tokens\":{\"input_tokens\":69,\"output_tokens\":9}}}}\n\n"

	openAIModelsJSON = `{"object":"list","data":[{"id":"gpt-4o","object":"model","created":1715367049,"owned_by":"system"}]}`

	openAIErrorJSON = `{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}`
)

// embeddingsJSON returns an OpenAI embeddings response of about size
// bytes: model and usage come after the large data array.
func embeddingsJSON(size int) string {
	var b strings.Builder
	b.WriteString(`{"object":"list","data":[`)
	for i := 0; b.Len() < size; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"object":"embedding","index":%d,"embedding":[`, i)
		for j := range 256 {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, "%.9f", float64(j-128)/997)
		}
		b.WriteString("]}")
	}
	b.WriteString(`],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}`)
	return b.String()
}

// parseUsage feeds body to a parser for contentType in chunks of the
// sizes split returns, and returns the result with Model copied.
func parseUsage(u *usageParser, contentType, body string, split func(rest int) int) tokenUsage {
	u.reset(http.Header{"Content-Type": {contentType}})
	b := []byte(body)
	for len(b) > 0 {
		n := min(split(len(b)), len(b))
		u.feed(b[:n])
		b = b[n:]
	}
	r := u.finish()
	r.Model = bytes.Clone(r.Model)
	return r
}

func TestUsageParser(t *testing.T) {
	big := embeddingsJSON(3 << 20)
	// The usage object straddles the point where tokenizing would stop.
	edge := embeddingsJSON(usageScanLimit - 40)
	tests := []struct {
		name, contentType, body string
		want                    tokenUsage
	}{
		{"openai chat json", "application/json", openAIChatJSON,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 1117, tokCompletion: 46, tokTotal: 1163, tokCacheRead: 1024}, Model: []byte("gpt-4o-2024-08-06")}},
		{"openai chat sse", "text/event-stream; charset=utf-8", openAIChatSSE,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 9, tokCompletion: 12, tokTotal: 21}, Model: []byte("gpt-4o-mini-2024-07-18")}},
		{"openai responses sse", "text/event-stream", openAIResponsesSSE,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 37, tokCompletion: 11, tokTotal: 48, tokCacheRead: 32}, Model: []byte("gpt-4.1-2025-04-14")}},
		{"anthropic json", "application/json", anthropicJSON,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 2095 + 100 + 2000, tokCompletion: 503, tokTotal: 2095 + 100 + 2000 + 503, tokCacheRead: 2000, tokCacheWrite: 100}, Model: []byte("claude-sonnet-4-5-20250929")}},
		// message_delta output_tokens is cumulative: 15, not 1+10+15.
		{"anthropic sse", "text/event-stream", anthropicSSE,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 40, tokCompletion: 15, tokTotal: 55, tokCacheRead: 5, tokCacheWrite: 10}, Model: []byte("claude-opus-4-1-20250805")}},
		{"gemini json", "application/json; charset=UTF-8", geminiJSON,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 8, tokCompletion: 12 + 25, tokTotal: 45, tokCacheRead: 4}, Model: []byte("gemini-2.5-flash")}},
		// usageMetadata is cumulative: the last chunk's counts.
		{"gemini sse", "text/event-stream", geminiSSE,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 8, tokCompletion: 35, tokTotal: 43}, Model: []byte("gemini-2.0-flash")}},
		{"groq sse", "text/event-stream", groqSSE,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 42, tokCompletion: 7, tokTotal: 49}, Model: []byte("llama-3.1-8b-instant")}},
		{"cohere sse", "text/event-stream", cohereSSE, tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 69, tokCompletion: 9, tokTotal: 78}}},
		{"embeddings over the scan limit", "application/json", big,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 8, tokTotal: 8}, Model: []byte("text-embedding-3-small")}},
		{"embeddings at the scan limit", "application/json", edge,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 8, tokTotal: 8}, Model: []byte("text-embedding-3-small")}},
		{"no usage", "application/json", openAIModelsJSON, tokenUsage{}},
		{"error body", "application/json", openAIErrorJSON, tokenUsage{}},
		{"not json", "text/plain", openAIChatJSON, tokenUsage{}},
		{"sse without usage", "text/event-stream", "data: {\"x\":1}\n\ndata: [DONE]\n\n", tokenUsage{}},
		// Once the model is known, events with no usage object are passed
		// over whole: these must not be.
		{"sse usage in a second data line", "text/event-stream",
			"data: {\"model\":\"m1\",\"usage\":null}\n\ndata: {\"model\":\"m1\",\ndata: \"usage\":{\"prompt_tokens\":3,\"total_tokens\":3}}\n\n",
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 3, tokTotal: 3}, Model: []byte("m1")}},
		{"sse usage object on the next data line", "text/event-stream",
			"data: {\"model\":\"m1\"}\n\ndata: {\"usage\":\ndata: {\"prompt_tokens\":6,\"total_tokens\":6}}\n\n",
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 6, tokTotal: 6}, Model: []byte("m1")}},
		{"sse usage spaced", "text/event-stream",
			"data: {\"model\":\"m1\"}\n\ndata: {\"usage\" :\t{\"prompt_tokens\":4,\"total_tokens\":4}}\n\ndata: {\"usage\":null,\"x\":\"usage\"}\n\n",
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 4, tokTotal: 4}, Model: []byte("m1")}},
		{"sse usage after a field line", "text/event-stream",
			"data: {\"model\":\"m1\"}\n\ndata: {\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}}\nid: 7\n\n",
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 5, tokTotal: 5}, Model: []byte("m1")}},
		{"sse bench stream", "text/event-stream", benchSSE,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 12, tokCompletion: 50, tokTotal: 62}, Model: []byte("bench")}},
		{"malformed json", "application/json", `{"usage": {"prompt_tokens": 5,, "completion_tokens": 7}}`,
			tokenUsage{Known: true, Tokens: tokenCounts{tokPrompt: 5, tokTotal: 5}}},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	splits := []struct {
		name  string
		split func(int) int
	}{
		{"whole", func(n int) int { return n }},
		{"1-byte", func(int) int { return 1 }},
		{"random", func(int) int { return 1 + rng.IntN(700) }},
		{"32KiB", func(int) int { return 32 << 10 }},
	}
	var u usageParser
	for _, tt := range tests {
		for _, sp := range splits {
			if sp.name == "1-byte" && len(tt.body) > 64<<10 {
				continue // covered by the random split; keeps -race fast
			}
			t.Run(tt.name+"/"+sp.name, func(t *testing.T) {
				got := parseUsage(&u, tt.contentType, tt.body, sp.split)
				if got.Known != tt.want.Known || got.Tokens != tt.want.Tokens {
					t.Errorf("usage = %+v, want %+v", got, tt.want)
				}
				if string(got.Model) != string(tt.want.Model) {
					t.Errorf("model = %q, want %q", got.Model, tt.want.Model)
				}
			})
		}
	}
}

// TestUsageParserCompressed checks gzip-encoded JSON: its usage is read
// from a decoded copy after the body passed, fed in any split; other
// encodings, gzip SSE, a broken and an oversized gzip body count as unknown.
func TestUsageParserCompressed(t *testing.T) {
	gz := func(s string) []byte {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		io.WriteString(zw, s)
		zw.Close()
		return b.Bytes()
	}
	var zr gzip.Reader
	buf := make([]byte, 2048)
	parse := func(u *usageParser, h http.Header, body []byte, chunk int) tokenUsage {
		u.reset(h)
		for len(body) > 0 && u.active() {
			n := min(chunk, len(body))
			u.feed(body[:n])
			body = body[n:]
		}
		if !u.gzipped() {
			return u.finish()
		}
		r := u.finishGzip(&zr, buf)
		r.Model = bytes.Clone(r.Model)
		return r
	}
	gzJSON := http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"gzip"}}
	var u usageParser
	for _, chunk := range []int{1, 7, 4096} {
		got := parse(&u, gzJSON, gz(openAIChatJSON), chunk)
		if !got.Known || got.Tokens != (tokenCounts{tokPrompt: 1117, tokCompletion: 46, tokTotal: 1163, tokCacheRead: 1024}) || string(got.Model) != "gpt-4o-2024-08-06" {
			t.Errorf("gzip JSON in %d-byte reads: %+v, want the usage of the decoded body", chunk, got)
		}
	}
	truncated := gz(openAIChatJSON)
	truncated = truncated[:len(truncated)/2]
	huge := make([]byte, usageGzipLimit+1)
	for _, tt := range []struct {
		name string
		h    http.Header
		body []byte
	}{
		{"br", http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"br"}}, []byte(openAIChatJSON)},
		{"gzip, then another coding", http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"gzip", "br"}}, gz(openAIChatJSON)},
		{"gzip SSE", http.Header{"Content-Type": {"text/event-stream"}, "Content-Encoding": {"gzip"}}, gz(openAIChatSSE)},
		{"truncated gzip", gzJSON, truncated},
		{"not gzip at all", gzJSON, []byte(openAIChatJSON)},
		{"over the kept limit", gzJSON, huge},
	} {
		if got := parse(&u, tt.h, tt.body, 4096); got.Known {
			t.Errorf("%s: %+v, want unknown", tt.name, got)
		}
	}
	u.reset(http.Header{"Content-Type": {"application/json"}, "Content-Encoding": {"identity"}})
	if !u.active() || u.gzipped() {
		t.Fatal("identity-encoded JSON must be parsed as it passes")
	}
}

// TestUsageParserReuse checks that a pooled parser carries nothing from
// one response to the next.
func TestUsageParserReuse(t *testing.T) {
	var u usageParser
	parseUsage(&u, "text/event-stream", anthropicSSE[:len(anthropicSSE)/2], func(n int) int { return n })
	got := parseUsage(&u, "application/json", openAIModelsJSON, func(n int) int { return n })
	if got.Known || got.Model != nil {
		t.Errorf("after reuse: %+v, want nothing known", got)
	}
}

// TestUsageParserBoundedMemory feeds large bodies in 32 KiB reads, as the
// proxy would: 1 GiB of one JSON string, 1 GiB of one SSE data line
// without an end, and 64 MiB of small SSE events (each one fully parsed,
// which is slow under -race; memory per event does not depend on their
// number). The parser must not allocate (beyond its tail buffer, once)
// and must still find usage at the end.
func TestUsageParserBoundedMemory(t *testing.T) {
	chunk := make([]byte, 32<<10)
	tests := []struct {
		name, contentType string
		head, fill, end   string
		total             int
		want              int64
	}{
		{"json", "application/json", `{"model":"m","text":"`, "a", `","usage":{"prompt_tokens":3,"completion_tokens":4}}`, 1 << 30, 7},
		{"sse long line", "text/event-stream", `data: {"model":"m","text":"`, "a", "\",\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n", 1 << 30, 7},
		{"sse many events", "text/event-stream", "", "data: {\"usage\":{\"input_tokens\":3,\"output_tokens\":4}}\n\n", "", 64 << 20, 7},
	}
	var u usageParser
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range chunk {
				chunk[i] = tt.fill[i%len(tt.fill)]
			}
			if len(tt.fill) > 1 {
				chunk = chunk[:len(chunk)/len(tt.fill)*len(tt.fill)]
			}
			head, end := []byte(tt.head), []byte(tt.end)
			u.reset(http.Header{"Content-Type": {tt.contentType}})
			u.feed(head)
			n := 0
			for ; n < usageScanLimit+2*usageTailSize; n += len(chunk) {
				u.feed(chunk) // past the tail buffer's allocation
			}
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for ; n < tt.total; n += len(chunk) {
				u.feed(chunk)
			}
			u.feed(end)
			got := u.finish()
			runtime.ReadMemStats(&after)
			if got.Tokens[tokTotal] != tt.want {
				t.Errorf("total = %d (%+v), want %d", got.Tokens[tokTotal], got, tt.want)
			}
			// Mallocs counts the whole process (the test framework's
			// timers too): a parser that grew with the body would show
			// gigabytes here.
			if d := after.TotalAlloc - before.TotalAlloc; d > 64<<10 {
				t.Errorf("parsing %d MiB allocated %d bytes, want none", tt.total>>20, d)
			}
		})
	}
}

func BenchmarkUsageParser(b *testing.B) {
	for _, bb := range []struct{ name, ct, body string }{
		{"openai-json", "application/json", openAIChatJSON},
		{"anthropic-sse", "text/event-stream", anthropicSSE},
		{"gemini-sse", "text/event-stream", geminiSSE},
		{"bench-small", "application/json", benchSmallJSON},
		{"bench-sse", "text/event-stream", benchSSE},
	} {
		b.Run(bb.name, func(b *testing.B) {
			var u usageParser
			body := []byte(bb.body)
			h := http.Header{"Content-Type": {bb.ct}}
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				u.reset(h)
				u.feed(body)
				u.finish()
			}
		})
	}
}

// benchSSE is a stream shaped like the bench harness's /v1/chat/completions
// with "stream": true (shared/bench): 50 content chunks, each naming the
// model, then the usage chunk and [DONE].
var benchSSE = func() string {
	var b strings.Builder
	for i := range 50 {
		fmt.Fprintf(&b, `data: {"id":"chatcmpl-bench-1","object":"chat.completion.chunk","model":"bench","choices":[{"index":0,"delta":{"content":"tok%d "},"finish_reason":null}],"bench_seq":%d,"bench_sent_ns":1764900000000000000}`+"\n\n", i, i)
	}
	b.WriteString(`data: {"id":"chatcmpl-bench-1","object":"chat.completion.chunk","model":"bench","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":50,"total_tokens":62},"bench_seq":50,"bench_sent_ns":1764900000000000000}` + "\n\ndata: [DONE]\n\n")
	return b.String()
}()

// benchSmallJSON is the bench harness's /small body (shared/bench).
var benchSmallJSON = `{"id":"chatcmpl-small","object":"chat.completion","model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"` +
	strings.Repeat("lorem ipsum ", 75) + `"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":200,"total_tokens":210}}`
