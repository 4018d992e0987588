package etcdrole_test

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	systemd "github.com/kedge-io/kedge/deploy/systemd"
	"github.com/kedge-io/kedge/nodeagent/etcdrole"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func stackedPlan() *kedgev1.Plan {
	members := []*kedgev1.EtcdMember{}
	for i, ip := range []string{"10.0.0.11", "10.0.0.12", "10.0.0.13"} {
		members = append(members, &kedgev1.EtcdMember{
			Name:       "nuc-" + string(rune('1'+i)),
			PeerUrls:   []string{"https://" + ip + ":2380"},
			ClientUrls: []string{"https://" + ip + ":2379"},
		})
	}
	return &kedgev1.Plan{
		NodeName: "nuc-2",
		Cluster:  "edge",
		Roles:    []kedgev1.Role{kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER},
		Etcd: &kedgev1.EtcdPlan{
			MemberName:          "nuc-2",
			PeerUrls:            []string{"https://10.0.0.12:2380"},
			ClientUrls:          []string{"https://10.0.0.12:2379"},
			InitialCluster:      members,
			InitialClusterState: "new",
			InitialClusterToken: "edge-3f9a",
			QuotaBackendBytes:   2 << 30,
			SnapshotCount:       5000,
			HeartbeatIntervalMs: 100,
			ElectionTimeoutMs:   1000,
			Ips:                 []string{"10.0.0.12"},
		},
	}
}

func TestDesiredRendersConfigAndUnit(t *testing.T) {
	st, err := etcdrole.Desired(stackedPlan())
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Files) != 1 || len(st.Units) != 1 {
		t.Fatalf("want one file and one unit, got %d files %d units", len(st.Files), len(st.Units))
	}
	f := st.Files[0]
	if f.Path != paths.EtcdConfig || f.Mode != 0o644 || len(f.Restarts) != 1 || f.Restarts[0] != paths.EtcdUnit {
		t.Errorf("file = %s mode %o restarts %v", f.Path, f.Mode, f.Restarts)
	}
	golden := filepath.Join("testdata", "etcd.yaml.golden")
	if *update {
		if err := os.WriteFile(golden, f.Content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create)", err)
	}
	if !bytes.Equal(f.Content, want) {
		t.Errorf("etcd.yaml differs from %s:\n%s", golden, f.Content)
	}
	// What is rendered must load back as a valid config.
	if _, err := etcdrole.ParseConfig("rendered", f.Content); err != nil {
		t.Errorf("rendered config does not load: %v", err)
	}

	u := st.Units[0]
	wantUnit, _ := systemd.Unit(paths.EtcdUnit)
	if u.Name != paths.EtcdUnit || !u.Enable || !u.Start || !bytes.Equal(u.Content, wantUnit) {
		t.Errorf("unit = %s enable=%v start=%v", u.Name, u.Enable, u.Start)
	}
}

func TestDesiredIsEmptyWithoutEtcdRole(t *testing.T) {
	p := stackedPlan()
	p.Roles = []kedgev1.Role{kedgev1.Role_ROLE_K3S_SERVER}
	for _, plan := range []*kedgev1.Plan{p, {Roles: []kedgev1.Role{kedgev1.Role_ROLE_ETCD}}} {
		st, err := etcdrole.Desired(plan)
		if err != nil || len(st.Files)+len(st.Units) != 0 {
			t.Errorf("Desired(%v) = %+v, %v; want empty", plan.Roles, st, err)
		}
	}
}

func TestConfigRefusals(t *testing.T) {
	st, err := etcdrole.Desired(stackedPlan())
	if err != nil {
		t.Fatal(err)
	}
	good := string(st.Files[0].Content)
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"wrong version", strings.Replace(good, "apiVersion: kedge/v1", "apiVersion: kedge/v2", 1), `apiVersion "kedge/v2"`},
		{"unknown field", good + "listenMetricsURLs: [http://0.0.0.0:2381]\n", "listenMetricsURLs"},
		{"second document", good + "---\nname: x\n", "more than one YAML document"},
		{"no name", strings.Replace(good, "name: nuc-2", "name: \"\"", 1), "field name"},
		{"plain http", strings.Replace(good, "- https://10.0.0.12:2380", "- http://10.0.0.12:2380", 1), "field listenPeerURLs"},
		{"bad state", strings.Replace(good, "initialClusterState: new", "initialClusterState: join", 1), "field initialClusterState"},
		{"relative cert", strings.Replace(good, "caFile: /etc/kedge/etcd/ca.crt", "caFile: ca.crt", 1), "field tls.caFile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := etcdrole.ParseConfig("/etc/kedge/etcd.yaml", []byte(tc.yaml))
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "/etc/kedge/etcd.yaml") {
				t.Errorf("error %q should name the file and %q", err, tc.want)
			}
		})
	}
	if _, err := etcdrole.LoadConfig(filepath.Join(t.TempDir(), "etcd.yaml")); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing file: %v", err)
	}
}
