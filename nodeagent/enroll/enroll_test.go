package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/kedge-io/kedge/coordinator/pki"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// bootstrap is a BootstrapService that signs with a real CA and counts calls.
type bootstrap struct {
	kedgev1.UnimplementedBootstrapServiceServer
	ca     *pki.CA
	calls  atomic.Int32
	refuse string
}

func (b *bootstrap) Enroll(ctx context.Context, req *kedgev1.EnrollRequest) (*kedgev1.EnrollResponse, error) {
	b.calls.Add(1)
	if b.refuse != "" {
		return nil, status.Error(codes.PermissionDenied, b.refuse)
	}
	certPEM, _, err := b.ca.SignCSR(req.CsrDer, pki.NodeIdentity("nuc-1", pki.DefaultLifetimes()), time.Now())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &kedgev1.EnrollResponse{State: kedgev1.EnrollState_ENROLL_STATE_ENROLLED, NodeName: "nuc-1", Cluster: "lab",
		CertificatePem: certPEM, CaBundlePem: b.ca.CertPEM}, nil
}

func startCoordinator(t *testing.T) (*bootstrap, string) {
	t.Helper()
	ca, err := pki.NewCA("test coordinator CA", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.Serving([]string{"127.0.0.1"}, pki.DefaultLifetimes()), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The chain carries the CA, which is what the pin is checked against.
	pair, err := tls.X509KeyPair(append(certPEM, ca.CertPEM...), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13})))
	b := &bootstrap{ca: ca}
	kedgev1.RegisterBootstrapServiceServer(srv, b)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return b, lis.Addr().String()
}

func TestWrongPinIsRefusedBeforeTheTokenIsSent(t *testing.T) {
	b, addr := startCoordinator(t)
	key, _ := LoadOrCreateKey(t.TempDir())
	other, _ := pki.NewCA("someone else", time.Hour, time.Now())
	_, err := Enroll(context.Background(), Request{Addr: addr, Pin: other.Pin(), Token: "abc.def", Facts: &kedgev1.MachineFacts{Hostname: "h"}, Key: key})
	var pm *PinMismatchError
	if !errors.As(err, &pm) || !strings.Contains(err.Error(), "coordinator CA does not match the pin "+other.Pin()) {
		t.Fatalf("want pin mismatch, got %v", err)
	}
	if n := b.calls.Load(); n != 0 {
		t.Fatalf("the coordinator received %d enroll requests despite the wrong pin", n)
	}
}

func TestEnrollWithPinStoresAWorkingIdentity(t *testing.T) {
	b, addr := startCoordinator(t)
	root := t.TempDir()
	key, err := LoadOrCreateKey(root)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := Enroll(context.Background(), Request{Addr: addr, Pin: b.ca.Pin(), Token: "abc.def", Facts: &kedgev1.MachineFacts{Hostname: "h"}, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	id, err := NewIdentity(key, resp.CertificatePem, resp.CaBundlePem)
	if err != nil {
		t.Fatal(err)
	}
	if err := id.Save(root); err != nil {
		t.Fatal(err)
	}
	again, err := Load(root)
	if err != nil || again.Name() != "nuc-1" {
		t.Fatalf("reload identity: %v %v", again, err)
	}
	if !again.RenewAt().After(time.Now()) || !again.RenewAt().Before(again.Cert.NotAfter) {
		t.Fatalf("renew time %v not within the lifetime", again.RenewAt())
	}
	if key2, _ := LoadOrCreateKey(root); !key2.Equal(key) {
		t.Fatal("a second LoadOrCreateKey made a new key")
	}
}

func TestRefusalCarriesTheCoordinatorsReason(t *testing.T) {
	b, addr := startCoordinator(t)
	b.refuse = "token expired at 2026-01-01T00:00:00Z"
	key, _ := LoadOrCreateKey(t.TempDir())
	_, err := Enroll(context.Background(), Request{Addr: addr, Pin: b.ca.Pin(), Token: "abc.def", Facts: &kedgev1.MachineFacts{}, Key: key})
	var r *RefusedError
	if !errors.As(err, &r) || err.Error() != "enrollment refused: token expired at 2026-01-01T00:00:00Z" {
		t.Fatalf("got %v", err)
	}
}

func TestLeafWithoutCAIsRefusedWithTheFix(t *testing.T) {
	ca, _ := pki.NewCA("coordinator CA", time.Hour, time.Now())
	certPEM, _, err := ca.Issue(pki.Serving([]string{"127.0.0.1"}, pki.DefaultLifetimes()), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := pki.DecodeCertPEM(certPEM)
	err = VerifyPinned([]*x509.Certificate{leaf}, ca.Pin(), "127.0.0.1")
	if err == nil || !strings.Contains(err.Error(), "without its CA") {
		t.Fatalf("leaf-only chain: %v", err)
	}
	if err := VerifyPinned([]*x509.Certificate{leaf, ca.Cert}, ca.Pin(), "127.0.0.1"); err != nil {
		t.Fatalf("leaf + CA: %v", err)
	}
	if err := VerifyPinned([]*x509.Certificate{leaf, ca.Cert}, ca.Pin(), "10.9.9.9"); err == nil {
		t.Fatal("a certificate for another host was accepted")
	}
}
