package server_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kedge-io/kedge/coordinator/coordtest"
	"github.com/kedge-io/kedge/coordinator/health"
	"github.com/kedge-io/kedge/coordinator/pki"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

const stackedSpec = coordtest.OneNodeSpec

func facts(i int) *kedgev1.MachineFacts {
	return &kedgev1.MachineFacts{
		MachineId: fmt.Sprintf("%032x", i+1), Hostname: fmt.Sprintf("nuc%d", i),
		Macs: []string{fmt.Sprintf("52:54:00:00:%02x:%02x", i/256, i%256)}, Ips: []string{"127.0.0.1"}, Arch: "amd64", Os: "linux",
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func enroll(ctx context.Context, env *coordtest.Env, t *testing.T, token string, f *kedgev1.MachineFacts) (*kedgev1.EnrollResponse, error) {
	key, _ := pki.GenerateKey()
	csr, err := pki.CreateCSR(key, "ignored")
	if err != nil {
		t.Fatal(err)
	}
	return env.BootstrapClient(t).Enroll(ctx, &kedgev1.EnrollRequest{Token: token, CsrDer: csr, Facts: f})
}

func TestConcurrentEnrollmentAndRestart(t *testing.T) {
	env := coordtest.Start(t)
	env.Cluster = "edge-1"
	ctx := testCtx(t)
	token := env.Token(t, "edge-1")

	const n = 20
	names := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := enroll(ctx, env, t, token, facts(i))
			if err != nil {
				t.Errorf("node %d: %v", i, err)
				return
			}
			cert, err := pki.DecodeCertPEM(resp.CertificatePem)
			if err != nil || cert.Subject.CommonName != resp.NodeName {
				t.Errorf("node %d: cert CN %v for %s (%v)", i, cert.Subject.CommonName, resp.NodeName, err)
			}
			names[i] = resp.NodeName
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, name := range names {
		if seen[name] {
			t.Errorf("name %s given twice", name)
		}
		seen[name] = true
	}
	list, err := env.Admin.ListNodes(ctx, &kedgev1.ListNodesRequest{Cluster: "edge-1"})
	if err != nil || len(list.Nodes) != n {
		t.Fatalf("ListNodes: %d nodes, %v; want %d", len(list.GetNodes()), err, n)
	}
	for _, node := range list.Nodes {
		if !seen[node.Name] || node.State != kedgev1.NodeState_NODE_STATE_ENROLLED {
			t.Errorf("listed %s in state %s", node.Name, node.State)
		}
	}
	toks, _ := env.Admin.ListTokens(ctx, &kedgev1.ListTokensRequest{})

	env.ApplySpec(t, stackedSpec)
	env.Restart(t)
	after, err := env.Admin.ListNodes(ctx, &kedgev1.ListNodesRequest{Cluster: "edge-1"})
	if err != nil || len(after.Nodes) != n {
		t.Fatalf("after restart: %d nodes, %v", len(after.GetNodes()), err)
	}
	toksAfter, _ := env.Admin.ListTokens(ctx, &kedgev1.ListTokensRequest{})
	if len(toksAfter.GetTokens()) != len(toks.GetTokens()) {
		t.Errorf("tokens before restart %d, after %d", len(toks.GetTokens()), len(toksAfter.GetTokens()))
	}
	if sp, err := env.Admin.GetSpec(ctx, &kedgev1.GetSpecRequest{Cluster: "edge-1"}); err != nil || !strings.Contains(string(sp.SpecYaml), "edge-1") {
		t.Errorf("spec after restart: %v", err)
	}
	// Re-enrollment of a known machine (disk wiped: new key) is the same node.
	resp, err := enroll(ctx, env, t, token, facts(3))
	if err != nil || resp.NodeName != names[3] {
		t.Errorf("re-enrollment: %v, %v; want node %s", resp.GetNodeName(), err, names[3])
	}
	if again, _ := env.Admin.ListNodes(ctx, &kedgev1.ListNodesRequest{}); len(again.GetNodes()) != n {
		t.Errorf("re-enrollment made %d nodes; want %d", len(again.GetNodes()), n)
	}
}

func TestRefusedTokens(t *testing.T) {
	env := coordtest.Start(t)
	ctx := testCtx(t)
	if _, err := enroll(ctx, env, t, "abcdef.0123456789abcdef", facts(1)); !refusedWith(err, "unknown token") {
		t.Errorf("unknown token: %v", err)
	}
	single, err := env.Admin.CreateToken(ctx, &kedgev1.CreateTokenRequest{Cluster: "c", Ttl: durationpb.New(time.Hour), MaxUses: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enroll(ctx, env, t, single.Token, facts(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := enroll(ctx, env, t, single.Token, facts(2)); !refusedWith(err, "token used up") {
		t.Errorf("used-up token: %v", err)
	}
	short, err := env.Admin.CreateToken(ctx, &kedgev1.CreateTokenRequest{Cluster: "c", Ttl: durationpb.New(50 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(short.Info.ExpiresAt.AsTime()) + 10*time.Millisecond) // until the known expiry instant
	want := "token expired at " + short.Info.ExpiresAt.AsTime().UTC().Format(time.RFC3339)
	if _, err := enroll(ctx, env, t, short.Token, facts(3)); !refusedWith(err, want) {
		t.Errorf("expired token: %v; want %q", err, want)
	}
	rev, _ := env.Admin.CreateToken(ctx, &kedgev1.CreateTokenRequest{Cluster: "c"})
	if _, err := env.Admin.RevokeToken(ctx, &kedgev1.RevokeTokenRequest{Id: rev.Info.Id}); err != nil {
		t.Fatal(err)
	}
	if _, err := enroll(ctx, env, t, rev.Token, facts(4)); !refusedWith(err, "token revoked") {
		t.Errorf("revoked token: %v", err)
	}
	// A machine of cluster c presenting a token for cluster d.
	other := env.Token(t, "d")
	if _, err := enroll(ctx, env, t, other, facts(1)); !refusedWith(err, "token is for cluster d, not c") {
		t.Errorf("wrong cluster: %v", err)
	}
	refused, err := env.Admin.ListRefusedEnrollments(ctx, &kedgev1.ListRefusedEnrollmentsRequest{})
	if err != nil || len(refused.Refused) != 5 {
		t.Fatalf("ListRefusedEnrollments: %d, %v; want 5", len(refused.GetRefused()), err)
	}
	for _, r := range refused.Refused {
		if strings.Contains(r.Reason, "0123456789abcdef") || r.Address != "127.0.0.1" {
			t.Errorf("refusal record %v", r)
		}
	}
	// Guessing from one address is slowed down: soon every attempt, even
	// with a good token, is turned away until the address calms down.
	limited := false
	for range 20 {
		if _, err := enroll(ctx, env, t, "abcdef.0123456789abcdef", facts(9)); status.Code(err) == codes.ResourceExhausted {
			limited = true
			break
		}
	}
	if !limited {
		t.Error("20 failed enrollments from one address were never rate-limited")
	}
	if _, err := enroll(ctx, env, t, env.Token(t, "c"), facts(10)); status.Code(err) != codes.ResourceExhausted {
		t.Errorf("good token from a limited address: %v; want ResourceExhausted", err)
	}
}

func refusedWith(err error, msg string) bool {
	return status.Code(err) == codes.PermissionDenied && strings.HasPrefix(status.Convert(err).Message(), msg)
}

func TestNodeAuthority(t *testing.T) {
	env := coordtest.Start(t)
	ctx := testCtx(t)
	env.ApplySpec(t, stackedSpec)
	server := env.EnrollNode(t, facts(1))
	agent := env.EnrollNode(t, facts(2))

	// A node cert on AdminService.
	conn, err := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(agent.TLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := kedgev1.NewAdminServiceClient(conn).ListNodes(ctx, &kedgev1.ListNodesRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("node calling AdminService: %v; want PermissionDenied", err)
	}
	// No cert on NodeService.
	noCert, _ := grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsNoCert(env))))
	defer noCert.Close()
	if _, err := kedgev1.NewNodeServiceClient(noCert).ReportStatus(ctx, &kedgev1.ReportStatusRequest{Status: &kedgev1.NodeStatus{}}); status.Code(err) != codes.Unauthenticated {
		t.Errorf("NodeService without cert: %v; want Unauthenticated", err)
	}

	// Each node sees only its own plan.
	for _, n := range []*coordtest.NodeIdentity{server, agent} {
		stream, err := n.Client.WatchPlan(ctx, &kedgev1.WatchPlanRequest{})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil || resp.Plan.NodeName != n.Name {
			t.Errorf("%s got plan of %q (%v)", n.Name, resp.GetPlan().GetNodeName(), err)
		}
	}

	// etcd certs only for the etcd node, SANs from the coordinator's records.
	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key, "evil")
	signed, err := server.Client.SignCertificates(ctx, &kedgev1.SignCertificatesRequest{Requests: []*kedgev1.CertificateRequest{
		{Kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_SERVER, CsrDer: csr},
		{Kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_CLIENT, CsrDer: csr},
	}})
	if err != nil {
		t.Fatal(err)
	}
	etcdCA, err := pki.DecodeCertPEM(signed.CaPem)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(etcdCA)
	srvCert, _ := pki.DecodeCertPEM(signed.Certificates[0].CertificatePem)
	if _, err := srvCert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1", KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("etcd server cert: %v", err)
	}
	if srvCert.Subject.CommonName == "evil" {
		t.Error("etcd server cert took its CN from the CSR")
	}
	cli, _ := pki.DecodeCertPEM(signed.Certificates[1].CertificatePem)
	if cli.Subject.CommonName != pki.DatastoreClientName(server.Name) {
		t.Errorf("datastore client CN %q", cli.Subject.CommonName)
	}
	if _, err := agent.Client.SignCertificates(ctx, &kedgev1.SignCertificatesRequest{Requests: []*kedgev1.CertificateRequest{
		{Kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_PEER, CsrDer: csr},
	}}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("agent asking for an etcd peer cert: %v; want PermissionDenied", err)
	}

	// A removed node is turned away with the reason, its open watch too.
	watch, err := agent.Client.WatchPlan(ctx, &kedgev1.WatchPlanRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Admin.RemoveNode(ctx, &kedgev1.RemoveNodeRequest{Name: agent.Name}); err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); status.Code(err) != codes.Unauthenticated {
		t.Errorf("open watch of a removed node: %v; want Unauthenticated", err)
	}
	_, err = agent.Client.ReportStatus(ctx, &kedgev1.ReportStatusRequest{Status: &kedgev1.NodeStatus{}})
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "node "+agent.Name+" was removed; re-flash it to enroll again") {
		t.Errorf("removed node: %v", err)
	}
}

func TestSharedMachineIDAndApproval(t *testing.T) {
	env := coordtest.Start(t)
	ctx := testCtx(t)
	a, b := facts(1), facts(2)
	b.MachineId = a.MachineId // cloned image
	na := env.EnrollNode(t, a)
	nb := env.EnrollNode(t, b)
	if na.Name == nb.Name {
		t.Fatalf("two machines sharing machine-id %s became one node %s", a.MachineId, na.Name)
	}
	if len(nb.Warnings) != 1 || !strings.Contains(nb.Warnings[0], "machine-id "+a.MachineId+" is shared with node "+na.Name) {
		t.Errorf("warnings %q", nb.Warnings)
	}

	tok, err := env.Admin.CreateToken(ctx, &kedgev1.CreateTokenRequest{Cluster: "default", RequireApproval: true, MaxUses: 1})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key, "x")
	req := &kedgev1.EnrollRequest{Token: tok.Token, CsrDer: csr, Facts: facts(7)}
	bc := env.BootstrapClient(t)
	resp, err := bc.Enroll(ctx, req)
	if err != nil || resp.State != kedgev1.EnrollState_ENROLL_STATE_PENDING_APPROVAL || len(resp.CertificatePem) != 0 {
		t.Fatalf("approval token: %v, %v; want PENDING without cert", resp.GetState(), err)
	}
	// Polling again with the single-use token is not a second use.
	if resp, err = bc.Enroll(ctx, req); err != nil || resp.State != kedgev1.EnrollState_ENROLL_STATE_PENDING_APPROVAL {
		t.Fatalf("second poll: %v, %v", resp.GetState(), err)
	}
	if _, err := env.Admin.ApproveNode(ctx, &kedgev1.ApproveNodeRequest{Name: resp.NodeName}); err != nil {
		t.Fatal(err)
	}
	if resp, err = bc.Enroll(ctx, req); err != nil || resp.State != kedgev1.EnrollState_ENROLL_STATE_ENROLLED || len(resp.CertificatePem) == 0 {
		t.Fatalf("after approval: %v, %v", resp.GetState(), err)
	}
}

const pinnedSpec = coordtest.OneNodeSpec + `  inventory:
    - name: nuc-a
      match: {hostname: pinned-host}
      ip: 10.77.0.11
`

// A pin names the node and fixes its IP; another machine matching the same
// pin is refused; the pinned IP is what etcd certs carry.
func TestPinnedEnrollment(t *testing.T) {
	env := coordtest.Start(t)
	ctx := testCtx(t)
	env.ApplySpec(t, pinnedSpec)
	f := facts(1)
	f.Hostname = "pinned-host"
	node := env.EnrollNode(t, f)
	got, err := env.Admin.GetNode(ctx, &kedgev1.GetNodeRequest{Name: "nuc-a"})
	if node.Name != "nuc-a" || err != nil || got.Node.NodeIp != "10.77.0.11" || got.Node.ObservedAddress != "127.0.0.1" {
		t.Fatalf("pinned node: name %s, record %v, %v", node.Name, got.GetNode(), err)
	}
	other := facts(2)
	other.Hostname = "pinned-host"
	_, err = enroll(ctx, env, t, env.Token(t, "edge-1"), other)
	if !refusedWith(err, "pinned node name nuc-a is taken by another machine") {
		t.Errorf("second machine on a taken pin: %v", err)
	}
	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key, "x")
	signed, err := node.Client.SignCertificates(ctx, &kedgev1.SignCertificatesRequest{Requests: []*kedgev1.CertificateRequest{{Kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_PEER, CsrDer: csr}}})
	if err != nil {
		t.Fatal(err)
	}
	peer, _ := pki.DecodeCertPEM(signed.Certificates[0].CertificatePem)
	var ips []string
	for _, ip := range peer.IPAddresses {
		ips = append(ips, ip.String())
	}
	if strings.Join(ips, ",") != "10.77.0.11,127.0.0.1" {
		t.Errorf("peer cert IP SANs %v; want the pinned IP and loopback", ips)
	}
}

// Renewal, artifacts and the kubeconfig, each as its caller would use it.
func TestRenewArtifactsKubeconfig(t *testing.T) {
	env := coordtest.Start(t)
	ctx := testCtx(t)
	env.ApplySpec(t, stackedSpec)
	server := env.EnrollNode(t, facts(1))
	agent := env.EnrollNode(t, facts(2))

	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key, "x")
	renewed, err := agent.Client.RenewIdentity(ctx, &kedgev1.RenewIdentityRequest{CsrDer: csr})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := pki.DecodeCertPEM(renewed.CertificatePem)
	if cert.Subject.CommonName != agent.Name || !key.PublicKey.Equal(cert.PublicKey) {
		t.Errorf("renewed cert CN %s for %s", cert.Subject.CommonName, agent.Name)
	}

	push, err := env.Admin.PushArtifact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("k3s-binary ", 100000) // > one chunk
	_ = push.Send(&kedgev1.PushArtifactRequest{Name: "k3s", Version: "v1.31.4+k3s1", Chunk: []byte(payload[:500000])})
	_ = push.Send(&kedgev1.PushArtifactRequest{Chunk: []byte(payload[500000:])})
	meta, err := push.CloseAndRecv()
	if err != nil || meta.Size != int64(len(payload)) {
		t.Fatalf("push: %v, %v", meta, err)
	}
	fetch, err := agent.Client.FetchArtifact(ctx, &kedgev1.FetchArtifactRequest{Name: "k3s", Version: "v1.31.4+k3s1"})
	if err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	var sum string
	for {
		msg, err := fetch.Recv()
		if err != nil {
			break
		}
		if msg.Sha256 != "" {
			sum = msg.Sha256
		}
		got.Write(msg.Chunk)
	}
	if got.String() != payload || sum != meta.Sha256 {
		t.Errorf("fetched %d bytes sha %s; want %d bytes sha %s", got.Len(), sum, len(payload), meta.Sha256)
	}
	missing, err := agent.Client.FetchArtifact(ctx, &kedgev1.FetchArtifactRequest{Name: "k3s", Version: "v0"})
	if err == nil {
		_, err = missing.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Errorf("missing artifact: %v; want NotFound", err)
	}

	kc := []byte("apiVersion: v1\nkind: Config\n")
	if _, err := agent.Client.UploadKubeconfig(ctx, &kedgev1.UploadKubeconfigRequest{Kubeconfig: kc}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("agent uploading a kubeconfig: %v; want PermissionDenied", err)
	}
	// The server's plan must be released before it counts as a K3s server.
	stream, err := server.Client.WatchPlan(ctx, &kedgev1.WatchPlanRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Client.UploadKubeconfig(ctx, &kedgev1.UploadKubeconfigRequest{Kubeconfig: kc}); err != nil {
		t.Fatal(err)
	}
	if resp, err := env.Admin.GetKubeconfig(ctx, &kedgev1.GetKubeconfigRequest{Cluster: "edge-1"}); err != nil || string(resp.Kubeconfig) != string(kc) {
		t.Errorf("GetKubeconfig: %q, %v", resp.GetKubeconfig(), err)
	}
}

// WatchPlan resumes: a node holding the current hash gets nothing until the
// plan changes, then the change; a node claiming an unknown revision gets
// the full current plan.
func TestWatchPlanResume(t *testing.T) {
	env := coordtest.Start(t)
	ctx := testCtx(t)
	env.ApplySpec(t, stackedSpec)
	node := env.EnrollNode(t, facts(1))
	first, err := node.Client.WatchPlan(ctx, &kedgev1.WatchPlanRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cur, err := first.Recv()
	if err != nil {
		t.Fatal(err)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	resumed, err := node.Client.WatchPlan(wctx, &kedgev1.WatchPlanRequest{KnownRevision: cur.Plan.Revision, KnownHash: cur.Plan.Hash})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan *kedgev1.Plan, 4)
	go func() {
		for {
			resp, err := resumed.Recv()
			if err != nil {
				close(got)
				return
			}
			got <- resp.Plan
		}
	}()
	env.ApplySpec(t, strings.Replace(stackedSpec, "v1.31.4+k3s1", "v1.31.5+k3s1", 1))
	select {
	case p := <-got:
		if p.Hash == cur.Plan.Hash || p.GetK3S().GetBinary().GetVersion() != "v1.31.5+k3s1" || p.Revision <= cur.Plan.Revision {
			t.Errorf("first plan on a resumed watch is %s@%d (%s); want the changed plan", p.Hash, p.Revision, p.GetK3S().GetBinary().GetVersion())
		}
	case <-ctx.Done():
		t.Fatal("no plan change pushed")
	}

	stale, err := node.Client.WatchPlan(ctx, &kedgev1.WatchPlanRequest{KnownRevision: 1 << 40, KnownHash: "not-a-hash"})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stale.Recv(); err != nil || resp.Plan.GetK3S().GetBinary().GetVersion() != "v1.31.5+k3s1" {
		t.Errorf("unknown revision: got %v, %v; want the current plan", resp.GetPlan(), err)
	}
}

// A refused spec and a dry run store nothing; a dry run reports the changes.
func TestApplySpecRefusedAndDryRun(t *testing.T) {
	env := coordtest.Start(t)
	ctx := testCtx(t)
	env.Cluster = "edge-1"
	node := env.EnrollNode(t, facts(1))
	_, err := env.Admin.ApplySpec(ctx, &kedgev1.ApplySpecRequest{FileName: "edge.yaml", SpecYaml: []byte(strings.Replace(stackedSpec, "members: 1", "members: 2", 1))})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "edge.yaml") || !strings.Contains(err.Error(), "spec.etcd.members") {
		t.Errorf("invalid spec: %v; want InvalidArgument naming the file and field", err)
	}
	dry, err := env.Admin.ApplySpec(ctx, &kedgev1.ApplySpecRequest{SpecYaml: []byte(stackedSpec), DryRun: true})
	if err != nil || dry.Stored || len(dry.Changes) != 1 || dry.Changes[0].Node != node.Name || len(dry.Changes[0].Changes) == 0 {
		t.Fatalf("dry run: %v, %v; want one unstored change for %s", dry, err, node.Name)
	}
	for _, line := range dry.Changes[0].Changes {
		if strings.Contains(line, "token:") && !strings.HasSuffix(line, ": changed") {
			t.Errorf("dry run diff shows a secret: %q", line)
		}
	}
	if _, err := env.Admin.GetSpec(ctx, &kedgev1.GetSpecRequest{Cluster: "edge-1"}); status.Code(err) != codes.NotFound {
		t.Errorf("after a refused spec and a dry run, GetSpec: %v; want NotFound", err)
	}
	if got, _ := env.Admin.GetNode(ctx, &kedgev1.GetNodeRequest{Name: node.Name}); got.GetPlan() != nil {
		t.Errorf("dry run stored a plan: %v", got.GetPlan())
	}
}

// Silence turns a node Unreachable (tick + --unreachable-after), with an event.
func TestSilentNodeBecomesUnreachable(t *testing.T) {
	env := coordtest.Start(t)
	env.UnreachableAfter = time.Second
	env.Restart(t)
	ctx := testCtx(t)
	env.ApplySpec(t, stackedSpec)
	node := env.EnrollNode(t, facts(1))
	if _, err := node.Client.ReportStatus(ctx, &kedgev1.ReportStatusRequest{Status: &kedgev1.NodeStatus{AgentVersion: "test"}}); err != nil {
		t.Fatal(err)
	}
	for {
		got, err := env.Admin.GetNode(ctx, &kedgev1.GetNodeRequest{Name: node.Name})
		if err != nil {
			t.Fatal(err)
		}
		if got.Node.Condition == kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node still %s after its silence: %s", got.Node.Condition, got.Node.ConditionReason)
		case <-time.After(100 * time.Millisecond):
		}
	}
	events, err := env.Admin.WatchEvents(ctx, &kedgev1.WatchEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for {
		resp, err := events.Recv()
		if err != nil {
			break
		}
		if e := resp.Event; e.Type == kedgev1.EventType_EVENT_TYPE_NODE_CONDITION && e.Node == node.Name && strings.Contains(e.Message, "unreachable") {
			found = true
		}
	}
	if !found {
		t.Error("no NODE_CONDITION event saying the node is unreachable")
	}
}

// Removing an etcd member whose etcd cannot be reached is refused unless
// forced; forced, the node is removed and the event says what is left to do.
func TestRemoveEtcdNode(t *testing.T) {
	env := coordtest.Start(t)
	ctx := testCtx(t)
	env.ApplySpec(t, stackedSpec)
	member := env.EnrollNode(t, facts(1))
	stream, err := member.Client.WatchPlan(ctx, &kedgev1.WatchPlanRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := stream.Recv(); err != nil || resp.Plan.GetEtcd() == nil {
		t.Fatalf("etcd plan: %v, %v", resp.GetPlan(), err)
	}
	// No etcd runs here: the member cannot be removed through etcd.
	if _, err := env.Admin.RemoveNode(ctx, &kedgev1.RemoveNodeRequest{Name: member.Name}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("remove without force: %v; want FailedPrecondition", err)
	}
	if got, _ := env.Admin.GetNode(ctx, &kedgev1.GetNodeRequest{Name: member.Name}); got.GetNode().GetState() != kedgev1.NodeState_NODE_STATE_ENROLLED {
		t.Errorf("refused removal changed the node: %v", got.GetNode().GetState())
	}
	if _, err := env.Admin.RemoveNode(ctx, &kedgev1.RemoveNodeRequest{Name: member.Name, Force: true}); err != nil {
		t.Fatalf("forced removal: %v", err)
	}
	if got, _ := env.Admin.GetNode(ctx, &kedgev1.GetNodeRequest{Name: member.Name}); got.GetNode().GetState() != kedgev1.NodeState_NODE_STATE_REMOVED {
		t.Errorf("after forced removal: %v", got.GetNode().GetState())
	}
}

// A node whose connection breaks (a power cut, seen by keepalive) is
// Unreachable after connectionLostGrace, long before its silence period.
func TestLostConnectionMakesNodeUnreachableBeforeSilencePeriod(t *testing.T) {
	env := coordtest.Start(t)
	env.UnreachableAfter = 10 * time.Minute
	env.Restart(t)
	ctx := testCtx(t)
	env.ApplySpec(t, stackedSpec)
	node := env.EnrollNode(t, facts(1))
	watchCtx, stopWatch := context.WithCancel(ctx)
	stream, err := node.Client.WatchPlan(watchCtx, &kedgev1.WatchPlanRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := node.Client.ReportStatus(ctx, &kedgev1.ReportStatusRequest{Status: &kedgev1.NodeStatus{AgentVersion: "test"}}); err != nil {
		t.Fatal(err)
	}
	stopWatch()
	node.Conn.Close()
	lost := time.Now()
	for {
		got, err := env.Admin.GetNode(ctx, &kedgev1.GetNodeRequest{Name: node.Name})
		if err != nil {
			t.Fatal(err)
		}
		if got.Node.Condition == kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE {
			if !strings.Contains(got.Node.ConditionReason, "connection lost") {
				t.Errorf("reason %q; want it to say the connection was lost", got.Node.ConditionReason)
			}
			if since := time.Since(lost); since < health.DefaultConnectionLostGrace {
				t.Errorf("Unreachable after %s, before the %s grace for an agent restart", since, health.DefaultConnectionLostGrace)
			}
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node still %s %s after its connection was lost", got.Node.Condition, time.Since(lost).Round(time.Second))
		case <-time.After(200 * time.Millisecond):
		}
	}
}
