//go:build e2e

package e2e_test

import (
	"testing"
	"time"

	"github.com/kedge-io/kedge/test/e2e"
)

// TestExternal is issue 7's scenario 3: 3 etcd-only NUCs, 2 K3s servers on
// other NUCs, 1 agent.
func TestExternal(t *testing.T) {
	e2e.RequireRoot(t, t.Skip)
	lab := e2e.NewLab(t, e2e.Nodes(6))
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
