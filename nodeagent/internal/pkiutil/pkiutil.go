// Package pkiutil holds the node agent's few PKI helpers that
// coordinator/pki (keys, CSRs, PEM, pins) does not: CA bundles, pin syntax,
// and the ECDSA-typed key the identity needs.
package pkiutil

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"regexp"

	"github.com/kedge-io/kedge/coordinator/pki"
)

// DecodeKey parses a PEM key that must be ECDSA (the node identity key).
func DecodeKey(pemBytes []byte) (*ecdsa.PrivateKey, error) {
	k, err := pki.DecodeKeyPEM(pemBytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want ECDSA P-256", k)
	}
	return ek, nil
}

// ParseCerts parses every CERTIFICATE block of a PEM bundle.
func ParseCerts(pemBytes []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, pemBytes = pem.Decode(pemBytes)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificate in PEM")
	}
	return certs, nil
}

var pinPattern = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidatePin checks the pin's form ("sha256:" + 64 lowercase hex digits).
func ValidatePin(pin string) error {
	if !pinPattern.MatchString(pin) {
		return fmt.Errorf("CA pin %q is not sha256:<64 lowercase hex digits> (kedge-coordinator init prints it)", pin)
	}
	return nil
}
