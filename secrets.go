package main

// Upstream keys at rest (SPEC §1 SECRET_KEY, §9): with SECRET_KEY set, the
// key of every target is stored sealed with AES-256-GCM, under a key
// derived from SECRET_KEY (HKDF-SHA-256), bound to its mapping's prefix. A
// store seals the keys of a mapping as it writes it and opens them as it
// reads it (sealKeys, openKeys): every other layer sees the keys in
// clear, the stores' files and hashes never do.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

const (
	// minSecretKey is the shortest SECRET_KEY accepted.
	minSecretKey = 32
	// sealedPrefix starts a sealed key in a stored mapping: "enc:v1:"
	// and the base64 of the nonce and the ciphertext.
	sealedPrefix = "enc:v1:"
)

// errSealedKey is returned when a stored key cannot be opened: it was
// sealed with another SECRET_KEY, or SECRET_KEY is not set.
var errSealedKey = errors.New("stored upstream key cannot be opened with this SECRET_KEY")

// secretBox seals and opens upstream keys. A nil *secretBox (no
// SECRET_KEY) stores them as given. Safe for concurrent use.
type secretBox struct {
	aead cipher.AEAD
}

// newSecretBox returns the box of secret, nil for "".
func newSecretBox(secret string) (*secretBox, error) {
	if secret == "" {
		return nil, nil
	}
	if len(secret) < minSecretKey {
		return nil, fmt.Errorf("must be at least %d characters", minSecretKey)
	}
	key, err := hkdf.Key(sha256.New, []byte(secret), nil, "apiproxy upstream keys v1", 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &secretBox{aead: aead}, nil
}

// seal returns key sealed for the mapping of prefix; "" stays "", and a
// nil box returns key as it is.
func (b *secretBox) seal(prefix, key string) string {
	if b == nil || key == "" {
		return key
	}
	nonce := make([]byte, b.aead.NonceSize(), b.aead.NonceSize()+len(key)+b.aead.Overhead())
	rand.Read(nonce)
	return sealedPrefix + base64.RawStdEncoding.EncodeToString(b.aead.Seal(nonce, nonce, []byte(key), []byte(prefix)))
}

// open returns the key that seal sealed for prefix. A stored key that is
// not sealed (written before SECRET_KEY was set) is returned as it is; it
// is sealed at the mapping's next write.
func (b *secretBox) open(prefix, stored string) (string, error) {
	if !strings.HasPrefix(stored, sealedPrefix) {
		return stored, nil
	}
	if b == nil {
		return "", fmt.Errorf("%w: SECRET_KEY is not set", errSealedKey)
	}
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimPrefix(stored, sealedPrefix))
	n := b.aead.NonceSize()
	if err != nil || len(raw) < n {
		return "", errSealedKey
	}
	plain, err := b.aead.Open(nil, raw[:n], raw[n:], []byte(prefix))
	if err != nil {
		return "", errSealedKey
	}
	return string(plain), nil
}

// sealKeys returns m with its targets' keys sealed, as a store writes it.
// m is not modified.
func (b *secretBox) sealKeys(m Mapping) Mapping {
	if b == nil || !m.hasKeys() {
		return m
	}
	m.Targets = append([]Target(nil), m.Targets...)
	for i := range m.Targets {
		m.Targets[i].Key = b.seal(m.Prefix, m.Targets[i].Key)
	}
	return m
}

// openKeys returns m, as a store read it, with its targets' keys opened.
// A key that cannot be opened gives the mapping of m's prefix with no
// targets and an error: routing skips it (never sending a request without
// its key, nor with a sealed one), and the admin API lists and can
// replace or delete it.
func (b *secretBox) openKeys(m Mapping) (Mapping, error) {
	if !m.hasKeys() {
		return m, nil
	}
	for i := range m.Targets {
		k, err := b.open(m.Prefix, m.Targets[i].Key)
		if err != nil {
			return Mapping{Prefix: m.Prefix}, fmt.Errorf("mapping %s, target %d: %w", m.Prefix, i, err)
		}
		m.Targets[i].Key = k
	}
	return m, nil
}

// hasKeys reports whether a target of m has a key.
func (m Mapping) hasKeys() bool {
	for _, t := range m.Targets {
		if t.Key != "" {
			return true
		}
	}
	return false
}

// secretStore is a store that seals upstream keys (both stores do);
// openStore gives it the box of SECRET_KEY.
type secretStore interface {
	useSecrets(box *secretBox)
}

// storedValue is m as a store keeps it: its keys sealed, then encoded
// (encodeValue).
func (b *secretBox) storedValue(m Mapping) string {
	return b.sealKeys(m).encodeValue()
}

// readMapping decodes a stored value of prefix (decodeMapping) and opens
// its keys. A value that does not decode, or whose keys do not open,
// gives the mapping of prefix with no targets, and why (unreadable; see
// Store.Mappings).
func (b *secretBox) readMapping(prefix, value string) Mapping {
	m, err := decodeMapping(prefix, value)
	if err == nil {
		m, err = b.openKeys(m)
	}
	if err != nil {
		m.unreadable = err.Error()
	}
	return m
}
