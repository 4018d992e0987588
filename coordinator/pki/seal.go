package pki

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"
)

// Sealer encrypts secrets (etcd CA keys) before they go into the store.
//
// Its key is derived from the coordinator CA private key. Why: several
// coordinators on one external etcd must share the coordinator CA anyway (a
// node's identity must verify on whichever coordinator it reaches), so the
// CA key file the operator copies to each coordinator is the one secret they
// share; deriving the store key from it adds no second file to lose, and the
// store alone (e.g. an etcd backup) never reveals a CA key.
type Sealer struct{ aead cipher.AEAD }

// NewSealer derives a sealer from ca's private key.
func NewSealer(ca *CA) (*Sealer, error) {
	h := sha256.New()
	h.Write([]byte("kedge store sealing key v1\x00"))
	h.Write(ca.Key.D.Bytes())
	block, err := aes.NewCipher(h.Sum(nil))
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plaintext; label binds it to its purpose (e.g. the store key).
func (s *Sealer) Seal(plaintext []byte, label string) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plaintext, []byte(label)), nil
}

// Open decrypts what Seal produced with the same label.
func (s *Sealer) Open(sealed []byte, label string) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed value too short")
	}
	out, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(label))
	if err != nil {
		return nil, errors.New("sealed value does not decrypt with this coordinator's CA key; the coordinators must share one CA")
	}
	return out, nil
}
