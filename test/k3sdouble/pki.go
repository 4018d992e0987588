package k3sdouble

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"
)

// errDifferentToken is K3s's own message for bootstrap data another token wrote.
var errDifferentToken = errors.New("bootstrap data already found and encrypted with different token")

// clusterCA is K3s's own cluster CA, kept (encrypted) in the bootstrap data
// so every server of the cluster signs with the same one.
type clusterCA struct {
	CertPEM []byte `json:"cert_pem"`
	KeyPEM  []byte `json:"key_pem"`

	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newClusterCA() (*clusterCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: fmt.Sprintf("k3s-server-ca@%d (k3s TEST DOUBLE)", time.Now().Unix())},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	ca := &clusterCA{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	return ca, ca.parse()
}

func (ca *clusterCA) parse() error {
	cb, _ := pem.Decode(ca.CertPEM)
	kb, _ := pem.Decode(ca.KeyPEM)
	if cb == nil || kb == nil {
		return errors.New("bootstrap data holds no cluster CA")
	}
	var err error
	if ca.cert, err = x509.ParseCertificate(cb.Bytes); err != nil {
		return err
	}
	ca.key, err = x509.ParseECPrivateKey(kb.Bytes)
	return err
}

func (ca *clusterCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issue signs a leaf: a serving cert when sans is non-empty, else a client cert.
func (ca *clusterCA) issue(cn string, orgs []string, sans []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if len(sans) > 0 {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, san := range sans {
			if ip := net.ParseIP(san); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, san)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

func (ca *clusterCA) servingCert(sans []string) (tls.Certificate, error) {
	certPEM, keyPEM, err := ca.issue("k3s", []string{"k3s"}, sans)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

// bootstrapKey is where K3s keeps a token's bootstrap data: the first 12 hex
// digits of the token's SHA-256, so the key itself gives the token away to no one.
func bootstrapKey(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "/bootstrap/" + hex.EncodeToString(sum[:])[:12]
}

// sealBootstrap encrypts the cluster CA with the token (AES-256-GCM keyed by
// SHA-256 of the token; real K3s uses PBKDF2, the effect at the edge is the same).
func sealBootstrap(token string, ca *clusterCA) ([]byte, error) {
	plain, err := json.Marshal(ca)
	if err != nil {
		return nil, err
	}
	aead, err := tokenAEAD(token)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return aead.Seal(nonce, nonce, plain, nil), nil
}

func openBootstrap(token string, sealed []byte) (*clusterCA, error) {
	aead, err := tokenAEAD(token)
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, errDifferentToken
	}
	plain, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], nil)
	if err != nil {
		return nil, errDifferentToken
	}
	ca := &clusterCA{}
	if err := json.Unmarshal(plain, ca); err != nil {
		return nil, fmt.Errorf("bootstrap data: %w", err)
	}
	return ca, ca.parse()
}

func tokenAEAD(token string) (cipher.AEAD, error) {
	key := sha256.Sum256([]byte(token))
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}
