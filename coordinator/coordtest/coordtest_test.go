package coordtest

import (
	"context"
	"testing"
	"time"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// The harness works end to end: a spec, an enrolled node, its plan on the
// watch stream, and all of it still there after a restart.
func TestStartEnrollWatchRestart(t *testing.T) {
	env := Start(t)
	env.ApplySpec(t, OneNodeSpec)
	node := env.EnrollNode(t, &kedgev1.MachineFacts{MachineId: "m1", Hostname: "nuc1", Macs: []string{"52:54:00:00:00:01"}, Ips: []string{"127.0.0.1"}})
	if node.Cluster != "edge-1" {
		t.Errorf("node enrolled into %q; want the spec's cluster edge-1", node.Cluster)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	plan := firstPlan(ctx, t, node.Client)
	if plan.NodeName != node.Name || plan.Hash == "" || plan.Revision == 0 {
		t.Errorf("plan = %v", plan)
	}

	env.Restart(t)
	list, err := env.Admin.ListNodes(ctx, &kedgev1.ListNodesRequest{})
	if err != nil || len(list.Nodes) != 1 || list.Nodes[0].Name != node.Name {
		t.Fatalf("after restart ListNodes = %v, %v", list, err)
	}
	// The node's existing connection reconnects; holding the current hash it
	// gets nothing until the plan changes, so ask as a node without a plan.
	again := firstPlan(ctx, t, node.Client)
	if again.Hash != plan.Hash || again.Revision != plan.Revision {
		t.Errorf("after restart plan %s@%d; want %s@%d", again.Hash, again.Revision, plan.Hash, plan.Revision)
	}
}

func firstPlan(ctx context.Context, t *testing.T, c kedgev1.NodeServiceClient) *kedgev1.Plan {
	t.Helper()
	for ctx.Err() == nil {
		stream, err := c.WatchPlan(ctx, &kedgev1.WatchPlanRequest{})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err == nil {
			return resp.Plan
		}
		t.Logf("watch: %v (retrying)", err)
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no plan before the deadline")
	return nil
}
