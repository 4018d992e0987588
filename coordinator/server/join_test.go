package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/kedge-io/kedge/coordinator/coordtest"
	"github.com/kedge-io/kedge/coordinator/pki"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

const joinSpec = `apiVersion: kedge/v1
kind: Cluster
metadata:
  name: edge-1
spec:
  topology: stacked
  etcd:
    members: MEMBERS
  k3s:
    servers: MEMBERS
    version: v1.31.4+k3s1
    binary:
      sha256: "0000000000000000000000000000000000000000000000000000000000000000"
      path: /usr/local/bin/k3s
  inventory:
    - name: nuc-a
      match: {hostname: a}
      ip: 127.0.0.11
    - name: nuc-b
      match: {hostname: b}
      ip: 127.0.0.12
`

// A member added to a running etcd: the coordinator adds it as a learner
// through the running member (with its own client cert from the cluster's
// etcd CA) and releases its plan with state "existing" and the member list.
func TestEtcdMemberJoinsRunningCluster(t *testing.T) {
	env := coordtest.Start(t)
	ctx := testCtx(t)
	env.ApplySpec(t, strings.ReplaceAll(joinSpec, "MEMBERS", "1"))
	fa := facts(1)
	fa.Hostname = "a"
	a := env.EnrollNode(t, fa)
	planA := waitPlan(ctx, t, a, func(p *kedgev1.Plan) bool { return p.GetEtcd() != nil })

	// Run nuc-a's member as its plan says, with certs from the coordinator.
	dir := t.TempDir()
	files := map[string][]byte{}
	key, _ := pki.GenerateKey()
	keyPEM, _ := pki.EncodeKeyPEM(key)
	csr, _ := pki.CreateCSR(key, "x")
	signed, err := a.Client.SignCertificates(ctx, &kedgev1.SignCertificatesRequest{Requests: []*kedgev1.CertificateRequest{
		{Kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_SERVER, CsrDer: csr},
		{Kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_PEER, CsrDer: csr},
		{Kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_CLIENT, CsrDer: csr},
	}})
	if err != nil {
		t.Fatal(err)
	}
	files["ca.pem"], files["key.pem"] = signed.CaPem, keyPEM
	files["server.pem"], files["peer.pem"], files["client.pem"] = signed.Certificates[0].CertificatePem, signed.Certificates[1].CertificatePem, signed.Certificates[2].CertificatePem
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = planA.Etcd.MemberName, filepath.Join(dir, "data")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = urls(t, planA.Etcd.ClientUrls), urls(t, planA.Etcd.ClientUrls)
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = urls(t, planA.Etcd.PeerUrls), urls(t, planA.Etcd.PeerUrls)
	var initial []string
	for _, m := range planA.Etcd.InitialCluster {
		initial = append(initial, m.Name+"="+m.PeerUrls[0])
	}
	cfg.InitialCluster, cfg.InitialClusterToken = strings.Join(initial, ","), planA.Etcd.InitialClusterToken
	cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "key.pem")
	cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = filepath.Join(dir, "ca.pem"), true
	cfg.PeerTLSInfo.CertFile, cfg.PeerTLSInfo.KeyFile = filepath.Join(dir, "peer.pem"), filepath.Join(dir, "key.pem")
	cfg.PeerTLSInfo.TrustedCAFile, cfg.PeerTLSInfo.ClientCertAuth = filepath.Join(dir, "ca.pem"), true
	cfg.ListenMetricsUrls = nil
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start nuc-a's etcd on %v: %v", planA.Etcd.ClientUrls, err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
	case <-ctx.Done():
		t.Fatal("nuc-a's etcd not ready")
	}
	// nuc-a reports its member running: etcd counts as released.
	if _, err := a.Client.ReportStatus(ctx, &kedgev1.ReportStatusRequest{Status: &kedgev1.NodeStatus{
		PlanHash: planA.Hash, Etcd: &kedgev1.EtcdMemberStatus{MemberId: uint64(e.Server.MemberID()), Healthy: true, IsLeader: true}}}); err != nil {
		t.Fatal(err)
	}

	env.ApplySpec(t, strings.ReplaceAll(joinSpec, "MEMBERS", "3"))
	fb := facts(2)
	fb.Hostname = "b"
	b := env.EnrollNode(t, fb)
	planB := waitPlan(ctx, t, b, func(p *kedgev1.Plan) bool { return p.GetEtcd() != nil })
	if planB.Etcd.InitialClusterState != "existing" || len(planB.Etcd.InitialCluster) != 2 {
		t.Errorf("joiner's plan: state %q, initial cluster %v; want existing with both members", planB.Etcd.InitialClusterState, planB.Etcd.InitialCluster)
	}
	if again := waitPlan(ctx, t, a, func(*kedgev1.Plan) bool { return true }); again.Etcd.InitialClusterState != "new" || len(again.Etcd.InitialCluster) != 1 {
		t.Errorf("the running member's etcd plan changed: %v", again.Etcd)
	}

	cert, _ := tls.X509KeyPair(files["client.pem"], keyPEM)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(files["ca.pem"])
	cli, err := clientv3.New(clientv3.Config{Endpoints: planA.Etcd.ClientUrls, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	members, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	learners := 0
	for _, m := range members.Members {
		if m.IsLearner {
			learners++
			if strings.Join(m.PeerURLs, ",") != strings.Join(planB.Etcd.PeerUrls, ",") {
				t.Errorf("learner peer URLs %v; want %v", m.PeerURLs, planB.Etcd.PeerUrls)
			}
		}
	}
	if len(members.Members) != 2 || learners != 1 {
		t.Errorf("etcd has %d members, %d learners; want nuc-a plus nuc-b as a learner", len(members.Members), learners)
	}
}

func urls(t *testing.T, ss []string) []url.URL {
	t.Helper()
	var out []url.URL
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, *u)
	}
	return out
}

// waitPlan reads the node's plan stream until ok accepts a plan.
func waitPlan(ctx context.Context, t *testing.T, n *coordtest.NodeIdentity, ok func(*kedgev1.Plan) bool) *kedgev1.Plan {
	t.Helper()
	stream, err := n.Client.WatchPlan(ctx, &kedgev1.WatchPlanRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for %s's plan: %v", n.Name, err)
		}
		if ok(resp.Plan) {
			return resp.Plan
		}
	}
}
