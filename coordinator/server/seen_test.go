package server

import (
	"context"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/store"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Two coordinators on one store: a node heartbeating to A is seen by B, and
// its status changes reach B, so neither thinks it is Unreachable.
func TestCoordinatorsShareLastSeen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := store.OpenEmbedded(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ca, _ := pki.NewCA("test", 24*time.Hour, time.Now())
	mk := func() *Server {
		s, err := New(ctx, Config{Store: st, CA: ca, DataDir: t.TempDir(), UnreachableAfter: 3 * time.Second, Tick: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		go s.Run(ctx)
		return s
	}
	a, b := mk(), mk()
	if err := a.writeNode(ctx, &kedgev1.Node{Name: "n1", Cluster: "c", State: kedgev1.NodeState_NODE_STATE_ENROLLED}, 0); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "B knows the node", func() bool { n, _ := b.node("n1"); return n != nil })

	// Let B's view of the node age past the Unreachable period while A hears it.
	b.mu.Lock()
	b.nodes["n1"].lastSeen = time.Now().Add(-time.Minute)
	b.mu.Unlock()
	nctx := context.WithValue(ctx, nodeNameKey, "n1")
	if _, err := (&nodeService{s: a}).ReportStatus(nctx, &kedgev1.ReportStatusRequest{Status: &kedgev1.NodeStatus{AgentVersion: "v1"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "B sees A's heartbeat and status", func() bool {
		b.mu.RLock()
		defer b.mu.RUnlock()
		cn := b.nodes["n1"]
		return time.Since(cn.lastSeen) < 10*time.Second && cn.status.GetAgentVersion() == "v1"
	})
}

func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting until %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Alone, a coordinator trusts a broken connection; with a peer coordinator
// on the store it does not, as the node may be reporting to the peer.
func TestConnectionLostIsIgnoredWithPeerCoordinators(t *testing.T) {
	now := time.Now()
	s := &Server{cfg: Config{UnreachableAfter: 30 * time.Second}, now: func() time.Time { return now }, subs: map[string]map[*planSub]struct{}{}}
	cn := &cachedNode{node: &kedgev1.Node{Name: "n1"}, lostAt: now.Add(-20 * time.Second)}
	if got := s.connectionLostAtLocked(cn); got == nil || !got.AsTime().Equal(cn.lostAt) {
		t.Errorf("alone: connection_lost_at %v; want %v", got, cn.lostAt)
	}
	s.peerSeenAt = now.Add(-5 * time.Second)
	if got := s.connectionLostAtLocked(cn); got != nil {
		t.Errorf("with a peer heard 5 s ago: connection_lost_at %v; want none", got)
	}
	s.peerSeenAt = now.Add(-2 * time.Minute)
	if got := s.connectionLostAtLocked(cn); got == nil {
		t.Error("with a peer silent for 2 min: no connection_lost_at; want it back")
	}
}
