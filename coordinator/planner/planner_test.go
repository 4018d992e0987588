package planner

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/kedge-io/kedge/coordinator/spec"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

const sum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

var secrets = &kedgev1.ClusterSecrets{
	ServerToken:      "server-token-secret",
	AgentToken:       "agent-token-secret",
	EtcdClusterToken: "etcd-cluster-token",
}

func mustSpec(t *testing.T, topology, extra string) *kedgev1.ClusterSpec {
	t.Helper()
	doc := `apiVersion: kedge/v1
kind: Cluster
metadata: {name: edge-1}
spec:
  topology: ` + topology + `
  k3s:
    version: v1.31.4+k3s1
    binary: {sha256: "` + sum + `", path: /usr/local/bin/k3s}
    serverConfig: {disable: [traefik]}
    agentConfig: {node-label: [site=shop-7]}
    tlsSans: [k3s.edge-1.lan]
` + extra
	s, err := spec.Parse("test.yaml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// node is an enrolled machine: nucN with 10.0.0.(10+N), enrolled N-th.
func node(n int, roles ...kedgev1.Role) *kedgev1.Node {
	return &kedgev1.Node{
		Name:           fmt.Sprintf("nuc%d", n),
		Cluster:        "edge-1",
		State:          kedgev1.NodeState_NODE_STATE_ENROLLED,
		EnrollSequence: uint64(n),
		NodeIp:         fmt.Sprintf("10.0.0.%d", 10+n),
		Roles:          roles,
		Facts: &kedgev1.MachineFacts{
			Macs:     []string{fmt.Sprintf("aa:bb:cc:dd:ee:%02x", n)},
			Hostname: fmt.Sprintf("localhost-%d", n),
		},
	}
}

func nodes(n int) []*kedgev1.Node {
	var out []*kedgev1.Node
	for i := 1; i <= n; i++ {
		out = append(out, node(i))
	}
	return out
}

// render writes the plans in name order as indented JSON, stable across
// protobuf versions (protojson's own spacing is deliberately unstable).
func render(t *testing.T, out Output) []byte {
	t.Helper()
	var names []string
	for name := range out.Plans {
		names = append(names, name)
	}
	slices.Sort(names)
	var buf bytes.Buffer
	for _, name := range names {
		raw, err := protojson.Marshal(out.Plans[name])
		if err != nil {
			t.Fatal(err)
		}
		var compact, pretty bytes.Buffer
		if err := json.Compact(&compact, raw); err != nil {
			t.Fatal(err)
		}
		if err := json.Indent(&pretty, compact.Bytes(), "", "  "); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&buf, "# %s\n%s\n", name, pretty.Bytes())
	}
	return buf.Bytes()
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./coordinator/planner -update to record)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from %s (rerun with -update if the change is intended):\n%s", name, path, got)
	}
}

// checkInvariants holds for every plan of every case.
func checkInvariants(t *testing.T, in Input, out Output) {
	t.Helper()
	for name, p := range out.Plans {
		if p.Hash != Hash(p) || len(p.Hash) != 64 {
			t.Errorf("%s: hash %q is not the plan's content hash", name, p.Hash)
		}
		if p.Revision != 0 {
			t.Errorf("%s: revision %d set; the store fills it", name, p.Revision)
		}
		if !slices.Equal(p.Roles, out.Roles[name]) {
			t.Errorf("%s: plan roles %v differ from roles to store %v", name, p.Roles, out.Roles[name])
		}
		if p.Waiting != "" && (p.Etcd != nil || p.K3S != nil) {
			t.Errorf("%s: waiting plan carries etcd or k3s sections", name)
		}
		if k := p.K3S; k != nil && k.Role == kedgev1.Role_ROLE_K3S_AGENT {
			raw, _ := proto.Marshal(p)
			if k.Token != "" || bytes.Contains(raw, []byte(in.Secrets.GetServerToken())) {
				t.Errorf("%s: an agent plan carries the server token", name)
			}
			if k.AgentToken != in.Secrets.GetAgentToken() {
				t.Errorf("%s: agent token %q, want the cluster's", name, k.AgentToken)
			}
			if k.ServerUrl == "" {
				t.Errorf("%s: agent without a server URL", name)
			}
		}
	}
}

