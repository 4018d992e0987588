package clustertest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/coordtest"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

const specYAML = `apiVersion: kedge/v1
kind: Cluster
metadata:
  name: edge-1
spec:
  topology: stacked
  etcd:
    members: 3
  k3s:
    version: v1.31.4+k3s1
    binary:
      sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
      path: /usr/local/bin/k3s
  inventory:
    - {name: nuc1, match: {mac: "02:00:00:00:00:01"}, roles: [etcd, server], ip: 10.77.0.11}
    - {name: nuc2, match: {mac: "02:00:00:00:00:02"}, roles: [etcd, server], ip: 10.77.0.12}
    - {name: nuc3, match: {mac: "02:00:00:00:00:03"}, roles: [etcd, server], ip: 10.77.0.13}
    - {name: nuc4, match: {mac: "02:00:00:00:00:04"}, roles: [agent], ip: 10.77.0.14}
    - {name: nuc5, match: {mac: "02:00:00:00:00:05"}, roles: [agent], ip: 10.77.0.15}
`

// expected is the table every node's plan is checked against.
var expected = map[string][]kedgev1.Role{
	"nuc1": {kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER},
	"nuc2": {kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER},
	"nuc3": {kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER},
	"nuc4": {kedgev1.Role_ROLE_K3S_AGENT},
	"nuc5": {kedgev1.Role_ROLE_K3S_AGENT},
}

var serverURLs = []string{"https://10.77.0.11:6443", "https://10.77.0.12:6443", "https://10.77.0.13:6443"}

type simNode struct {
	id   *coordtest.NodeIdentity
	plan *kedgev1.Plan
	// What the node reports once it has applied its plan.
	reporting, etcdHealthy, leader bool
}

// follow does what a node agent does: it picks up a changed plan (an agent
// enrolled before every server may be moved once the servers are all
// known) and reports it applied. Call it while waiting for a phase.
func follow(t *testing.T, nodes map[string]*simNode) {
	t.Helper()
	for _, n := range nodes {
		if !n.reporting {
			continue
		}
		if p := currentPlan(t, n.id); p.Hash != n.plan.Hash {
			n.plan = p
			report(t, n, n.etcdHealthy, n.leader)
		}
	}
}

func facts(i int) *kedgev1.MachineFacts {
	return &kedgev1.MachineFacts{
		MachineId: fmt.Sprintf("%032x", i),
		Macs:      []string{fmt.Sprintf("02:00:00:00:00:%02x", i)},
		Hostname:  "localhost",
		Ips:       []string{fmt.Sprintf("10.77.0.%d", 10+i)},
		Arch:      "amd64",
		Os:        "linux",
	}
}

// currentPlan reads the node's plan from its watch stream: the first message
// is the current plan.
func currentPlan(t *testing.T, n *coordtest.NodeIdentity) *kedgev1.Plan {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := n.Client.WatchPlan(ctx, &kedgev1.WatchPlanRequest{})
	if err != nil {
		t.Fatalf("%s: WatchPlan: %v", n.Name, err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("%s: first plan: %v", n.Name, err)
	}
	return resp.Plan
}

// eventually retries cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s; last: %s", what, last)
}

