// Package health derives node conditions and a cluster's phase from the
// nodes' reports. Pure functions over an injected clock.
//
// A node is, in this order of precedence:
//   - Unreachable: nothing heard for longer than Options.UnreachableAfter
//     (default 30 s), or never heard that long after enrolling;
//   - Degraded: its last apply failed (the step is named), a unit its plan
//     implies failed, is restarting or is not active, its etcd member is
//     unhealthy or has an alarm, or its K3s server stopped answering after it
//     had been Ready;
//   - Provisioning: no plan, the plan is held back (waiting), the node has
//     not applied the current plan yet, or units are still activating;
//   - Ready: every unit the plan implies is active (kedge-etcd.service for
//     etcd, k3s.service for a server, k3s-agent.service for an agent), its
//     etcd member is healthy and its K3s server answers.
//
// A cluster is Down when etcd has lost quorum or no K3s server is active
// after they had all applied their plans; Healthy when everything planned is
// enrolled and Ready; Degraded when quorum holds but some node is Degraded or
// Unreachable; otherwise Provisioning.
package health

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// DefaultUnreachableAfter is how long a node may be silent before it is Unreachable.
const DefaultUnreachableAfter = 30 * time.Second

// DefaultConnectionLostGrace is how long a node may be without a connection
// to the coordinator before it is Unreachable: longer than an agent restart
// (systemd's RestartSec=5s plus start-up), so restarting or upgrading an agent
// does not count, and far shorter than the silence period, so a power cut is
// reported within ~25 s (keepalive finds the dead connection in ~16 s).
const DefaultConnectionLostGrace = 8 * time.Second

// Options tune the derivation.
type Options struct {
	Now time.Time
	// A node silent for longer is Unreachable; default 30 s.
	UnreachableAfter time.Duration
	// A node whose connection broke (Node.connection_lost_at) and that has
	// not reported since is Unreachable after this; default 8 s.
	ConnectionLostGrace time.Duration
}

func (o Options) connectionLostGrace() time.Duration {
	if o.ConnectionLostGrace <= 0 {
		return DefaultConnectionLostGrace
	}
	return o.ConnectionLostGrace
}

func (o Options) now() time.Time {
	if o.Now.IsZero() {
		return time.Now()
	}
	return o.Now
}

func (o Options) silence() time.Duration {
	if o.UnreachableAfter <= 0 {
		return DefaultUnreachableAfter
	}
	return o.UnreachableAfter
}

// Short forms for readability.
const (
	provisioning = kedgev1.NodeCondition_NODE_CONDITION_PROVISIONING
	ready        = kedgev1.NodeCondition_NODE_CONDITION_READY
	degraded     = kedgev1.NodeCondition_NODE_CONDITION_DEGRADED
	unreachable  = kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE
)

// UnitsFor lists the units a plan's roles imply, in a fixed order.
func UnitsFor(roles []kedgev1.Role) []string {
	var units []string
	if slices.Contains(roles, kedgev1.Role_ROLE_ETCD) {
		units = append(units, paths.EtcdUnit)
	}
	if slices.Contains(roles, kedgev1.Role_ROLE_K3S_SERVER) {
		units = append(units, paths.K3sServerUnit)
	}
	if slices.Contains(roles, kedgev1.Role_ROLE_K3S_AGENT) {
		units = append(units, paths.K3sAgentUnit)
	}
	return units
}

