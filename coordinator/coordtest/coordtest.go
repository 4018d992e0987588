// Package coordtest runs a real coordinator in-process for other packages'
// integration tests: real PKI, real TLS on 127.0.0.1, a real embedded etcd
// in t.TempDir(), the same app.Serve the binary runs.
//
//	env := coordtest.Start(t)
//	env.ApplySpec(t, specYAML)
//	node := env.EnrollNode(t, facts)
//	node.Client.WatchPlan(...)
package coordtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kedge-io/kedge/coordinator/adminconfig"
	"github.com/kedge-io/kedge/coordinator/app"
	"github.com/kedge-io/kedge/coordinator/pki"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// OneNodeSpec is a stacked cluster "edge-1" with one etcd member and one
// K3s server, for tests that need any released plan. Tests extend it by
// appending YAML: keys under spec.k3s indented four spaces, under spec two.
const OneNodeSpec = `apiVersion: kedge/v1
kind: Cluster
metadata:
  name: edge-1
spec:
  topology: stacked
  etcd:
    members: 1
  k3s:
    servers: 1
    version: v1.31.4+k3s1
    binary:
      sha256: "0000000000000000000000000000000000000000000000000000000000000000"
      path: /usr/local/bin/k3s
`

// ThreeNodeSpec is OneNodeSpec with three etcd members and three K3s
// servers: the smallest HA stacked cluster.
var ThreeNodeSpec = strings.NewReplacer("members: 1", "members: 3", "servers: 1", "servers: 3").Replace(OneNodeSpec)

// Env is a running coordinator.
type Env struct {
	Addr            string
	CAPin           string
	CAPEM           []byte
	DataDir         string
	AdminConfigPath string
	Admin           kedgev1.AdminServiceClient
	// Cluster, when set, is the cluster EnrollNode enrolls into. Otherwise
	// EnrollNode uses the only cluster the coordinator knows (e.g. from an
	// applied spec), else "default".
	Cluster string
	// UnreachableAfter is passed to serve on Start/Restart (default 30 s).
	UnreachableAfter time.Duration
	// FirstToken is the token init printed (cluster "default", 24 h).
	FirstToken string

	mu        sync.Mutex
	cancel    context.CancelFunc
	done      chan error
	adminConn *grpc.ClientConn
}

