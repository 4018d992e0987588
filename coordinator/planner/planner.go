// Package planner decides who is what: from a cluster spec, the enrolled
// nodes and their observed health, one plan per node. It is a pure function:
// the same inputs give byte-identical plans.
//
// Assignment. Nodes are taken in a stable order: enroll_sequence, then name.
// Roles a node already holds (Node.roles) stay with it, so nothing reshuffles
// when a node is late or offline; a REMOVED node's roles are freed. A pin in
// the spec with roles gives those roles to the node it names, and reserves
// them even before that node enrolls, so an early unpinned node never takes a
// pinned node's slot. The remaining slots fill in order: stacked, the first N
// (spec.etcd.members) get etcd + K3s server; external, the first N etcd, the
// next S (spec.k3s.servers) K3s server; embedded, the first S K3s server (the
// first of them by order with cluster-init). Everyone else is an agent.
// Nodes pending approval get nothing.
//
// Joining. Once etcd has been released (a stored plan in Input.Previous
// carries an etcd section), a member keeps the initial cluster it was
// released with, and nothing waits for missing members any more. A node that
// becomes an etcd member after that waits (WaitingForJoin) until the
// coordinator has added it and lists it in Input.EtcdJoins; it is then
// planned with state "existing" and the coordinator's member list.
//
// Release. An etcd member's plan, a K3s server's on an external datastore
// and an agent's are held back (Plan.waiting, no etcd or k3s section) until
// every initial etcd member has enrolled, so no member starts with a partial
// initial cluster, no server points at missing endpoints and no agent is sent
// to a server that cannot start yet.
//
// Agents' server. With spec.k3s.registrationAddress, agents join through it.
// Otherwise each agent picks among the K3s servers the coordinator does not
// see as Degraded or Unreachable, by rendezvous hashing (highest
// sha256(agent, server) wins): deterministic and spread evenly. An agent
// whose stored plan (Input.Previous) names a server that is still a
// candidate keeps it, so it moves only when its own server stops being a
// candidate, and does not move back when a failed server returns. With no candidate, agents use the
// first server by order. Servers count as candidates while Provisioning on
// purpose: otherwise every agent would hop servers as each one comes up.
// Non-first servers of the embedded topology join the first server (the one
// with cluster-init), fixed, so a running server's plan never changes with
// another's health.
//
// Upgrades. The K3s binary (spec.k3s.version and binary) rolls: a node with
// no stored K3s plan gets the spec's binary at once, but a running node whose
// stored plan has another binary is upgraded only in turn, because each
// upgrade restarts k3s and all servers restarting at once would take the
// control plane down. Servers go one at a time in planning order (the same
// for every topology). A server is in flight while its stored plan has the
// new binary and it has not reported that plan applied (status.plan_hash) or
// is not READY, and also while it has not reported its stored plan applied
// at all (a spec changed back mid-way must not restart a second server while
// the first still applies the abandoned version). While one is in flight,
// every other server keeps the binary of its stored plan, so its plan does
// not change; when none is, the next server by order gets the new binary.
// An in-flight server that does not come back (Unreachable, Degraded) holds
// the rest: an operator fixes or removes it. Agents are not in the
// datastore's path and only need some server to register with, so they keep
// their binary until every K3s server has the new one applied and READY, then
// all get it at once. A spec changed back mid-way rolls the same way.
package planner

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kedge-io/kedge/coordinator/spec"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Ports K3s and etcd listen on.
const (
	EtcdClientPort = "2379"
	EtcdPeerPort   = "2380"
	K3sServerPort  = "6443"
)

// Input is everything a plan depends on.
type Input struct {
	Spec    *kedgev1.ClusterSpec
	Secrets *kedgev1.ClusterSecrets
	// Enrolled nodes of the cluster, with their stored (sticky) roles,
	// node_ip, enroll_sequence, and derived condition and status.
	Nodes []*kedgev1.Node
	// EtcdJoins lists etcd members joining a cluster that already runs (a
	// member added to the spec, or a replacement), by node name, with the
	// initial cluster the coordinator got from etcdmembers.JoinCluster after
	// adding the member as a learner. Those members are planned with state
	// "existing" and that list; all others are initial members ("new").
	// A nil map means a cluster still at its initial membership.
	EtcdJoins map[string][]*kedgev1.EtcdMember
	// Previous are the plans stored now, by node name. With them a released
	// etcd member keeps its initial cluster (etcd reads it only once, and a
	// changed plan would restart every member at once when one is removed),
	// and a cluster whose etcd was released never holds plans back again.
	// Without them the planner falls back to the nodes' reports: etcd has
	// been released once any member has reported a member ID.
	Previous map[string]*kedgev1.Plan
}

