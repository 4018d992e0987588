// Package pki is kedge's certificate authority code: ECDSA P-256 CAs (the
// coordinator CA and one etcd CA per cluster), CSR verification, and signing
// in which the coordinator, never the CSR, decides subject, SANs, usages and
// lifetime. It also holds the small key/CSR/PEM helpers nodes use.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Organisations that carry authority in kedge certs.
const (
	OrgNodes  = "kedge:nodes"
	OrgAdmins = "kedge:admins"
)

// Lifetimes are how long signed certificates live.
type Lifetimes struct {
	NodeIdentity time.Duration
	EtcdLeaf     time.Duration
	CA           time.Duration
	// Serving and admin certs: as long as a node identity would be far too
	// short for a file an operator keeps, so they get the leaf lifetime.
	Serving time.Duration
}

// DefaultLifetimes: node identity 30 days (renewed by the agent), etcd leaves
// and serving/admin certs 1 year, CAs 10 years.
func DefaultLifetimes() Lifetimes {
	return Lifetimes{
		NodeIdentity: 30 * 24 * time.Hour,
		EtcdLeaf:     365 * 24 * time.Hour,
		CA:           10 * 365 * 24 * time.Hour,
		Serving:      365 * 24 * time.Hour,
	}
}

// backdate tolerates clock skew between the coordinator and a node that has
// just booted and may not have synced its clock yet.
const backdate = 5 * time.Minute

// CA is a certificate authority with its private key in memory.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	Key     *ecdsa.PrivateKey
}

// NewCA creates a self-signed ECDSA P-256 CA named cn.
func NewCA(cn string, lifetime time.Duration, now time.Time) (*CA, error) {
	key, err := GenerateKey()
	if err != nil {
		return nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"kedge"}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(lifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA %q: %w", cn, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, CertPEM: EncodeCertPEM(der), Key: key}, nil
}

// LoadCA parses a CA from PEM cert and SEC1 key, checking they belong together.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := DecodeCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA cert: %w", err)
	}
	signer, err := DecodeKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	key, ok := signer.(*ecdsa.PrivateKey)
	if !ok {
		return nil, errors.New("CA key: not an ECDSA key")
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("CA key does not match the CA cert")
	}
	if !cert.IsCA {
		return nil, errors.New("CA cert is not a CA (basicConstraints CA:FALSE)")
	}
	return &CA{Cert: cert, CertPEM: certPEM, Key: key}, nil
}

// KeyPEM is the CA key as SEC1 PEM. Treat as a secret.
func (ca *CA) KeyPEM() ([]byte, error) { return EncodeKeyPEM(ca.Key) }

// Pin is the CA pin of ca's certificate.
func (ca *CA) Pin() string { return Pin(ca.Cert) }

