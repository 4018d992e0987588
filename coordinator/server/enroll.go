package server

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/server/machine"
	"github.com/kedge-io/kedge/coordinator/spec"
	"github.com/kedge-io/kedge/coordinator/store"
	"github.com/kedge-io/kedge/coordinator/tokens"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// maxRefused bounds the stored list of refused enrollments.
const maxRefused = 200

// Enroll implements BootstrapService.Enroll.
func (s *Server) Enroll(ctx context.Context, req *kedgev1.EnrollRequest) (*kedgev1.EnrollResponse, error) {
	addr := peerIP(ctx)
	if s.limiter.Blocked(addr) {
		return nil, status.Errorf(codes.ResourceExhausted, "too many failed enrollments from %s; wait a few seconds and retry", addr)
	}
	if err := machine.Validate(req.GetFacts()); err != nil {
		return nil, err
	}
	csr, err := pki.ParseCSR(req.GetCsrDer())
	if err != nil {
		return nil, err
	}
	for attempt := 0; ; attempt++ {
		resp, err := s.enrollOnce(ctx, req, addr, pki.KeyFingerprint(csr.PublicKey))
		if errors.Is(err, store.ErrConflict) && attempt < 20 {
			// Another enrollment wrote the same token or name first; retry
			// on fresh state, with a little jitter to spread the herd.
			time.Sleep(time.Duration(attempt+1) * time.Millisecond)
			continue
		}
		if r, ok := tokens.IsRefusal(err); ok {
			s.refuse(ctx, req, addr, r)
			return nil, status.Error(codes.PermissionDenied, r.Msg)
		}
		if err != nil {
			return nil, err
		}
		if resp.State == kedgev1.EnrollState_ENROLL_STATE_ENROLLED {
			// The CSR was verified above: sign its key without parsing it again.
			certPEM, _, err := s.cfg.CA.Sign(csr.PublicKey, pki.NodeIdentity(resp.NodeName, s.cfg.Lifetimes), s.now())
			if err != nil {
				return nil, status.Errorf(codes.Internal, "sign identity: %v", err)
			}
			resp.CertificatePem = certPEM
		}
		resp.CaBundlePem = s.cfg.CA.CertPEM
		return resp, nil
	}
}

