package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kedge-io/kedge/coordinator/app"
	"github.com/kedge-io/kedge/coordinator/coordtest"
	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/nodeagent/config"
	"github.com/kedge-io/kedge/nodeagent/desired"
	"github.com/kedge-io/kedge/nodeagent/enroll"
	"github.com/kedge-io/kedge/nodeagent/paths"
	"github.com/kedge-io/kedge/nodeagent/reconcile"
	"github.com/kedge-io/kedge/nodeagent/report"
	"github.com/kedge-io/kedge/nodeagent/statusfile"
	"github.com/kedge-io/kedge/nodeagent/sysd"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

func spec(disable string) string {
	return coordtest.OneNodeSpec + `    serverConfig:
      disable: [` + disable + `]
`
}

// testRoles stand in for etcdrole and k3srole: they render the plan into one
// config file and one unit per role, so the test sees plan changes on disk.
func testRoles() *reconcile.Roles {
	// Cert and binary files appear as the real roles would leave them, so an
	// offline boot finds them.
	touch := func(files ...string) func(context.Context, string, *kedgev1.Plan, kedgev1.NodeServiceClient) (bool, error) {
		return func(_ context.Context, root string, _ *kedgev1.Plan, _ kedgev1.NodeServiceClient) (bool, error) {
			for _, f := range files {
				os.MkdirAll(filepath.Dir(paths.In(root, f)), 0o755)
				os.WriteFile(paths.In(root, f), []byte("test"), 0o600)
			}
			return false, nil
		}
	}
	binary := touch(paths.K3sBinary)
	return &reconcile.Roles{
		EnsureEtcdCerts:           touch(paths.EtcdCA, paths.EtcdServerCert, paths.EtcdServerKey, paths.EtcdPeerCert, paths.EtcdPeerKey),
		EnsureDatastoreClientCert: touch(paths.DatastoreClientCert, paths.DatastoreClientKey),
		EnsureK3sBinary: func(ctx context.Context, root string, p *kedgev1.Plan, c kedgev1.NodeServiceClient, _ *http.Client) (bool, error) {
			return binary(ctx, root, p, c)
		},
		EtcdDesired: func(p *kedgev1.Plan) (desired.State, error) {
			if p.GetEtcd() == nil {
				return desired.State{}, nil
			}
			return desired.State{
				Files: []desired.File{{Path: paths.EtcdConfig, Content: []byte("name: " + p.Etcd.MemberName + "\n"), Mode: 0o600, Restarts: []string{paths.EtcdUnit}}},
				Units: []desired.Unit{{Name: paths.EtcdUnit, Content: []byte("[Service]\n"), Enable: true, Start: true}},
			}, nil
		},
		K3sDesired: func(p *kedgev1.Plan) (desired.State, error) {
			unit := reconcile.K3sUnit(p)
			if unit == "" {
				return desired.State{}, nil
			}
			extra, _ := protojson.Marshal(p.GetK3S().GetExtraConfig())
			return desired.State{
				Files: []desired.File{{Path: paths.K3sConfig, Content: extra, Mode: 0o600, Restarts: []string{unit}}},
				Units: []desired.Unit{{Name: unit, Content: []byte("[Service]\n"), Enable: true, Start: true}},
			}, nil
		},
	}
}

// node is one simulated machine: a root dir and a fake systemd.
type node struct {
	t       *testing.T
	root    string
	cfg     *config.Config
	systemd *sysd.Fake
	stop    context.CancelFunc
	done    chan error
	// realRoles uses etcdrole and k3srole instead of the test renderers.
	realRoles bool
	agent     *Agent
}

func newNode(t *testing.T, env *coordtest.Env) *node { return newNodeIn(t, env, "edge-1") }

func newNodeIn(t *testing.T, env *coordtest.Env, cluster string) *node {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/kedge"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/machine-id"), []byte("6c3f1a0e9b2d4c5e8f7a6b5c4d3e2f1a\n"), 0o644)
	os.WriteFile(paths.In(root, paths.BootstrapToken), []byte(env.Token(t, cluster)+"\n"), 0o600)
	return &node{t: t, root: root, cfg: &config.Config{
		Coordinators: []string{env.Addr}, CAPin: env.CAPin, TokenFile: paths.BootstrapToken, HeartbeatInterval: time.Second,
	}}
}

