package etcdmembers_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/etcdmembers"
	"github.com/kedge-io/kedge/nodeagent/etcdrole/etcdtest"
)

func names(t *testing.T, ctx context.Context, c *etcdmembers.Client) (all []string, learners []string) {
	t.Helper()
	ms, err := c.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		all = append(all, m.Name)
		if m.IsLearner {
			learners = append(learners, m.Name)
		}
	}
	return all, learners
}

func TestAddLearnerPromoteRemoveEndsAsItBegan(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	c := &etcdmembers.Client{Endpoints: cl.Endpoints[:3], TLS: cl.ClientTLS}
	before, _ := names(t, ctx, c)

	m := cl.NewMember("etcd-3")
	if err := c.AddLearner(ctx, m.Name, []string{m.PeerURL}); err != nil {
		t.Fatalf("AddLearner: %v", err)
	}
	// A retry after a lost reply must not add a second member.
	if err := c.AddLearner(ctx, m.Name, []string{m.PeerURL}); err != nil {
		t.Fatalf("AddLearner again: %v", err)
	}
	initial, err := c.JoinCluster(ctx, m.Name, []string{m.PeerURL})
	if err != nil {
		t.Fatalf("JoinCluster: %v", err)
	}
	if len(initial) != 4 {
		t.Fatalf("join initial cluster has %d members, want 4: %v", len(initial), initial)
	}
	i := cl.Join(m, initial)

	if err := c.PromoteWhenReady(ctx, m.Name); err != nil {
		t.Fatalf("PromoteWhenReady: %v", err)
	}
	all, learners := names(t, ctx, c)
	if len(all) != 4 || len(learners) != 0 {
		t.Fatalf("after promote: members %v learners %v, want 4 voters", all, learners)
	}
	// The new voter serves reads of data written before it joined.
	if _, err := cl.Client(cl.Endpoints[0]).Put(ctx, "/joined", "yes"); err != nil {
		t.Fatal(err)
	}
	resp, err := cl.Client(m.ClientURL).Get(ctx, "/joined")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("read through the promoted member: %v %v", resp, err)
	}

	if err := c.Remove(ctx, m.Name, false); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if err := c.Remove(ctx, m.Name, false); err != nil {
		t.Fatalf("Remove of an already removed member: %v", err)
	}
	_ = cl.Stop(i)
	after, _ := names(t, ctx, c)
	if strings.Join(after, ",") != strings.Join(before, ",") {
		t.Errorf("cluster ends with %v, began with %v", after, before)
	}
}

func TestRemoveRefusedWhenItWouldLoseQuorum(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := &etcdmembers.Client{Endpoints: cl.Endpoints, TLS: cl.ClientTLS}
	if err := cl.Stop(2); err != nil {
		t.Fatalf("stop etcd-2: %v", err)
	}

	err := c.Remove(ctx, "etcd-1", false)
	if !errors.Is(err, etcdmembers.ErrQuorum) {
		t.Fatalf("removing a healthy member with another down: got %v, want a quorum refusal", err)
	}
	for _, want := range []string{"etcd-1", "1 of 2 members healthy", "--force"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not mention %q", err, want)
		}
	}
	if all, _ := names(t, ctx, c); len(all) != 3 {
		t.Fatalf("refused remove changed membership: %v", all)
	}
	// --force skips kedge's check, but etcd's own reconfig check still
	// refuses to remove a connected voter it cannot spare; say so plainly.
	if err := c.Remove(ctx, "etcd-1", true); err == nil || !strings.Contains(err.Error(), "etcd refused") {
		t.Fatalf("forced remove with quorum at stake: %v; want etcd's own refusal", err)
	}

	// Removing the member that is down leaves two healthy of two: allowed.
	if err := c.Remove(ctx, "etcd-2", false); err != nil {
		t.Fatalf("removing the stopped member: %v", err)
	}
	if all, _ := names(t, ctx, c); len(all) != 2 {
		t.Errorf("after removing etcd-2: members %v, want 2", all)
	}
}
