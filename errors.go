package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
)

// apiError is an error that carries what a client should see: an HTTP status,
// a stable machine-readable code and a human message. Lower layers return it
// for anything the client can fix (validation) or that is the proxy's own
// answer (no mapping, upstream unreachable).
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string { return e.Message }

// errorBody is the JSON envelope of every error the proxy itself answers. It
// copies the OpenAI shape so that SDKs print the message instead of failing
// to parse: {"error":{"message":…,"type":"proxy_error","code":…}}.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Message string `json:"message"`
	Type    string `json:"type"`
	Code    string `json:"code"`
}

// writeError answers with the JSON error envelope. It must be called before
// anything else was written to w.
func writeError(w http.ResponseWriter, status int, code, message string) {
	body, _ := json.Marshal(errorBody{Error: errorDetail{Message: message, Type: "proxy_error", Code: code}})
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(len(body)+1))
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// writeAPIError answers err as JSON: an *apiError as it is, a sentinel of
// the stores (store.go) with its status, anything else as a 500 without its
// text (internal causes are the caller's to log, never the client's to
// read). It is the one table from errors to statuses.
func writeAPIError(w http.ResponseWriter, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
		writeError(w, ae.Status, ae.Code, ae.Message)
	case errors.Is(err, errMappingNotFound):
		writeError(w, http.StatusNotFound, "not_found", "mapping not found")
	case errors.Is(err, errMappingExists):
		writeError(w, http.StatusConflict, "conflict", "a mapping with this prefix already exists")
	case errors.Is(err, errKeyNotFound):
		writeError(w, http.StatusNotFound, "not_found", "key not found")
	case errors.Is(err, errKeyExists):
		writeError(w, http.StatusConflict, "conflict", "a key with this id already exists")
	case errors.Is(err, errStoreNotWritable):
		writeError(w, http.StatusServiceUnavailable, "store_unavailable",
			"store not writable: "+notWritableReason(err)+", so changes cannot be saved now (proxying continues with the current mappings)")
	case errors.Is(err, errStoreUnavailable) && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)):
		writeError(w, http.StatusServiceUnavailable, "store_unavailable",
			"store unavailable: the store did not answer in time; a change may still be saved, so list the mappings to check (proxying continues with the last known mappings)")
	case errors.Is(err, errStoreUnavailable):
		writeError(w, http.StatusServiceUnavailable, "store_unavailable",
			"store unavailable: Redis cannot be reached, so changes cannot be saved now (proxying continues with the last known mappings)")
	default:
		writeError(w, http.StatusInternalServerError, "internal_error", "internal error")
	}
}