// WaitingForJoin is the waiting message of an etcd member that is new to a
// running etcd: the coordinator adds it (etcdmembers.AddLearner) and plans
// again with its JoinCluster list in Input.EtcdJoins.
const WaitingForJoin = "waiting to be added to the running etcd cluster"

// NeedsJoin reports whether p is held until the coordinator adds its node
// to the running etcd.
func NeedsJoin(p *kedgev1.Plan) bool { return p.GetWaiting() == WaitingForJoin }

// Output is the plans and the role assignments to persist on the node records.
type Output struct {
	// By node name; Hash set, Revision left 0 for the store to fill.
	Plans map[string]*kedgev1.Plan
	// Roles per node name, to store so they stay with the node.
	Roles map[string][]kedgev1.Role
}

// member is one enrolled node as the planner sees it.
type member struct {
	node  *kedgev1.Node
	pin   *kedgev1.InventoryPin
	ip    string
	roles []kedgev1.Role
}

func (m *member) has(r kedgev1.Role) bool { return slices.Contains(m.roles, r) }

// Compute returns the plans for in.
func Compute(in Input) Output {
	out := Output{Plans: map[string]*kedgev1.Plan{}, Roles: map[string][]kedgev1.Role{}}
	if in.Spec == nil {
		return out
	}
	members := active(in)
	assign(in.Spec, members)

	var etcds, initialMembers, servers []*member
	for _, m := range members {
		if m.has(kedgev1.Role_ROLE_ETCD) {
			etcds = append(etcds, m)
			if _, joins := in.EtcdJoins[m.node.Name]; !joins {
				initialMembers = append(initialMembers, m)
			}
		}
		if m.has(kedgev1.Role_ROLE_K3S_SERVER) {
			servers = append(servers, m)
		}
	}
	// Expected initial members: the spec's count, or more if sticky roles
	// left more nodes holding etcd (a spec scaled down keeps its members).
	wantEtcd := 0
	if in.Spec.Topology != kedgev1.Topology_TOPOLOGY_EMBEDDED {
		wantEtcd = int(in.Spec.GetEtcd().GetMembers())
		if len(etcds) > wantEtcd {
			wantEtcd = len(etcds)
		}
	}
	// Only the first bootstrap waits for every member: once etcd runs, a
	// missing member (removed, or late to be replaced) holds nothing back.
	released := etcdReleased(in, etcds)
	waiting := ""
	if missing := wantEtcd - len(etcds); missing > 0 && !released {
		waiting = fmt.Sprintf("waiting for %d of %d etcd members to enroll", missing, wantEtcd)
	}
	// Joiners stay out of the initial members' list, so a join does not
	// change (and restart) the members already running.
	initial := initialCluster(initialMembers)
	var endpoints []string
	for _, e := range initialCluster(etcds) {
		endpoints = append(endpoints, e.ClientUrls...)
	}
	candidates := healthyServers(servers)
	bins := k3sBinaries(in, members, servers)

	for _, m := range members {
		p := &kedgev1.Plan{
			NodeName: m.node.Name,
			Cluster:  in.Spec.Name,
			Roles:    slices.Clone(m.roles),
		}
		if !in.Spec.KeepHostnames {
			p.Hostname = m.node.Name
		}
		out.Roles[m.node.Name] = slices.Clone(m.roles)
		out.Plans[m.node.Name] = p

		_, joins := in.EtcdJoins[m.node.Name]
		needsEtcd := m.has(kedgev1.Role_ROLE_ETCD) && !joins ||
			m.has(kedgev1.Role_ROLE_K3S_SERVER) && in.Spec.Topology != kedgev1.Topology_TOPOLOGY_EMBEDDED
		if needsEtcd && waiting != "" {
			p.Waiting = waiting
			p.Hash = Hash(p)
			continue
		}
		if m.has(kedgev1.Role_ROLE_ETCD) {
			prev := in.Previous[m.node.Name].GetEtcd()
			joinList, joins := in.EtcdJoins[m.node.Name]
			if prev == nil && !joins && in.Previous != nil && released {
				// New to a running etcd: "new" with the current members
				// would fail to join; the coordinator adds it first.
				p.Waiting = WaitingForJoin
				p.Hash = Hash(p)
				continue
			}
			p.Etcd = etcdPlan(in, m, initial)
			switch {
			case joins:
				p.Etcd.InitialCluster = sortedMembers(joinList)
				p.Etcd.InitialClusterState = "existing"
			case prev != nil:
				p.Etcd.InitialCluster = sortedMembers(prev.InitialCluster)
				p.Etcd.InitialClusterState = prev.InitialClusterState
			}
		}
		switch {
		case m.has(kedgev1.Role_ROLE_K3S_SERVER):
			p.K3S = serverPlan(in, m, servers, endpoints)
			p.K3S.Binary = bins[m.node.Name]
		case m.has(kedgev1.Role_ROLE_K3S_AGENT):
			if waiting != "" {
				// No server can run before etcd is complete; waiting
				// until then also means an agent's choice of server is
				// made with every stacked server known.
				p.Waiting = waiting
				break
			}
			if len(servers) == 0 {
				p.Waiting = "waiting for a K3s server to enroll"
				break
			}
			current := in.Previous[m.node.Name].GetK3S().GetServerUrl()
			p.K3S = agentPlan(in, m, serverURL(in.Spec, m.node.Name, current, servers, candidates))
			p.K3S.Binary = bins[m.node.Name]
		}
		p.Hash = Hash(p)
	}
	return out
}

