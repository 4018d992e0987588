package report

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/nodeagent/paths"
	"github.com/kedge-io/kedge/nodeagent/sysd"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

func TestBuildReportsTheTargetPlansUnitsAndCertExpiries(t *testing.T) {
	root := t.TempDir()
	ca, err := pki.NewCA("etcd CA", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, err := ca.Issue(pki.EtcdMember("nuc-1", []string{"10.0.0.1"}, "", pki.DefaultLifetimes()), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Dir(paths.In(root, paths.EtcdServerCert)), 0o755)
	os.WriteFile(paths.In(root, paths.EtcdServerCert), certPEM, 0o644)

	fake := sysd.NewFake()
	fake.Start(context.Background(), paths.EtcdUnit)
	applied := &kedgev1.Plan{Hash: "old", Revision: 3}
	target := &kedgev1.Plan{Hash: "new", Revision: 4, Waiting: "", Etcd: &kedgev1.EtcdPlan{},
		K3S: &kedgev1.K3SPlan{Role: kedgev1.Role_ROLE_K3S_AGENT}}
	probed := false
	st, units := Build(context.Background(), Input{Root: root, Systemd: fake, Plan: applied, Target: target,
		ApplyError: "boom", ApplyStep: "render k3s",
		Probes: Probes{Etcd: func(context.Context, string, *kedgev1.Plan) *kedgev1.EtcdMemberStatus {
			probed = true
			return &kedgev1.EtcdMemberStatus{Healthy: true}
		}}})
	if st.PlanHash != "old" || st.PlanRevision != 3 || st.ApplyStep != "render k3s" || !probed || !st.Etcd.GetHealthy() {
		t.Fatalf("status: %v", st)
	}
	if len(st.Units) != 2 || st.Units[0].Name != paths.EtcdUnit || st.Units[0].ActiveState != "active" || st.Units[1].Name != paths.K3sAgentUnit {
		t.Fatalf("units: %v", st.Units)
	}
	if len(units) != 2 || units[1].ActiveState != "inactive" {
		t.Fatalf("status-file units: %+v", units)
	}
	if st.K3S != nil {
		t.Error("a K3s agent was probed as a server")
	}
	var found bool
	for _, c := range st.Certificates {
		if c.Name == "etcd-server" && c.NotAfter.AsTime().After(time.Now()) {
			found = true
		}
	}
	if !found {
		t.Fatalf("no etcd-server expiry in %v", st.Certificates)
	}
}
