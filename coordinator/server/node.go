package server

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/store"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// nodeService implements NodeService. Every handler acts on NodeName(ctx),
// the name in the caller's certificate, never a name from the request.
type nodeService struct {
	kedgev1.UnimplementedNodeServiceServer
	s *Server
}

// planSub is one WatchPlan stream's mailbox: it holds only the latest plan,
// so a slow node skips intermediate plans instead of stalling the fan-out.
type planSub struct {
	mu     sync.Mutex
	latest *kedgev1.Plan
	seen   time.Time
	ready  chan struct{}
	// removed closes when the node is removed: its stream ends at once.
	removed  chan struct{}
	closeRem sync.Once
}

func (p *planSub) offer(plan *kedgev1.Plan, seen time.Time) {
	p.mu.Lock()
	p.latest, p.seen = plan, seen
	p.mu.Unlock()
	select {
	case p.ready <- struct{}{}:
	default:
	}
}

func (p *planSub) take() (*kedgev1.Plan, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	plan, seen := p.latest, p.seen
	p.latest = nil
	return plan, seen
}

func (n *nodeService) WatchPlan(req *kedgev1.WatchPlanRequest, stream kedgev1.NodeService_WatchPlanServer) error {
	s := n.s
	name := NodeName(stream.Context())
	sub := &planSub{ready: make(chan struct{}, 1), removed: make(chan struct{})}
	s.mu.Lock()
	if s.subs[name] == nil {
		s.subs[name] = map[*planSub]struct{}{}
	}
	s.subs[name][sub] = struct{}{}
	if cn := s.nodes[name]; cn != nil {
		cn.lostAt = time.Time{}
	}
	var current *kedgev1.Plan
	if cp := s.plans[name]; cp != nil {
		current = cp.plan
	}
	s.mu.Unlock()
	s.cfg.Metrics.Streams(1)
	defer func() {
		s.mu.Lock()
		delete(s.subs[name], sub)
		if len(s.subs[name]) == 0 {
			delete(s.subs, name)
			// The stream ended because the peer went away (not because this
			// coordinator is stopping): remember when, for the tick.
			if cn := s.nodes[name]; cn != nil && stream.Context().Err() != nil && !isClosed(s.stopped) {
				cn.lostAt = s.now()
			}
		}
		s.mu.Unlock()
		s.cfg.Metrics.Streams(-1)
	}()

	sent := req.GetKnownHash()
	// Whatever revision the node claims, if its hash is not the current one
	// it gets the full current plan: a node must never be stuck on a revision.
	if current != nil && current.Hash != sent {
		if err := stream.Send(&kedgev1.WatchPlanResponse{Plan: current}); err != nil {
			return err
		}
		sent = current.Hash
	}
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-s.stopped:
			return status.Error(codes.Unavailable, "coordinator is stopping; reconnect")
		case <-sub.removed:
			return status.Errorf(codes.Unauthenticated, "node %s was removed; re-flash it to enroll again", name)
		case <-sub.ready:
		}
		p, seen := sub.take()
		if p == nil || p.Hash == sent {
			continue
		}
		if err := stream.Send(&kedgev1.WatchPlanResponse{Plan: p}); err != nil {
			return err
		}
		sent = p.Hash
		s.cfg.Metrics.Fanout(time.Since(seen).Seconds())
	}
}