func report(t *testing.T, n *simNode, etcdHealthy, leader bool) {
	t.Helper()
	n.reporting, n.etcdHealthy, n.leader = true, etcdHealthy, leader
	st := &kedgev1.NodeStatus{PlanHash: n.plan.Hash, PlanRevision: n.plan.Revision, AgentVersion: "test"}
	for _, r := range n.plan.Roles {
		switch r {
		case kedgev1.Role_ROLE_ETCD:
			st.Units = append(st.Units, &kedgev1.UnitStatus{Name: "kedge-etcd.service", ActiveState: "active", SubState: "running", LoadState: "loaded"})
			st.Etcd = &kedgev1.EtcdMemberStatus{Healthy: etcdHealthy, IsLeader: leader, MemberId: 1}
			if !etcdHealthy {
				st.Etcd.Error = "context deadline exceeded"
			}
		case kedgev1.Role_ROLE_K3S_SERVER:
			st.Units = append(st.Units, &kedgev1.UnitStatus{Name: "k3s.service", ActiveState: "active", SubState: "running", LoadState: "loaded"})
			st.K3S = &kedgev1.K3SStatus{Ready: true}
		case kedgev1.Role_ROLE_K3S_AGENT:
			st.Units = append(st.Units, &kedgev1.UnitStatus{Name: "k3s-agent.service", ActiveState: "active", SubState: "running", LoadState: "loaded"})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.id.Client.ReportStatus(ctx, &kedgev1.ReportStatusRequest{Status: st}); err != nil {
		t.Fatalf("%s: ReportStatus: %v", n.id.Name, err)
	}
}

func clusterStatus(t *testing.T, env *coordtest.Env) *kedgev1.ClusterStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := env.Admin.GetClusterStatus(ctx, &kedgev1.GetClusterStatusRequest{Cluster: "edge-1"})
	if err != nil {
		t.Fatalf("GetClusterStatus: %v", err)
	}
	return resp.Status
}

func wantPhase(t *testing.T, env *coordtest.Env, nodes map[string]*simNode, phase kedgev1.ClusterPhase, reasonHas string) {
	t.Helper()
	eventually(t, phase.String(), func() (bool, string) {
		follow(t, nodes)
		cs := clusterStatus(t, env)
		return cs.Phase == phase && strings.Contains(cs.Reason, reasonHas), fmt.Sprintf("%v %q", cs.Phase, cs.Reason)
	})
}

func TestStackedClusterFromRandomEnrollmentToHealthy(t *testing.T) {
	env := coordtest.Start(t)
	env.ApplySpec(t, specYAML)

	seed := uint64(time.Now().UnixNano())
	t.Logf("enrollment order seed %d", seed)
	order := []int{1, 2, 3, 4, 5}
	rand.New(rand.NewPCG(seed, seed)).Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })

	nodes := map[string]*simNode{}
	etcdSoFar := 0
	for _, i := range order {
		id := env.EnrollNode(t, facts(i))
		name := fmt.Sprintf("nuc%d", i)
		if id.Name != name {
			t.Fatalf("machine %d enrolled as %q, want its pin's name %q", i, id.Name, name)
		}
		nodes[name] = &simNode{id: id}
		if i <= 3 {
			etcdSoFar++
			if etcdSoFar < 3 {
				want := fmt.Sprintf("waiting for %d of 3 etcd members to enroll", 3-etcdSoFar)
				eventually(t, name+" waiting", func() (bool, string) {
					p := currentPlan(t, id)
					return p.GetWaiting() == want && p.GetEtcd() == nil && p.GetK3S() == nil, fmt.Sprintf("waiting %q", p.GetWaiting())
				})
			}
		}
	}
	wantPhase(t, env, nodes, kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING, "")

	for name, n := range nodes {
		eventually(t, name+" released plan", func() (bool, string) {
			n.plan = currentPlan(t, n.id)
			return n.plan.GetWaiting() == "" && n.plan.GetK3S() != nil, fmt.Sprintf("waiting %q", n.plan.GetWaiting())
		})
		p := n.plan
		if !slices.Equal(p.Roles, expected[name]) {
			t.Errorf("%s: roles %v, want %v", name, p.Roles, expected[name])
		}
		if p.Hostname != name {
			t.Errorf("%s: hostname %q", name, p.Hostname)
		}
		switch p.K3S.Role {
		case kedgev1.Role_ROLE_K3S_SERVER:
			var members []string
			for _, m := range p.GetEtcd().GetInitialCluster() {
				members = append(members, m.Name)
			}
			if !slices.Equal(members, []string{"nuc1", "nuc2", "nuc3"}) || p.Etcd.InitialClusterState != "new" {
				t.Errorf("%s: initial cluster %v state %q", name, members, p.GetEtcd().GetInitialClusterState())
			}
			if want := []string{"https://10.77.0.11:2379", "https://10.77.0.12:2379", "https://10.77.0.13:2379"}; !slices.Equal(p.K3S.DatastoreEndpoints, want) {
				t.Errorf("%s: datastore endpoints %v", name, p.K3S.DatastoreEndpoints)
			}
			if p.K3S.Token == "" || p.K3S.AgentToken == "" || p.K3S.Token == p.K3S.AgentToken {
				t.Errorf("%s: server and agent tokens must both be set and differ", name)
			}
		case kedgev1.Role_ROLE_K3S_AGENT:
			if p.K3S.Token != "" {
				t.Errorf("%s: an agent received the server token", name)
			}
			if p.K3S.AgentToken == "" || !slices.Contains(serverURLs, p.K3S.ServerUrl) {
				t.Errorf("%s: agent token set %v, server URL %q", name, p.K3S.AgentToken != "", p.K3S.ServerUrl)
			}
		}
	}

	// Reports arrive one by one: Provisioning until the last, then Healthy.
	names := []string{"nuc1", "nuc2", "nuc3", "nuc4", "nuc5"}
	for _, name := range names[:4] {
		report(t, nodes[name], true, name == "nuc1")
	}
	wantPhase(t, env, nodes, kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING, "nuc5")
	report(t, nodes["nuc5"], true, false)
	wantPhase(t, env, nodes, kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, "")
	cs := clusterStatus(t, env)
	if cs.Etcd.GetHealthy() != 3 || cs.Etcd.GetTotal() != 3 || cs.Etcd.GetLeader() != "nuc1" || cs.ServersActive != 3 || cs.AgentsActive != 2 {
		t.Errorf("healthy cluster status: etcd %v servers %d/%d agents %d/%d", cs.Etcd, cs.ServersActive, cs.ServersPlanned, cs.AgentsActive, cs.AgentsPlanned)
	}

	// One etcd member reports unhealthy: quorum holds, the cluster is Degraded
	// and the reason names the member.
	report(t, nodes["nuc2"], false, false)
	wantPhase(t, env, nodes, kedgev1.ClusterPhase_CLUSTER_PHASE_DEGRADED, "nuc2")
	if cs := clusterStatus(t, env); !cs.Etcd.GetHasQuorum() || cs.Etcd.GetHealthy() != 2 {
		t.Errorf("one member down: quorum %v", cs.Etcd)
	}
	report(t, nodes["nuc2"], true, false)
	wantPhase(t, env, nodes, kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, "")

	// The server nuc4 joins through fails: nuc4's plan moves to another.
	agent := nodes["nuc4"]
	agent.plan = currentPlan(t, agent.id)
	was := agent.plan.K3S.ServerUrl
	failing := map[string]string{"https://10.77.0.11:6443": "nuc1", "https://10.77.0.12:6443": "nuc2", "https://10.77.0.13:6443": "nuc3"}[was]
	srv := nodes[failing]
	srv.reporting = false // it reports the failure below, and nothing else
	st := &kedgev1.NodeStatus{PlanHash: srv.plan.Hash, Units: []*kedgev1.UnitStatus{
		{Name: "kedge-etcd.service", ActiveState: "active", SubState: "running"},
		{Name: "k3s.service", ActiveState: "failed", SubState: "failed", Result: "exit-code"},
	}, Etcd: &kedgev1.EtcdMemberStatus{Healthy: true, MemberId: 1}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := srv.id.Client.ReportStatus(ctx, &kedgev1.ReportStatusRequest{Status: st}); err != nil {
		t.Fatal(err)
	}
	wantPhase(t, env, nodes, kedgev1.ClusterPhase_CLUSTER_PHASE_DEGRADED, "unit k3s.service failed (Result=exit-code)")
	eventually(t, "nuc4 to move off "+failing, func() (bool, string) {
		now := currentPlan(t, agent.id).K3S.GetServerUrl()
		return now != was && slices.Contains(serverURLs, now), now
	})
}

