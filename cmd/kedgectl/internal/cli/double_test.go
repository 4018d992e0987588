package cli

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/kedge-io/kedge/coordinator/adminconfig"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// testPKI is a real CA with a serving cert for 127.0.0.1 and an admin
// client cert, as kedge-coordinator init makes them.
type testPKI struct {
	caPEM               []byte
	caPin               string
	serverTLS           *tls.Config
	adminCert, adminKey []byte
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	caKey := mustKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kedge test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	leaf := func(serial int64, subject pkix.Name, eku x509.ExtKeyUsage, ips []net.IP) (certPEM, keyPEM []byte) {
		key := mustKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      subject,
			NotBefore:    time.Now().Add(-time.Hour),
			NotAfter:     time.Now().Add(time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{eku},
			IPAddresses:  ips,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalECPrivateKey(key)
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	}
	srvCert, srvKey := leaf(2, pkix.Name{CommonName: "kedge-coordinator"}, x509.ExtKeyUsageServerAuth, []net.IP{net.ParseIP("127.0.0.1")})
	admCert, admKey := leaf(3, pkix.Name{CommonName: "ops", Organization: []string{"kedge:admins"}}, x509.ExtKeyUsageClientAuth, nil)
	pair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{
		caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		caPin: "sha256:" + hex.EncodeToString(sum[:]),
		serverTLS: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{pair},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
		},
		adminCert: admCert, adminKey: admKey,
	}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

// writeConfig saves an admin config for addrs, as kedgectl reads it.
func (p *testPKI) writeConfig(t *testing.T, path string, addrs ...string) string {
	t.Helper()
	err := adminconfig.Save(path, &adminconfig.Config{
		Coordinators: addrs, CAPin: p.caPin, CAPEM: string(p.caPEM),
		CertPEM: string(p.adminCert), KeyPEM: string(p.adminKey),
	})
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// testCoordinator is a test double for the coordinator's AdminService:
// canned answers, and it records what kedgectl sent. It runs behind a real
// gRPC server over real mutual TLS on 127.0.0.1.
type testCoordinator struct {
	kedgev1.UnimplementedAdminServiceServer
	addr string

	mu sync.Mutex
	// Canned answers.
	createToken *kedgev1.CreateTokenResponse
	tokens      []*kedgev1.BootstrapToken
	nodes       []*kedgev1.Node
	getNode     map[string]*kedgev1.GetNodeResponse
	// statuses are returned in turn; the last one repeats.
	statuses  []*kedgev1.ClusterStatus
	events    []*kedgev1.Event
	refused   []*kedgev1.RefusedEnrollment
	applySpec func(*kedgev1.ApplySpecRequest) (*kedgev1.ApplySpecResponse, error)
	specYAML  []byte
	kubecfg   []byte
	// Recorded requests.
	requests       []proto.Message
	artifactChunks []*kedgev1.PushArtifactRequest
	statusCalls    int
}

func startTestCoordinator(t *testing.T, p *testPKI) *testCoordinator {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &testCoordinator{addr: lis.Addr().String(), getNode: map[string]*kedgev1.GetNodeResponse{}}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(p.serverTLS)))
	kedgev1.RegisterAdminServiceServer(srv, d)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return d
}

func (d *testCoordinator) record(m proto.Message) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.requests = append(d.requests, m)
}

// lastRequest returns the last recorded request of type T.
func lastRequest[T proto.Message](t *testing.T, d *testCoordinator) T {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := len(d.requests) - 1; i >= 0; i-- {
		if r, ok := d.requests[i].(T); ok {
			return r
		}
	}
	var zero T
	t.Fatalf("the coordinator received no %T", zero)
	return zero
}

func (d *testCoordinator) ListNodes(_ context.Context, r *kedgev1.ListNodesRequest) (*kedgev1.ListNodesResponse, error) {
	d.record(r)
	return &kedgev1.ListNodesResponse{Nodes: d.nodes}, nil
}

func (d *testCoordinator) GetNode(_ context.Context, r *kedgev1.GetNodeRequest) (*kedgev1.GetNodeResponse, error) {
	d.record(r)
	if n, ok := d.getNode[r.GetName()]; ok {
		return n, nil
	}
	return nil, statusNotFound("node " + r.GetName() + " not found")
}

func (d *testCoordinator) GetClusterStatus(_ context.Context, r *kedgev1.GetClusterStatusRequest) (*kedgev1.GetClusterStatusResponse, error) {
	d.record(r)
	d.mu.Lock()
	defer d.mu.Unlock()
	i := min(d.statusCalls, len(d.statuses)-1)
	d.statusCalls++
	return &kedgev1.GetClusterStatusResponse{Status: d.statuses[i]}, nil
}