func (n *nodeService) SignCertificates(ctx context.Context, req *kedgev1.SignCertificatesRequest) (*kedgev1.SignCertificatesResponse, error) {
	s := n.s
	name := NodeName(ctx)
	node, _ := s.node(name)
	plan := s.plan(name)
	if plan == nil || plan.Waiting != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s has no released plan yet; certificates follow the plan", name)
	}
	if len(req.Requests) == 0 || len(req.Requests) > 8 {
		return nil, status.Error(codes.InvalidArgument, "requests must hold 1 to 8 certificate requests")
	}
	ca, err := s.etcdCA(ctx, node.Cluster)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "etcd CA: %v", err)
	}
	isEtcd := slices.Contains(plan.Roles, kedgev1.Role_ROLE_ETCD)
	isServer := slices.Contains(plan.Roles, kedgev1.Role_ROLE_K3S_SERVER) && len(plan.GetK3S().GetDatastoreEndpoints()) > 0
	resp := &kedgev1.SignCertificatesResponse{CaPem: ca.CertPEM}
	for _, r := range req.Requests {
		var leaf pki.Leaf
		switch r.Kind {
		case kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_SERVER, kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_PEER:
			if !isEtcd {
				return nil, status.Errorf(codes.PermissionDenied, "node %s's plan has no etcd role; it may not get an etcd %s cert", name, r.Kind)
			}
			member := plan.GetEtcd().GetMemberName()
			if member == "" {
				member = name
			}
			// SANs from the coordinator's records only: the node's IP and the
			// IPs its plan says the member serves on.
			ips := append([]string{node.NodeIp}, plan.GetEtcd().GetIps()...)
			leaf = pki.EtcdMember(member, ips, name, s.cfg.Lifetimes)
		case kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_CLIENT:
			if !isEtcd && !isServer {
				return nil, status.Errorf(codes.PermissionDenied, "node %s is neither an etcd member nor a K3s server with an etcd datastore; it may not get a datastore client cert", name)
			}
			leaf = pki.EtcdClient(pki.DatastoreClientName(name), s.cfg.Lifetimes)
		default:
			return nil, status.Errorf(codes.InvalidArgument, "certificate kind %v is not one of ETCD_SERVER, ETCD_PEER, ETCD_CLIENT", r.Kind)
		}
		certPEM, _, err := ca.SignCSR(r.CsrDer, leaf, s.now())
		if err != nil {
			return nil, err
		}
		resp.Certificates = append(resp.Certificates, &kedgev1.SignedCertificate{Kind: r.Kind, CertificatePem: certPEM})
	}
	return resp, nil
}

// statusEqual compares statuses ignoring observed_at: a heartbeat repeats
// the last status with a new time and must not cost a store write.
func statusEqual(a, b *kedgev1.NodeStatus) bool {
	if a == nil || b == nil {
		return a == b
	}
	x, y := proto.Clone(a).(*kedgev1.NodeStatus), proto.Clone(b).(*kedgev1.NodeStatus)
	x.ObservedAt, y.ObservedAt = nil, nil
	return proto.Equal(x, y)
}

func (n *nodeService) ReportStatus(ctx context.Context, req *kedgev1.ReportStatusRequest) (*kedgev1.ReportStatusResponse, error) {
	s := n.s
	name := NodeName(ctx)
	st := req.GetStatus()
	if st == nil {
		return nil, status.Error(codes.InvalidArgument, "status is empty")
	}
	if proto.Size(st) > 64<<10 {
		return nil, status.Error(codes.InvalidArgument, "status is larger than 64 KiB")
	}
	s.mu.Lock()
	cn := s.nodes[name]
	if cn == nil {
		s.mu.Unlock()
		return nil, status.Errorf(codes.Unauthenticated, "node %s is unknown", name)
	}
	prev := cn.status
	cn.status = st
	cn.lastSeen = s.now()
	cn.heardLocally = cn.lastSeen
	cluster := cn.node.Cluster
	s.mu.Unlock()
	if statusEqual(prev, st) {
		return &kedgev1.ReportStatusResponse{}, nil
	}
	if _, err := s.store.Put(ctx, store.Statuses+name, st); err != nil {
		return nil, status.Errorf(codes.Unavailable, "store status: %v", err)
	}
	s.statusEvents(cluster, name, prev, st)
	// Conditions, K3s readiness and the applied plan feed the planner (agents
	// follow a healthy server; a rolling upgrade moves on once a server has
	// applied its plan): re-derive this node now rather than wait for the tick.
	replan := prev.GetK3S().GetReady() != st.GetK3S().GetReady() || prev.GetEtcd().GetHealthy() != st.GetEtcd().GetHealthy() ||
		prev.GetPlanHash() != st.GetPlanHash()
	s.mu.Lock()
	msg := ""
	if cn := s.nodes[name]; cn != nil && cn.node.State == kedgev1.NodeState_NODE_STATE_ENROLLED {
		cond, reason := s.deriveLocked(cn, s.healthOpts())
		if cond != cn.condition {
			msg = fmt.Sprintf("node %s is %s: %s", name, conditionLabel(cond), reason)
			replan = true
		}
		cn.condition, cn.reason = cond, reason
		replan = replan && feedsPlanner(cn.node)
	} else {
		replan = false
	}
	if replan {
		s.dirty[cluster] = true
	}
	s.mu.Unlock()
	if msg != "" {
		s.event(kedgev1.EventType_EVENT_TYPE_NODE_CONDITION, cluster, name, msg)
	}
	if replan {
		s.kick()
	}
	return &kedgev1.ReportStatusResponse{}, nil
}

