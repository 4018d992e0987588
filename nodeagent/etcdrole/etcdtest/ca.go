package etcdtest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kedge-io/kedge/coordinator/pki"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// CA is a real etcd CA made for one test with the coordinator's own CA code
// (coordinator/pki): a stand-in for a cluster's etcd CA when no coordinator runs.
type CA struct {
	*pki.CA
	// PEM is the CA certificate, as written to /etc/kedge/etcd/ca.crt.
	PEM []byte
}

// NewCA makes a CA whose subject is name.
func NewCA(t testing.TB, name string) *CA {
	t.Helper()
	ca, err := pki.NewCA(name, pki.DefaultLifetimes().CA, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return &CA{CA: ca, PEM: ca.CertPEM}
}

// IssuePair makes a fresh key and a client+server cert for it (key in SEC1
// PEM) with the given CN and IP/DNS SANs.
func (ca *CA) IssuePair(t testing.TB, cn string, hosts ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	leaf := pki.EtcdMember(cn, hosts, "", pki.Lifetimes{EtcdLeaf: time.Hour})
	certPEM, keyPEM, err := ca.Issue(leaf, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

// SigningNode is a TEST DOUBLE of the coordinator's NodeService for one node:
// only SignCertificates works. It signs with a real CA through the
// coordinator's pki leaf profiles (server/peer: CN=node, IPs + 127.0.0.1,
// server+client auth; client: CN kedge-datastore-NODE, client auth). Every
// other method panics.
type SigningNode struct {
	kedgev1.NodeServiceClient
	CA       *CA
	Node     string
	IPs      []string
	Lifetime time.Duration
	// Now, if set, is the signing time (certs for renewal tests).
	Now func() time.Time

	mu    sync.Mutex
	calls int
}

// Calls is how many SignCertificates calls were made.
func (s *SigningNode) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// SignCertificates signs each CSR after checking it.
func (s *SigningNode) SignCertificates(_ context.Context, req *kedgev1.SignCertificatesRequest, _ ...grpc.CallOption) (*kedgev1.SignCertificatesResponse, error) {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	l := pki.Lifetimes{EtcdLeaf: s.Lifetime}
	if l.EtcdLeaf == 0 {
		l.EtcdLeaf = time.Hour
	}
	now := time.Now()
	if s.Now != nil {
		now = s.Now()
	}
	resp := &kedgev1.SignCertificatesResponse{CaPem: s.CA.PEM}
	for _, r := range req.GetRequests() {
		var leaf pki.Leaf
		switch r.GetKind() {
		case kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_SERVER, kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_PEER:
			leaf = pki.EtcdMember(s.Node, s.IPs, s.Node, l)
		case kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_CLIENT:
			leaf = pki.EtcdClient(pki.DatastoreClientName(s.Node), l)
		default:
			return nil, fmt.Errorf("unknown certificate kind %s", r.GetKind())
		}
		certPEM, _, err := s.CA.SignCSR(r.GetCsrDer(), leaf, now)
		if err != nil {
			return nil, err
		}
		resp.Certificates = append(resp.Certificates, &kedgev1.SignedCertificate{Kind: r.GetKind(), CertificatePem: certPEM})
	}
	return resp, nil
}

// Compile-time check that the double satisfies the client interface.
var _ kedgev1.NodeServiceClient = (*SigningNode)(nil)