// start boots the machine: a fresh systemd, the agent on the same disk.
func (n *node) start() {
	n.systemd = sysd.NewFake()
	ctx, cancel := context.WithCancel(context.Background())
	n.stop, n.done = cancel, make(chan error, 1)
	probes := &report.Probes{
		Etcd: func(context.Context, string, *kedgev1.Plan) *kedgev1.EtcdMemberStatus {
			return &kedgev1.EtcdMemberStatus{Healthy: true}
		},
		K3s: func(context.Context) *kedgev1.K3SStatus { return &kedgev1.K3SStatus{Ready: true} },
	}
	log := slog.New(slog.NewTextHandler(testLog{n.t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	roles := testRoles()
	if n.realRoles {
		roles = nil
	}
	n.agent = New(Options{Root: n.root, Config: n.cfg, Systemd: n.systemd, Log: log, Roles: roles, Probes: probes,
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond, RejectedMin: time.Second, RejectedMax: 2 * time.Second})
	go func() { n.done <- n.agent.Run(ctx) }()
	n.t.Cleanup(n.halt)
}

func (n *node) halt() {
	if n.stop == nil {
		return
	}
	n.stop()
	n.stop = nil
	select {
	case err := <-n.done:
		if err != nil {
			n.t.Errorf("agent returned %v", err)
		}
	case <-time.After(10 * time.Second):
		n.t.Error("agent did not stop within 10s")
	}
}

// await waits until cond holds for the status file, or fails after 30s.
func (n *node) await(what string, cond func(s *statusfile.Status) bool) *statusfile.Status {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := statusfile.Read(n.root)
		if err == nil && cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("timed out waiting for %s; status: %+v (%v)", what, s, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (n *node) read(p string) string {
	b, _ := os.ReadFile(paths.In(n.root, p))
	return string(b)
}

type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Logf("agent: %s", strings.TrimSpace(string(p)))
	return len(p), nil
}

// serveChain makes the coordinator present its CA with its serving cert, as
// pinned enrollment requires (the pin is checked against the CA in the chain).
func serveChain(t *testing.T, env *coordtest.Env) {
	p := filepath.Join(env.DataDir, app.ServingCertFile)
	leaf, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(leaf), "BEGIN CERTIFICATE") > 1 {
		return
	}
	t.Log("coordinator serves its leaf only; appending the CA to serving.crt so the pin can be checked")
	os.WriteFile(p, append(leaf, env.CAPEM...), 0o644)
	// Let the coordinator finish starting before stopping it again.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := env.Admin.ListNodes(ctx, &kedgev1.ListNodesRequest{}); err != nil {
		t.Fatal(err)
	}
	env.Restart(t)
}

func coordinatorSees(t *testing.T, env *coordtest.Env, what string, cond func(*kedgev1.Node) bool) *kedgev1.Node {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		list, err := env.Admin.ListNodes(ctx, &kedgev1.ListNodesRequest{})
		cancel()
		if err == nil && len(list.Nodes) == 1 && cond(list.Nodes[0]) {
			return list.Nodes[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for the coordinator to see %s: %v %v", what, list, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestAgentAgainstARealCoordinator(t *testing.T) {
	env := coordtest.Start(t)
	serveChain(t, env)
	env.ApplySpec(t, spec("traefik"))
	n := newNode(t, env)
	n.start()

	// Enroll, receive the plan, apply it, report it.
	s := n.await("the plan applied", func(s *statusfile.Status) bool {
		return s.Enrollment == statusfile.Enrolled && s.PlanHash != "" && s.ApplyError == "" && !s.LastApplied.IsZero() && len(s.Units) == 2
	})
	if s.NodeName == "" || s.Cluster != "edge-1" || s.IdentityNotAfter.IsZero() {
		t.Fatalf("status after enrollment: %+v", s)
	}
	for _, u := range s.Units {
		if u.ActiveState != "active" {
			t.Errorf("unit %s is %s, want active", u.Name, u.ActiveState)
		}
	}
	if !strings.Contains(n.read(paths.K3sConfig), "traefik") {
		t.Fatalf("k3s config does not carry the spec's serverConfig: %q", n.read(paths.K3sConfig))
	}
	if st, err := os.Stat(paths.In(n.root, paths.CachedPlan)); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("cached plan: %v %v", st, err)
	}
	if st, _ := os.Stat(paths.In(n.root, paths.IdentityKey)); st.Mode().Perm() != 0o600 {
		t.Fatalf("identity key mode %v", st.Mode().Perm())
	}
	if h, _ := n.systemd.StaticHostname(context.Background()); h != s.NodeName {
		t.Errorf("hostname %q, want the node name %q", h, s.NodeName)
	}
	planHash := s.PlanHash
	coordinatorSees(t, env, "the node's status", func(nd *kedgev1.Node) bool {
		return nd.GetStatus().GetPlanHash() == planHash && len(nd.GetStatus().GetUnits()) == 2 && nd.GetStatus().GetEtcd().GetHealthy()
	})

	// An active K3s server's admin kubeconfig reaches the coordinator,
	// pointed at the node's address.
	os.MkdirAll(filepath.Dir(paths.In(n.root, paths.K3sKubeconfig)), 0o755)
	os.WriteFile(paths.In(n.root, paths.K3sKubeconfig), []byte("clusters:\n- cluster:\n    server: https://localhost:6443\n  name: default\n"), 0o600)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		kc, err := env.Admin.GetKubeconfig(ctx, &kedgev1.GetKubeconfigRequest{Cluster: "edge-1"})
		cancel()
		if err == nil && strings.Contains(string(kc.GetKubeconfig()), "server: https://127.0.0.1:6443") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubeconfig never reached the coordinator: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A unit failing is reported without waiting for the plan to change.
	n.systemd.SetState(paths.K3sServerUnit, "failed", "failed", "exit-code")
	coordinatorSees(t, env, "k3s failed", func(nd *kedgev1.Node) bool {
		for _, u := range nd.GetStatus().GetUnits() {
			if u.Name == paths.K3sServerUnit {
				return u.ActiveState == "failed" && u.Result == "exit-code"
			}
		}
		return false
	})

	// The coordinator restarts; the agent resumes and takes the next plan.
	env.Restart(t)
	env.ApplySpec(t, spec("traefik, servicelb"))
	s = n.await("the changed plan applied", func(s *statusfile.Status) bool {
		return s.PlanHash != planHash && s.ApplyError == "" && strings.Contains(n.read(paths.K3sConfig), "servicelb")
	})
	secondHash := s.PlanHash
	coordinatorSees(t, env, "the new plan hash", func(nd *kedgev1.Node) bool { return nd.GetStatus().GetPlanHash() == secondHash })

	// Power cycle with the coordinator down: the cached plan brings the node back.
	n.halt()
	env.Stop(t)
	os.Remove(paths.In(n.root, paths.K3sConfig)) // lost with the reboot, say
	n.start()
	s = n.await("the cached plan applied offline", func(s *statusfile.Status) bool {
		etcd, _ := n.systemd.State(context.Background(), paths.EtcdUnit)
		k3s, _ := n.systemd.State(context.Background(), paths.K3sServerUnit)
		return s.PlanHash == secondHash && s.ApplyError == "" && etcd.Running() && k3s.Running() && etcd.Enabled()
	})
	if !strings.Contains(n.read(paths.K3sConfig), "servicelb") {
		t.Fatalf("offline apply did not restore the k3s config: %q", n.read(paths.K3sConfig))
	}
	n.await("the outage recorded", func(s *statusfile.Status) bool { return strings.Contains(s.LastError, "plan watch on "+env.Addr) })
}

func TestWrongPinAndRemovedNodeAreRecorded(t *testing.T) {
	env := coordtest.Start(t)
	serveChain(t, env)

	wrong := newNodeIn(t, env, "default")
	wrong.cfg.CAPin = "sha256:" + strings.Repeat("ab", 32)
	wrong.start()
	wrong.await("the pin refusal", func(s *statusfile.Status) bool {
		return s.Enrollment == statusfile.Refused && strings.Contains(s.LastError, "coordinator CA does not match the pin "+wrong.cfg.CAPin)
	})
	wrong.halt()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if list, err := env.Admin.ListNodes(ctx, &kedgev1.ListNodesRequest{}); err != nil || len(list.Nodes) != 0 {
		t.Fatalf("a node with the wrong pin got enrolled: %v %v", list, err)
	}

	n := newNodeIn(t, env, "default")
	n.start()
	s := n.await("enrollment", func(s *statusfile.Status) bool {
		return s.Enrollment == statusfile.Enrolled && !s.LastContact.IsZero() && s.NodeName != ""
	})
	if _, err := env.Admin.RemoveNode(ctx, &kedgev1.RemoveNodeRequest{Name: s.NodeName}); err != nil {
		t.Fatal(err)
	}
	n.await("the removal", func(s *statusfile.Status) bool {
		return s.Enrollment == statusfile.Removed && strings.Contains(s.LastError, "node "+s.NodeName+" was removed")
	})
}

// With the real role packages: certificates signed by the coordinator, the
// pre-staged K3s binary checked and installed, etcd.yaml, config.yaml and the
// units rendered from the plan; a re-apply changes nothing.
func TestRealRolesApplyAStackedPlan(t *testing.T) {
	env := coordtest.Start(t)
	serveChain(t, env)
	staged := []byte("#!/bin/sh\necho fake k3s\n")
	sum := sha256.Sum256(staged)
	env.ApplySpec(t, strings.NewReplacer(
		"0000000000000000000000000000000000000000000000000000000000000000", hex.EncodeToString(sum[:]),
		"path: /usr/local/bin/k3s", "path: /opt/k3s/k3s").Replace(spec("traefik")))
	n := newNode(t, env)
	os.MkdirAll(paths.In(n.root, "/opt/k3s"), 0o755)
	os.WriteFile(paths.In(n.root, "/opt/k3s/k3s"), staged, 0o755)
	n.realRoles = true
	n.start()
	n.await("the plan applied with the real roles", func(s *statusfile.Status) bool {
		return s.PlanHash != "" && s.ApplyError == "" && !s.LastApplied.IsZero()
	})
	for p, mode := range map[string]os.FileMode{
		paths.EtcdConfig: 0, paths.EtcdServerKey: 0o600, paths.EtcdPeerKey: 0o600, paths.DatastoreClientKey: 0o600,
		paths.K3sConfig: 0, paths.K3sBinary: 0, "/etc/systemd/system/kedge-etcd.service": 0, "/etc/systemd/system/k3s.service": 0,
	} {
		st, err := os.Stat(paths.In(n.root, p))
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}
		if mode != 0 && st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), mode)
		}
	}
	if !strings.Contains(n.read(paths.K3sConfig), "datastore-endpoint") {
		t.Errorf("k3s config.yaml lacks the datastore endpoint:\n%s", n.read(paths.K3sConfig))
	}
	for _, u := range []string{paths.EtcdUnit, paths.K3sServerUnit} {
		if st, _ := n.systemd.State(context.Background(), u); !st.Running() || !st.Enabled() {
			t.Errorf("%s: %+v", u, st)
		}
	}
	n.systemd.Calls()
	n.agent.applyOnce(context.Background())
	if calls := n.systemd.Calls(); len(calls) != 0 {
		t.Errorf("re-applying the same plan called systemd: %v", calls)
	}
}