// statusEvents emits events for unit and etcd member transitions.
func (s *Server) statusEvents(cluster, name string, prev, cur *kedgev1.NodeStatus) {
	before := map[string]string{}
	for _, u := range prev.GetUnits() {
		before[u.Name] = u.ActiveState
	}
	for _, u := range cur.GetUnits() {
		if before[u.Name] == u.ActiveState {
			continue
		}
		switch u.ActiveState {
		case "failed":
			s.event(kedgev1.EventType_EVENT_TYPE_UNIT_FAILED, cluster, name, fmt.Sprintf("%s on %s failed (%s, %d restarts)", u.Name, name, u.Result, u.NRestarts))
		case "active":
			s.event(kedgev1.EventType_EVENT_TYPE_UNIT_ACTIVE, cluster, name, fmt.Sprintf("%s on %s is active", u.Name, name))
		}
	}
	if cur.GetEtcd() != nil && !cur.GetEtcd().GetHealthy() && (prev.GetEtcd() == nil || prev.GetEtcd().GetHealthy()) {
		msg := fmt.Sprintf("etcd member on %s is unhealthy", name)
		if e := cur.GetEtcd().GetError(); e != "" {
			msg += ": " + e
		}
		s.event(kedgev1.EventType_EVENT_TYPE_MEMBER_UNHEALTHY, cluster, name, msg)
	}
}

func (n *nodeService) RenewIdentity(ctx context.Context, req *kedgev1.RenewIdentityRequest) (*kedgev1.RenewIdentityResponse, error) {
	s := n.s
	name := NodeName(ctx)
	csr, err := pki.ParseCSR(req.GetCsrDer())
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		node, rev := s.node(name)
		node.IdentityKeySha256 = pki.KeyFingerprint(csr.PublicKey)
		err := s.writeNode(ctx, node, rev)
		if errors.Is(err, store.ErrConflict) && attempt < 5 {
			continue
		}
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "store: %v", err)
		}
		break
	}
	certPEM, _, err := s.cfg.CA.Sign(csr.PublicKey, pki.NodeIdentity(name, s.cfg.Lifetimes), s.now())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "sign: %v", err)
	}
	return &kedgev1.RenewIdentityResponse{CertificatePem: certPEM, CaBundlePem: s.cfg.CA.CertPEM}, nil
}

func (n *nodeService) UploadKubeconfig(ctx context.Context, req *kedgev1.UploadKubeconfigRequest) (*kedgev1.UploadKubeconfigResponse, error) {
	s := n.s
	name := NodeName(ctx)
	plan := s.plan(name)
	if plan == nil || !slices.Contains(plan.Roles, kedgev1.Role_ROLE_K3S_SERVER) {
		return nil, status.Errorf(codes.PermissionDenied, "node %s is not a K3s server; only servers upload the cluster kubeconfig", name)
	}
	if len(req.Kubeconfig) == 0 || len(req.Kubeconfig) > 1<<20 {
		return nil, status.Error(codes.InvalidArgument, "kubeconfig must be 1 byte to 1 MiB")
	}
	label := store.Kubeconfigs + plan.Cluster
	sealed, err := s.sealer.Seal(req.Kubeconfig, label)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "seal: %v", err)
	}
	if _, err := s.store.Put(ctx, label, wrapperspb.Bytes(sealed)); err != nil {
		return nil, status.Errorf(codes.Unavailable, "store: %v", err)
	}
	return &kedgev1.UploadKubeconfigResponse{}, nil
}

func (n *nodeService) FetchArtifact(req *kedgev1.FetchArtifactRequest, stream kedgev1.NodeService_FetchArtifactServer) error {
	return n.s.streamArtifact(stream.Context(), req.Name, req.Version, stream.Send)
}

// isClosed reports whether ch is closed, without blocking.
func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// feedsPlanner reports whether n's health and reports are planner inputs:
// those of etcd members and K3s servers are (agents follow healthy servers,
// upgrades roll over servers), an agent's are not. Re-planning only for these
// keeps a fleet-wide change from re-planning once per agent as each applies it.
func feedsPlanner(n *kedgev1.Node) bool {
	return slices.Contains(n.GetRoles(), kedgev1.Role_ROLE_ETCD) || slices.Contains(n.GetRoles(), kedgev1.Role_ROLE_K3S_SERVER)
}
