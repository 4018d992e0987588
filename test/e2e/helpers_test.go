//go:build e2e

package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
	"github.com/kedge-io/kedge/test/e2e"
)

// unitState is what tells whether systemd restarted a unit.
type unitState struct {
	ActiveState, NRestarts, ActiveEnterTimestamp, MainPID string
}

// unitStates records the given units on each machine (units a machine does
// not have are skipped).
func unitStates(t *testing.T, ms []*e2e.Machine, units ...string) map[string]unitState {
	t.Helper()
	out := map[string]unitState{}
	for _, m := range ms {
		for _, u := range units {
			p, err := m.SystemctlShow(u)
			if err != nil {
				t.Fatalf("systemctl show %s on %s: %v", u, m.Name, err)
			}
			if p["LoadState"] != "loaded" || p["UnitFileState"] == "" {
				continue
			}
			out[m.Name+"/"+u] = unitState{p["ActiveState"], p["NRestarts"], p["ActiveEnterTimestamp"], p["MainPID"]}
		}
	}
	return out
}

// sameUnits fails when a unit changed state or was restarted.
func sameUnits(t *testing.T, before, after map[string]unitState) {
	t.Helper()
	var keys []string
	for k := range before {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if a, ok := after[k]; !ok || a != before[k] {
			t.Errorf("%s restarted or changed: before %+v, after %+v", k, before[k], after[k])
		}
	}
}

var kedgeUnits = []string{"kedge-etcd.service", "k3s.service", "k3s-agent.service"}

// waitActive waits until unit is active on m.
func waitActive(t *testing.T, m *e2e.Machine, unit string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !m.IsActive(unit) {
		if time.Now().After(deadline) {
			p, _ := m.SystemctlShow(unit)
			t.Fatalf("%s on %s not active within %s: ActiveState=%s SubState=%s Result=%s", unit, m.Name, timeout,
				p["ActiveState"], p["SubState"], p["Result"])
		}
		time.Sleep(time.Second)
	}
}

// rolesOf splits the healthy cluster's machines by role, as the coordinator
// assigned them.
func rolesOf(t *testing.T, lab *e2e.Lab) (etcd, servers, agents []*e2e.Machine) {
	t.Helper()
	st := lab.Status()
	return lab.MachinesWithRole(st, kedgev1.Role_ROLE_ETCD),
		lab.MachinesWithRole(st, kedgev1.Role_ROLE_K3S_SERVER),
		lab.MachinesWithRole(st, kedgev1.Role_ROLE_K3S_AGENT)
}

// checkHealthyCluster is what an operator checks by hand: kedgectl says
// Healthy with etcd n/n, the units are active where they belong, and the
// etcd cluster answers Debian's etcdctl from outside.
func checkHealthyCluster(t *testing.T, lab *e2e.Lab, wantEtcd, wantServers, wantAgents int) (etcd, servers, agents []*e2e.Machine) {
	t.Helper()
	var resp kedgev1.GetClusterStatusResponse
	lab.KedgectlJSON(&resp, "status", lab.ClusterName())
	st := resp.GetStatus()
	if st.GetPhase() != kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY {
		t.Errorf("kedgectl status: phase %s (%s), want Healthy", st.GetPhase(), st.GetReason())
	}
	if e := st.GetEtcd(); e.GetHealthy() != uint32(wantEtcd) || e.GetTotal() != uint32(wantEtcd) || !e.GetHasQuorum() {
		t.Errorf("kedgectl status: etcd %d/%d quorum %v, want %d/%d", e.GetHealthy(), e.GetTotal(), e.GetHasQuorum(), wantEtcd, wantEtcd)
	}
	etcd, servers, agents = rolesOf(t, lab)
	if len(etcd) != wantEtcd || len(servers) != wantServers || len(agents) != wantAgents {
		t.Fatalf("roles: %d etcd, %d servers, %d agents; want %d, %d, %d", len(etcd), len(servers), len(agents), wantEtcd, wantServers, wantAgents)
	}
	for _, m := range etcd {
		waitActive(t, m, "kedge-etcd.service", 30*time.Second)
	}
	for _, m := range servers {
		waitActive(t, m, "k3s.service", 30*time.Second)
	}
	for _, m := range agents {
		waitActive(t, m, "k3s-agent.service", 30*time.Second)
		if m.IsActive("k3s.service") {
			t.Errorf("%s is an agent but runs k3s.service", m.Name)
		}
	}
	checkEtcdFromOutside(t, lab, etcd)
	return etcd, servers, agents
}