// NodeCondition derives one node's condition and the reason in words.
func NodeCondition(n *kedgev1.Node, plan *kedgev1.Plan, opts Options) (kedgev1.NodeCondition, string) {
	if n == nil {
		return kedgev1.NodeCondition_NODE_CONDITION_UNSPECIFIED, "no node"
	}
	now, silence := opts.now(), opts.silence()
	if ls := n.GetLastSeen(); ls != nil {
		if quiet := now.Sub(ls.AsTime()); quiet > silence {
			return unreachable, fmt.Sprintf("no report for %s (unreachable after %s)", round(quiet), silence)
		}
	} else if ea := n.GetEnrolledAt(); ea != nil {
		if quiet := now.Sub(ea.AsTime()); quiet > silence {
			return unreachable, fmt.Sprintf("no report since enrolling %s ago (unreachable after %s)", round(quiet), silence)
		}
	}
	if lost := n.GetConnectionLostAt(); lost != nil && !n.GetLastSeen().AsTime().After(lost.AsTime()) {
		if gone := now.Sub(lost.AsTime()); gone >= opts.connectionLostGrace() {
			return unreachable, fmt.Sprintf("connection lost %s ago and not re-established", round(gone))
		}
	}
	if plan == nil {
		return provisioning, "no plan yet"
	}
	if plan.Waiting != "" {
		return provisioning, plan.Waiting
	}
	st := n.GetStatus()
	if st == nil {
		return provisioning, "waiting for the node's first report"
	}
	if st.ApplyError != "" {
		step := st.ApplyStep
		if step == "" {
			step = "apply"
		}
		return degraded, fmt.Sprintf("apply failed at %s: %s", step, st.ApplyError)
	}

	units := UnitsFor(plan.Roles)
	var pending []string
	for _, name := range units {
		u := findUnit(st.Units, name)
		if u == nil {
			pending = append(pending, fmt.Sprintf("unit %s not reported yet", name))
			continue
		}
		switch {
		case u.ActiveState == "failed":
			return degraded, fmt.Sprintf("unit %s failed (Result=%s)", name, orDash(u.Result))
		case u.SubState == "auto-restart" || u.ActiveState == "activating" && u.NRestarts > 0:
			return degraded, fmt.Sprintf("unit %s is restarting (%d restarts, Result=%s)", name, u.NRestarts, orDash(u.Result))
		case u.ActiveState == "activating" || u.ActiveState == "reloading":
			pending = append(pending, fmt.Sprintf("unit %s is %s", name, u.ActiveState))
		case u.ActiveState != "active" && st.PlanHash == plan.Hash:
			return degraded, fmt.Sprintf("unit %s is not active (%s/%s)", name, orDash(u.ActiveState), orDash(u.SubState))
		case u.ActiveState != "active":
			pending = append(pending, fmt.Sprintf("unit %s is %s", name, orDash(u.ActiveState)))
		}
	}
	if slices.Contains(plan.Roles, kedgev1.Role_ROLE_ETCD) && slices.Contains(units, paths.EtcdUnit) {
		switch e := st.Etcd; {
		case e == nil:
			pending = append(pending, "etcd member not reported yet")
		case len(e.Alarms) > 0:
			return degraded, fmt.Sprintf("etcd member alarm %s", strings.Join(e.Alarms, ", "))
		case !e.Healthy && unitActive(st.Units, paths.EtcdUnit):
			reason := "etcd member unhealthy"
			if e.Error != "" {
				reason += ": " + e.Error
			}
			return degraded, reason
		case !e.Healthy:
			pending = append(pending, "etcd member not healthy yet")
		}
	}
	if slices.Contains(plan.Roles, kedgev1.Role_ROLE_K3S_SERVER) {
		// /ping failing is expected while K3s starts; only after the node
		// was Ready does it mean the server stopped serving. Degraded counts
		// as "was Ready" too, or the condition would fall back to
		// Provisioning on the next derivation.
		if k := st.K3S; k != nil && !k.Ready {
			reason := "K3s server not ready"
			if k.Error != "" {
				reason += ": " + k.Error
			}
			if (n.Condition == ready || n.Condition == degraded) && st.PlanHash == plan.Hash {
				return degraded, reason
			}
			pending = append(pending, reason)
		}
	}
	if st.PlanHash != plan.Hash {
		return provisioning, fmt.Sprintf("applying plan %s (running %s)", short(plan.Hash), orDash(short(st.PlanHash)))
	}
	if len(pending) > 0 {
		return provisioning, pending[0]
	}
	if len(units) == 0 {
		return ready, "plan applied"
	}
	return ready, strings.Join(units, ", ") + " active"
}

func findUnit(units []*kedgev1.UnitStatus, name string) *kedgev1.UnitStatus {
	for _, u := range units {
		if u.GetName() == name {
			return u
		}
	}
	return nil
}