// active returns the nodes that take part, in planning order, each with its
// pin: by name first (enrollment names pinned nodes after their pin), else
// by the machine's facts when no node carries that pin's name. A pin goes to
// one node only, the first in order.
func active(in Input) []*member {
	var ms []*member
	names := map[string]bool{}
	for _, n := range in.Nodes {
		if n == nil || n.Name == "" || names[n.Name] {
			continue
		}
		if n.State == kedgev1.NodeState_NODE_STATE_REMOVED || n.State == kedgev1.NodeState_NODE_STATE_PENDING_APPROVAL {
			continue
		}
		names[n.Name] = true
		ms = append(ms, &member{node: n})
	}
	slices.SortFunc(ms, func(a, b *member) int {
		if a.node.EnrollSequence != b.node.EnrollSequence {
			if a.node.EnrollSequence < b.node.EnrollSequence {
				return -1
			}
			return 1
		}
		return strings.Compare(a.node.Name, b.node.Name)
	})
	claimed := map[string]bool{}
	for _, m := range ms {
		for _, pin := range in.Spec.Inventory {
			if pin.Name == m.node.Name {
				m.pin = pin
			}
		}
		if m.pin == nil {
			if pin := spec.MatchPin(in.Spec, m.node.Facts); pin != nil && !names[pin.Name] && !claimed[pin.Name] {
				m.pin = pin
			}
		}
		if m.pin != nil {
			claimed[m.pin.Name] = true
		}
		m.ip = m.node.NodeIp
		if m.pin != nil && m.pin.Ip != "" {
			m.ip = m.pin.Ip
		}
		if m.ip == "" && len(m.node.GetFacts().GetIps()) > 0 {
			m.ip = m.node.Facts.Ips[0]
		}
	}
	return ms
}