func TestExternalUnpinnedRolesFollowEnrollmentOrder(t *testing.T) {
	env := coordtest.Start(t)
	env.ApplySpec(t, `apiVersion: kedge/v1
kind: Cluster
metadata: {name: edge-1}
spec:
  topology: external
  etcd: {members: 3}
  k3s:
    servers: 2
    version: v1.31.4+k3s1
    binary: {url: "https://example.lan/k3s", sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"}
`)
	seed := uint64(time.Now().UnixNano())
	t.Logf("enrollment order seed %d", seed)
	order := []int{1, 2, 3, 4, 5, 6}
	rand.New(rand.NewPCG(seed, seed)).Shuffle(len(order), func(a, b int) { order[a], order[b] = order[b], order[a] })

	byPosition := [][]kedgev1.Role{
		{kedgev1.Role_ROLE_ETCD}, {kedgev1.Role_ROLE_ETCD}, {kedgev1.Role_ROLE_ETCD},
		{kedgev1.Role_ROLE_K3S_SERVER}, {kedgev1.Role_ROLE_K3S_SERVER},
		{kedgev1.Role_ROLE_K3S_AGENT},
	}
	var ids []*coordtest.NodeIdentity
	for pos, i := range order {
		id := env.EnrollNode(t, facts(i))
		ids = append(ids, id)
		if pos == 1 {
			// Two of three etcd hosts: both wait for the third.
			for _, early := range ids {
				eventually(t, early.Name+" waiting", func() (bool, string) {
					p := currentPlan(t, early)
					return p.Waiting == "waiting for 1 of 3 etcd members to enroll", fmt.Sprintf("waiting %q", p.Waiting)
				})
			}
		}
	}
	for pos, id := range ids {
		want := byPosition[pos]
		eventually(t, id.Name+" plan", func() (bool, string) {
			p := currentPlan(t, id)
			return slices.Equal(p.Roles, want) && p.Waiting == "", fmt.Sprintf("roles %v waiting %q", p.Roles, p.Waiting)
		})
		p := currentPlan(t, id)
		switch want[0] {
		case kedgev1.Role_ROLE_ETCD:
			if p.Etcd == nil || p.K3S != nil {
				t.Errorf("%s: an external etcd host needs an etcd plan and no K3s", id.Name)
			}
		case kedgev1.Role_ROLE_K3S_SERVER:
			if p.Etcd != nil || len(p.K3S.GetDatastoreEndpoints()) != 3 {
				t.Errorf("%s: server plan etcd %v endpoints %v", id.Name, p.Etcd, p.K3S.GetDatastoreEndpoints())
			}
		case kedgev1.Role_ROLE_K3S_AGENT:
			if p.K3S.GetToken() != "" || p.K3S.GetServerUrl() == "" {
				t.Errorf("%s: agent plan token set %v server %q", id.Name, p.K3S.GetToken() != "", p.K3S.GetServerUrl())
			}
		}
	}
}