func (d *testCoordinator) WatchEvents(r *kedgev1.WatchEventsRequest, stream grpc.ServerStreamingServer[kedgev1.WatchEventsResponse]) error {
	d.record(r)
	for _, e := range d.events {
		if err := stream.Send(&kedgev1.WatchEventsResponse{Event: e}); err != nil {
			return err
		}
	}
	if r.GetFollow() {
		<-stream.Context().Done()
	}
	return nil
}

func (d *testCoordinator) CreateToken(_ context.Context, r *kedgev1.CreateTokenRequest) (*kedgev1.CreateTokenResponse, error) {
	d.record(r)
	return d.createToken, nil
}

func (d *testCoordinator) ListTokens(_ context.Context, r *kedgev1.ListTokensRequest) (*kedgev1.ListTokensResponse, error) {
	d.record(r)
	return &kedgev1.ListTokensResponse{Tokens: d.tokens}, nil
}

func (d *testCoordinator) RevokeToken(_ context.Context, r *kedgev1.RevokeTokenRequest) (*kedgev1.RevokeTokenResponse, error) {
	d.record(r)
	return &kedgev1.RevokeTokenResponse{}, nil
}

func (d *testCoordinator) ListRefusedEnrollments(_ context.Context, r *kedgev1.ListRefusedEnrollmentsRequest) (*kedgev1.ListRefusedEnrollmentsResponse, error) {
	d.record(r)
	return &kedgev1.ListRefusedEnrollmentsResponse{Refused: d.refused}, nil
}

func (d *testCoordinator) ApproveNode(_ context.Context, r *kedgev1.ApproveNodeRequest) (*kedgev1.ApproveNodeResponse, error) {
	d.record(r)
	return &kedgev1.ApproveNodeResponse{Node: &kedgev1.Node{Name: r.GetName(), State: kedgev1.NodeState_NODE_STATE_ENROLLED}}, nil
}

func (d *testCoordinator) RemoveNode(_ context.Context, r *kedgev1.RemoveNodeRequest) (*kedgev1.RemoveNodeResponse, error) {
	d.record(r)
	return &kedgev1.RemoveNodeResponse{}, nil
}

func (d *testCoordinator) ApplySpec(_ context.Context, r *kedgev1.ApplySpecRequest) (*kedgev1.ApplySpecResponse, error) {
	d.record(r)
	return d.applySpec(r)
}

func (d *testCoordinator) GetSpec(_ context.Context, r *kedgev1.GetSpecRequest) (*kedgev1.GetSpecResponse, error) {
	d.record(r)
	return &kedgev1.GetSpecResponse{SpecYaml: d.specYAML}, nil
}

func (d *testCoordinator) GetKubeconfig(_ context.Context, r *kedgev1.GetKubeconfigRequest) (*kedgev1.GetKubeconfigResponse, error) {
	d.record(r)
	return &kedgev1.GetKubeconfigResponse{Kubeconfig: d.kubecfg}, nil
}

func (d *testCoordinator) PushArtifact(stream grpc.ClientStreamingServer[kedgev1.PushArtifactRequest, kedgev1.PushArtifactResponse]) error {
	h := sha256.New()
	var size int64
	for {
		r, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		d.mu.Lock()
		d.artifactChunks = append(d.artifactChunks, proto.Clone(r).(*kedgev1.PushArtifactRequest))
		d.mu.Unlock()
		h.Write(r.GetChunk())
		size += int64(len(r.GetChunk()))
	}
	return stream.SendAndClose(&kedgev1.PushArtifactResponse{Sha256: hex.EncodeToString(h.Sum(nil)), Size: size})
}

// testEnv is one kedgectl "machine": a home dir, an environment and a clock.
type testEnv struct {
	home     string
	vars     map[string]string
	now      time.Time
	terminal bool
}

func newTestEnv(t *testing.T) *testEnv {
	return &testEnv{
		home: t.TempDir(),
		vars: map[string]string{},
		now:  time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC),
	}
}

// run runs kedgectl with args and returns what a user would see.
func (e *testEnv) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Run(context.Background(), args, e.env(&out, &errOut))
	return out.String(), errOut.String(), code
}

func (e *testEnv) env(stdout, stderr io.Writer) Env {
	return Env{
		Stdout:           stdout,
		Stderr:           stderr,
		Getenv:           func(k string) string { return e.vars[k] },
		HomeDir:          func() (string, error) { return e.home, nil },
		Now:              func() time.Time { return e.now },
		StderrIsTerminal: e.terminal,
		PollInterval:     10 * time.Millisecond,
	}
}

// syncBuffer is a bytes.Buffer safe to read while kedgectl writes to it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// homeConfig writes the default ~/.kedge/config.yaml for addrs.
func (e *testEnv) homeConfig(t *testing.T, p *testPKI, addrs ...string) {
	t.Helper()
	p.writeConfig(t, filepath.Join(e.home, ".kedge", "config.yaml"), addrs...)
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
