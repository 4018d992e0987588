package etcdtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// CA is a real ECDSA P-256 certificate authority made for one test: a
// stand-in for a cluster's etcd CA when no coordinator runs.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte

	mu     sync.Mutex
	serial int64
}

// NewCA makes a CA whose subject is name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), serial: 1}
}

// Sign signs pub with the given subject, IP SANs, usages and lifetime.
func (ca *CA) Sign(pub any, cn string, ips []net.IP, dns []string, lifetime time.Duration, eku ...x509.ExtKeyUsage) ([]byte, error) {
	ca.mu.Lock()
	ca.serial++
	serial := ca.serial
	ca.mu.Unlock()
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(lifetime),
		IPAddresses:  ips,
		DNSNames:     dns,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  eku,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// IssuePair makes a fresh key and a cert for it; key in SEC1 PEM.
func (ca *CA) IssuePair(t testing.TB, cn string, ips []net.IP, eku ...x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, err = ca.Sign(key.Public(), cn, ips, nil, time.Hour, eku...)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

// SigningNode is a TEST DOUBLE of the coordinator's NodeService for one node:
// only SignCertificates works, signing with a real CA and deciding subject and
// SANs itself the way the coordinator does (server/peer: CN=member name, IPs
// plus 127.0.0.1, EKU server+client auth; client: CN kedge-datastore-NODE,
// client auth). Every other method panics.
type SigningNode struct {
	kedgev1.NodeServiceClient
	CA       *CA
	Node     string
	IPs      []net.IP
	Lifetime time.Duration

	mu    sync.Mutex
	calls int
}

// Calls is how many SignCertificates calls were made.
func (s *SigningNode) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// SignCertificates signs each CSR after checking its signature.
func (s *SigningNode) SignCertificates(_ context.Context, req *kedgev1.SignCertificatesRequest, _ ...grpc.CallOption) (*kedgev1.SignCertificatesResponse, error) {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	lifetime := s.Lifetime
	if lifetime == 0 {
		lifetime = time.Hour
	}
	resp := &kedgev1.SignCertificatesResponse{CaPem: s.CA.PEM}
	for _, r := range req.GetRequests() {
		csr, err := x509.ParseCertificateRequest(r.GetCsrDer())
		if err != nil {
			return nil, fmt.Errorf("parse CSR: %w", err)
		}
		if err := csr.CheckSignature(); err != nil {
			return nil, fmt.Errorf("CSR signature: %w", err)
		}
		var pemCert []byte
		switch r.GetKind() {
		case kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_SERVER, kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_PEER:
			ips := append([]net.IP{net.IPv4(127, 0, 0, 1)}, s.IPs...)
			pemCert, err = s.CA.Sign(csr.PublicKey, s.Node, ips, []string{s.Node, "localhost"}, lifetime,
				x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
		case kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_CLIENT:
			pemCert, err = s.CA.Sign(csr.PublicKey, "kedge-datastore-"+s.Node, nil, nil, lifetime, x509.ExtKeyUsageClientAuth)
		default:
			return nil, fmt.Errorf("unknown certificate kind %s", r.GetKind())
		}
		if err != nil {
			return nil, err
		}
		resp.Certificates = append(resp.Certificates, &kedgev1.SignedCertificate{Kind: r.GetKind(), CertificatePem: pemCert})
	}
	return resp, nil
}