// refusal builds a Refusal that is not about the token itself.
func refusal(reason, format string, args ...any) error {
	return &tokens.Refusal{Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

func (s *Server) enrollOnce(ctx context.Context, req *kedgev1.EnrollRequest, addr, keyFP string) (*kedgev1.EnrollResponse, error) {
	facts := req.Facts
	checked, tokErr := s.tokens.Check(ctx, req.Token, "")
	if checked == nil {
		return nil, tokErr
	}
	tok := checked.Stored.Token
	cluster := tok.Cluster

	// Find this machine among the records, and machines sharing its machine-id.
	var existing *kedgev1.Node
	var existingRev int64
	var sharedWith []string
	s.mu.RLock()
	candidates := map[string]struct{}{}
	for _, m := range machine.NormMACs(facts.Macs) {
		for name := range s.byMAC[m] {
			candidates[name] = struct{}{}
		}
	}
	for name := range s.byMachineID[facts.MachineId] {
		candidates[name] = struct{}{}
	}
	for name := range candidates {
		cn := s.nodes[name]
		if cn == nil {
			continue
		}
		n := cn.node
		if machine.Same(n.Facts, facts) {
			if existing == nil || n.State != kedgev1.NodeState_NODE_STATE_REMOVED {
				existing, existingRev = proto.Clone(n).(*kedgev1.Node), cn.modRevision
			}
		} else if facts.MachineId != "" && n.Facts.GetMachineId() == facts.MachineId && n.State != kedgev1.NodeState_NODE_STATE_REMOVED {
			sharedWith = append(sharedWith, n.Name)
		}
	}
	sp := s.specs[cluster]
	s.mu.RUnlock()
	sort.Strings(sharedWith)

	// A machine polling while pending, or fetching its cert after approval,
	// presents the same token and key: that is not a new use of the token.
	poll := existing != nil && existing.TokenId == tok.Id && existing.IdentityKeySha256 == keyFP &&
		existing.State != kedgev1.NodeState_NODE_STATE_REMOVED
	if tokErr != nil {
		if r, _ := tokens.IsRefusal(tokErr); !poll || r == nil || r.Reason != "used_up" {
			return nil, tokErr
		}
	}
	if existing != nil && existing.Cluster != cluster && existing.State != kedgev1.NodeState_NODE_STATE_REMOVED {
		return nil, refusal("wrong_cluster", "token is for cluster %s, not %s (this machine is node %s of cluster %s)", cluster, existing.Cluster, existing.Name, existing.Cluster)
	}

	var pin *kedgev1.InventoryPin
	if sp != nil {
		pin = spec.MatchPin(sp, facts)
	}
	n := existing
	rev := existingRev
	if n == nil {
		name := machine.DerivedName(facts)
		if pin != nil && pin.Name != "" {
			name = pin.Name
		}
		if other, otherRev := s.node(name); other != nil {
			if other.State != kedgev1.NodeState_NODE_STATE_REMOVED {
				if pin != nil && pin.Name == name {
					return nil, refusal("name_taken", "pinned node name %s is taken by another machine (MACs %s); remove node %s first if this machine replaces it", name, strings.Join(other.Facts.GetMacs(), ","), name)
				}
				return nil, refusal("name_taken", "derived node name %s is taken by another machine with the same facts hash", name)
			}
			// A removed record's name is free for a replacement machine.
			rev = otherRev
		}
		n = &kedgev1.Node{Name: name, EnrolledAt: timestamppb.New(s.now())}
	}
	reviving := n.State == kedgev1.NodeState_NODE_STATE_REMOVED || n.Facts == nil || !machine.Same(n.Facts, facts)
	if reviving {
		// A fresh start: roles and state from the previous machine do not carry over.
		n.Roles, n.State = nil, kedgev1.NodeState_NODE_STATE_UNSPECIFIED
		n.EnrolledAt = timestamppb.New(s.now())
	}
	n.Cluster = cluster
	n.Facts = facts
	n.ObservedAddress = addr
	n.TokenId = tok.Id
	n.IdentityKeySha256 = keyFP
	n.Warnings = nil
	for _, other := range sharedWith {
		n.Warnings = append(n.Warnings, fmt.Sprintf("machine-id %s is shared with node %s (an image cloned without resetting /etc/machine-id?); told apart by MACs", facts.MachineId, other))
	}
	// The address the node connects from is the one its peers can reach
	// (whichever of its facts IPs that is); a pin overrides it.
	n.NodeIp = addr
	if pin != nil && pin.Ip != "" {
		n.NodeIp = pin.Ip
	}
	n.Labels = map[string]string{}
	for k, v := range facts.Labels {
		n.Labels[k] = v
	}
	if pin != nil {
		for k, v := range pin.Labels {
			n.Labels[k] = v
		}
	}
	state := kedgev1.EnrollState_ENROLL_STATE_ENROLLED
	switch {
	case n.State == kedgev1.NodeState_NODE_STATE_ENROLLED:
	case n.State == kedgev1.NodeState_NODE_STATE_PENDING_APPROVAL || tok.RequireApproval:
		n.State = kedgev1.NodeState_NODE_STATE_PENDING_APPROVAL
		state = kedgev1.EnrollState_ENROLL_STATE_PENDING_APPROVAL
	default:
		n.State = kedgev1.NodeState_NODE_STATE_ENROLLED
	}

	var extra []store.Write
	if !poll {
		if tok.MaxUses > 0 {
			extra = append(extra, tokens.UseWrite(checked))
		} else {
			// Unlimited tokens are counted in memory and written by the tick:
			// a guarded write per enrollment on one key would serialise a
			// warehouse of machines powering on at once.
			defer s.countUse(tok.Id)
		}
	}
	if err := s.writeNode(ctx, n, rev, extra...); err != nil {
		return nil, err
	}
	if len(n.Warnings) > 0 {
		s.log.Warn("enrolled machine shares a machine-id", "node", n.Name, "machine_id", facts.MachineId, "with", sharedWith)
	}
	if !poll || existing.State != n.State {
		if state == kedgev1.EnrollState_ENROLL_STATE_PENDING_APPROVAL {
			s.cfg.Metrics.Enrolled("pending")
			s.event(kedgev1.EventType_EVENT_TYPE_NODE_PENDING, cluster, n.Name, fmt.Sprintf("node %s (%s) waits for approval: kedgectl node approve %s", n.Name, addr, n.Name))
		} else {
			s.cfg.Metrics.Enrolled("enrolled")
			s.event(kedgev1.EventType_EVENT_TYPE_NODE_ENROLLED, cluster, n.Name, fmt.Sprintf("node %s enrolled from %s", n.Name, addr))
		}
	}
	return &kedgev1.EnrollResponse{State: state, NodeName: n.Name, Cluster: cluster, Warnings: n.Warnings}, nil
}

func (s *Server) countUse(id string) {
	s.mu.Lock()
	s.pending[id]++
	s.mu.Unlock()
}

// flushUses writes the in-memory use counts of unlimited tokens.
func (s *Server) flushUses(ctx context.Context) {
	s.mu.Lock()
	pending := s.pending
	s.pending = map[string]uint32{}
	s.mu.Unlock()
	for id, n := range pending {
		for range 10 {
			var st kedgev1.StoredToken
			e, found, err := s.store.Get(ctx, tokens.Key(id), &st)
			if err != nil || !found {
				break
			}
			st.Token.Uses += n
			if _, err := s.store.Commit(ctx, store.Write{Key: tokens.Key(id), Value: &st, IfModRevision: e.ModRevision}); !errors.Is(err, store.ErrConflict) {
				break
			}
		}
	}
}

// refuse records a refused enrollment (bounded, in the store), counts it
// against the source address and emits an event. The token secret is never
// recorded: only its id.
func (s *Server) refuse(ctx context.Context, req *kedgev1.EnrollRequest, addr string, r *tokens.Refusal) {
	s.limiter.Failed(addr)
	s.cfg.Metrics.Refused(r.Reason)
	id, _, _ := tokens.Split(req.Token)
	now := s.now()
	rec := &kedgev1.RefusedEnrollment{
		At: timestamppb.New(now), Address: addr, TokenId: id, Reason: r.Msg,
		Hostname: req.GetFacts().GetHostname(), MachineId: req.GetFacts().GetMachineId(),
	}
	key := fmt.Sprintf("%s%020d-%s", store.Refused, now.UnixNano(), addr)
	if _, err := s.store.Put(ctx, key, rec); err != nil {
		s.log.Warn("record refused enrollment", "err", err)
	}
	if err := s.store.TrimPrefix(ctx, store.Refused, maxRefused); err != nil {
		s.log.Warn("trim refused enrollments", "err", err)
	}
	s.event(kedgev1.EventType_EVENT_TYPE_ENROLLMENT_REFUSED, "", "", fmt.Sprintf("enrollment from %s (host %q) refused: %s", addr, rec.Hostname, r.Msg))
}