// assign gives every member its roles: pinned, then sticky, then by order.
func assign(s *kedgev1.ClusterSpec, ms []*member) {
	var etcdTaken, serversTaken int
	enrolledPins := map[string]bool{}
	for _, m := range ms {
		if m.pin != nil && len(m.pin.Roles) > 0 {
			m.roles = slices.Clone(m.pin.Roles)
			enrolledPins[m.pin.Name] = true
		} else if roles := validSticky(s.Topology, m.node.Roles); len(roles) > 0 {
			m.roles = roles
		} else {
			continue
		}
		if m.has(kedgev1.Role_ROLE_ETCD) {
			etcdTaken++
		}
		if m.has(kedgev1.Role_ROLE_K3S_SERVER) {
			serversTaken++
		}
	}
	// Pinned roles of nodes that have not enrolled yet keep their slots.
	for _, pin := range s.Inventory {
		if enrolledPins[pin.Name] {
			continue
		}
		if slices.Contains(pin.Roles, kedgev1.Role_ROLE_ETCD) {
			etcdTaken++
		}
		if slices.Contains(pin.Roles, kedgev1.Role_ROLE_K3S_SERVER) {
			serversTaken++
		}
	}
	wantEtcd := int(s.GetEtcd().GetMembers())
	wantServers := int(s.GetK3S().GetServers())
	for _, m := range ms {
		if len(m.roles) > 0 {
			slices.Sort(m.roles)
			continue
		}
		switch s.Topology {
		case kedgev1.Topology_TOPOLOGY_STACKED:
			if etcdTaken < wantEtcd {
				m.roles = []kedgev1.Role{kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER}
				etcdTaken++
				serversTaken++
			}
		case kedgev1.Topology_TOPOLOGY_EXTERNAL:
			if etcdTaken < wantEtcd {
				m.roles = []kedgev1.Role{kedgev1.Role_ROLE_ETCD}
				etcdTaken++
			} else if serversTaken < wantServers {
				m.roles = []kedgev1.Role{kedgev1.Role_ROLE_K3S_SERVER}
				serversTaken++
			}
		case kedgev1.Topology_TOPOLOGY_EMBEDDED:
			if serversTaken < wantServers {
				m.roles = []kedgev1.Role{kedgev1.Role_ROLE_K3S_SERVER}
				serversTaken++
			}
		}
		if len(m.roles) == 0 {
			m.roles = []kedgev1.Role{kedgev1.Role_ROLE_K3S_AGENT}
		}
	}
}

// etcdReleased reports whether the cluster's etcd has been released: a
// stored plan carries an etcd section, or (without stored plans) a member
// has reported its member ID.
func etcdReleased(in Input, etcds []*member) bool {
	if in.Previous != nil {
		for _, m := range etcds {
			if in.Previous[m.node.Name].GetEtcd() != nil {
				return true
			}
		}
		return false
	}
	for _, m := range etcds {
		if m.node.GetStatus().GetEtcd().GetMemberId() != 0 {
			return true
		}
	}
	return false
}

// validSticky returns the stored roles the topology still allows; after a
// topology change a node whose roles no longer fit is assigned afresh.
func validSticky(t kedgev1.Topology, roles []kedgev1.Role) []kedgev1.Role {
	etcd := slices.Contains(roles, kedgev1.Role_ROLE_ETCD)
	server := slices.Contains(roles, kedgev1.Role_ROLE_K3S_SERVER)
	switch {
	case t == kedgev1.Topology_TOPOLOGY_EMBEDDED && etcd,
		t == kedgev1.Topology_TOPOLOGY_STACKED && etcd != server,
		t == kedgev1.Topology_TOPOLOGY_EXTERNAL && etcd && server:
		return nil
	}
	return slices.Clone(roles)
}

