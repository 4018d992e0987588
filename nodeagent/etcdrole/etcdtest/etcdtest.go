// Package etcdtest starts real etcd clusters in one test process: n embedded
// members on free loopback ports with mutual TLS on both ports, each run by
// etcdrole.RunMember from a real etcd.yaml, with certs obtained through
// etcdrole.EnsureCerts from a real CA built and signing with the
// coordinator's own pki code and leaf profiles (no coordinator process: the
// path through a real coordinator is tested in etcdrole's coordtest test).
// Other packages' integration tests use it as their datastore.
package etcdtest

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/kedge-io/kedge/internal/atomicfile"
	"github.com/kedge-io/kedge/nodeagent/etcdrole"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// StartTimeout bounds how long StartCluster and Start wait for members.
const StartTimeout = 30 * time.Second

// Cluster is a running test etcd cluster.
type Cluster struct {
	// Endpoints are every member's client URL (https://127.0.0.1:PORT).
	Endpoints []string
	// CAFile, ClientCertFile and ClientKeyFile are a datastore-client cert
	// from the cluster's etcd CA, as a K3s server would use.
	CAFile, ClientCertFile, ClientKeyFile string
	ClientTLS                             *tls.Config
	CA                                    *CA
	Members                               []*Member

	t     testing.TB
	token string
}

// Member is one etcd member of a Cluster.
type Member struct {
	Name       string
	Root       string // the member's machine root: certs, config and data dir live under it
	ConfigPath string
	ClientURL  string
	PeerURL    string
	Plan       *kedgev1.Plan

	mu          sync.Mutex
	cancel      context.CancelFunc
	done        chan error
	readyOrDone chan error
}

// StartCluster starts n members that bootstrap a new cluster and waits until
// every member is ready. Everything stops at the end of the test.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, CA: NewCA(t, "etcdtest etcd CA"), token: "etcdtest-" + filepath.Base(t.TempDir())}
	for i := 0; i < n; i++ {
		c.Members = append(c.Members, c.newMember(fmt.Sprintf("etcd-%d", i)))
	}
	initial := c.initialCluster()
	for _, m := range c.Members {
		m.Plan.Etcd.InitialCluster = initial
		c.writeConfig(m)
		c.Endpoints = append(c.Endpoints, m.ClientURL)
	}
	c.writeClientCert()
	// Registered first so members stop even if the start fails half way.
	t.Cleanup(func() {
		for i := range c.Members {
			if err := c.Stop(i); err != nil {
				t.Logf("etcd member %s: %v", c.Members[i].Name, err)
			}
		}
	})
	for i := range c.Members {
		c.launch(i)
	}
	for i := range c.Members {
		c.waitReady(i)
	}
	return c
}

// NewMember prepares a member that may later join the running cluster: free
// ports, certs, and a plan with state "existing". It is not part of the
// cluster until Join.
func (c *Cluster) NewMember(name string) *Member {
	c.t.Helper()
	m := c.newMember(name)
	m.Plan.Etcd.InitialClusterState = "existing"
	return m
}

// Join writes m's config with the given initial cluster (every current member
// plus m, as etcd requires for a joiner), starts it and waits until it is
// ready. Add m to etcd first (e.g. etcdmembers.Client.AddLearner). It
// returns m's index.
func (c *Cluster) Join(m *Member, initialCluster []*kedgev1.EtcdMember) int {
	c.t.Helper()
	m.Plan.Etcd.InitialCluster = initialCluster
	c.writeConfig(m)
	c.Members = append(c.Members, m)
	c.Endpoints = append(c.Endpoints, m.ClientURL)
	i := len(c.Members) - 1
	c.Start(i)
	return i
}

// Start (re)starts member i and waits until it is ready.
func (c *Cluster) Start(i int) {
	c.t.Helper()
	c.launch(i)
	c.waitReady(i)
}

// Stop stops member i cleanly, waits until it has stopped and returns what
// its run returned (nil for a clean stop; an error if it had already stopped
// on its own, e.g. after being removed). Stopping a stopped member does nothing.
func (c *Cluster) Stop(i int) error {
	m := c.Members[i]
	m.mu.Lock()
	cancel, done := m.cancel, m.done
	m.cancel = nil
	m.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	return <-done
}

// Client is an etcd client over every endpoint with the datastore-client cert.
func (c *Cluster) Client(endpoints ...string) *clientv3.Client {
	c.t.Helper()
	if len(endpoints) == 0 {
		endpoints = c.Endpoints
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: endpoints, TLS: c.ClientTLS, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		c.t.Fatalf("etcd client: %v", err)
	}
	c.t.Cleanup(func() { _ = cli.Close() })
	return cli
}

