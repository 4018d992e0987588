//go:build e2e

package e2e_test

import (
	"testing"
	"time"

	"github.com/kedge-io/kedge/test/e2e"
)

// TestExternal is issue 7's scenario 3: 3 etcd-only NUCs, 2 K3s servers on
// other NUCs, 1 agent; two of the six share a machine-id, as clones of one
// image do.
func TestExternal(t *testing.T) {
	e2e.RequireRoot(t, t.Skip)
	lab := e2e.NewLab(t, e2e.Nodes(4))
	// Two NUCs from an image cloned without resetting its machine-id: they
	// must still become two nodes.
	cloned := e2e.RandomMachineID()
	twinA, twinB := lab.AddMachine(e2e.WithMachineID(cloned)), lab.AddMachine(e2e.WithMachineID(cloned))
	lab.Coordinator.ApplySpec(t, lab.ExternalSpec(2))
	lab.PowerOnAll()
	record(t, "external 6 NUCs power-on to Healthy", lab.WaitHealthy(t, 8*time.Minute))
	etcd, servers, agents := checkHealthyCluster(t, lab, 3, 2, 1)
	t.Logf("roles: %s", describe(etcd, servers, agents))
	for _, m := range etcd {
		if m.IsActive("k3s.service") || m.IsActive("k3s-agent.service") {
			t.Errorf("external: etcd node %s runs K3s", m.Name)
		}
	}
	for _, m := range servers {
		if m.IsActive("kedge-etcd.service") {
			t.Errorf("external: K3s server %s runs etcd", m.Name)
		}
	}
	a, b := nodeFor(t, lab, twinA), nodeFor(t, lab, twinB)
	if a.GetName() == b.GetName() {
		t.Errorf("%s and %s share machine-id %s and became one node %s", twinA.Name, twinB.Name, cloned, a.GetName())
	}
	if len(a.GetWarnings())+len(b.GetWarnings()) == 0 {
		t.Errorf("nodes %s and %s share machine-id %s but carry no warning about it", a.GetName(), b.GetName(), cloned)
	}
	t.Logf("shared machine-id warnings: %s: %v; %s: %v", a.GetName(), a.GetWarnings(), b.GetName(), b.GetWarnings())
	// The servers store in the external etcd: a pod written through one
	// server is in etcd.
	servers[0].MustExec("k3s", "kubectl", "run", "nginx", "--image", "nginx", "--port", "80")
	out, err := lab.Etcdctl(etcd[0], e2e.EtcdEndpoints(etcd), "get", "/registry/pods/default/nginx", "--prefix", "--keys-only")
	if err != nil {
		t.Fatalf("%v", err)
	}
	if out == "" {
		t.Errorf("etcdctl get /registry/pods/default/nginx --prefix: no key after kubectl run on %s", servers[0].Name)
	}
}