func initialCluster(etcds []*member) []*kedgev1.EtcdMember {
	out := make([]*kedgev1.EtcdMember, 0, len(etcds))
	for _, m := range etcds {
		out = append(out, &kedgev1.EtcdMember{
			Name:       m.node.Name,
			PeerUrls:   []string{"https://" + net.JoinHostPort(m.ip, EtcdPeerPort)},
			ClientUrls: []string{"https://" + net.JoinHostPort(m.ip, EtcdClientPort)},
		})
	}
	slices.SortFunc(out, func(a, b *kedgev1.EtcdMember) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func sortedMembers(ms []*kedgev1.EtcdMember) []*kedgev1.EtcdMember {
	out := make([]*kedgev1.EtcdMember, 0, len(ms))
	for _, m := range ms {
		out = append(out, proto.Clone(m).(*kedgev1.EtcdMember))
	}
	slices.SortFunc(out, func(a, b *kedgev1.EtcdMember) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func etcdPlan(in Input, m *member, initial []*kedgev1.EtcdMember) *kedgev1.EtcdPlan {
	e := in.Spec.GetEtcd()
	p := &kedgev1.EtcdPlan{
		MemberName:          m.node.Name,
		InitialCluster:      initial,
		InitialClusterState: "new",
		InitialClusterToken: in.Secrets.GetEtcdClusterToken(),
		QuotaBackendBytes:   e.GetQuotaBackendBytes(),
		SnapshotCount:       e.GetSnapshotCount(),
		HeartbeatIntervalMs: e.GetHeartbeatIntervalMs(),
		ElectionTimeoutMs:   e.GetElectionTimeoutMs(),
		Ips:                 []string{m.ip},
	}
	p.PeerUrls = []string{"https://" + net.JoinHostPort(m.ip, EtcdPeerPort)}
	p.ClientUrls = []string{"https://" + net.JoinHostPort(m.ip, EtcdClientPort)}
	return p
}

func binary(s *kedgev1.ClusterSpec) *kedgev1.K3SBinary {
	b := proto.Clone(s.GetK3S().GetBinary()).(*kedgev1.K3SBinary)
	if b == nil {
		b = &kedgev1.K3SBinary{}
	}
	b.Version = s.GetK3S().GetVersion()
	return b
}

// k3sBinaries returns each member's K3s binary for a rolling upgrade (see
// Upgrades in the package doc): the spec's, or, for a node not yet in turn,
// the one of its stored plan.
func k3sBinaries(in Input, members, servers []*member) map[string]*kedgev1.K3SBinary {
	want := binary(in.Spec)
	stored := func(m *member) *kedgev1.K3SBinary { return in.Previous[m.node.Name].GetK3S().GetBinary() }
	// applied: m's stored plan has the new binary, m reports that plan
	// applied and is READY.
	applied := func(m *member) bool {
		prev := in.Previous[m.node.Name]
		return proto.Equal(stored(m), want) &&
			m.node.GetStatus().GetPlanHash() == prev.GetHash() &&
			m.node.Condition == kedgev1.NodeCondition_NODE_CONDITION_READY
	}
	out := make(map[string]*kedgev1.K3SBinary, len(members))
	keep := func(m *member) {
		out[m.node.Name] = proto.Clone(stored(m)).(*kedgev1.K3SBinary)
	}
	// inFlight: servers restarting onto a new binary, or still applying
	// their stored plan (a spec changed back mid-way leaves the previous
	// target being applied). Another server waits for them; a server that
	// is itself only still applying may take the new binary at once, since
	// that adds no second restart.
	var inFlight, behind []*member
	for _, m := range servers {
		b := stored(m)
		if b == nil {
			continue // first release: nothing runs yet, nothing to roll
		}
		stillApplying := m.node.GetStatus().GetPlanHash() != in.Previous[m.node.Name].GetHash()
		if !proto.Equal(b, want) {
			behind = append(behind, m)
			if stillApplying {
				inFlight = append(inFlight, m)
			}
		} else if stillApplying || !applied(m) {
			inFlight = append(inFlight, m)
		}
	}
	for i, m := range behind {
		if i > 0 || slices.ContainsFunc(inFlight, func(o *member) bool { return o != m }) {
			keep(m)
		}
	}
	serversDone := true
	for _, m := range servers {
		if !applied(m) {
			serversDone = false
		}
	}
	for _, m := range members {
		if _, held := out[m.node.Name]; held {
			continue
		}
		if !m.has(kedgev1.Role_ROLE_K3S_SERVER) && !serversDone {
			if b := stored(m); b != nil && !proto.Equal(b, want) {
				keep(m)
				continue
			}
		}
		out[m.node.Name] = proto.Clone(want).(*kedgev1.K3SBinary)
	}
	return out
}

func serverPlan(in Input, m *member, servers []*member, endpoints []string) *kedgev1.K3SPlan {
	k := in.Spec.GetK3S()
	p := &kedgev1.K3SPlan{
		Role:       kedgev1.Role_ROLE_K3S_SERVER,
		Binary:     binary(in.Spec),
		Token:      in.Secrets.GetServerToken(),
		AgentToken: in.Secrets.GetAgentToken(),
		NodeIp:     m.ip,
		NodeName:   m.node.Name,
		TlsSans:    tlsSans(m.ip, k),
	}
	if k.GetServerConfig() != nil {
		p.ExtraConfig = proto.Clone(k.GetServerConfig()).(*structpb.Struct)
	}
	if in.Spec.Topology == kedgev1.Topology_TOPOLOGY_EMBEDDED {
		// servers is in planning order, so the first is stable: later
		// enrollments sort after it.
		if servers[0] == m {
			p.ClusterInit = true
		} else if addr := k.GetRegistrationAddress(); addr != "" {
			p.ServerUrl = registrationURL(addr)
		} else {
			p.ServerUrl = serverURLOf(servers[0])
		}
	} else {
		p.DatastoreEndpoints = slices.Clone(endpoints)
	}
	return p
}

func agentPlan(in Input, m *member, server string) *kedgev1.K3SPlan {
	k := in.Spec.GetK3S()
	p := &kedgev1.K3SPlan{
		Role:       kedgev1.Role_ROLE_K3S_AGENT,
		Binary:     binary(in.Spec),
		ServerUrl:  server,
		AgentToken: in.Secrets.GetAgentToken(), // never the server token
		NodeIp:     m.ip,
		NodeName:   m.node.Name,
	}
	if k.GetAgentConfig() != nil {
		p.ExtraConfig = proto.Clone(k.GetAgentConfig()).(*structpb.Struct)
	}
	return p
}

// tlsSans: the node's IP, the registration address's host, then the spec's
// names, each once.
func tlsSans(ip string, k *kedgev1.K3SSpec) []string {
	var out []string
	add := func(s string) {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	add(ip)
	if addr := k.GetRegistrationAddress(); addr != "" {
		host := addr
		if h, _, err := net.SplitHostPort(addr); err == nil {
			host = h
		}
		add(host)
	}
	for _, s := range k.GetTlsSans() {
		add(s)
	}
	return out
}

func registrationURL(addr string) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return "https://" + addr
	}
	return "https://" + net.JoinHostPort(addr, K3sServerPort)
}

func serverURLOf(m *member) string {
	return "https://" + net.JoinHostPort(m.ip, K3sServerPort)
}

// healthyServers are the servers an agent may be sent to: all but those
// seen Degraded or Unreachable.
func healthyServers(servers []*member) []*member {
	var out []*member
	for _, m := range servers {
		switch m.node.Condition {
		case kedgev1.NodeCondition_NODE_CONDITION_DEGRADED, kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE:
		default:
			out = append(out, m)
		}
	}
	return out
}

// serverURL picks an agent's server: the registration address, else the
// server it already uses (current, from its stored plan) while that is still
// a candidate, else the rendezvous-hash winner among candidates, else the
// first server by order. Keeping the current server means a server that
// comes back after an outage does not pull its agents back: each move
// restarts k3s-agent, and one move per failure is enough.
func serverURL(s *kedgev1.ClusterSpec, agent, current string, servers, candidates []*member) string {
	if addr := s.GetK3S().GetRegistrationAddress(); addr != "" {
		return registrationURL(addr)
	}
	if len(candidates) == 0 {
		return serverURLOf(servers[0])
	}
	for _, c := range candidates {
		if current != "" && serverURLOf(c) == current {
			return current
		}
	}
	var best *member
	var bestScore []byte
	for _, c := range candidates {
		h := sha256.Sum256([]byte(agent + "\x00" + c.node.Name))
		if best == nil || string(h[:]) > string(bestScore) {
			best, bestScore = c, h[:]
		}
	}
	return serverURLOf(best)
}

// Hash is the content hash of a plan: every field but revision and hash.
func Hash(p *kedgev1.Plan) string {
	if p == nil {
		return ""
	}
	c := proto.Clone(p).(*kedgev1.Plan)
	c.Revision, c.Hash = 0, ""
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		// A Plan built from valid protos always marshals; an empty hash
		// would make a broken plan look unchanged, so fail loudly.
		panic("planner: marshal plan: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
