package k3srole

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kedge-io/kedge/nodeagent/desired"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func extraConfig(t *testing.T) *structpb.Struct {
	t.Helper()
	s, err := structpb.NewStruct(map[string]any{
		"disable":                 []any{"traefik", "servicelb"},
		"write-kubeconfig-mode":   "0600",
		"kubelet-arg":             []any{"max-pods=150"},
		"etcd-snapshot-retention": 1000000,
		"node-label":              []any{"kedge.io/zone=a"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func serverPlan(t *testing.T) *kedgev1.Plan {
	return &kedgev1.Plan{NodeName: "nuc1", Cluster: "edge", K3S: &kedgev1.K3SPlan{
		Role:               kedgev1.Role_ROLE_K3S_SERVER,
		DatastoreEndpoints: []string{"https://10.77.0.11:2379", "https://10.77.0.12:2379", "https://10.77.0.13:2379"},
		Token:              "server-secret-token",
		AgentToken:         "agent-secret-token",
		NodeIp:             "10.77.0.11",
		NodeName:           "nuc1",
		TlsSans:            []string{"10.77.0.11", "10.77.0.100", "k3s.edge.example"},
		ExtraConfig:        extraConfig(t),
	}}
}

func TestDesiredGolden(t *testing.T) {
	external := serverPlan(t)
	external.K3S.DatastoreEndpoints = []string{"https://10.77.0.21:2379", "https://10.77.0.22:2379", "https://10.77.0.23:2379"}
	external.K3S.ExtraConfig = nil
	embeddedFirst := serverPlan(t)
	embeddedFirst.K3S.DatastoreEndpoints = nil
	embeddedFirst.K3S.ClusterInit = true
	embeddedOther := serverPlan(t)
	embeddedOther.K3S.DatastoreEndpoints = nil
	embeddedOther.K3S.ServerUrl = "https://10.77.0.11:6443"
	agent := &kedgev1.Plan{NodeName: "nuc4", K3S: &kedgev1.K3SPlan{
		Role:        kedgev1.Role_ROLE_K3S_AGENT,
		ServerUrl:   "https://10.77.0.11:6443",
		AgentToken:  "agent-secret-token",
		NodeIp:      "10.77.0.14",
		NodeName:    "nuc4",
		ExtraConfig: extraConfig(t),
	}}
	for name, plan := range map[string]*kedgev1.Plan{
		"stacked-server":        serverPlan(t),
		"external-server":       external,
		"embedded-first-server": embeddedFirst,
		"embedded-other-server": embeddedOther,
		"agent":                 agent,
	} {
		t.Run(name, func(t *testing.T) {
			state, err := Desired(plan)
			if err != nil {
				t.Fatal(err)
			}
			got := renderState(state)
			golden := filepath.Join("testdata", name+".golden")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("Desired(%s) differs from %s (go test -update rewrites it):\n%s", name, golden, got)
			}
			again, _ := Desired(plan)
			if !bytes.Equal(renderState(again), got) {
				t.Error("a second render of the same plan differs: config.yaml must be deterministic")
			}
		})
	}
}

// renderState prints a State the way a reviewer reads it: each file with its
// mode and restarts, then each unit.
func renderState(s desired.State) []byte {
	var b bytes.Buffer
	for _, f := range s.Files {
		fmt.Fprintf(&b, "=== file %s mode %#o restarts %v\n%s", f.Path, f.Mode, f.Restarts, f.Content)
	}
	for _, u := range s.Units {
		fmt.Fprintf(&b, "=== unit %s enable=%v start=%v\n%s", u.Name, u.Enable, u.Start, u.Content)
	}
	return b.Bytes()
}

func TestAgentNeverGetsServerToken(t *testing.T) {
	plan := &kedgev1.Plan{K3S: &kedgev1.K3SPlan{
		Role: kedgev1.Role_ROLE_K3S_AGENT, ServerUrl: "https://10.77.0.11:6443",
		Token: "server-secret-token", AgentToken: "agent-secret-token",
	}}
	state, err := Desired(plan)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range state.Files {
		if strings.Contains(string(f.Content), "server-secret-token") {
			t.Errorf("%s holds the server token; an agent must only get the agent token", f.Path)
		}
		if f.Path == paths.K3sAgentToken && string(f.Content) != "agent-secret-token\n" {
			t.Errorf("%s = %q, want the agent token", f.Path, f.Content)
		}
		if f.Mode != 0o600 {
			t.Errorf("%s mode %#o, want 0600", f.Path, f.Mode)
		}
	}
}

func TestServerURLChangeRestartsAgent(t *testing.T) {
	plan := &kedgev1.Plan{K3S: &kedgev1.K3SPlan{
		Role: kedgev1.Role_ROLE_K3S_AGENT, ServerUrl: "https://10.77.0.11:6443", AgentToken: "a",
	}}
	before, _ := Desired(plan)
	plan.K3S.ServerUrl = "https://10.77.0.12:6443"
	after, _ := Desired(plan)
	cfgBefore, cfgAfter := before.Files[0], after.Files[0]
	if cfgAfter.Path != paths.K3sConfig || bytes.Equal(cfgBefore.Content, cfgAfter.Content) {
		t.Fatalf("config.yaml did not change with the server URL")
	}
	if len(cfgAfter.Restarts) != 1 || cfgAfter.Restarts[0] != paths.K3sAgentUnit {
		t.Errorf("config.yaml restarts %v, want [%s]", cfgAfter.Restarts, paths.K3sAgentUnit)
	}
}

func TestDesiredRejects(t *testing.T) {
	owned, _ := structpb.NewStruct(map[string]any{"token": "leak"})
	cases := map[string]struct {
		plan *kedgev1.K3SPlan
		want string
	}{
		"server without token":     {&kedgev1.K3SPlan{Role: kedgev1.Role_ROLE_K3S_SERVER, AgentToken: "a", ClusterInit: true}, "plan.k3s.token"},
		"server without datastore": {&kedgev1.K3SPlan{Role: kedgev1.Role_ROLE_K3S_SERVER, Token: "t", AgentToken: "a"}, "datastore_endpoints"},
		"http endpoint":            {&kedgev1.K3SPlan{Role: kedgev1.Role_ROLE_K3S_SERVER, Token: "t", AgentToken: "a", DatastoreEndpoints: []string{"http://x:2379"}}, "https://"},
		"agent without server":     {&kedgev1.K3SPlan{Role: kedgev1.Role_ROLE_K3S_AGENT, AgentToken: "a"}, "server_url"},
		"owned passthrough key":    {&kedgev1.K3SPlan{Role: kedgev1.Role_ROLE_K3S_AGENT, AgentToken: "a", ServerUrl: "https://s:6443", ExtraConfig: owned}, `"token"`},
	}
	for name, c := range cases {
		_, err := Desired(&kedgev1.Plan{K3S: c.plan})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one naming %s", name, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "leak") {
			t.Errorf("%s: error quotes a secret value: %v", name, err)
		}
	}
	if s, err := Desired(&kedgev1.Plan{}); err != nil || len(s.Files)+len(s.Units) != 0 {
		t.Errorf("plan without k3s: %v %v, want an empty state", s, err)
	}
}
