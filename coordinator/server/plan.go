package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kedge-io/kedge/coordinator/health"
	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/planner"
	"github.com/kedge-io/kedge/coordinator/store"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// planLoop re-plans dirty clusters, one at a time, until ctx ends. Kicks
// coalesce: a burst of enrollments causes a handful of re-plans, not one each.
func (s *Server) planLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kickCh:
		}
		s.mu.Lock()
		dirty := s.dirty
		s.dirty = map[string]bool{}
		s.mu.Unlock()
		for cluster := range dirty {
			if _, err := s.replan(ctx, cluster, nil, false); err != nil && ctx.Err() == nil {
				s.log.Warn("re-plan failed; will retry on the next change", "cluster", cluster, "err", err)
				s.mu.Lock()
				s.dirty[cluster] = true
				s.mu.Unlock()
			}
		}
	}
}

func (s *Server) healthOpts() health.Options {
	return health.Options{Now: s.now(), UnreachableAfter: s.cfg.UnreachableAfter}
}

// clusterNodes returns copies of a cluster's nodes with derived fields
// filled (status, condition, last_seen, plan hash), ordered by enrollment.
func (s *Server) clusterNodes(cluster string, includeAll bool) []*kedgev1.Node {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []*kedgev1.Node
	for _, cn := range s.nodes {
		if cluster != "" && cn.node.Cluster != cluster {
			continue
		}
		if !includeAll && cn.node.State != kedgev1.NodeState_NODE_STATE_ENROLLED {
			continue
		}
		out = append(out, s.decorateLocked(cn))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].EnrollSequence != out[j].EnrollSequence {
			return out[i].EnrollSequence < out[j].EnrollSequence
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// decorateLocked copies cn's record with the read-time fields. Caller holds s.mu.
func (s *Server) decorateLocked(cn *cachedNode) *kedgev1.Node {
	n := proto.Clone(cn.node).(*kedgev1.Node)
	n.Status = cn.status
	n.LastSeen = timestamppbOrNil(cn.lastSeen)
	n.ConnectionLostAt = s.connectionLostAtLocked(cn)
	if cp := s.plans[n.Name]; cp != nil {
		n.PlanHash, n.PlanRevision = cp.plan.Hash, cp.plan.Revision
	}
	n.Condition, n.ConditionReason = cn.condition, cn.reason
	if n.Condition == kedgev1.NodeCondition_NODE_CONDITION_UNSPECIFIED {
		n.Condition, n.ConditionReason = s.deriveLocked(cn, s.healthOpts())
	}
	return n
}

// replan computes a cluster's plans. Unless dryRun it persists roles and
// changed plans and returns the changes; spec overrides the stored spec
// (ApplySpec computes against the spec being applied).
func (s *Server) replan(ctx context.Context, cluster string, override *kedgev1.ClusterSpec, dryRun bool) ([]*kedgev1.PlanChange, error) {
	s.planMu.Lock()
	defer s.planMu.Unlock()
	s.mu.RLock()
	sp := s.specs[cluster]
	s.mu.RUnlock()
	if override != nil {
		sp = override
	}
	if sp == nil {
		return nil, nil // no spec yet: nodes wait for one
	}
	var secrets *kedgev1.ClusterSecrets
	var err error
	if dryRun {
		secrets = &kedgev1.ClusterSecrets{}
		if _, _, err := s.store.Get(ctx, store.Secrets+cluster, secrets); err != nil {
			return nil, err
		}
	} else {
		if secrets, err = s.clusterSecrets(ctx, cluster); err != nil {
			return nil, err
		}
		if _, err := s.etcdCA(ctx, cluster); err != nil {
			return nil, err
		}
	}
	nodes := s.clusterNodes(cluster, false)
	previous := map[string]*kedgev1.Plan{}
	s.mu.RLock()
	for _, n := range nodes {
		if cp := s.plans[n.Name]; cp != nil {
			previous[n.Name] = cp.plan
		}
	}
	s.mu.RUnlock()
	out := planner.Compute(planner.Input{Spec: sp, Secrets: secrets, Nodes: nodes, Previous: previous, EtcdJoins: s.joinsFor(nodes)})
	if !dryRun {
		for name, p := range out.Plans {
			if planner.NeedsJoin(p) {
				s.startJoin(s.life, cluster, name, previous)
			}
		}
	}

	var changes []*kedgev1.PlanChange
	var batch []pendingWrite
	names := make([]string, 0, len(out.Plans))
	for name := range out.Plans {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p := out.Plans[name]
		s.mu.RLock()
		cur := s.plans[name]
		s.mu.RUnlock()
		var old *kedgev1.Plan
		var oldRev int64
		if cur != nil {
			old, oldRev = cur.plan, cur.modRevision
		}
		if old != nil && old.Hash == p.Hash {
			continue
		}
		changes = append(changes, &kedgev1.PlanChange{Node: name, OldHash: old.GetHash(), NewHash: p.Hash, Changes: diffPlans(old, p)})
		if dryRun {
			continue
		}
		stored := proto.Clone(p).(*kedgev1.Plan)
		stored.Revision = 0
		batch = append(batch, pendingWrite{
			w: store.Write{Key: store.Plans + name, Value: stored, IfModRevision: oldRev},
			done: func(rev int64) {
				s.putPlan(stored, rev)
				if stored.Waiting == "" {
					s.event(kedgev1.EventType_EVENT_TYPE_PLAN_RELEASED, cluster, stored.NodeName, fmt.Sprintf("plan for %s released (revision %d)", stored.NodeName, rev))
				}
			},
		})
	}
	if dryRun {
		return changes, nil
	}
	for name, roles := range out.Roles {
		n, rev := s.node(name)
		if n == nil || slices.Equal(n.Roles, roles) {
			continue
		}
		n.Roles = roles
		clearDerived(n)
		batch = append(batch, pendingWrite{
			w: store.Write{Key: store.Nodes + name, Value: n, IfModRevision: rev},
			done: func(rev int64) {
				s.mu.Lock()
				s.putNodeLocked(n, rev, 0)
				s.mu.Unlock()
			},
		})
	}
	return changes, s.commitBatch(ctx, batch)
}

// pendingWrite is one guarded write of a re-plan and what to do once stored.
type pendingWrite struct {
	w    store.Write
	done func(rev int64)
}

// maxTxnOps stays under etcd's default --max-txn-ops (128).
const maxTxnOps = 100

// commitBatch writes a re-plan's changes in as few transactions as etcd
// allows: one transaction per plan would make a fleet-wide change take
// thousands of sequential round trips (and fsyncs) before the last node
// hears of it. A chunk that conflicts (another coordinator wrote one of its
// keys) is retried write by write, skipping the conflicting ones: their
// newer values arrive through the watch and the next re-plan reconciles.
func (s *Server) commitBatch(ctx context.Context, batch []pendingWrite) error {
	for len(batch) > 0 {
		n := min(len(batch), maxTxnOps)
		chunk := batch[:n]
		batch = batch[n:]
		writes := make([]store.Write, len(chunk))
		for i, p := range chunk {
			writes[i] = p.w
		}
		rev, err := s.store.Commit(ctx, writes...)
		if err == nil {
			for _, p := range chunk {
				p.done(rev)
			}
			continue
		}
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
		for _, p := range chunk {
			rev, err := s.store.Commit(ctx, p.w)
			if errors.Is(err, store.ErrConflict) {
				continue
			}
			if err != nil {
				return err
			}
			p.done(rev)
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// clusterSecrets returns the cluster's secrets, creating them on first use.
// Never regenerated: the server token encrypts K3s's bootstrap data.
func (s *Server) clusterSecrets(ctx context.Context, cluster string) (*kedgev1.ClusterSecrets, error) {
	sec := &kedgev1.ClusterSecrets{}
	_, found, err := s.store.Get(ctx, store.Secrets+cluster, sec)
	if err != nil || found {
		return sec, err
	}
	sec = &kedgev1.ClusterSecrets{ServerToken: randomHex(32), AgentToken: randomHex(32), EtcdClusterToken: "kedge-" + cluster + "-" + randomHex(8)}
	_, err = s.store.Commit(ctx, store.Write{Key: store.Secrets + cluster, Value: sec, IfModRevision: 0})
	if errors.Is(err, store.ErrConflict) {
		// Another coordinator created them first: use theirs.
		sec = &kedgev1.ClusterSecrets{}
		_, _, err = s.store.Get(ctx, store.Secrets+cluster, sec)
	}
	return sec, err
}

// etcdCA returns the cluster's etcd CA, creating it when the cluster first
// appears. The key is sealed (see pki.Sealer) before it is stored.
func (s *Server) etcdCA(ctx context.Context, cluster string) (*pki.CA, error) {
	s.etcdCAMu.Lock()
	defer s.etcdCAMu.Unlock()
	if ca := s.etcdCAs[cluster]; ca != nil {
		return ca, nil
	}
	label := store.EtcdCAs + cluster
	var sealed wrapperspb.BytesValue
	_, found, err := s.store.Get(ctx, label, &sealed)
	if err != nil {
		return nil, err
	}
	if !found {
		ca, err := pki.NewCA("kedge etcd CA "+cluster, s.cfg.Lifetimes.CA, s.now())
		if err != nil {
			return nil, err
		}
		keyPEM, err := ca.KeyPEM()
		if err != nil {
			return nil, err
		}
		blob, err := s.sealer.Seal(append(append([]byte{}, ca.CertPEM...), keyPEM...), label)
		if err != nil {
			return nil, err
		}
		_, err = s.store.Commit(ctx, store.Write{Key: label, Value: wrapperspb.Bytes(blob), IfModRevision: 0})
		if err == nil {
			s.etcdCAs[cluster] = ca
			return ca, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return nil, err
		}
		if _, _, err := s.store.Get(ctx, label, &sealed); err != nil {
			return nil, err
		}
	}
	plain, err := s.sealer.Open(sealed.Value, label)
	if err != nil {
		return nil, fmt.Errorf("etcd CA of cluster %s: %w", cluster, err)
	}
	ca, err := pki.LoadCA(plain, plain)
	if err != nil {
		return nil, fmt.Errorf("etcd CA of cluster %s: %w", cluster, err)
	}
	s.etcdCAs[cluster] = ca
	return ca, nil
}

// tick re-derives node conditions (so silence becomes Unreachable), re-plans
// clusters where a condition changed, flushes token use counts, shares
// last-seen times and updates the node gauges. Conditions are derived under
// the read lock; only the few that changed take the write lock, so RPCs are
// not held up by a sweep over every node.
func (s *Server) tick(ctx context.Context) {
	s.flushUses(ctx)
	s.shareSeen(ctx)
	opts := s.healthOpts()
	type derived struct {
		cn           *cachedNode
		was, cond    kedgev1.NodeCondition
		reason       string
		cluster, msg string
	}
	var changed []derived
	counts := map[string]map[string]int{}
	s.mu.RLock()
	for _, cn := range s.nodes {
		if cn.node.State != kedgev1.NodeState_NODE_STATE_ENROLLED {
			continue
		}
		cond, reason := s.deriveLocked(cn, opts)
		cluster := cn.node.Cluster
		if counts[cluster] == nil {
			counts[cluster] = map[string]int{}
		}
		counts[cluster][conditionLabel(cond)]++
		if cond != cn.condition || reason != cn.reason {
			d := derived{cn: cn, was: cn.condition, cond: cond, reason: reason, cluster: cluster}
			// The first derivation of a fresh node is not news.
			if cond != cn.condition && (cn.condition != kedgev1.NodeCondition_NODE_CONDITION_UNSPECIFIED || cond != kedgev1.NodeCondition_NODE_CONDITION_PROVISIONING) {
				d.msg = fmt.Sprintf("node %s is %s: %s", cn.node.Name, conditionLabel(cond), reason)
			}
			changed = append(changed, d)
		}
	}
	s.mu.RUnlock()
	s.cfg.Metrics.SetNodes(counts)
	if len(changed) == 0 {
		return
	}
	replan := false
	s.mu.Lock()
	for i, d := range changed {
		if d.cn.condition != d.was {
			changed[i].msg = "" // someone else updated it meanwhile
			continue
		}
		if d.cond != d.was && feedsPlanner(d.cn.node) {
			s.dirty[d.cluster] = true
			replan = true
		}
		d.cn.condition, d.cn.reason = d.cond, d.reason
	}
	s.mu.Unlock()
	for _, d := range changed {
		if d.msg != "" {
			s.event(kedgev1.EventType_EVENT_TYPE_NODE_CONDITION, d.cluster, d.cn.node.Name, d.msg)
		}
	}
	if replan {
		s.kick()
	}
}

// deriveLocked derives cn's condition. Caller holds s.mu (read or write).
// health reads only these fields, so no deep copy of the record is needed;
// the previous condition lets it hold Degraded rather than flap.
func (s *Server) deriveLocked(cn *cachedNode, opts health.Options) (kedgev1.NodeCondition, string) {
	n := &kedgev1.Node{
		Name: cn.node.Name, Cluster: cn.node.Cluster, State: cn.node.State, Roles: cn.node.Roles,
		EnrolledAt: cn.node.EnrolledAt, Status: cn.status, LastSeen: timestamppbOrNil(cn.lastSeen), Condition: cn.condition,
		ConnectionLostAt: s.connectionLostAtLocked(cn),
	}
	var p *kedgev1.Plan
	if cp := s.plans[n.Name]; cp != nil {
		p = cp.plan
	}
	return health.NodeCondition(n, p, opts)
}

func conditionLabel(c kedgev1.NodeCondition) string {
	return strings.ToLower(strings.TrimPrefix(c.String(), "NODE_CONDITION_"))
}

// connectionLostAtLocked is when cn's connection to this coordinator broke,
// or nil while it has a watch stream open (or never had one). Caller holds s.mu.
// With other coordinators on the same store it is nil too: a node that left
// this coordinator may be reporting to another, which tells us only every
// shareInterval, longer than the connection-lost grace, so there the
// silence period alone decides.
func (s *Server) connectionLostAtLocked(cn *cachedNode) *timestamppb.Timestamp {
	if len(s.subs[cn.node.Name]) > 0 || (!s.peerSeenAt.IsZero() && s.now().Sub(s.peerSeenAt) < 3*s.shareInterval()) {
		return nil
	}
	return timestamppbOrNil(cn.lostAt)
}