func (c *Cluster) newMember(name string) *Member {
	c.t.Helper()
	root := c.t.TempDir()
	m := &Member{
		Name:       name,
		Root:       root,
		ConfigPath: paths.In(root, paths.EtcdConfig),
		ClientURL:  "https://127.0.0.1:" + freePort(c.t),
		PeerURL:    "https://127.0.0.1:" + freePort(c.t),
	}
	m.Plan = &kedgev1.Plan{
		NodeName: name,
		Roles:    []kedgev1.Role{kedgev1.Role_ROLE_ETCD},
		Etcd: &kedgev1.EtcdPlan{
			MemberName:          name,
			PeerUrls:            []string{m.PeerURL},
			ClientUrls:          []string{m.ClientURL},
			InitialClusterState: "new",
			InitialClusterToken: c.token,
			// Short timeouts: elections in a test take a fraction of a second.
			HeartbeatIntervalMs: 50,
			ElectionTimeoutMs:   500,
			QuotaBackendBytes:   64 << 20,
			Ips:                 []string{"127.0.0.1"},
		},
	}
	signer := &SigningNode{CA: c.CA, Node: name}
	if _, err := etcdrole.EnsureCerts(context.Background(), root, m.Plan, signer); err != nil {
		c.t.Fatalf("certs for %s: %v", name, err)
	}
	return m
}

func (c *Cluster) initialCluster() []*kedgev1.EtcdMember {
	var out []*kedgev1.EtcdMember
	for _, m := range c.Members {
		out = append(out, &kedgev1.EtcdMember{Name: m.Name, PeerUrls: []string{m.PeerURL}, ClientUrls: []string{m.ClientURL}})
	}
	return out
}

func (c *Cluster) writeConfig(m *Member) {
	c.t.Helper()
	cfg, err := etcdrole.ConfigForPlan(m.Plan, m.Root)
	if err != nil {
		c.t.Fatal(err)
	}
	b, err := cfg.Marshal()
	if err != nil {
		c.t.Fatal(err)
	}
	if err := atomicfile.WriteFile(m.ConfigPath, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

func (c *Cluster) writeClientCert() {
	c.t.Helper()
	root := c.t.TempDir()
	plan := &kedgev1.Plan{NodeName: "etcdtest-client", K3S: &kedgev1.K3SPlan{DatastoreEndpoints: c.Endpoints}}
	if _, err := etcdrole.EnsureDatastoreClientCert(context.Background(), root, plan, &SigningNode{CA: c.CA, Node: plan.NodeName}); err != nil {
		c.t.Fatalf("datastore client cert: %v", err)
	}
	c.CAFile = paths.In(root, paths.EtcdCA)
	c.ClientCertFile = paths.In(root, paths.DatastoreClientCert)
	c.ClientKeyFile = paths.In(root, paths.DatastoreClientKey)
	tlsCfg, err := etcdrole.ClientTLS(c.CAFile, c.ClientCertFile, c.ClientKeyFile)
	if err != nil {
		c.t.Fatal(err)
	}
	c.ClientTLS = tlsCfg
}

func (c *Cluster) launch(i int) {
	c.t.Helper()
	m := c.Members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cancel != nil {
		c.t.Fatalf("etcd member %s is already running", m.Name)
	}
	cfg, err := etcdrole.LoadConfig(m.ConfigPath)
	if err != nil {
		c.t.Fatal(err)
	}
	lg := zap.NewNop()
	if os.Getenv("ETCDTEST_LOG") != "" {
		lg = zaptest.NewLogger(c.t, zaptest.Level(zap.InfoLevel)).Named(m.Name)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	m.cancel, m.done = cancel, done
	go func() {
		done <- etcdrole.RunMember(ctx, cfg, lg, func() { close(ready) })
	}()
	// Hand readiness to waitReady through a goroutine-safe channel pair.
	readyOrDone := make(chan error, 1)
	go func() {
		select {
		case <-ready:
			readyOrDone <- nil
		case err := <-done:
			done <- err // keep it for Stop
			if err == nil {
				err = fmt.Errorf("stopped before ready")
			}
			readyOrDone <- err
		}
	}()
	m.readyOrDone = readyOrDone
}

func (c *Cluster) waitReady(i int) {
	c.t.Helper()
	m := c.Members[i]
	select {
	case err := <-m.readyOrDone:
		if err != nil {
			c.t.Fatalf("etcd member %s: %v", m.Name, err)
		}
	case <-time.After(StartTimeout):
		c.t.Fatalf("etcd member %s not ready after %s", m.Name, StartTimeout)
	}
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}
