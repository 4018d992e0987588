package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kedge-io/kedge/coordinator/etcdmembers"
	"github.com/kedge-io/kedge/coordinator/health"
	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/spec"
	"github.com/kedge-io/kedge/coordinator/store"
	"github.com/kedge-io/kedge/coordinator/tokens"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// adminService implements AdminService; the interceptor has checked the
// caller holds an admin cert.
type adminService struct {
	kedgev1.UnimplementedAdminServiceServer
	s *Server
}

func (a *adminService) ListNodes(ctx context.Context, req *kedgev1.ListNodesRequest) (*kedgev1.ListNodesResponse, error) {
	return &kedgev1.ListNodesResponse{Nodes: a.s.clusterNodes(req.Cluster, true)}, nil
}

func (a *adminService) GetNode(ctx context.Context, req *kedgev1.GetNodeRequest) (*kedgev1.GetNodeResponse, error) {
	s := a.s
	s.mu.RLock()
	cn := s.nodes[req.Name]
	var n *kedgev1.Node
	if cn != nil {
		n = s.decorateLocked(cn)
	}
	s.mu.RUnlock()
	if n == nil {
		return nil, status.Errorf(codes.NotFound, "no node %q; list nodes with kedgectl nodes", req.Name)
	}
	return &kedgev1.GetNodeResponse{Node: n, Plan: s.plan(req.Name)}, nil
}

// clusters lists every cluster the coordinator knows: by spec or by node.
func (s *Server) clusters() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	set := map[string]bool{}
	for c := range s.specs {
		set[c] = true
	}
	for _, cn := range s.nodes {
		set[cn.node.Cluster] = true
	}
	out := make([]string, 0, len(set))
	for c := range set {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

func (a *adminService) GetClusterStatus(ctx context.Context, req *kedgev1.GetClusterStatusRequest) (*kedgev1.GetClusterStatusResponse, error) {
	s := a.s
	cluster := req.Cluster
	if cluster == "" {
		all := s.clusters()
		if len(all) != 1 {
			return nil, status.Errorf(codes.InvalidArgument, "cluster is empty and the coordinator knows %d clusters %v; name one", len(all), all)
		}
		cluster = all[0]
	}
	// Every node, pending and removed too: health lists pending ones and
	// leaves removed ones out of the counts.
	nodes := s.clusterNodes(cluster, true)
	s.mu.RLock()
	sp := s.specs[cluster]
	plans := map[string]*kedgev1.Plan{}
	for _, n := range nodes {
		if cp := s.plans[n.Name]; cp != nil {
			plans[n.Name] = cp.plan
		}
	}
	s.mu.RUnlock()
	if sp == nil && len(nodes) == 0 {
		return nil, status.Errorf(codes.NotFound, "no cluster %q: no spec applied and no node enrolled", cluster)
	}
	st := health.Cluster(sp, nodes, plans, s.healthOpts())
	if st == nil {
		st = &kedgev1.ClusterStatus{}
	}
	st.Cluster = cluster
	if len(st.Nodes) == 0 {
		st.Nodes = nodes
	}
	return &kedgev1.GetClusterStatusResponse{Status: st}, nil
}

func (a *adminService) WatchEvents(req *kedgev1.WatchEventsRequest, stream kedgev1.AdminService_WatchEventsServer) error {
	past, ch := a.s.events.snapshot(req.Follow)
	if ch != nil {
		defer a.s.events.unfollow(ch)
	}
	send := func(e *kedgev1.Event) error {
		if req.Cluster != "" && e.Cluster != req.Cluster && e.Cluster != "" {
			return nil
		}
		return stream.Send(&kedgev1.WatchEventsResponse{Event: e})
	}
	for _, e := range past {
		if err := send(e); err != nil {
			return err
		}
	}
	if ch == nil {
		return nil
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-a.s.stopped:
			return status.Error(codes.Unavailable, "coordinator is stopping; reconnect")
		case e := <-ch:
			if err := send(e); err != nil {
				return err
			}
		}
	}
}

// DefaultTokenTTL applies when CreateToken names no TTL.
const DefaultTokenTTL = 24 * time.Hour

func (a *adminService) CreateToken(ctx context.Context, req *kedgev1.CreateTokenRequest) (*kedgev1.CreateTokenResponse, error) {
	s := a.s
	ttl := DefaultTokenTTL
	if req.Ttl != nil {
		ttl = req.Ttl.AsDuration()
	}
	cluster := req.Cluster
	if cluster == "" {
		cluster = "default"
	}
	tok, rec, err := s.tokens.Create(ctx, tokens.Options{Cluster: cluster, TTL: ttl, MaxUses: req.MaxUses, RequireApproval: req.RequireApproval, Description: req.Description})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &kedgev1.CreateTokenResponse{Token: tok, Info: rec, CoordinatorAddresses: s.cfg.Addresses, CaPin: s.cfg.CA.Pin()}, nil
}

