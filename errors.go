package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
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
	// Fields, when not empty, are every problem of a validated object in
	// the order of its fields; Message is then the first one's (see
	// fieldProblems).
	Fields []fieldError
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
	// Errors lists every problem of an object the admin API refused as
	// invalid (a mapping, a proxy key), so that a form can show each
	// beside its field at once; absent from every other error.
	Errors []fieldError `json:"errors,omitempty"`
}

// fieldError is one problem of one field of an object sent to the admin
// API: the field as the API's JSON names it ("prefix", "targets[1].url",
// "limits.rpm") and a message that starts with that name.
type fieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
	code    string // the envelope's code when this problem is the first
}

// fieldProblems collects every problem of an object's fields instead of
// stopping at the first (issue 19). The zero value is empty and ready to
// use. The validators add in the order of the object's fields; err turns
// the list into the one 400 that answers them all.
type fieldProblems []fieldError

// add records msg, a message naming field, under the error code code
// ("invalid_target").
func (fe *fieldProblems) add(code, field, msg string) {
	*fe = append(*fe, fieldError{Field: field, Message: msg, code: code})
}

// addErr records err, nil or the *apiError of a validation helper such
// as validatePrefix, as a problem of field.
func (fe *fieldProblems) addErr(field string, err error) {
	if err != nil {
		ae := err.(*apiError)
		fe.add(ae.Code, field, ae.Message)
	}
}

// has reports whether a problem of field was recorded.
func (fe fieldProblems) has(field string) bool {
	return slices.ContainsFunc(fe, func(e fieldError) bool { return e.Field == field })
}

// sortBy puts the problems in the order rank gives their fields, keeping
// the order of problems of equally ranked fields. It is for problems
// found in two passes (a conversion, then validation).
func (fe fieldProblems) sortBy(rank func(field string) int) {
	slices.SortStableFunc(fe, func(a, b fieldError) int { return cmp.Compare(rank(a.Field), rank(b.Field)) })
}

// err returns nil when fe is empty; otherwise a 400 *apiError with the
// first problem's code and message, which is what a client of the
// single-error API saw, and every problem in Fields. The *apiError owns a
// copy of the list.
func (fe fieldProblems) err() error {
	if len(fe) == 0 {
		return nil
	}
	return &apiError{Status: http.StatusBadRequest, Code: fe[0].code, Message: fe[0].Message, Fields: slices.Clone(fe)}
}

// writeError answers with the JSON error envelope. It must be called before
// anything else was written to w.
func writeError(w http.ResponseWriter, status int, code, message string) {
	writeErrorDetail(w, status, errorDetail{Message: message, Code: code})
}

// writeErrorDetail answers with the JSON error envelope of d, whose Type
// it sets. It must be called before anything else was written to w.
func writeErrorDetail(w http.ResponseWriter, status int, d errorDetail) {
	d.Type = "proxy_error"
	body, _ := json.Marshal(errorBody{Error: d})
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
		writeErrorDetail(w, ae.Status, errorDetail{Message: ae.Message, Code: ae.Code, Errors: ae.Fields})
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
