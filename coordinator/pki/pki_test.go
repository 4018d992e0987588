package pki

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func newTestCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA("test CA", DefaultLifetimes().CA, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func TestSignNodeIdentityIgnoresCSRSubjectAndSANs(t *testing.T) {
	ca := newTestCA(t)
	key, _ := GenerateKey()
	// A CSR asking for more than it should get: another name, admin org, SANs.
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject:     pkix.Name{CommonName: "other-node", Organization: []string{OrgAdmins}},
		DNSNames:    []string{"evil.example"},
		IPAddresses: []net.IP{net.ParseIP("10.9.9.9")},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	_, cert, err := ca.SignCSR(csr, NodeIdentity("node-1", DefaultLifetimes()), now)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != "node-1" || len(cert.Subject.Organization) != 1 || cert.Subject.Organization[0] != OrgNodes {
		t.Errorf("subject = %v; want CN=node-1 O=%s", cert.Subject, OrgNodes)
	}
	if len(cert.DNSNames) != 0 || len(cert.IPAddresses) != 0 {
		t.Errorf("SANs copied from CSR: %v %v", cert.DNSNames, cert.IPAddresses)
	}
	if got := cert.NotAfter.Sub(now); got < 29*24*time.Hour || got > 31*24*time.Hour {
		t.Errorf("lifetime %v; want 30 days", got)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("node cert does not verify as a client cert: %v", err)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err == nil {
		t.Error("node identity verifies as a server cert; want clientAuth only")
	}
}

func TestEtcdMemberSANs(t *testing.T) {
	ca := newTestCA(t)
	key, _ := GenerateKey()
	_, cert, err := ca.Sign(&key.PublicKey, EtcdMember("etcd-a", []string{"10.77.0.11"}, "node-a", DefaultLifetimes()), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var ips []string
	for _, ip := range cert.IPAddresses {
		ips = append(ips, ip.String())
	}
	if strings.Join(ips, ",") != "10.77.0.11,127.0.0.1" {
		t.Errorf("IP SANs = %v", ips)
	}
	if strings.Join(cert.DNSNames, ",") != "localhost,node-a" {
		t.Errorf("DNS SANs = %v", cert.DNSNames)
	}
	for _, host := range []string{"10.77.0.11", "127.0.0.1", "node-a"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("etcd cert for %s: %v", host, err)
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("etcd peer cert as client: %v", err)
		}
	}
}

func TestParseCSRRefusals(t *testing.T) {
	ecKey, _ := GenerateKey()
	good, _ := CreateCSR(ecKey, "n")
	bad := append([]byte{}, good...)
	bad[len(bad)-3] ^= 0xff // inside the signature
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	rsaCSR, _ := CreateCSR(rsaKey, "n")
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384CSR, _ := CreateCSR(p384, "n")
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	edCSR, _ := CreateCSR(edKey, "n")

	for _, tc := range []struct {
		name, want string
		der        []byte
	}{
		{"bad signature", "signature does not verify", bad},
		{"rsa key", "CSR key is RSA; use ECDSA P-256 or Ed25519", rsaCSR},
		{"p384 key", "ECDSA P-384", p384CSR},
		{"empty", "csr_der is empty", nil},
		{"garbage", "not a DER PKCS#10 CSR", []byte("hello")},
	} {
		_, err := ParseCSR(tc.der)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v; want InvalidArgument containing %q", tc.name, err, tc.want)
		}
	}
	for name, der := range map[string][]byte{"ecdsa": good, "ed25519": edCSR} {
		if _, err := ParseCSR(der); err != nil {
			t.Errorf("%s CSR refused: %v", name, err)
		}
	}
}

func TestPinAndPEMRoundTrip(t *testing.T) {
	ca := newTestCA(t)
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(keyPEM), "-----BEGIN EC PRIVATE KEY-----") {
		t.Errorf("key PEM is not SEC1: %.40s", keyPEM)
	}
	again, err := LoadCA(ca.CertPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	if again.Pin() != ca.Pin() || !strings.HasPrefix(ca.Pin(), "sha256:") || len(ca.Pin()) != 7+64 {
		t.Errorf("pin %q changed or malformed after reload (%q)", ca.Pin(), again.Pin())
	}
	other := newTestCA(t)
	otherKey, _ := other.KeyPEM()
	if _, err := LoadCA(ca.CertPEM, otherKey); err == nil {
		t.Error("LoadCA accepted a key that does not match the cert")
	}
}

func TestSealer(t *testing.T) {
	ca := newTestCA(t)
	s, _ := NewSealer(ca)
	sealed, err := s.Seal([]byte("secret"), "a")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(sealed), "secret") {
		t.Error("sealed value contains the plaintext")
	}
	if out, err := s.Open(sealed, "a"); err != nil || string(out) != "secret" {
		t.Errorf("Open = %q, %v", out, err)
	}
	if _, err := s.Open(sealed, "b"); err == nil {
		t.Error("Open with another label succeeded")
	}
	other, _ := NewSealer(newTestCA(t))
	if _, err := other.Open(sealed, "a"); err == nil {
		t.Error("another CA's sealer opened the value")
	}
}
