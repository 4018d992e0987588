package server

import (
	"context"
	"fmt"
	"net"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/kedge-io/kedge/coordinator/etcdmembers"
	"github.com/kedge-io/kedge/coordinator/planner"
	"github.com/kedge-io/kedge/coordinator/store"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Adding an etcd member to a running cluster (a replacement, or a spec with
// more members). The planner holds such a node's plan (planner.NeedsJoin)
// until the coordinator has added it as a learner and recorded the member
// list it must start with; the record lives in the store (etcdjoins/<node>)
// so every coordinator plans it the same, and the join runs outside the
// re-plan lock because it talks to the cluster's etcd, which may be slow.

// joinTimeout bounds one attempt to add a member.
const joinTimeout = 30 * time.Second

// startJoin adds node to its cluster's running etcd in the background,
// unless a join for it is already under way.
func (s *Server) startJoin(ctx context.Context, cluster, node string, previous map[string]*kedgev1.Plan) {
	s.mu.Lock()
	if s.joining[node] {
		s.mu.Unlock()
		return
	}
	s.joining[node] = true
	cn := s.nodes[node]
	var ip string
	if cn != nil {
		ip = cn.node.NodeIp
	}
	s.mu.Unlock()
	var endpoints []string
	for name, p := range previous {
		if name != node {
			endpoints = append(endpoints, p.GetEtcd().GetClientUrls()...)
		}
	}
	go func() {
		defer func() {
			s.mu.Lock()
			delete(s.joining, node)
			s.mu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(ctx, joinTimeout)
		defer cancel()
		if err := s.join(ctx, cluster, node, ip, endpoints); err != nil {
			s.log.Warn("add etcd member; retrying on the next re-plan", "cluster", cluster, "node", node, "err", err)
			return
		}
		s.mu.Lock()
		s.dirty[cluster] = true
		s.mu.Unlock()
		s.kick()
	}()
}

func (s *Server) join(ctx context.Context, cluster, node, ip string, endpoints []string) error {
	if ip == "" || len(endpoints) == 0 {
		return fmt.Errorf("node %s: no IP or no running members to join through", node)
	}
	tlsCfg, err := s.etcdClientTLS(ctx, cluster)
	if err != nil {
		return err
	}
	peerURLs := []string{"https://" + net.JoinHostPort(ip, planner.EtcdPeerPort)}
	c := &etcdmembers.Client{Endpoints: endpoints, TLS: tlsCfg}
	if err := c.AddLearner(ctx, node, peerURLs); err != nil {
		return err
	}
	list, err := c.JoinCluster(ctx, node, peerURLs)
	if err != nil {
		return err
	}
	rec := &kedgev1.EtcdPlan{MemberName: node, PeerUrls: peerURLs, InitialCluster: list, InitialClusterState: "existing"}
	if _, err := s.store.Put(ctx, store.EtcdJoins+node, rec); err != nil {
		return err
	}
	s.mu.Lock()
	s.joins[node] = rec
	s.mu.Unlock()
	s.event(kedgev1.EventType_EVENT_TYPE_PLAN_RELEASED, cluster, node, fmt.Sprintf("node %s added to the running etcd of %s as a learner", node, cluster))
	// Promote once it has caught up; the node starts etcd when its plan arrives.
	go func() {
		pctx, cancel := context.WithTimeout(s.life, 30*time.Minute)
		defer cancel()
		if err := c.PromoteWhenReady(pctx, node); err != nil {
			s.log.Warn("promote etcd learner", "node", node, "err", err)
			return
		}
		s.event(kedgev1.EventType_EVENT_TYPE_PLAN_RELEASED, cluster, node, fmt.Sprintf("etcd learner %s promoted to voting member", node))
	}()
	return nil
}

// joinsFor returns the recorded join lists of a cluster's nodes.
func (s *Server) joinsFor(nodes []*kedgev1.Node) map[string][]*kedgev1.EtcdMember {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := map[string][]*kedgev1.EtcdMember{}
	for _, n := range nodes {
		if j := s.joins[n.Name]; j != nil {
			out[n.Name] = j.InitialCluster
		}
	}
	return out
}

func (s *Server) applyJoin(c store.Change) {
	name := c.Key[len(store.EtcdJoins):]
	s.mu.Lock()
	defer s.mu.Unlock()
	if c.Value == nil {
		delete(s.joins, name)
		return
	}
	rec := &kedgev1.EtcdPlan{}
	if proto.Unmarshal(c.Value, rec) == nil {
		s.joins[name] = rec
		if cn := s.nodes[name]; cn != nil {
			s.dirty[cn.node.Cluster] = true
		}
	}
}