func unitActive(units []*kedgev1.UnitStatus, name string) bool {
	u := findUnit(units, name)
	return u != nil && u.ActiveState == "active"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func short(hash string) string {
	if len(hash) > 12 {
		return hash[:12]
	}
	return hash
}

func round(d time.Duration) time.Duration { return d.Round(time.Second) }

// Cluster derives a cluster's status. nodes carry status and last_seen;
// plans are by node name.
func Cluster(spec *kedgev1.ClusterSpec, nodes []*kedgev1.Node, plans map[string]*kedgev1.Plan, opts Options) *kedgev1.ClusterStatus {
	cs := &kedgev1.ClusterStatus{
		Cluster:    spec.GetName(),
		ObservedAt: timestamppb.New(opts.now()),
	}
	var members []*kedgev1.Node
	for _, n := range nodes {
		if n == nil || n.State == kedgev1.NodeState_NODE_STATE_REMOVED {
			continue
		}
		c := proto.Clone(n).(*kedgev1.Node)
		if n.State == kedgev1.NodeState_NODE_STATE_PENDING_APPROVAL {
			c.Condition, c.ConditionReason = kedgev1.NodeCondition_NODE_CONDITION_UNSPECIFIED, "pending approval"
		} else {
			c.Condition, c.ConditionReason = NodeCondition(n, plans[n.Name], opts)
			members = append(members, c)
		}
		if p := plans[n.Name]; p != nil {
			c.PlanHash, c.PlanRevision = p.Hash, p.Revision
			if len(c.Roles) == 0 {
				c.Roles = slices.Clone(p.Roles)
			}
		}
		cs.Nodes = append(cs.Nodes, c)
	}
	slices.SortFunc(cs.Nodes, func(a, b *kedgev1.Node) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(members, func(a, b *kedgev1.Node) int { return strings.Compare(a.Name, b.Name) })

	roles := func(n *kedgev1.Node) []kedgev1.Role {
		if p := plans[n.Name]; p != nil && len(p.Roles) > 0 {
			return p.Roles
		}
		return n.Roles
	}
	reachable := func(n *kedgev1.Node) bool { return n.Condition != unreachable }

	hasEtcd := spec.GetTopology() != kedgev1.Topology_TOPOLOGY_EMBEDDED
	cs.Etcd = &kedgev1.EtcdQuorum{}
	var etcdNodes, serverNodes []*kedgev1.Node
	// settled: every node of the role is unreachable or has applied its
	// plan and stopped starting up, so a missing quorum or server is an
	// outage rather than a cluster still coming up.
	etcdSettled, serversSettled := true, true
	for _, n := range members {
		r := roles(n)
		if slices.Contains(r, kedgev1.Role_ROLE_ETCD) {
			etcdNodes = append(etcdNodes, n)
			etcdSettled = etcdSettled && settled(n, plans[n.Name], paths.EtcdUnit)
			if reachable(n) && n.Status.GetEtcd().GetHealthy() {
				cs.Etcd.Healthy++
				if n.Status.GetEtcd().GetIsLeader() {
					cs.Etcd.Leader = n.Name
				}
			}
		}
		if slices.Contains(r, kedgev1.Role_ROLE_K3S_SERVER) {
			serverNodes = append(serverNodes, n)
			serversSettled = serversSettled && settled(n, plans[n.Name], paths.K3sServerUnit)
			if reachable(n) && unitActive(n.Status.GetUnits(), paths.K3sServerUnit) {
				cs.ServersActive++
			}
		}
		if slices.Contains(r, kedgev1.Role_ROLE_K3S_AGENT) {
			cs.AgentsPlanned++
			if reachable(n) && unitActive(n.Status.GetUnits(), paths.K3sAgentUnit) {
				cs.AgentsActive++
			}
		}
	}
	cs.ServersPlanned = max(uint32(len(serverNodes)), spec.GetK3S().GetServers())
	if hasEtcd {
		cs.Etcd.Total = max(uint32(len(etcdNodes)), spec.GetEtcd().GetMembers())
		cs.Etcd.HasQuorum = cs.Etcd.Total > 0 && cs.Etcd.Healthy > cs.Etcd.Total/2
	} else {
		cs.Etcd = nil
	}
	etcdComplete := !hasEtcd || uint32(len(etcdNodes)) >= cs.Etcd.GetTotal()
	serversComplete := uint32(len(serverNodes)) >= cs.ServersPlanned

	var troubled, pendingNodes []*kedgev1.Node
	for _, n := range members {
		switch n.Condition {
		case degraded, unreachable:
			troubled = append(troubled, n)
		case ready:
		default:
			pendingNodes = append(pendingNodes, n)
		}
	}

	switch {
	case hasEtcd && len(etcdNodes) > 0 && etcdSettled && !cs.Etcd.HasQuorum:
		// Settled members have released plans, so this is never the first
		// bootstrap; a member missing since (removed) does not excuse it.
		cs.Phase = kedgev1.ClusterPhase_CLUSTER_PHASE_DOWN
		cs.Reason = fmt.Sprintf("etcd has no quorum: %d of %d members healthy%s", cs.Etcd.Healthy, cs.Etcd.Total, firstTrouble(troubled))
	case len(serverNodes) > 0 && serversComplete && serversSettled && cs.ServersActive == 0:
		cs.Phase = kedgev1.ClusterPhase_CLUSTER_PHASE_DOWN
		cs.Reason = fmt.Sprintf("no K3s server active of %d%s", cs.ServersPlanned, firstTrouble(troubled))
	case len(troubled) > 0:
		cs.Phase = kedgev1.ClusterPhase_CLUSTER_PHASE_DEGRADED
		cs.Reason = describe(troubled, "not ready")
	case !etcdComplete:
		cs.Phase = kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING
		cs.Reason = fmt.Sprintf("waiting for %d of %d etcd members to enroll", cs.Etcd.Total-uint32(len(etcdNodes)), cs.Etcd.Total)
	case !serversComplete:
		cs.Phase = kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING
		cs.Reason = fmt.Sprintf("waiting for %d of %d K3s servers to enroll", cs.ServersPlanned-uint32(len(serverNodes)), cs.ServersPlanned)
	case len(pendingNodes) > 0:
		cs.Phase = kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING
		cs.Reason = describe(pendingNodes, "provisioning")
	case len(members) == 0:
		cs.Phase = kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING
		cs.Reason = "no nodes enrolled yet"
	default:
		cs.Phase = kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY
		cs.Reason = healthyReason(cs)
	}
	return cs
}

// settled reports whether a node is past starting unit: it is unreachable,
// or it runs its current released plan and has reported the unit in a
// state other than starting (etcd's Type=notify unit stays activating
// until its peers are up, so activating is still starting).
func settled(n *kedgev1.Node, p *kedgev1.Plan, unit string) bool {
	if n.Condition == unreachable {
		return true
	}
	if p == nil || p.Waiting != "" || n.GetStatus().GetPlanHash() != p.Hash {
		return false
	}
	u := findUnit(n.GetStatus().GetUnits(), unit)
	if u == nil || u.ActiveState == "activating" && u.SubState != "auto-restart" {
		return false
	}
	if unit == paths.EtcdUnit && n.GetStatus().GetEtcd() == nil {
		return false // the member's own view has not arrived yet
	}
	return true
}

func firstTrouble(troubled []*kedgev1.Node) string {
	if len(troubled) == 0 {
		return ""
	}
	return "; " + describe(troubled, "not ready")
}

// describe names the first node and its reason, and how many more there are.
func describe(ns []*kedgev1.Node, what string) string {
	s := fmt.Sprintf("node %s %s: %s", ns[0].Name, conditionWord(ns[0].Condition, what), ns[0].ConditionReason)
	if len(ns) > 1 {
		s += fmt.Sprintf(" (and %d more)", len(ns)-1)
	}
	return s
}

func conditionWord(c kedgev1.NodeCondition, fallback string) string {
	switch c {
	case degraded:
		return "degraded"
	case unreachable:
		return "unreachable"
	case provisioning:
		return "provisioning"
	}
	return fallback
}

func healthyReason(cs *kedgev1.ClusterStatus) string {
	var parts []string
	if cs.Etcd != nil {
		leader := cs.Etcd.Leader
		if leader == "" {
			leader = "unknown"
		}
		parts = append(parts, fmt.Sprintf("etcd %d/%d healthy (leader %s)", cs.Etcd.Healthy, cs.Etcd.Total, leader))
	}
	parts = append(parts, fmt.Sprintf("K3s servers %d/%d active", cs.ServersActive, cs.ServersPlanned))
	parts = append(parts, fmt.Sprintf("agents %d/%d active", cs.AgentsActive, cs.AgentsPlanned))
	return strings.Join(parts, ", ")
}