// Start initialises a data dir and serves a coordinator; t.Cleanup stops it.
func Start(t testing.TB) *Env {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env := &Env{Addr: lis.Addr().String(), DataDir: t.TempDir()}
	res, err := app.InitDataDir(context.Background(), app.InitOptions{DataDir: env.DataDir, Addresses: []string{env.Addr}})
	if err != nil {
		lis.Close()
		t.Fatalf("coordtest: init: %v", err)
	}
	env.CAPin, env.AdminConfigPath, env.FirstToken = res.CAPin, res.AdminConfigPath, res.Token
	if env.CAPEM, err = os.ReadFile(env.DataDir + "/" + app.CACertFile); err != nil {
		t.Fatal(err)
	}
	env.serve(t, lis)
	cfg, err := adminconfig.Load(env.AdminConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg, err := cfg.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	env.adminConn, err = grpc.NewClient(env.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	env.Admin = kedgev1.NewAdminServiceClient(env.adminConn)
	t.Cleanup(func() {
		env.adminConn.Close()
		env.Stop(t)
	})
	return env
}

func (e *Env) serve(t testing.TB, lis net.Listener) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- app.Serve(ctx, app.ServeOptions{
			DataDir: e.DataDir, Listener: lis, UnreachableAfter: e.UnreachableAfter,
			Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
			Ready:  func(net.Addr) { close(ready) },
		})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("coordtest: serve: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("coordtest: coordinator not ready after 60s")
	}
	e.mu.Lock()
	e.cancel, e.done = cancel, done
	e.mu.Unlock()
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Logf("coordinator: %s", p)
	return len(p), nil
}

// Stop stops the coordinator (idempotent); the data dir stays.
func (e *Env) Stop(t testing.TB) {
	t.Helper()
	e.mu.Lock()
	cancel, done := e.cancel, e.done
	e.cancel, e.done = nil, nil
	e.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("coordtest: serve returned: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("coordtest: coordinator did not stop within 30s")
	}
}

// Restart stops the coordinator and serves the same data dir on the same Addr.
func (e *Env) Restart(t testing.TB) {
	t.Helper()
	e.Stop(t)
	var lis net.Listener
	var err error
	deadline := time.Now().Add(10 * time.Second)
	for {
		if lis, err = net.Listen("tcp", e.Addr); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("coordtest: listen again on %s: %v", e.Addr, err)
	}
	e.serve(t, lis)
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// Token creates an unlimited-use 1 h token for cluster.
func (e *Env) Token(t testing.TB, cluster string) string {
	t.Helper()
	resp, err := e.Admin.CreateToken(ctx(t), &kedgev1.CreateTokenRequest{Cluster: cluster, Ttl: durationpb.New(time.Hour), Description: "coordtest"})
	if err != nil {
		t.Fatalf("coordtest: create token: %v", err)
	}
	return resp.Token
}

// ApplySpec applies a cluster spec and fails the test if it is refused.
func (e *Env) ApplySpec(t testing.TB, yaml string) *kedgev1.ApplySpecResponse {
	t.Helper()
	resp, err := e.Admin.ApplySpec(ctx(t), &kedgev1.ApplySpecRequest{SpecYaml: []byte(yaml), FileName: "coordtest.yaml"})
	if err != nil {
		t.Fatalf("coordtest: apply spec: %v", err)
	}
	return resp
}

// NodeIdentity is an enrolled simulated node.
type NodeIdentity struct {
	Name    string
	Cluster string
	// TLS presents the node's identity cert and trusts only the coordinator CA.
	TLS    *tls.Config
	Client kedgev1.NodeServiceClient
	// Key and CertPEM are the identity key and cert.
	Key      *ecdsa.PrivateKey
	CertPEM  []byte
	Warnings []string
	Conn     *grpc.ClientConn
}

// BootstrapClient is a client for BootstrapService over server-authenticated
// TLS, trusting only the coordinator CA (as a node that checked the pin does).
func (e *Env) BootstrapClient(t testing.TB) kedgev1.BootstrapServiceClient {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(e.CAPEM)
	conn, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return kedgev1.NewBootstrapServiceClient(conn)
}

func (e *Env) enrollCluster(t testing.TB) string {
	if e.Cluster != "" {
		return e.Cluster
	}
	if st, err := e.Admin.GetClusterStatus(ctx(t), &kedgev1.GetClusterStatusRequest{}); err == nil && st.Status.GetCluster() != "" {
		return st.Status.Cluster
	}
	return "default"
}

// EnrollNode enrolls a simulated node with a fresh ECDSA key (see Cluster
// for which cluster) and fails the test unless it is enrolled.
func (e *Env) EnrollNode(t testing.TB, facts *kedgev1.MachineFacts) *NodeIdentity {
	t.Helper()
	return e.EnrollNodeWithToken(t, e.Token(t, e.enrollCluster(t)), facts)
}

// EnrollNodeWithToken is EnrollNode with a given token.
func (e *Env) EnrollNodeWithToken(t testing.TB, token string, facts *kedgev1.MachineFacts) *NodeIdentity {
	t.Helper()
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, facts.GetHostname())
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.BootstrapClient(t).Enroll(ctx(t), &kedgev1.EnrollRequest{Token: token, CsrDer: csr, Facts: facts, AgentVersion: "coordtest"})
	if err != nil {
		t.Fatalf("coordtest: enroll: %v", err)
	}
	if resp.State != kedgev1.EnrollState_ENROLL_STATE_ENROLLED {
		t.Fatalf("coordtest: enroll: state %s; want ENROLLED (approval tokens: use the BootstrapClient)", resp.State)
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(resp.CertificatePem, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(resp.CaBundlePem)
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}}
	conn, err := grpc.NewClient(e.Addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &NodeIdentity{
		Name: resp.NodeName, Cluster: resp.Cluster, TLS: tlsCfg, Client: kedgev1.NewNodeServiceClient(conn),
		Key: key, CertPEM: resp.CertificatePem, Warnings: resp.Warnings, Conn: conn,
	}
}
