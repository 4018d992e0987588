package health

import (
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kedge-io/kedge/coordinator/planner"
	"github.com/kedge-io/kedge/coordinator/spec"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

var (
	etcdServer = []kedgev1.Role{kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER}
	agentRole  = []kedgev1.Role{kedgev1.Role_ROLE_K3S_AGENT}
)

func unit(name, active, sub, result string, restarts uint32) *kedgev1.UnitStatus {
	return &kedgev1.UnitStatus{Name: name, ActiveState: active, SubState: sub, Result: result, NRestarts: restarts, LoadState: "loaded"}
}

func running(name string) *kedgev1.UnitStatus { return unit(name, "active", "running", "success", 0) }

// stackedPlan is a released plan for an etcd+server node.
var stackedPlan = &kedgev1.Plan{NodeName: "nuc1", Roles: etcdServer, Hash: "h1"}

// healthyStatus is what a Ready stacked node reports for stackedPlan.
func healthyStatus() *kedgev1.NodeStatus {
	return &kedgev1.NodeStatus{
		PlanHash: "h1",
		Units:    []*kedgev1.UnitStatus{running("kedge-etcd.service"), running("k3s.service")},
		Etcd:     &kedgev1.EtcdMemberStatus{Healthy: true, MemberId: 1},
		K3S:      &kedgev1.K3SStatus{Ready: true},
	}
}

func TestNodeCondition(t *testing.T) {
	seen := timestamppb.New(t0.Add(-5 * time.Second))
	for _, tc := range []struct {
		name   string
		node   func(n *kedgev1.Node)
		plan   *kedgev1.Plan
		want   kedgev1.NodeCondition
		reason string
	}{
		{"ready", nil, stackedPlan, ready, "kedge-etcd.service, k3s.service active"},
		{"silent too long", func(n *kedgev1.Node) { n.LastSeen = timestamppb.New(t0.Add(-45 * time.Second)) },
			stackedPlan, unreachable, "no report for 45s (unreachable after 30s)"},
		{"silent 29s is fine", func(n *kedgev1.Node) { n.LastSeen = timestamppb.New(t0.Add(-29 * time.Second)) },
			stackedPlan, ready, "kedge-etcd.service, k3s.service active"},
		{"never seen after enrolling", func(n *kedgev1.Node) {
			n.LastSeen, n.Status = nil, nil
			n.EnrolledAt = timestamppb.New(t0.Add(-2 * time.Minute))
		}, stackedPlan, unreachable, "no report since enrolling 2m0s ago (unreachable after 30s)"},
		{"just enrolled", func(n *kedgev1.Node) {
			n.LastSeen, n.Status = nil, nil
			n.EnrolledAt = timestamppb.New(t0.Add(-2 * time.Second))
		}, stackedPlan, provisioning, "waiting for the node's first report"},
		{"connection lost 9s ago", func(n *kedgev1.Node) {
			n.LastSeen, n.ConnectionLostAt = timestamppb.New(t0.Add(-12*time.Second)), timestamppb.New(t0.Add(-9*time.Second))
		}, stackedPlan, unreachable, "connection lost 9s ago and not re-established"},
		{"connection lost 3s ago: an agent restart", func(n *kedgev1.Node) {
			n.LastSeen, n.ConnectionLostAt = timestamppb.New(t0.Add(-12*time.Second)), timestamppb.New(t0.Add(-3*time.Second))
		}, stackedPlan, ready, "kedge-etcd.service, k3s.service active"},
		{"connection lost but reported since (through another coordinator)", func(n *kedgev1.Node) {
			n.ConnectionLostAt = timestamppb.New(t0.Add(-20 * time.Second))
		}, stackedPlan, ready, "kedge-etcd.service, k3s.service active"},
		{"no plan", nil, nil, provisioning, "no plan yet"},
		{"waiting plan", nil, &kedgev1.Plan{Roles: etcdServer, Hash: "h1", Waiting: "waiting for 2 of 3 etcd members to enroll"},
			provisioning, "waiting for 2 of 3 etcd members to enroll"},
		{"old plan applied", func(n *kedgev1.Node) { n.Status.PlanHash = "0123456789abcdef-old" },
			stackedPlan, provisioning, "applying plan h1 (running 0123456789ab)"},
		{"apply error", func(n *kedgev1.Node) {
			n.Status.ApplyError, n.Status.ApplyStep = "sha256 mismatch: want ab.., got cd..", "k3s binary"
		}, stackedPlan, degraded, "apply failed at k3s binary: sha256 mismatch: want ab.., got cd.."},
		{"unit failed", func(n *kedgev1.Node) { n.Status.Units[1] = unit("k3s.service", "failed", "failed", "exit-code", 0) },
			stackedPlan, degraded, "unit k3s.service failed (Result=exit-code)"},
		{"unit restarting", func(n *kedgev1.Node) {
			n.Status.Units[1] = unit("k3s.service", "activating", "auto-restart", "exit-code", 3)
		}, stackedPlan, degraded, "unit k3s.service is restarting (3 restarts, Result=exit-code)"},
		{"unit stopped", func(n *kedgev1.Node) {
			n.Status.Units[0] = unit("kedge-etcd.service", "inactive", "dead", "success", 0)
		},
			stackedPlan, degraded, "unit kedge-etcd.service is not active (inactive/dead)"},
		{"unit activating", func(n *kedgev1.Node) {
			n.Status.Units[0] = unit("kedge-etcd.service", "activating", "start", "success", 0)
			n.Status.Etcd = nil
		}, stackedPlan, provisioning, "unit kedge-etcd.service is activating"},
		{"unit not reported", func(n *kedgev1.Node) { n.Status.Units = n.Status.Units[:1] },
			stackedPlan, provisioning, "unit k3s.service not reported yet"},
		{"etcd unhealthy", func(n *kedgev1.Node) {
			n.Status.Etcd = &kedgev1.EtcdMemberStatus{Healthy: false, Error: "context deadline exceeded"}
		}, stackedPlan, degraded, "etcd member unhealthy: context deadline exceeded"},
		{"etcd alarm", func(n *kedgev1.Node) { n.Status.Etcd.Alarms = []string{"NOSPACE"} },
			stackedPlan, degraded, "etcd member alarm NOSPACE"},
		{"k3s not ready while starting", func(n *kedgev1.Node) {
			n.Condition = provisioning
			n.Status.K3S = &kedgev1.K3SStatus{Error: "connection refused"}
		}, stackedPlan, provisioning, "K3s server not ready: connection refused"},
		{"k3s not ready after ready", func(n *kedgev1.Node) {
			n.Condition = ready
			n.Status.K3S = &kedgev1.K3SStatus{Error: "connection refused"}
		}, stackedPlan, degraded, "K3s server not ready: connection refused"},
		{"k3s still not ready, stays degraded", func(n *kedgev1.Node) {
			n.Condition = degraded
			n.Status.K3S = &kedgev1.K3SStatus{Error: "connection refused"}
		}, stackedPlan, degraded, "K3s server not ready: connection refused"},
		{"agent ready", func(n *kedgev1.Node) {
			n.Status = &kedgev1.NodeStatus{PlanHash: "a1", Units: []*kedgev1.UnitStatus{running("k3s-agent.service")}}
		}, &kedgev1.Plan{Roles: agentRole, Hash: "a1"}, ready, "k3s-agent.service active"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := &kedgev1.Node{Name: "nuc1", State: kedgev1.NodeState_NODE_STATE_ENROLLED, LastSeen: seen,
				EnrolledAt: timestamppb.New(t0.Add(-time.Hour)), Status: healthyStatus()}
			if tc.node != nil {
				tc.node(n)
			}
			got, reason := NodeCondition(n, tc.plan, Options{Now: t0})
			if got != tc.want || reason != tc.reason {
				t.Errorf("got %v %q\nwant %v %q", got, reason, tc.want, tc.reason)
			}
		})
	}
}