func (a *adminService) ListTokens(ctx context.Context, _ *kedgev1.ListTokensRequest) (*kedgev1.ListTokensResponse, error) {
	list, err := a.s.tokens.List(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: %v", err)
	}
	return &kedgev1.ListTokensResponse{Tokens: list}, nil
}

func (a *adminService) RevokeToken(ctx context.Context, req *kedgev1.RevokeTokenRequest) (*kedgev1.RevokeTokenResponse, error) {
	err := a.s.tokens.Revoke(ctx, req.Id)
	if errors.Is(err, tokens.ErrNotFound) {
		return nil, status.Error(codes.NotFound, err.Error())
	}
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: %v", err)
	}
	return &kedgev1.RevokeTokenResponse{}, nil
}

func (a *adminService) ListRefusedEnrollments(ctx context.Context, _ *kedgev1.ListRefusedEnrollmentsRequest) (*kedgev1.ListRefusedEnrollmentsResponse, error) {
	list, _, err := store.List(ctx, a.s.store, store.Refused, func() *kedgev1.RefusedEnrollment { return &kedgev1.RefusedEnrollment{} })
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: %v", err)
	}
	return &kedgev1.ListRefusedEnrollmentsResponse{Refused: list}, nil
}

// updateNode applies change to a node record with CAS retries.
func (s *Server) updateNode(ctx context.Context, name string, change func(*kedgev1.Node) error) (*kedgev1.Node, error) {
	for attempt := 0; ; attempt++ {
		n, rev := s.node(name)
		if n == nil {
			return nil, status.Errorf(codes.NotFound, "no node %q; list nodes with kedgectl nodes", name)
		}
		if err := change(n); err != nil {
			return nil, err
		}
		err := s.writeNode(ctx, n, rev)
		if errors.Is(err, store.ErrConflict) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		return n, nil
	}
}

func (a *adminService) ApproveNode(ctx context.Context, req *kedgev1.ApproveNodeRequest) (*kedgev1.ApproveNodeResponse, error) {
	s := a.s
	n, err := s.updateNode(ctx, req.Name, func(n *kedgev1.Node) error {
		switch n.State {
		case kedgev1.NodeState_NODE_STATE_PENDING_APPROVAL, kedgev1.NodeState_NODE_STATE_ENROLLED:
			n.State = kedgev1.NodeState_NODE_STATE_ENROLLED
			return nil
		}
		return status.Errorf(codes.FailedPrecondition, "node %s is %s; only a pending node can be approved", n.Name, n.State)
	})
	if err != nil {
		return nil, err
	}
	s.event(kedgev1.EventType_EVENT_TYPE_NODE_APPROVED, n.Cluster, n.Name, fmt.Sprintf("node %s approved", n.Name))
	if _, err := s.replan(ctx, n.Cluster, nil, false); err != nil {
		s.log.Warn("re-plan after approval", "err", err)
	}
	return &kedgev1.ApproveNodeResponse{Node: n}, nil
}

// etcdClientTLS is the coordinator's own client cert for a cluster's etcd,
// issued in memory from the cluster's etcd CA (for membership calls).
func (s *Server) etcdClientTLS(ctx context.Context, cluster string) (*tls.Config, error) {
	ca, err := s.etcdCA(ctx, cluster)
	if err != nil {
		return nil, err
	}
	s.clientMu.Lock()
	defer s.clientMu.Unlock()
	cert, ok := s.clients[cluster]
	if !ok || time.Now().Add(24*time.Hour).After(cert.Leaf.NotAfter) {
		certPEM, keyPEM, err := ca.Issue(pki.EtcdClient("kedge-coordinator", s.cfg.Lifetimes), s.now())
		if err != nil {
			return nil, err
		}
		if cert, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
			return nil, err
		}
		s.clients[cluster] = cert
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool(), Certificates: []tls.Certificate{cert}}, nil
}

