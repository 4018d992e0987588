package etcdrole_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/coordtest"
	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/internal/atomicfile"
	"github.com/kedge-io/kedge/nodeagent/etcdrole"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// releasedPlan watches the node's plan until it is released with an etcd section.
func releasedPlan(ctx context.Context, t *testing.T, c kedgev1.NodeServiceClient) *kedgev1.Plan {
	t.Helper()
	for ctx.Err() == nil {
		stream, err := c.WatchPlan(ctx, &kedgev1.WatchPlanRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				break
			}
			if p := resp.Plan; p.GetWaiting() == "" && p.GetEtcd() != nil {
				return p
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no released etcd plan before the deadline")
	return nil
}

// The whole node-side path against a real coordinator: three enrolled nodes,
// a stacked spec, certs by EnsureCerts over each node's NodeService
// connection, and three members run by Run from the etcd.yaml Desired renders.
func TestMembersWithCertsFromARealCoordinator(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	env := coordtest.Start(t)
	env.ApplySpec(t, coordtest.ThreeNodeSpec)
	var nodes []*coordtest.NodeIdentity
	for i := 1; i <= 3; i++ {
		nodes = append(nodes, env.EnrollNode(t, &kedgev1.MachineFacts{
			MachineId: fmt.Sprintf("machine-%d", i), Hostname: fmt.Sprintf("nuc-%d", i),
			Macs: []string{fmt.Sprintf("52:54:00:00:00:0%d", i)}, Ips: []string{"127.0.0.1"},
		}))
	}

	type member struct {
		plan *kedgev1.Plan
		root string
	}
	var members []member
	var caPEM string
	for _, n := range nodes {
		plan := releasedPlan(ctx, t, n.Client)
		root := t.TempDir()
		if changed, err := etcdrole.EnsureCerts(ctx, root, plan, n.Client); err != nil || !changed {
			t.Fatalf("EnsureCerts for %s: %v, %v", n.Name, changed, err)
		}
		if _, err := etcdrole.EnsureDatastoreClientCert(ctx, root, plan, n.Client); err != nil {
			t.Fatalf("EnsureDatastoreClientCert for %s: %v", n.Name, err)
		}
		// Applied again, nothing changes.
		if changed, err := etcdrole.EnsureCerts(ctx, root, plan, n.Client); err != nil || changed {
			t.Fatalf("second EnsureCerts for %s: %v, %v", n.Name, changed, err)
		}
		b, _ := os.ReadFile(paths.In(root, paths.EtcdServerCert))
		cert, err := pki.DecodeCertPEM(b)
		if err != nil || cert.Subject.CommonName != plan.Etcd.MemberName {
			t.Fatalf("server cert of %s: CN %v, %v; want %s", n.Name, cert, err, plan.Etcd.MemberName)
		}
		ca, _ := os.ReadFile(paths.In(root, paths.EtcdCA))
		if caPEM != "" && string(ca) != caPEM {
			t.Errorf("%s got a different etcd CA", n.Name)
		}
		caPEM = string(ca)
		members = append(members, member{plan, root})
	}

	// Every node enrolled from 127.0.0.1, so the planner gave all three
	// members the same ports; move each to its own free ports, consistently.
	moved := map[string]string{}
	for _, m := range members {
		for _, u := range append(append([]string{}, m.plan.Etcd.ClientUrls...), m.plan.Etcd.PeerUrls...) {
			moved[m.plan.Etcd.MemberName+" "+u] = "https://127.0.0.1:" + freePort(t)
		}
	}
	var initial []*kedgev1.EtcdMember
	for _, m := range members {
		e := m.plan.Etcd
		e.ClientUrls = remap(moved, e.MemberName, e.ClientUrls)
		e.PeerUrls = remap(moved, e.MemberName, e.PeerUrls)
		initial = append(initial, &kedgev1.EtcdMember{Name: e.MemberName, PeerUrls: e.PeerUrls, ClientUrls: e.ClientUrls})
	}

	done := make(chan error, len(members))
	runCtx, stop := context.WithCancel(ctx)
	for _, m := range members {
		m.plan.Etcd.InitialCluster = initial
		m.plan.Etcd.HeartbeatIntervalMs, m.plan.Etcd.ElectionTimeoutMs = 50, 500
		m.plan.Etcd.QuotaBackendBytes = 64 << 20
		cfg, err := etcdrole.ConfigForPlan(m.plan, m.root)
		if err != nil {
			t.Fatal(err)
		}
		b, err := cfg.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(m.root, strings.TrimPrefix(paths.EtcdConfig, "/"))
		if err := atomicfile.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		go func() { done <- etcdrole.Run(runCtx, path) }()
	}

	for _, m := range members {
		deadline := time.Now().Add(20 * time.Second)
		for {
			st := etcdrole.Probe(ctx, m.root, m.plan)
			if st.Healthy {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("member %s never healthy: %s", m.plan.Etcd.MemberName, st.Error)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for _, m := range members {
		fi, err := os.Stat(paths.In(m.root, paths.EtcdDataDir))
		if err != nil || fi.Mode().Perm() != 0o700 {
			t.Errorf("data dir of %s: %v, mode %v; want 0700", m.plan.Etcd.MemberName, err, fi.Mode())
		}
	}
	// A put through one member is read through another, each client with its
	// own node's datastore-client cert.
	cli0 := clientFor(t, members[0].root, members[0].plan.Etcd.ClientUrls)
	if _, err := cli0.Put(ctx, "/kedge/from-coordinator-certs", "yes"); err != nil {
		t.Fatal(err)
	}
	cli2 := clientFor(t, members[2].root, members[2].plan.Etcd.ClientUrls)
	resp, err := cli2.Get(ctx, "/kedge/from-coordinator-certs")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read through another member: %v %v", resp, err)
	}

	// Run stops cleanly when its context ends (SIGTERM under systemd).
	stop()
	for range members {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v on a clean stop", err)
			}
		case <-time.After(15 * time.Second):
			t.Fatal("Run did not return after its context ended")
		}
	}
}

func remap(moved map[string]string, member string, urls []string) []string {
	out := make([]string, len(urls))
	for i, u := range urls {
		out[i] = moved[member+" "+u]
	}
	return out
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	u, _ := url.Parse("tcp://" + l.Addr().String())
	return u.Port()
}