func TestUnreachableAfterIsConfigurable(t *testing.T) {
	n := &kedgev1.Node{Name: "nuc1", LastSeen: timestamppb.New(t0.Add(-10 * time.Second)), Status: healthyStatus()}
	if got, _ := NodeCondition(n, stackedPlan, Options{Now: t0, UnreachableAfter: 5 * time.Second}); got != unreachable {
		t.Errorf("10 s silent with a 5 s limit: %v, want unreachable", got)
	}
}

// lab is a stacked cluster of 3 etcd+server nodes and 2 agents with real
// plans from the planner; report makes a node report its plan applied.
type lab struct {
	spec  *kedgev1.ClusterSpec
	nodes []*kedgev1.Node
	plans map[string]*kedgev1.Plan
}

func newLab(t *testing.T, enrolled int) *lab {
	t.Helper()
	s, err := spec.Parse("edge.yaml", []byte(`apiVersion: kedge/v1
kind: Cluster
metadata: {name: edge-1}
spec:
  topology: stacked
  k3s:
    version: v1.31.4+k3s1
    binary: {sha256: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", path: /usr/local/bin/k3s}
`))
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{spec: s}
	for i := 1; i <= enrolled; i++ {
		l.nodes = append(l.nodes, &kedgev1.Node{
			Name: fmt.Sprintf("nuc%d", i), State: kedgev1.NodeState_NODE_STATE_ENROLLED,
			EnrollSequence: uint64(i), NodeIp: fmt.Sprintf("10.0.0.%d", 10+i),
			EnrolledAt: timestamppb.New(t0.Add(-time.Minute)), LastSeen: timestamppb.New(t0),
		})
	}
	l.plan()
	return l
}