// checkEtcdFromOutside runs etcdctl member list and endpoint health with a
// datastore-client cert copied from an etcd machine.
func checkEtcdFromOutside(t *testing.T, lab *e2e.Lab, etcd []*e2e.Machine) {
	t.Helper()
	eps := e2e.EtcdEndpoints(etcd)
	out, err := lab.Etcdctl(etcd[0], eps, "member", "list", "-w", "json")
	if err != nil {
		t.Fatalf("%v", err)
	}
	var list struct {
		Members []struct {
			Name       string   `json:"name"`
			ClientURLs []string `json:"clientURLs"`
		} `json:"members"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("etcdctl member list -w json: %v\n%s", err, out)
	}
	if len(list.Members) != len(etcd) {
		t.Errorf("etcdctl member list: %d members, want %d:\n%s", len(list.Members), len(etcd), out)
	}
	out, err = lab.Etcdctl(etcd[0], eps, "endpoint", "health", "-w", "json")
	if err != nil {
		t.Fatalf("%v", err)
	}
	var health []struct {
		Endpoint string `json:"endpoint"`
		Health   bool   `json:"health"`
	}
	if err := json.Unmarshal([]byte(out), &health); err != nil {
		t.Fatalf("etcdctl endpoint health -w json: %v\n%s", err, out)
	}
	for _, h := range health {
		if !h.Health {
			t.Errorf("etcdctl endpoint health: %s unhealthy", h.Endpoint)
		}
	}
	if len(health) != len(eps) {
		t.Errorf("etcdctl endpoint health: %d answers, want %d", len(health), len(eps))
	}
}

// planOf reads a node's plan through the admin API.
func planOf(t *testing.T, lab *e2e.Lab, node string) *kedgev1.Plan {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := lab.Coordinator.Admin.GetNode(ctx, &kedgev1.GetNodeRequest{Name: node})
	if err != nil {
		t.Fatalf("get node %s: %v", node, err)
	}
	return resp.GetPlan()
}

// nodeFor is the coordinator's node record for a machine.
func nodeFor(t *testing.T, lab *e2e.Lab, m *e2e.Machine) *kedgev1.Node {
	t.Helper()
	for _, n := range lab.Status().GetNodes() {
		if lab.MachineForNode(n) == m {
			return n
		}
	}
	t.Fatalf("no node record for %s (%s)", m.Name, m.IP)
	return nil
}

// planHashes maps node name -> plan hash, from kedgectl nodes -o json.
func planHashes(t *testing.T, lab *e2e.Lab) map[string]string {
	t.Helper()
	var resp kedgev1.ListNodesResponse
	lab.KedgectlJSON(&resp, "nodes", "--cluster", lab.ClusterName())
	out := map[string]string{}
	for _, n := range resp.GetNodes() {
		out[n.GetName()] = n.GetPlanHash()
	}
	return out
}

// record logs a measured time in a greppable form docs/lab.md quotes.
func record(t *testing.T, what string, d time.Duration) {
	t.Helper()
	t.Logf("TIMING %s: %s", what, d.Round(100*time.Millisecond))
}

func names(ms []*e2e.Machine) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Name)
	}
	return strings.Join(s, ",")
}

func describe(ms ...[]*e2e.Machine) string {
	return fmt.Sprintf("etcd [%s] servers [%s] agents [%s]", names(ms[0]), names(ms[1]), names(ms[2]))
}