func (a *adminService) RemoveNode(ctx context.Context, req *kedgev1.RemoveNodeRequest) (*kedgev1.RemoveNodeResponse, error) {
	s := a.s
	n, _ := s.node(req.Name)
	if n == nil {
		return nil, status.Errorf(codes.NotFound, "no node %q; list nodes with kedgectl nodes", req.Name)
	}
	if n.State == kedgev1.NodeState_NODE_STATE_REMOVED {
		return &kedgev1.RemoveNodeResponse{}, nil
	}
	if plan := s.plan(n.Name); plan != nil && slices.Contains(plan.Roles, kedgev1.Role_ROLE_ETCD) && plan.GetEtcd().GetMemberName() != "" {
		// The member goes first: a removed node that still counted towards
		// quorum would leave the cluster one failure from down.
		var endpoints []string
		for _, other := range s.clusterNodes(n.Cluster, false) {
			if p := s.plan(other.Name); p != nil && other.Name != n.Name {
				endpoints = append(endpoints, p.GetEtcd().GetClientUrls()...)
			}
		}
		tlsCfg, err := s.etcdClientTLS(ctx, n.Cluster)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "etcd client cert: %v", err)
		}
		c := &etcdmembers.Client{Endpoints: endpoints, TLS: tlsCfg}
		if err := c.Remove(ctx, plan.Etcd.MemberName, req.Force); err != nil {
			if !req.Force {
				return nil, status.Errorf(codes.FailedPrecondition, "remove etcd member %s of node %s: %v", plan.Etcd.MemberName, n.Name, err)
			}
			// Forced: the operator retires the node even when etcd cannot
			// be changed now (e.g. the whole cluster is down); say so.
			s.event(kedgev1.EventType_EVENT_TYPE_MEMBER_UNHEALTHY, n.Cluster, n.Name,
				fmt.Sprintf("node %s removed with --force, but its etcd member %s could not be removed: %v; remove it with etcdctl member remove once etcd is reachable", n.Name, plan.Etcd.MemberName, err))
		}
	}
	n, err := s.updateNode(ctx, req.Name, func(n *kedgev1.Node) error {
		n.State = kedgev1.NodeState_NODE_STATE_REMOVED
		return nil
	})
	if err != nil {
		return nil, err
	}
	// A replacement machine taking this name joins etcd afresh.
	if err := s.store.DeletePrefix(ctx, store.EtcdJoins+n.Name); err != nil {
		s.log.Warn("forget etcd join record", "node", n.Name, "err", err)
	}
	s.event(kedgev1.EventType_EVENT_TYPE_NODE_REMOVED, n.Cluster, n.Name, fmt.Sprintf("node %s removed", n.Name))
	if _, err := s.replan(ctx, n.Cluster, nil, false); err != nil {
		s.log.Warn("re-plan after removal", "err", err)
	}
	return &kedgev1.RemoveNodeResponse{}, nil
}

func (a *adminService) ApplySpec(ctx context.Context, req *kedgev1.ApplySpecRequest) (*kedgev1.ApplySpecResponse, error) {
	return a.s.ApplySpec(ctx, req.FileName, req.SpecYaml, req.DryRun)
}

// ApplySpec validates, stores (unless dryRun) and plans a cluster spec.
func (s *Server) ApplySpec(ctx context.Context, fileName string, data []byte, dryRun bool) (*kedgev1.ApplySpecResponse, error) {
	if fileName == "" {
		fileName = "spec.yaml"
	}
	sp, err := spec.Parse(fileName, data)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if sp == nil || sp.Name == "" {
		return nil, status.Errorf(codes.InvalidArgument, "%s: metadata.name is empty; name the cluster", fileName)
	}
	resp := &kedgev1.ApplySpecResponse{Cluster: sp.Name}
	if dryRun {
		changes, err := s.replan(ctx, sp.Name, sp, true)
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "plan: %v", err)
		}
		resp.Changes = changes
		return resp, nil
	}
	if _, err := s.store.Put(ctx, store.Specs+sp.Name, sp); err != nil {
		return nil, status.Errorf(codes.Unavailable, "store spec: %v", err)
	}
	s.mu.Lock()
	s.specs[sp.Name] = proto.Clone(sp).(*kedgev1.ClusterSpec)
	s.mu.Unlock()
	changes, err := s.replan(ctx, sp.Name, nil, false)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "plan: %v", err)
	}
	resp.Changes, resp.Stored = changes, true
	s.event(kedgev1.EventType_EVENT_TYPE_SPEC_APPLIED, sp.Name, "", fmt.Sprintf("spec for cluster %s applied from %s: %d plan(s) changed", sp.Name, fileName, len(changes)))
	return resp, nil
}

func (a *adminService) GetSpec(ctx context.Context, req *kedgev1.GetSpecRequest) (*kedgev1.GetSpecResponse, error) {
	a.s.mu.RLock()
	sp := a.s.specs[req.Cluster]
	a.s.mu.RUnlock()
	if sp == nil {
		return nil, status.Errorf(codes.NotFound, "no spec for cluster %q; apply one with kedgectl spec apply -f FILE", req.Cluster)
	}
	data, err := spec.Marshal(sp)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "marshal spec: %v", err)
	}
	return &kedgev1.GetSpecResponse{SpecYaml: data}, nil
}

func (a *adminService) GetKubeconfig(ctx context.Context, req *kedgev1.GetKubeconfigRequest) (*kedgev1.GetKubeconfigResponse, error) {
	label := store.Kubeconfigs + req.Cluster
	var sealed wrapperspb.BytesValue
	_, found, err := a.s.store.Get(ctx, label, &sealed)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: %v", err)
	}
	if !found {
		return nil, status.Errorf(codes.NotFound, "no kubeconfig for cluster %q yet; a K3s server uploads it once it is up", req.Cluster)
	}
	data, err := a.s.sealer.Open(sealed.Value, label)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	return &kedgev1.GetKubeconfigResponse{Kubeconfig: data}, nil
}
