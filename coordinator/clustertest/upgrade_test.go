package clustertest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/coordtest"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// TestRollingK3sUpgrade: a new K3s version in the spec of a healthy stacked
// cluster reaches the servers one at a time, each only after the previous
// reports its plan applied and comes back READY, then the agents together.
func TestRollingK3sUpgrade(t *testing.T) {
	env := coordtest.Start(t)
	env.ApplySpec(t, specYAML)
	names := []string{"nuc1", "nuc2", "nuc3", "nuc4", "nuc5"}
	nodes := map[string]*simNode{}
	for i, name := range names {
		nodes[name] = &simNode{id: env.EnrollNode(t, facts(i+1))}
	}
	for _, name := range names {
		n := nodes[name]
		eventually(t, name+" released plan", func() (bool, string) {
			n.plan = currentPlan(t, n.id)
			return n.plan.GetK3S() != nil, fmt.Sprintf("waiting %q", n.plan.GetWaiting())
		})
		report(t, n, true, name == "nuc1")
	}
	wantPhase(t, env, nodes, kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, "")

	const v1, v2 = "v1.31.4+k3s1", "v1.32.1+k3s1"
	for _, n := range nodes {
		n.reporting = false // from here on, each node reports only when told
	}
	env.ApplySpec(t, strings.Replace(specYAML, v1, v2, 1))

	versions := func() map[string]string {
		got := map[string]string{}
		for name, n := range nodes {
			got[name] = currentPlan(t, n.id).GetK3S().GetBinary().GetVersion()
		}
		return got
	}
	want := map[string]string{"nuc1": v1, "nuc2": v1, "nuc3": v1, "nuc4": v1, "nuc5": v1}
	same := func(a, b map[string]string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }
	for _, server := range []string{"nuc1", "nuc2", "nuc3"} {
		want[server] = v2
		eventually(t, server+" alone to get "+v2, func() (bool, string) {
			got := versions()
			return same(got, want), fmt.Sprint(got)
		})
		// Applied, K3s restarting (/ping fails): the next server waits.
		// (The coordinator re-plans on a change of condition or K3s
		// readiness, not of the reported plan hash alone: a node reporting
		// its new plan READY before any tick saw it Provisioning would not
		// move the roll on until something else changed.)
		n := nodes[server]
		n.plan = currentPlan(t, n.id)
		reportStarting(t, n)
		eventually(t, server+" not to be READY", func() (bool, string) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			resp, err := env.Admin.ListNodes(ctx, &kedgev1.ListNodesRequest{Cluster: "edge-1"})
			if err != nil {
				t.Fatalf("ListNodes: %v", err)
			}
			for _, c := range resp.Nodes {
				if c.Name == server {
					return c.Condition != kedgev1.NodeCondition_NODE_CONDITION_READY, c.Condition.String()
				}
			}
			return false, "not listed"
		})
		if got := versions(); !same(got, want) {
			t.Fatalf("%s applied but not ready: versions %v, want %v", server, got, want)
		}
		report(t, n, true, server == "nuc1") // K3s ready again
		n.reporting = false
	}
	want["nuc4"], want["nuc5"] = v2, v2
	eventually(t, "agents to get "+v2, func() (bool, string) {
		got := versions()
		return same(got, want), fmt.Sprint(got)
	})
	for _, name := range []string{"nuc4", "nuc5"} {
		nodes[name].plan = currentPlan(t, nodes[name].id)
		report(t, nodes[name], true, false)
	}
	wantPhase(t, env, nodes, kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, "")
}

// reportStarting reports n's plan applied with k3s.service active and the
// K3s server not answering /ping yet, as right after a restart.
func reportStarting(t *testing.T, n *simNode) {
	t.Helper()
	st := &kedgev1.NodeStatus{PlanHash: n.plan.Hash, PlanRevision: n.plan.Revision, AgentVersion: "test",
		Units: []*kedgev1.UnitStatus{
			{Name: "kedge-etcd.service", ActiveState: "active", SubState: "running", LoadState: "loaded"},
			{Name: "k3s.service", ActiveState: "active", SubState: "running", LoadState: "loaded"},
		},
		Etcd: &kedgev1.EtcdMemberStatus{Healthy: true, MemberId: 1},
		K3S:  &kedgev1.K3SStatus{Ready: false, Error: "connection refused"},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := n.id.Client.ReportStatus(ctx, &kedgev1.ReportStatusRequest{Status: st}); err != nil {
		t.Fatalf("%s: ReportStatus: %v", n.id.Name, err)
	}
}