func (l *lab) plan() {
	out := planner.Compute(planner.Input{Spec: l.spec, Secrets: &kedgev1.ClusterSecrets{ServerToken: "s", AgentToken: "a", EtcdClusterToken: "e"}, Nodes: l.nodes})
	l.plans = out.Plans
	for _, n := range l.nodes {
		n.Roles = out.Roles[n.Name]
	}
}

func (l *lab) node(name string) *kedgev1.Node {
	for _, n := range l.nodes {
		if n.Name == name {
			return n
		}
	}
	panic(name)
}

// up makes a node report its plan applied and every unit running.
func (l *lab) up(name string, leader bool) {
	n := l.node(name)
	p := l.plans[name]
	st := &kedgev1.NodeStatus{PlanHash: p.Hash}
	for _, u := range UnitsFor(p.Roles) {
		st.Units = append(st.Units, running(u))
	}
	if p.Etcd != nil {
		st.Etcd = &kedgev1.EtcdMemberStatus{Healthy: true, IsLeader: leader}
	}
	if p.K3S.GetRole() == kedgev1.Role_ROLE_K3S_SERVER {
		st.K3S = &kedgev1.K3SStatus{Ready: true}
	}
	n.Status = st
}

func (l *lab) status() *kedgev1.ClusterStatus {
	cs := Cluster(l.spec, l.nodes, l.plans, Options{Now: t0})
	// Feed conditions back, as the coordinator stores them.
	for _, sn := range cs.Nodes {
		l.node(sn.Name).Condition = sn.Condition
	}
	return cs
}

func wantPhase(t *testing.T, cs *kedgev1.ClusterStatus, phase kedgev1.ClusterPhase, reason string) {
	t.Helper()
	if cs.Phase != phase || cs.Reason != reason {
		t.Fatalf("phase %v %q\nwant  %v %q", cs.Phase, cs.Reason, phase, reason)
	}
}

func TestClusterPhases(t *testing.T) {
	l := newLab(t, 2)
	wantPhase(t, l.status(), kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING, "waiting for 1 of 3 etcd members to enroll")

	l = newLab(t, 5)
	cs := l.status()
	wantPhase(t, cs, kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING, "node nuc1 provisioning: waiting for the node's first report (and 4 more)")
	if cs.Etcd.Total != 3 || cs.ServersPlanned != 3 || cs.AgentsPlanned != 2 {
		t.Errorf("planned counts %v %d %d", cs.Etcd, cs.ServersPlanned, cs.AgentsPlanned)
	}

	// First etcd member starts: Type=notify keeps it activating until peers come.
	l.node("nuc1").Status = &kedgev1.NodeStatus{PlanHash: l.plans["nuc1"].Hash,
		Units: []*kedgev1.UnitStatus{unit("kedge-etcd.service", "activating", "start", "", 0)}}
	wantPhase(t, l.status(), kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING, "node nuc1 provisioning: unit kedge-etcd.service is activating (and 4 more)")

	l.up("nuc1", true)
	l.up("nuc2", false)
	l.up("nuc3", false)
	l.up("nuc4", false)
	wantPhase(t, l.status(), kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING, "node nuc5 provisioning: waiting for the node's first report")

	l.up("nuc5", false)
	cs = l.status()
	wantPhase(t, cs, kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, "etcd 3/3 healthy (leader nuc1), K3s servers 3/3 active, agents 2/2 active")
	if !cs.Etcd.HasQuorum || cs.Etcd.Leader != "nuc1" || cs.ServersActive != 3 || cs.AgentsActive != 2 || len(cs.Nodes) != 5 {
		t.Errorf("healthy status %v", cs)
	}
	for _, n := range cs.Nodes {
		if n.Condition != ready || n.PlanHash != l.plans[n.Name].Hash {
			t.Errorf("%s: %v %q plan %q", n.Name, n.Condition, n.ConditionReason, n.PlanHash)
		}
	}

	// One member unhealthy: quorum holds, the cluster is Degraded.
	l.node("nuc2").Status.Etcd = &kedgev1.EtcdMemberStatus{Healthy: false, Error: "context deadline exceeded"}
	cs = l.status()
	wantPhase(t, cs, kedgev1.ClusterPhase_CLUSTER_PHASE_DEGRADED, "node nuc2 degraded: etcd member unhealthy: context deadline exceeded")
	if cs.Etcd.Healthy != 2 || !cs.Etcd.HasQuorum {
		t.Errorf("quorum %v", cs.Etcd)
	}

	// A second member goes silent: quorum lost, Down.
	l.node("nuc3").LastSeen = timestamppb.New(t0.Add(-time.Minute))
	cs = l.status()
	wantPhase(t, cs, kedgev1.ClusterPhase_CLUSTER_PHASE_DOWN, "etcd has no quorum: 1 of 3 members healthy; node nuc2 degraded: etcd member unhealthy: context deadline exceeded (and 1 more)")

	// Recovery.
	l.up("nuc2", false)
	l.up("nuc3", false)
	l.node("nuc3").LastSeen = timestamppb.New(t0)
	wantPhase(t, l.status(), kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, "etcd 3/3 healthy (leader nuc1), K3s servers 3/3 active, agents 2/2 active")

	// An agent's unit fails: Degraded, naming node and unit.
	l.node("nuc5").Status.Units[0] = unit("k3s-agent.service", "failed", "failed", "exit-code", 0)
	wantPhase(t, l.status(), kedgev1.ClusterPhase_CLUSTER_PHASE_DEGRADED, "node nuc5 degraded: unit k3s-agent.service failed (Result=exit-code)")
	l.up("nuc5", false)

	// Every server's K3s fails while etcd keeps quorum: Down.
	for _, name := range []string{"nuc1", "nuc2", "nuc3"} {
		l.node(name).Status.Units[1] = unit("k3s.service", "failed", "failed", "exit-code", 0)
	}
	cs = l.status()
	wantPhase(t, cs, kedgev1.ClusterPhase_CLUSTER_PHASE_DOWN, "no K3s server active of 3; node nuc1 degraded: unit k3s.service failed (Result=exit-code) (and 2 more)")
}

