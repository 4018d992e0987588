package etcdrole_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/nodeagent/etcdrole"
	"github.com/kedge-io/kedge/nodeagent/etcdrole/etcdtest"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// unreachable is a coordinator that cannot be reached.
type unreachable struct{ kedgev1.NodeServiceClient }

func (unreachable) SignCertificates(context.Context, *kedgev1.SignCertificatesRequest, ...grpc.CallOption) (*kedgev1.SignCertificatesResponse, error) {
	return nil, errors.New("connection refused")
}

func serial(t *testing.T, root, p string) string {
	t.Helper()
	b, err := os.ReadFile(paths.In(root, p))
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.DecodeCertPEM(b)
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

func TestEnsureCertsLifecycle(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	plan := stackedPlan()
	ca := etcdtest.NewCA(t, "etcd CA")
	signer := &etcdtest.SigningNode{CA: ca, Node: "nuc-2", IPs: []string{"10.0.0.12"}, Lifetime: 30 * 24 * time.Hour}

	// Offline with nothing on disk: an error that says why.
	if _, err := etcdrole.EnsureCerts(ctx, root, plan, nil); err == nil || !strings.Contains(err.Error(), "no coordinator") {
		t.Fatalf("offline with no certs: %v", err)
	}

	changed, err := etcdrole.EnsureCerts(ctx, root, plan, signer)
	if err != nil || !changed {
		t.Fatalf("first EnsureCerts = %v, %v; want changed", changed, err)
	}
	for _, p := range []string{paths.EtcdServerKey, paths.EtcdPeerKey, paths.DatastoreClientKey} {
		fi, err := os.Stat(paths.In(root, p))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v, want 0600", p, err, fi.Mode())
		}
		b, _ := os.ReadFile(paths.In(root, p))
		if !strings.HasPrefix(string(b), "-----BEGIN EC PRIVATE KEY-----") {
			t.Errorf("%s is not a SEC1 EC key", p)
		}
	}
	if b, _ := os.ReadFile(paths.In(root, paths.EtcdCA)); string(b) != string(ca.PEM) {
		t.Error("etcd CA file is not the coordinator's CA")
	}
	first := serial(t, root, paths.EtcdServerCert)

	// Same plan again: nothing to do, no coordinator call.
	calls := signer.Calls()
	if changed, err := etcdrole.EnsureCerts(ctx, root, plan, signer); err != nil || changed || signer.Calls() != calls {
		t.Fatalf("second EnsureCerts = %v, %v with %d new calls; want no change", changed, err, signer.Calls()-calls)
	}
	// Offline with valid files: fine.
	if changed, err := etcdrole.EnsureCerts(ctx, root, plan, unreachable{}); err != nil || changed {
		t.Fatalf("offline with valid certs = %v, %v", changed, err)
	}

	// Past two thirds of the 30-day lifetime: due, but while the coordinator is
	// away the still-valid certs are kept without error; once it is back they renew.
	later := time.Now().Add(21 * 24 * time.Hour)
	if changed, err := etcdrole.EnsureCertsAt(ctx, root, plan, unreachable{}, later); err != nil || changed {
		t.Fatalf("due but offline = %v, %v", changed, err)
	}
	if changed, err := etcdrole.EnsureCertsAt(ctx, root, plan, signer, later); err != nil || !changed {
		t.Fatalf("due = %v, %v; want renewed", changed, err)
	}
	if serial(t, root, paths.EtcdServerCert) == first {
		t.Error("server cert was not replaced at two thirds of its lifetime")
	}

	// Expired and offline: unusable, so an error.
	if _, err := etcdrole.EnsureCertsAt(ctx, root, plan, nil, time.Now().Add(90*24*time.Hour)); err == nil || !strings.Contains(err.Error(), "not valid now") {
		t.Errorf("expired and offline: %v", err)
	}

	// A new IP in the plan: the certs no longer match and are re-signed.
	plan.Etcd.Ips = append(plan.Etcd.Ips, "10.0.1.12")
	signer.IPs = append(signer.IPs, "10.0.1.12")
	if changed, err := etcdrole.EnsureCerts(ctx, root, plan, signer); err != nil || !changed {
		t.Fatalf("new IP = %v, %v; want re-signed", changed, err)
	}
	// A coordinator that does not know the IP: said plainly.
	plan.Etcd.Ips = append(plan.Etcd.Ips, "10.0.2.12")
	if _, err := etcdrole.EnsureCerts(ctx, root, plan, signer); err == nil || !strings.Contains(err.Error(), "lacks IP SAN 10.0.2.12") {
		t.Errorf("coordinator without the IP: %v", err)
	}
	plan.Etcd.Ips = plan.Etcd.Ips[:2]

	// A new etcd CA: certs from the old one are re-signed.
	signer.CA = etcdtest.NewCA(t, "rotated etcd CA")
	if err := os.WriteFile(paths.In(root, paths.EtcdCA), signer.CA.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := etcdrole.EnsureCerts(ctx, root, plan, signer); err != nil || !changed {
		t.Fatalf("new CA = %v, %v; want re-signed", changed, err)
	}
}

func TestEnsureDatastoreClientCert(t *testing.T) {
	ctx := context.Background()
	ca := etcdtest.NewCA(t, "etcd CA")
	signer := &etcdtest.SigningNode{CA: ca, Node: "srv-1"}

	agent := &kedgev1.Plan{NodeName: "agent-1", Roles: []kedgev1.Role{kedgev1.Role_ROLE_K3S_AGENT}, K3S: &kedgev1.K3SPlan{}}
	root := t.TempDir()
	if changed, err := etcdrole.EnsureDatastoreClientCert(ctx, root, agent, signer); err != nil || changed || signer.Calls() != 0 {
		t.Fatalf("agent plan: %v %v", changed, err)
	}

	server := &kedgev1.Plan{NodeName: "srv-1", Roles: []kedgev1.Role{kedgev1.Role_ROLE_K3S_SERVER},
		K3S: &kedgev1.K3SPlan{DatastoreEndpoints: []string{"https://10.0.0.11:2379"}}}
	if changed, err := etcdrole.EnsureDatastoreClientCert(ctx, root, server, signer); err != nil || !changed {
		t.Fatalf("external server: %v %v", changed, err)
	}
	b, _ := os.ReadFile(paths.In(root, paths.DatastoreClientCert))
	c, err := pki.DecodeCertPEM(b)
	if err != nil || c.Subject.CommonName != "kedge-datastore-srv-1" {
		t.Fatalf("client cert: %v %v", c, err)
	}
	if fi, err := os.Stat(paths.In(root, paths.DatastoreClientKey)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("client key mode: %v %v", fi, err)
	}
	if changed, err := etcdrole.EnsureDatastoreClientCert(ctx, root, server, nil); err != nil || changed {
		t.Errorf("offline with a valid client cert: %v %v", changed, err)
	}
	// An etcd-only node gets one too (its agent probes with it).
	etcdOnly := stackedPlan()
	etcdOnly.Roles = []kedgev1.Role{kedgev1.Role_ROLE_ETCD}
	root2 := t.TempDir()
	if changed, err := etcdrole.EnsureDatastoreClientCert(ctx, root2, etcdOnly, signer); err != nil || !changed {
		t.Errorf("etcd-only node: %v %v", changed, err)
	}
}
