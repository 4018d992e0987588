package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/spec"
	"github.com/kedge-io/kedge/coordinator/store"
	"github.com/kedge-io/kedge/coordinator/tokens"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Limits on what an enrollment request may carry; real machines are far below.
const (
	maxFactList  = 64
	maxFactBytes = 256
	maxRefused   = 200
)

// validateFacts refuses requests no real machine sends.
func validateFacts(f *kedgev1.MachineFacts) error {
	if f == nil {
		return status.Error(codes.InvalidArgument, "facts is empty; send machine-id, MACs and IPs")
	}
	if len(f.Macs) == 0 {
		return status.Error(codes.InvalidArgument, "facts.macs is empty; a machine is recognised by its MACs, send at least one")
	}
	if len(f.Macs) > maxFactList || len(f.Ips) > maxFactList || len(f.Labels) > maxFactList {
		return status.Errorf(codes.InvalidArgument, "facts lists more than %d MACs, IPs or labels", maxFactList)
	}
	for _, m := range f.Macs {
		if _, err := net.ParseMAC(m); err != nil {
			return status.Errorf(codes.InvalidArgument, "facts.macs: %q is not a MAC address (want e.g. 52:54:00:12:34:56)", m)
		}
	}
	for _, v := range append(append([]string{f.MachineId, f.DmiProductSerial, f.DmiProductUuid, f.Hostname, f.Arch, f.Os}, f.Macs...), f.Ips...) {
		if len(v) > maxFactBytes {
			return status.Errorf(codes.InvalidArgument, "a fact is longer than %d bytes", maxFactBytes)
		}
	}
	return nil
}

func normMAC(m string) string { return strings.ToLower(strings.TrimSpace(m)) }

// sameMachine: at least one MAC in common, and machine-id, DMI serial and DMI
// UUID equal wherever both sides have them. A shared machine-id alone (cloned
// images) never makes two machines one.
func sameMachine(a, b *kedgev1.MachineFacts) bool {
	if a == nil || b == nil {
		return false
	}
	shared := false
	for _, x := range a.Macs {
		for _, y := range b.Macs {
			if normMAC(x) != "" && normMAC(x) == normMAC(y) {
				shared = true
			}
		}
	}
	if !shared {
		return false
	}
	agree := func(x, y string) bool { return x == "" || y == "" || strings.EqualFold(x, y) }
	return agree(a.MachineId, b.MachineId) && agree(a.DmiProductSerial, b.DmiProductSerial) && agree(a.DmiProductUuid, b.DmiProductUuid)
}

// derivedName is "node-" + 8 hex of SHA-256 over the sorted MACs and the
// machine-id, DMI serial and UUID: stable across re-enrollment.
func derivedName(f *kedgev1.MachineFacts) string {
	macs := make([]string, 0, len(f.Macs))
	for _, m := range f.Macs {
		macs = append(macs, normMAC(m))
	}
	sort.Strings(macs)
	h := sha256.New()
	for _, part := range append(macs, f.MachineId, f.DmiProductSerial, f.DmiProductUuid) {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return "node-" + hex.EncodeToString(h.Sum(nil))[:8]
}

// Enroll implements BootstrapService.Enroll.
func (s *Server) Enroll(ctx context.Context, req *kedgev1.EnrollRequest) (*kedgev1.EnrollResponse, error) {
	addr := peerIP(ctx)
	if s.limiter.Blocked(addr) {
		return nil, status.Errorf(codes.ResourceExhausted, "too many failed enrollments from %s; wait a few seconds and retry", addr)
	}
	if err := validateFacts(req.GetFacts()); err != nil {
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
			certPEM, _, err := s.cfg.CA.SignCSR(req.CsrDer, pki.NodeIdentity(resp.NodeName, s.cfg.Lifetimes), s.now())
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
	for _, m := range normMACs(facts.Macs) {
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
		if sameMachine(n.Facts, facts) {
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
		name := derivedName(facts)
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
	reviving := n.State == kedgev1.NodeState_NODE_STATE_REMOVED || n.Facts == nil || !sameMachine(n.Facts, facts)
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