func TestClusterIgnoresRemovedAndListsPending(t *testing.T) {
	l := newLab(t, 5)
	for _, n := range l.nodes {
		l.up(n.Name, n.Name == "nuc1")
	}
	l.nodes = append(l.nodes,
		&kedgev1.Node{Name: "old", State: kedgev1.NodeState_NODE_STATE_REMOVED, Roles: etcdServer},
		&kedgev1.Node{Name: "new", State: kedgev1.NodeState_NODE_STATE_PENDING_APPROVAL})
	cs := l.status()
	wantPhase(t, cs, kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, "etcd 3/3 healthy (leader nuc1), K3s servers 3/3 active, agents 2/2 active")
	if len(cs.Nodes) != 6 || cs.Nodes[0].Name != "new" || cs.Nodes[0].ConditionReason != "pending approval" {
		t.Errorf("nodes %v", cs.Nodes)
	}
}

func TestClusterEmbeddedHasNoKedgeEtcd(t *testing.T) {
	s := &kedgev1.ClusterSpec{Name: "e", Topology: kedgev1.Topology_TOPOLOGY_EMBEDDED, K3S: &kedgev1.K3SSpec{Servers: 1}}
	n := &kedgev1.Node{Name: "nuc1", State: kedgev1.NodeState_NODE_STATE_ENROLLED, LastSeen: timestamppb.New(t0),
		Status: &kedgev1.NodeStatus{PlanHash: "h", Units: []*kedgev1.UnitStatus{running("k3s.service")}, K3S: &kedgev1.K3SStatus{Ready: true}}}
	p := &kedgev1.Plan{NodeName: "nuc1", Roles: []kedgev1.Role{kedgev1.Role_ROLE_K3S_SERVER}, Hash: "h"}
	cs := Cluster(s, []*kedgev1.Node{n}, map[string]*kedgev1.Plan{"nuc1": p}, Options{Now: t0})
	wantPhase(t, cs, kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, "K3s servers 1/1 active, agents 0/0 active")
	if cs.Etcd != nil {
		t.Errorf("embedded cluster reports kedge etcd %v", cs.Etcd)
	}
}

func TestClusterDownAfterARemovalAndAFailure(t *testing.T) {
	l := newLab(t, 5)
	for _, n := range l.nodes {
		l.up(n.Name, n.Name == "nuc1")
	}
	wantPhase(t, l.status(), kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, "etcd 3/3 healthy (leader nuc1), K3s servers 3/3 active, agents 2/2 active")
	l.node("nuc2").State = kedgev1.NodeState_NODE_STATE_REMOVED
	wantPhase(t, l.status(), kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING, "waiting for 1 of 3 etcd members to enroll")
	l.node("nuc3").Status.Etcd = &kedgev1.EtcdMemberStatus{Error: "no leader"}
	wantPhase(t, l.status(), kedgev1.ClusterPhase_CLUSTER_PHASE_DOWN, "etcd has no quorum: 1 of 3 members healthy; node nuc3 degraded: etcd member unhealthy: no leader")
}