// At two thirds of its lifetime the identity is renewed through the
// coordinator, stored, and the session is ended to reconnect with it.
func TestIdentityRenewedWhenDue(t *testing.T) {
	env := coordtest.Start(t)
	simulated := env.EnrollNode(t, &kedgev1.MachineFacts{MachineId: "m-renew", Hostname: "renew", Macs: []string{"52:54:00:00:00:42"}})
	id, err := enroll.NewIdentity(simulated.Key, simulated.CertPEM, env.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	// Pretend the certificate is old: two thirds of its life are behind it.
	aged := *id.Cert
	aged.NotBefore, aged.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(time.Hour)
	id.Cert = &aged

	root := t.TempDir()
	a := New(Options{Root: root, Config: &config.Config{Coordinators: []string{env.Addr}, HeartbeatInterval: time.Second},
		Systemd: sysd.NewFake(), Log: slog.New(slog.NewTextHandler(testLog{t}, nil)), RetryMin: 10 * time.Millisecond, RetryMax: 100 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sessCtx, endSession := context.WithCancel(ctx)
	out := make(chan *enroll.Identity, 1)
	a.renewWhenDue(sessCtx, endSession, simulated.Client, id, out)
	var renewed *enroll.Identity
	select {
	case renewed = <-out:
	default:
		t.Fatal("renewWhenDue returned without a renewed identity")
	}
	if sessCtx.Err() == nil {
		t.Error("the session was not ended to reconnect with the new certificate")
	}
	if renewed.Name() != simulated.Name || renewed.Cert.SerialNumber.Cmp(id.Cert.SerialNumber) == 0 || !renewed.Cert.NotAfter.After(aged.NotAfter) {
		t.Fatalf("renewed cert: CN %s serial %v until %v", renewed.Name(), renewed.Cert.SerialNumber, renewed.Cert.NotAfter)
	}
	os.MkdirAll(paths.In(root, "/var/lib/kedge/identity"), 0o700)
	keyPEM, _ := pki.EncodeKeyPEM(simulated.Key)
	os.WriteFile(paths.In(root, paths.IdentityKey), keyPEM, 0o600)
	stored, err := enroll.Load(root)
	if err != nil || stored.Cert.SerialNumber.Cmp(renewed.Cert.SerialNumber) != 0 {
		t.Fatalf("stored identity is not the renewed one: %v", err)
	}
}

// A token that needs approval: the node waits, says so in its status, and
// enrolls once an operator approves it.
func TestPendingApprovalThenEnrolled(t *testing.T) {
	env := coordtest.Start(t)
	serveChain(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok, err := env.Admin.CreateToken(ctx, &kedgev1.CreateTokenRequest{Cluster: "default", Ttl: durationpb.New(time.Hour), RequireApproval: true})
	if err != nil {
		t.Fatal(err)
	}
	n := newNodeIn(t, env, "default")
	os.WriteFile(paths.In(n.root, paths.BootstrapToken), []byte(tok.Token+"\n"), 0o600)
	n.start()
	s := n.await("pending approval", func(s *statusfile.Status) bool {
		return s.Enrollment == statusfile.PendingApproval && s.NodeName != ""
	})
	if _, err := os.Stat(paths.In(n.root, paths.IdentityCert)); err == nil {
		t.Fatal("a pending node has an identity certificate")
	}
	if _, err := env.Admin.ApproveNode(ctx, &kedgev1.ApproveNodeRequest{Name: s.NodeName}); err != nil {
		t.Fatal(err)
	}
	n.await("enrollment after approval", func(s *statusfile.Status) bool {
		return s.Enrollment == statusfile.Enrolled && !s.IdentityNotAfter.IsZero()
	})
}

// A node offline past its identity's lifetime enrolls again with its token
// instead of knocking forever with a dead certificate.
func TestExpiredIdentityEnrollsAgain(t *testing.T) {
	env := coordtest.Start(t)
	serveChain(t, env)
	n := newNodeIn(t, env, "default")
	keyPEM, _ := os.ReadFile(filepath.Join(env.DataDir, app.CAKeyFile))
	ca, err := pki.LoadCA(env.CAPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, err := enroll.LoadOrCreateKey(n.root)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.Sign(&key.PublicKey, pki.NodeIdentity("old-name", pki.DefaultLifetimes()), time.Now().Add(-60*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	old, err := enroll.NewIdentity(key, certPEM, env.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Save(n.root); err != nil {
		t.Fatal(err)
	}
	n.start()
	s := n.await("enrollment with a fresh identity", func(s *statusfile.Status) bool {
		return s.Enrollment == statusfile.Enrolled && s.IdentityNotAfter.After(time.Now())
	})
	if s.NodeName == "old-name" {
		t.Fatalf("status still shows the expired identity: %+v", s)
	}
}