func TestGolden(t *testing.T) {
	pinned := `  inventory:
    - {name: etcd-a, match: {mac: "aa:bb:cc:dd:ee:04"}, roles: [etcd, server], ip: 10.0.1.1}
    - {name: etcd-b, match: {mac: "aa:bb:cc:dd:ee:05"}, roles: [etcd, server], ip: 10.0.1.2}
    - {name: gpu, match: {hostname: localhost-1}, roles: [agent], labels: {gpu: "true"}}
`
	externalPins := `  inventory:
    - {name: db1, match: {mac: "aa:bb:cc:dd:ee:01"}, roles: [etcd]}
    - {name: db2, match: {mac: "aa:bb:cc:dd:ee:02"}, roles: [etcd]}
    - {name: db3, match: {mac: "aa:bb:cc:dd:ee:09"}, roles: [etcd]}
`
	renamed := func(ns []*kedgev1.Node, names map[int]string) []*kedgev1.Node {
		for i, name := range names {
			ns[i-1].Name = name
		}
		return ns
	}
	for _, tc := range []struct {
		name  string
		in    func(t *testing.T) Input
		check func(t *testing.T, out Output)
	}{
		{"stacked", func(t *testing.T) Input {
			return Input{Spec: mustSpec(t, "stacked", ""), Secrets: secrets, Nodes: nodes(5)}
		}, func(t *testing.T, out Output) {
			wantRoles(t, out, "nuc1", kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER)
			wantRoles(t, out, "nuc3", kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER)
			wantRoles(t, out, "nuc4", kedgev1.Role_ROLE_K3S_AGENT)
			if got := out.Plans["nuc2"].K3S.DatastoreEndpoints; !slices.Equal(got, []string{"https://10.0.0.11:2379", "https://10.0.0.12:2379", "https://10.0.0.13:2379"}) {
				t.Errorf("datastore endpoints %v", got)
			}
		}},
		{"stacked-late-etcd", func(t *testing.T) Input {
			return Input{Spec: mustSpec(t, "stacked", ""), Secrets: secrets, Nodes: nodes(1)}
		}, func(t *testing.T, out Output) {
			if got := out.Plans["nuc1"].Waiting; got != "waiting for 2 of 3 etcd members to enroll" {
				t.Errorf("waiting %q", got)
			}
		}},
		{"stacked-pins", func(t *testing.T) Input {
			// nuc4 and nuc5 enroll late but are pinned to etcd: the early
			// unpinned nodes do not take their slots.
			return Input{Spec: mustSpec(t, "stacked", pinned), Secrets: secrets,
				Nodes: renamed(nodes(5), map[int]string{1: "gpu", 4: "etcd-a", 5: "etcd-b"})}
		}, func(t *testing.T, out Output) {
			wantRoles(t, out, "gpu", kedgev1.Role_ROLE_K3S_AGENT)
			wantRoles(t, out, "nuc2", kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER)
			wantRoles(t, out, "nuc3", kedgev1.Role_ROLE_K3S_AGENT)
			wantRoles(t, out, "etcd-a", kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER)
			if got := out.Plans["etcd-a"].Etcd.PeerUrls; !slices.Equal(got, []string{"https://10.0.1.1:2380"}) {
				t.Errorf("pinned IP not used: %v", got)
			}
		}},
		{"external", func(t *testing.T) Input {
			return Input{Spec: mustSpec(t, "external", ""), Secrets: secrets, Nodes: nodes(7)}
		}, func(t *testing.T, out Output) {
			wantRoles(t, out, "nuc3", kedgev1.Role_ROLE_ETCD)
			wantRoles(t, out, "nuc4", kedgev1.Role_ROLE_K3S_SERVER)
			wantRoles(t, out, "nuc5", kedgev1.Role_ROLE_K3S_SERVER)
			wantRoles(t, out, "nuc6", kedgev1.Role_ROLE_K3S_AGENT)
			if out.Plans["nuc1"].K3S != nil {
				t.Error("an external etcd host got a K3s plan")
			}
		}},
		{"external-etcd-never-arrives", func(t *testing.T) Input {
			// db3 is pinned but never enrolls: members, servers and agents wait.
			return Input{Spec: mustSpec(t, "external", externalPins), Secrets: secrets,
				Nodes: renamed(nodes(6), map[int]string{1: "db1", 2: "db2"})}
		}, func(t *testing.T, out Output) {
			for _, name := range []string{"db1", "db2", "nuc3", "nuc4", "nuc5", "nuc6"} {
				if got := out.Plans[name].Waiting; got != "waiting for 1 of 3 etcd members to enroll" {
					t.Errorf("%s waiting %q", name, got)
				}
			}
			wantRoles(t, out, "nuc3", kedgev1.Role_ROLE_K3S_SERVER)
			wantRoles(t, out, "nuc5", kedgev1.Role_ROLE_K3S_AGENT)
		}},
		{"stacked-server-unreachable", func(t *testing.T) Input {
			// nuc1 is silent: agents that were on it move; nobody's roles change.
			ns := nodes(8)
			ns[0].Condition = kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE
			return Input{Spec: mustSpec(t, "stacked", ""), Secrets: secrets, Nodes: ns}
		}, func(t *testing.T, out Output) {
			wantRoles(t, out, "nuc1", kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER)
			for i := 4; i <= 8; i++ {
				if got := out.Plans[fmt.Sprintf("nuc%d", i)].K3S.ServerUrl; got == "https://10.0.0.11:6443" {
					t.Errorf("nuc%d points at the unreachable server", i)
				}
			}
		}},
		{"stacked-sticky-late-node", func(t *testing.T) Input {
			// Roles are stored; a node with an earlier sequence but no roles
			// (late to be planned) becomes an agent, nothing reshuffles.
			es := []kedgev1.Role{kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER}
			return Input{Spec: mustSpec(t, "stacked", ""), Secrets: secrets,
				Nodes: []*kedgev1.Node{node(0), node(2, es...), node(3, es...), node(4, es...), node(5, kedgev1.Role_ROLE_K3S_AGENT)}}
		}, func(t *testing.T, out Output) {
			wantRoles(t, out, "nuc0", kedgev1.Role_ROLE_K3S_AGENT)
			wantRoles(t, out, "nuc2", kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER)
		}},
		{"embedded", func(t *testing.T) Input {
			return Input{Spec: mustSpec(t, "embedded", ""), Secrets: secrets, Nodes: nodes(4)}
		}, func(t *testing.T, out Output) {
			if !out.Plans["nuc1"].K3S.ClusterInit || out.Plans["nuc2"].K3S.ClusterInit {
				t.Error("cluster-init not on the first server only")
			}
			if got := out.Plans["nuc3"].K3S.ServerUrl; got != "https://10.0.0.11:6443" {
				t.Errorf("joining server URL %q", got)
			}
			if out.Plans["nuc1"].Etcd != nil || len(out.Plans["nuc1"].K3S.DatastoreEndpoints) > 0 {
				t.Error("embedded server got kedge etcd")
			}
		}},
		{"embedded-registration-address", func(t *testing.T) Input {
			s := mustSpec(t, "embedded", "  keepHostnames: true\n")
			s.K3S.RegistrationAddress = "k3s.edge-1.lan"
			return Input{Spec: s, Secrets: secrets, Nodes: nodes(4)}
		}, func(t *testing.T, out Output) {
			if got := out.Plans["nuc4"].K3S.ServerUrl; got != "https://k3s.edge-1.lan:6443" {
				t.Errorf("agent server URL %q", got)
			}
			if out.Plans["nuc4"].Hostname != "" {
				t.Error("keepHostnames: hostname set anyway")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := tc.in(t)
			out := Compute(in)
			checkInvariants(t, in, out)
			tc.check(t, out)
			golden(t, tc.name, render(t, out))
		})
	}
}

func wantRoles(t *testing.T, out Output, name string, want ...kedgev1.Role) {
	t.Helper()
	if got := out.Roles[name]; !slices.Equal(got, want) {
		t.Errorf("%s: roles %v, want %v", name, got, want)
	}
}

func TestDeterministicAcrossRunsAndNodeOrder(t *testing.T) {
	s := mustSpec(t, "stacked", "")
	base := Compute(Input{Spec: s, Secrets: secrets, Nodes: nodes(9)})
	want := render(t, base)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 20 {
		ns := nodes(9)
		rng.Shuffle(len(ns), func(a, b int) { ns[a], ns[b] = ns[b], ns[a] })
		out := Compute(Input{Spec: s, Secrets: secrets, Nodes: ns})
		if got := render(t, out); !bytes.Equal(got, want) {
			t.Fatalf("shuffle %d changed the plans", i)
		}
		for name, p := range out.Plans {
			a, _ := proto.MarshalOptions{Deterministic: true}.Marshal(p)
			b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(base.Plans[name])
			if !bytes.Equal(a, b) {
				t.Fatalf("shuffle %d: %s not byte-identical", i, name)
			}
		}
	}
}

func TestStickyRoles(t *testing.T) {
	s := mustSpec(t, "stacked", "")
	// nuc1..nuc3 hold etcd; nuc2 is offline (no effect) and a node with an
	// earlier sequence but no roles shows up late: nothing reshuffles.
	etcdServer := []kedgev1.Role{kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER}
	ns := []*kedgev1.Node{node(1, etcdServer...), node(2, etcdServer...), node(3, etcdServer...), node(4, kedgev1.Role_ROLE_K3S_AGENT)}
	ns[1].Condition = kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE
	late := node(0)
	out := Compute(Input{Spec: s, Secrets: secrets, Nodes: append(ns, late)})
	wantRoles(t, out, "nuc0", kedgev1.Role_ROLE_K3S_AGENT)
	wantRoles(t, out, "nuc2", etcdServer...)
	wantRoles(t, out, "nuc4", kedgev1.Role_ROLE_K3S_AGENT)

	// A REMOVED member frees its roles: the next node without roles takes them.
	ns[1].State = kedgev1.NodeState_NODE_STATE_REMOVED
	fresh := node(5)
	out = Compute(Input{Spec: s, Secrets: secrets, Nodes: append(ns, fresh)})
	if _, ok := out.Plans["nuc2"]; ok {
		t.Error("a removed node got a plan")
	}
	wantRoles(t, out, "nuc5", etcdServer...)
	wantRoles(t, out, "nuc4", kedgev1.Role_ROLE_K3S_AGENT)

	// Pending nodes get nothing.
	pending := node(6)
	pending.State = kedgev1.NodeState_NODE_STATE_PENDING_APPROVAL
	out = Compute(Input{Spec: s, Secrets: secrets, Nodes: append(ns, pending)})
	if _, ok := out.Plans["nuc6"]; ok {
		t.Error("a node pending approval got a plan")
	}
}

func TestAgentsMoveOnlyWhenTheirServerIsUnhealthy(t *testing.T) {
	s := mustSpec(t, "stacked", "")
	ns := nodes(23) // 3 servers, 20 agents
	before := Compute(Input{Spec: s, Secrets: secrets, Nodes: ns})
	perServer := map[string]int{}
	for i := 4; i <= 23; i++ {
		perServer[before.Plans[fmt.Sprintf("nuc%d", i)].K3S.ServerUrl]++
	}
	if len(perServer) != 3 {
		t.Errorf("agents spread over %d servers, want all 3: %v", len(perServer), perServer)
	}

	for _, cond := range []kedgev1.NodeCondition{kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE, kedgev1.NodeCondition_NODE_CONDITION_DEGRADED} {
		ns := nodes(23)
		ns[1].Condition = cond // nuc2, https://10.0.0.12:6443
		after := Compute(Input{Spec: s, Secrets: secrets, Nodes: ns})
		moved := 0
		for i := 4; i <= 23; i++ {
			name := fmt.Sprintf("nuc%d", i)
			was, now := before.Plans[name].K3S.ServerUrl, after.Plans[name].K3S.ServerUrl
			switch {
			case now == "https://10.0.0.12:6443":
				t.Errorf("%v: %s still points at the unhealthy server", cond, name)
			case was == "https://10.0.0.12:6443":
				moved++
			case was != now:
				t.Errorf("%v: %s moved from healthy %s to %s", cond, name, was, now)
			}
		}
		if moved == 0 {
			t.Errorf("%v: no agent was on nuc2 to move", cond)
		}
		// Server and etcd plans do not change with another node's health.
		for _, name := range []string{"nuc1", "nuc2", "nuc3"} {
			if after.Plans[name].Hash != before.Plans[name].Hash {
				t.Errorf("%v: %s's plan changed", cond, name)
			}
		}
	}

	// No server healthy: agents point at the first server by order.
	ns = nodes(5)
	for _, n := range ns[:3] {
		n.Condition = kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE
	}
	out := Compute(Input{Spec: s, Secrets: secrets, Nodes: ns})
	if got := out.Plans["nuc4"].K3S.ServerUrl; got != "https://10.0.0.11:6443" {
		t.Errorf("with no healthy server, agent points at %s, want the first server", got)
	}
}

func TestAgentStaysOnItsNewServerWhenTheOldOneReturns(t *testing.T) {
	s := mustSpec(t, "stacked", "")
	healthy := Compute(Input{Spec: s, Secrets: secrets, Nodes: nodes(23)})
	ns := nodes(23)
	ns[1].Condition = kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE // nuc2
	failedOver := Compute(Input{Spec: s, Secrets: secrets, Nodes: ns, Previous: healthy.Plans})
	// nuc2 is back: agents that moved off it keep their new server.
	back := Compute(Input{Spec: s, Secrets: secrets, Nodes: nodes(23), Previous: failedOver.Plans})
	moved := 0
	for i := 4; i <= 23; i++ {
		name := fmt.Sprintf("nuc%d", i)
		was, during, now := healthy.Plans[name].K3S.ServerUrl, failedOver.Plans[name].K3S.ServerUrl, back.Plans[name].K3S.ServerUrl
		if was != during {
			moved++
		}
		if now != during {
			t.Errorf("%s moved again when nuc2 returned: %s -> %s", name, during, now)
		}
		if back.Plans[name].Hash != failedOver.Plans[name].Hash {
			t.Errorf("%s's plan changed when nuc2 returned", name)
		}
	}
	if moved == 0 {
		t.Fatal("no agent was on nuc2 to move")
	}
}

func TestAgentWaitsWithoutServers(t *testing.T) {
	s := mustSpec(t, "embedded", `  inventory:
    - {name: a, match: {hostname: localhost-1}, roles: [agent]}
`)
	out := Compute(Input{Spec: s, Secrets: secrets, Nodes: []*kedgev1.Node{node(1)}})
	if got := out.Plans["nuc1"].Waiting; got != "waiting for a K3s server to enroll" {
		t.Errorf("waiting %q", got)
	}
}

func TestHashIgnoresRevisionAndHash(t *testing.T) {
	p := &kedgev1.Plan{NodeName: "nuc1", Cluster: "edge-1", Hostname: "nuc1"}
	h := Hash(p)
	p.Revision, p.Hash = 42, "stale"
	if Hash(p) != h {
		t.Error("revision or hash changed the content hash")
	}
	p.Hostname = "other"
	if Hash(p) == h {
		t.Error("a content change kept the hash")
	}
}

func TestEtcdJoinerGetsExistingStateAndLeavesMembersAlone(t *testing.T) {
	s := mustSpec(t, "stacked", "")
	etcdServer := []kedgev1.Role{kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER}
	// nuc2 was removed; nuc4 replaces it.
	ns := []*kedgev1.Node{node(1, etcdServer...), node(3, etcdServer...), node(4)}
	joinList := []*kedgev1.EtcdMember{
		{Name: "nuc4", PeerUrls: []string{"https://10.0.0.14:2380"}},
		{Name: "nuc1", PeerUrls: []string{"https://10.0.0.11:2380"}},
		{Name: "nuc3", PeerUrls: []string{"https://10.0.0.13:2380"}},
	}
	out := Compute(Input{Spec: s, Secrets: secrets, Nodes: ns, EtcdJoins: map[string][]*kedgev1.EtcdMember{"nuc4": joinList}})
	wantRoles(t, out, "nuc4", etcdServer...)
	p := out.Plans["nuc4"]
	if p.Waiting != "" || p.Etcd.InitialClusterState != "existing" {
		t.Fatalf("joiner plan: waiting %q state %q", p.Waiting, p.GetEtcd().GetInitialClusterState())
	}
	var names []string
	for _, m := range p.Etcd.InitialCluster {
		names = append(names, m.Name)
	}
	if !slices.Equal(names, []string{"nuc1", "nuc3", "nuc4"}) {
		t.Errorf("joiner initial cluster %v", names)
	}
	if got := out.Plans["nuc1"].Etcd; got.InitialClusterState != "new" || len(got.InitialCluster) != 2 {
		t.Errorf("the joiner entered a running member's initial cluster: %v", got)
	}
	if got := out.Plans["nuc1"].K3S.DatastoreEndpoints; !slices.Equal(got, []string{"https://10.0.0.11:2379", "https://10.0.0.13:2379", "https://10.0.0.14:2379"}) {
		t.Errorf("datastore endpoints %v, want every member's", got)
	}
}

func TestStickyRolesThatNoLongerFitTheTopologyAreReassigned(t *testing.T) {
	es := []kedgev1.Role{kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER}
	ns := []*kedgev1.Node{node(1, es...), node(2, es...), node(3, es...), node(4, kedgev1.Role_ROLE_K3S_AGENT)}
	out := Compute(Input{Spec: mustSpec(t, "embedded", ""), Secrets: secrets, Nodes: ns})
	for _, name := range []string{"nuc1", "nuc2", "nuc3"} {
		wantRoles(t, out, name, kedgev1.Role_ROLE_K3S_SERVER)
	}
	wantRoles(t, out, "nuc4", kedgev1.Role_ROLE_K3S_AGENT)
}

func TestRemovingAMemberAfterReleaseHoldsNothingBack(t *testing.T) {
	s := mustSpec(t, "stacked", "")
	first := Compute(Input{Spec: s, Secrets: secrets, Nodes: nodes(5)})
	for name, p := range first.Plans {
		if p.Waiting != "" {
			t.Fatalf("%s waiting in a complete cluster: %q", name, p.Waiting)
		}
	}
	stored := func() []*kedgev1.Node {
		ns := nodes(5)
		for _, n := range ns {
			n.Roles = first.Roles[n.Name]
		}
		return ns
	}
	// nuc2 is removed; nuc6 enrolls to replace it.
	ns := stored()
	ns[1].State = kedgev1.NodeState_NODE_STATE_REMOVED
	ns = append(ns, node(6))
	out := Compute(Input{Spec: s, Secrets: secrets, Nodes: ns, Previous: first.Plans})
	for _, name := range []string{"nuc1", "nuc3"} {
		p := out.Plans[name]
		if p.Waiting != "" || !proto.Equal(p.Etcd, first.Plans[name].Etcd) {
			t.Errorf("%s: a running member's etcd plan changed or was held back: waiting %q", name, p.Waiting)
		}
	}
	for _, name := range []string{"nuc4", "nuc5"} {
		if p := out.Plans[name]; p.Waiting != "" || p.K3S == nil {
			t.Errorf("%s: agent held back after a member was removed: %q", name, p.Waiting)
		}
	}
	wantRoles(t, out, "nuc6", kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER)
	if p := out.Plans["nuc6"]; !NeedsJoin(p) || p.Etcd != nil || p.K3S != nil {
		t.Errorf("replacement member: waiting %q, want %q and no sections", p.Waiting, WaitingForJoin)
	}

	// The coordinator adds nuc6 and plans again with its member list.
	join := []*kedgev1.EtcdMember{
		{Name: "nuc1", PeerUrls: []string{"https://10.0.0.11:2380"}},
		{Name: "nuc3", PeerUrls: []string{"https://10.0.0.13:2380"}},
		{Name: "nuc6", PeerUrls: []string{"https://10.0.0.16:2380"}},
	}
	prev := map[string]*kedgev1.Plan{}
	for name, p := range out.Plans {
		prev[name] = p
	}
	out = Compute(Input{Spec: s, Secrets: secrets, Nodes: ns, Previous: prev, EtcdJoins: map[string][]*kedgev1.EtcdMember{"nuc6": join}})
	if p := out.Plans["nuc6"]; p.Waiting != "" || p.Etcd.GetInitialClusterState() != "existing" || len(p.Etcd.GetInitialCluster()) != 3 {
		t.Errorf("joined member plan: waiting %q etcd %v", p.Waiting, p.Etcd)
	}
	if !proto.Equal(out.Plans["nuc1"].Etcd, first.Plans["nuc1"].Etcd) {
		t.Error("the join changed a running member's etcd plan")
	}

	// Without stored plans, members' reports tell that etcd was released.
	ns = stored()
	for _, n := range ns[:3] {
		n.Status = &kedgev1.NodeStatus{Etcd: &kedgev1.EtcdMemberStatus{MemberId: 7, Healthy: true}}
	}
	ns[1].State = kedgev1.NodeState_NODE_STATE_REMOVED
	out = Compute(Input{Spec: s, Secrets: secrets, Nodes: ns})
	for name, p := range out.Plans {
		if p.Waiting != "" {
			t.Errorf("%s: held back after a removal, with members reporting: %q", name, p.Waiting)
		}
	}
}

// TestRandomInputs: whatever the nodes' states, stored roles and
// conditions, Compute does not panic, keeps its invariants, never gives an
// agent the server token and does not depend on the order of its input.
func TestRandomInputs(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	specs := []*kedgev1.ClusterSpec{mustSpec(t, "stacked", ""), mustSpec(t, "external", ""), mustSpec(t, "embedded", "")}
	allRoles := [][]kedgev1.Role{nil, {kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER}, {kedgev1.Role_ROLE_ETCD}, {kedgev1.Role_ROLE_K3S_SERVER}, {kedgev1.Role_ROLE_K3S_AGENT}}
	for i := range 300 {
		s := specs[rng.IntN(len(specs))]
		var ns []*kedgev1.Node
		for j := range rng.IntN(12) {
			n := node(j + 1)
			n.Roles = allRoles[rng.IntN(len(allRoles))]
			n.State = kedgev1.NodeState(rng.IntN(4))
			n.Condition = kedgev1.NodeCondition(rng.IntN(5))
			n.EnrollSequence = uint64(rng.IntN(5))
			if rng.IntN(3) == 0 {
				n.Status = &kedgev1.NodeStatus{Etcd: &kedgev1.EtcdMemberStatus{MemberId: uint64(j + 1)}}
			}
			ns = append(ns, n)
		}
		in := Input{Spec: s, Secrets: secrets, Nodes: ns}
		out := Compute(in)
		checkInvariants(t, in, out)
		shuffled := slices.Clone(ns)
		rng.Shuffle(len(shuffled), func(a, b int) { shuffled[a], shuffled[b] = shuffled[b], shuffled[a] })
		again := Compute(Input{Spec: s, Secrets: secrets, Nodes: shuffled})
		if !bytes.Equal(render(t, out), render(t, again)) {
			t.Fatalf("case %d: node order changed the plans", i)
		}
	}
}

const v1, v2 = "v1.31.4+k3s1", "v1.32.1+k3s1"

// withVersion is s with another K3s version and checksum.
func withVersion(s *kedgev1.ClusterSpec, version string) *kedgev1.ClusterSpec {
	c := proto.Clone(s).(*kedgev1.ClusterSpec)
	c.K3S.Version = version
	if version != v1 {
		c.K3S.Binary.Sha256 = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
	}
	return c
}

// versions is the K3s version each plan installs, "" for none.
func versions(out Output) map[string]string {
	got := map[string]string{}
	for name, p := range out.Plans {
		got[name] = p.GetK3S().GetBinary().GetVersion()
	}
	return got
}

// fleet is a rolling upgrade as the coordinator drives it: each step plans
// with the previous step's plans stored, the nodes reporting as they do.
type fleet struct {
	t     *testing.T
	spec  *kedgev1.ClusterSpec
	nodes []*kedgev1.Node
	plans map[string]*kedgev1.Plan
}

func (f *fleet) node(name string) *kedgev1.Node {
	for _, n := range f.nodes {
		if n.Name == name {
			return n
		}
	}
	f.t.Fatalf("no node %s", name)
	return nil
}

// applied: name reports its stored plan applied, with condition c.
func (f *fleet) applied(c kedgev1.NodeCondition, names ...string) {
	for _, name := range names {
		n := f.node(name)
		n.Status = &kedgev1.NodeStatus{PlanHash: f.plans[name].GetHash()}
		n.Condition = c
	}
}

func (f *fleet) plan() Output {
	f.t.Helper()
	in := Input{Spec: f.spec, Secrets: secrets, Nodes: f.nodes, Previous: f.plans}
	out := Compute(in)
	checkInvariants(f.t, in, out)
	again := Compute(in)
	if !bytes.Equal(render(f.t, out), render(f.t, again)) {
		f.t.Fatal("same input, different plans")
	}
	f.plans = out.Plans
	return out
}

const ready = kedgev1.NodeCondition_NODE_CONDITION_READY

// newFleet: n nodes of topology, released on v1, all applied and READY.
func newFleet(t *testing.T, topology string, n int) *fleet {
	f := &fleet{t: t, spec: mustSpec(t, topology, ""), nodes: nodes(n)}
	out := f.plan()
	for name, v := range versions(out) {
		if v != v1 {
			t.Fatalf("%s: first release installs %q, want %s", name, v, v1)
		}
	}
	var all []string
	for _, nd := range f.nodes {
		all = append(all, nd.Name)
	}
	f.applied(ready, all...)
	return f
}

func TestRollingUpgrade(t *testing.T) {
	// 3 stacked servers (nuc1..3) and 2 agents, all READY on v1; v2 applied.
	f := newFleet(t, "stacked", 5)
	f.spec = withVersion(f.spec, v2)
	steps := []struct {
		name   string
		before func()
		want   map[string]string
	}{
		{"spec v2: only the first server", func() {},
			map[string]string{"nuc1": v2, "nuc2": v1, "nuc3": v1, "nuc4": v1, "nuc5": v1}},
		{"nuc1 not yet applied", func() {},
			map[string]string{"nuc1": v2, "nuc2": v1, "nuc3": v1, "nuc4": v1, "nuc5": v1}},
		{"nuc1 applied, still provisioning", func() { f.applied(kedgev1.NodeCondition_NODE_CONDITION_PROVISIONING, "nuc1") },
			map[string]string{"nuc1": v2, "nuc2": v1, "nuc3": v1, "nuc4": v1, "nuc5": v1}},
		{"nuc1 applied and READY: nuc2", func() { f.applied(ready, "nuc1") },
			map[string]string{"nuc1": v2, "nuc2": v2, "nuc3": v1, "nuc4": v1, "nuc5": v1}},
		{"nuc2 READY on its old plan still counts as in flight", func() {},
			map[string]string{"nuc1": v2, "nuc2": v2, "nuc3": v1, "nuc4": v1, "nuc5": v1}},
		{"nuc2 applied and READY: nuc3", func() { f.applied(ready, "nuc2") },
			map[string]string{"nuc1": v2, "nuc2": v2, "nuc3": v2, "nuc4": v1, "nuc5": v1}},
		{"nuc3 applied, degraded: agents wait", func() { f.applied(kedgev1.NodeCondition_NODE_CONDITION_DEGRADED, "nuc3") },
			map[string]string{"nuc1": v2, "nuc2": v2, "nuc3": v2, "nuc4": v1, "nuc5": v1}},
		{"every server READY on v2: all agents", func() { f.applied(ready, "nuc3") },
			map[string]string{"nuc1": v2, "nuc2": v2, "nuc3": v2, "nuc4": v2, "nuc5": v2}},
		{"agents applied: settled", func() { f.applied(ready, "nuc4", "nuc5") },
			map[string]string{"nuc1": v2, "nuc2": v2, "nuc3": v2, "nuc4": v2, "nuc5": v2}},
	}
	for _, st := range steps {
		before := f.plans
		st.before()
		out := f.plan()
		if got := versions(out); !maps.Equal(got, st.want) {
			t.Fatalf("%s: versions %v, want %v", st.name, got, st.want)
		}
		// A node not in turn keeps its plan byte for byte: no restart.
		for name, v := range st.want {
			if v == v1 && out.Plans[name].Hash != before[name].Hash {
				t.Errorf("%s: %s still on v1 but its plan changed", st.name, name)
			}
		}
	}
}

func TestRollingUpgradeNewNodeGetsTheSpecBinaryAtOnce(t *testing.T) {
	f := newFleet(t, "stacked", 5)
	f.spec = withVersion(f.spec, v2)
	f.plan() // nuc1 in flight
	f.nodes = append(f.nodes, node(6))
	out := f.plan()
	want := map[string]string{"nuc1": v2, "nuc2": v1, "nuc3": v1, "nuc4": v1, "nuc5": v1, "nuc6": v2}
	if got := versions(out); !maps.Equal(got, want) {
		t.Fatalf("versions %v, want %v", got, want)
	}
}

func TestRollingUpgradeSpecBackMidway(t *testing.T) {
	f := newFleet(t, "stacked", 5)
	f.spec = withVersion(f.spec, v2)
	f.plan()
	f.applied(ready, "nuc1")
	f.plan() // nuc1 on v2, nuc2 in flight to v2
	f.spec = withVersion(f.spec, v1)
	for _, st := range []struct {
		name   string
		before func()
		want   map[string]string
	}{
		{"back to v1 while nuc2 applies v2: nothing else moves", func() {},
			map[string]string{"nuc1": v2, "nuc2": v2, "nuc3": v1, "nuc4": v1, "nuc5": v1}},
		{"nuc2 READY on v2: nuc1 back first, by order", func() { f.applied(ready, "nuc2") },
			map[string]string{"nuc1": v1, "nuc2": v2, "nuc3": v1, "nuc4": v1, "nuc5": v1}},
		{"nuc1 READY on v1: nuc2", func() { f.applied(ready, "nuc1") },
			map[string]string{"nuc1": v1, "nuc2": v1, "nuc3": v1, "nuc4": v1, "nuc5": v1}},
	} {
		st.before()
		if got := versions(f.plan()); !maps.Equal(got, st.want) {
			t.Fatalf("%s: versions %v, want %v", st.name, got, st.want)
		}
	}
}

func TestRollingUpgradeUnreachableServerInFlightBlocks(t *testing.T) {
	f := newFleet(t, "stacked", 5)
	f.spec = withVersion(f.spec, v2)
	f.plan()
	f.node("nuc1").Condition = kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE
	for range 3 {
		want := map[string]string{"nuc1": v2, "nuc2": v1, "nuc3": v1, "nuc4": v1, "nuc5": v1}
		if got := versions(f.plan()); !maps.Equal(got, want) {
			t.Fatalf("versions %v, want %v", got, want)
		}
	}
	// An Unreachable server not in turn does not block: nuc3 is down on
	// v1, nuc1 comes back; nuc2 goes next, then nuc3 (it applies on return).
	f.node("nuc3").Condition = kedgev1.NodeCondition_NODE_CONDITION_UNREACHABLE
	f.applied(ready, "nuc1")
	if got := versions(f.plan()); got["nuc2"] != v2 || got["nuc3"] != v1 {
		t.Fatalf("versions %v: want nuc2 on v2, nuc3 still v1", got)
	}
	f.applied(ready, "nuc2")
	if got := versions(f.plan()); got["nuc3"] != v2 || got["nuc4"] != v1 {
		t.Fatalf("versions %v: want nuc3 on v2, agents on v1 until it is back", got)
	}
}

func TestRollingUpgradeEmbedded(t *testing.T) {
	f := newFleet(t, "embedded", 5)
	var servers, agents []string
	for _, n := range f.nodes {
		if slices.Contains(f.plans[n.Name].Roles, kedgev1.Role_ROLE_K3S_SERVER) {
			servers = append(servers, n.Name)
		} else {
			agents = append(agents, n.Name)
		}
	}
	if len(servers) < 2 || len(agents) == 0 {
		t.Fatalf("servers %v agents %v", servers, agents)
	}
	f.spec = withVersion(f.spec, v2)
	for i, s := range servers {
		got := versions(f.plan())
		for j, other := range servers {
			if want := map[bool]string{true: v2, false: v1}[j <= i]; got[other] != want {
				t.Fatalf("server %s in turn: %s installs %s, want %s", s, other, got[other], want)
			}
		}
		for _, a := range agents {
			if got[a] != v1 {
				t.Fatalf("agent %s on %s while servers roll", a, got[a])
			}
		}
		f.applied(ready, s)
	}
	for _, a := range agents {
		if got := versions(f.plan()); got[a] != v2 {
			t.Fatalf("agent %s on %s after every server", a, got[a])
		}
	}
}

// A server still applying its first plan, while the others run, takes a new
// version at once: no other server's restart is in flight to overlap.
func TestUpgradeOfAServerStillApplyingItsFirstPlan(t *testing.T) {
	s := mustSpec(t, "stacked", "")
	ns := nodes(3)
	first := Compute(Input{Spec: s, Secrets: secrets, Nodes: ns})
	s.K3S.Version, s.K3S.Binary.Sha256 = "v2", strings.Repeat("b", 64)
	for _, n := range ns[1:] {
		n.Status = &kedgev1.NodeStatus{PlanHash: first.Plans[n.Name].Hash}
		n.Condition = kedgev1.NodeCondition_NODE_CONDITION_READY
	}
	ns[0].Status = nil // never reported: still applying its first plan
	next := Compute(Input{Spec: s, Secrets: secrets, Nodes: ns, Previous: first.Plans})
	if got := next.Plans["nuc1"].K3S.Binary.Version; got != "v2" {
		t.Errorf("first server got %s; want v2 at once", got)
	}
	for _, name := range []string{"nuc2", "nuc3"} {
		if next.Plans[name].Hash != first.Plans[name].Hash {
			t.Errorf("%s changed while nuc1 is still applying", name)
		}
	}
}