// Pool is a cert pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Pin is "sha256:" + lowercase hex SHA-256 of cert's SubjectPublicKeyInfo.
func Pin(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// KeyFingerprint is the lowercase hex SHA-256 of a public key's SPKI.
func KeyFingerprint(pub crypto.PublicKey) string {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// Leaf is what the coordinator decided a certificate says. Nothing in it
// comes from a CSR; the CSR contributes only its public key.
type Leaf struct {
	CommonName   string
	Organization []string
	DNSNames     []string
	IPs          []net.IP
	ExtKeyUsage  []x509.ExtKeyUsage
	Lifetime     time.Duration
}

// NodeIdentity is a node's identity cert: CN=name, O=kedge:nodes, clientAuth.
func NodeIdentity(name string, l Lifetimes) Leaf {
	return Leaf{CommonName: name, Organization: []string{OrgNodes}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Lifetime: l.NodeIdentity}
}

// Admin is an operator's client cert: CN=name, O=kedge:admins, clientAuth.
func Admin(name string, l Lifetimes) Leaf {
	return Leaf{CommonName: name, Organization: []string{OrgAdmins}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Lifetime: l.Serving}
}

// Serving is the coordinator's TLS serving cert for hosts (names or IPs).
func Serving(hosts []string, l Lifetimes) Leaf {
	leaf := Leaf{CommonName: "kedge-coordinator", ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, Lifetime: l.Serving}
	leaf.addHosts(append(hosts, "localhost", "127.0.0.1"))
	return leaf
}

// EtcdMember is an etcd server or peer cert for member: CN=member, SANs = the
// node's IPs + 127.0.0.1 + its DNS name + localhost, serverAuth+clientAuth
// (peers authenticate each other in both directions).
func EtcdMember(member string, nodeIPs []string, dnsName string, l Lifetimes) Leaf {
	leaf := Leaf{CommonName: member, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, Lifetime: l.EtcdLeaf}
	hosts := append([]string{}, nodeIPs...)
	hosts = append(hosts, "127.0.0.1", "localhost")
	if dnsName != "" {
		hosts = append(hosts, dnsName)
	}
	leaf.addHosts(hosts)
	return leaf
}

// EtcdClient is a datastore client cert: CN=cn, clientAuth only.
func EtcdClient(cn string, l Lifetimes) Leaf {
	return Leaf{CommonName: cn, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, Lifetime: l.EtcdLeaf}
}

// DatastoreClientName is the CN of a node's K3s datastore client cert.
func DatastoreClientName(node string) string { return "kedge-datastore-" + node }

func (l *Leaf) addHosts(hosts []string) {
	seen := map[string]bool{}
	for _, h := range hosts {
		if h == "" || seen[h] {
			continue
		}
		seen[h] = true
		if ip := net.ParseIP(h); ip != nil {
			l.IPs = append(l.IPs, ip)
		} else {
			l.DNSNames = append(l.DNSNames, h)
		}
	}
}

// Sign issues a certificate for pub as leaf says, valid from now.
func (ca *CA) Sign(pub crypto.PublicKey, leaf Leaf, now time.Time) ([]byte, *x509.Certificate, error) {
	if leaf.Lifetime <= 0 {
		return nil, nil, errors.New("sign: lifetime must be positive")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(leaf.Lifetime)
	if notAfter.After(ca.Cert.NotAfter) {
		// A leaf never outlives its CA: verifiers would reject it anyway.
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: leaf.CommonName, Organization: leaf.Organization},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  leaf.ExtKeyUsage,
		DNSNames:     leaf.DNSNames,
		IPAddresses:  leaf.IPs,
	}
	if _, ok := pub.(*ecdsa.PublicKey); ok {
		// ECDSA keys may be used for ECDH-based key agreement in older TLS.
		tmpl.KeyUsage |= x509.KeyUsageKeyAgreement
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign %q: %w", leaf.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return EncodeCertPEM(der), cert, nil
}

// SignCSR verifies csrDER and signs its key as leaf says.
func (ca *CA) SignCSR(csrDER []byte, leaf Leaf, now time.Time) ([]byte, *x509.Certificate, error) {
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return nil, nil, err
	}
	return ca.Sign(csr.PublicKey, leaf, now)
}

// Issue creates a fresh key and a certificate for it: for the coordinator's
// own certs (serving, admin, etcd client), where no CSR is involved.
func (ca *CA) Issue(leaf Leaf, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := GenerateKey()
	if err != nil {
		return nil, nil, err
	}
	certPEM, _, err = ca.Sign(&key.PublicKey, leaf, now)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = EncodeKeyPEM(key)
	return certPEM, keyPEM, err
}

// maxCSRBytes bounds what ParseCSR will look at; a real CSR is a few hundred bytes.
const maxCSRBytes = 16 << 10

// ParseCSR parses a DER CSR, checks its self-signature and that its key is
// ECDSA P-256 or Ed25519. Failures are codes.InvalidArgument.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, status.Error(codes.InvalidArgument, "csr_der is empty; send a DER PKCS#10 CSR for the node's key")
	}
	if len(der) > maxCSRBytes {
		return nil, status.Errorf(codes.InvalidArgument, "csr_der is %d bytes; a CSR is at most %d", len(der), maxCSRBytes)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr_der is not a DER PKCS#10 CSR: %v", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return nil, status.Errorf(codes.InvalidArgument, "CSR key is ECDSA %s; use ECDSA P-256 or Ed25519", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return nil, status.Errorf(codes.InvalidArgument, "CSR key is %s; use ECDSA P-256 or Ed25519", csr.PublicKeyAlgorithm)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "CSR signature does not verify: %v", err)
	}
	return csr, nil
}

// GenerateKey makes an ECDSA P-256 key.
func GenerateKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// CreateCSR makes a DER CSR for key with CommonName cn. The coordinator
// ignores everything in it but the key, so nothing else is set.
func CreateCSR(key crypto.Signer, cn string) ([]byte, error) {
	return x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}}, key)
}

// EncodeCertPEM wraps a DER certificate in PEM.
func EncodeCertPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// DecodeCertPEM parses the first certificate in data.
func DecodeCertPEM(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block found")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// EncodeKeyPEM encodes an EC key as SEC1 "EC PRIVATE KEY" (what K3s and etcd
// accept); other keys as PKCS#8 "PRIVATE KEY".
func EncodeKeyPEM(key crypto.Signer) ([]byte, error) {
	if k, ok := key.(*ecdsa.PrivateKey); ok {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			return nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), nil
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// DecodeKeyPEM parses an "EC PRIVATE KEY" or "PRIVATE KEY" PEM block.
func DecodeKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM private key block found")
		}
		switch b.Type {
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(b.Bytes)
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("PKCS#8 key of type %T cannot sign", k)
			}
			return s, nil
		}
	}
}

func newSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}
