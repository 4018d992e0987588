package k3sdouble

import (
	"context"
	"os"
	"strings"
	"testing"

	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kedge-io/kedge/nodeagent/desired"
	"github.com/kedge-io/kedge/nodeagent/etcdrole/etcdtest"
	"github.com/kedge-io/kedge/nodeagent/k3srole"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// install writes a rendered state under root, pointing the config's absolute
// machine paths into root as a chroot would.
func install(t *testing.T, root string, state desired.State) {
	t.Helper()
	for _, f := range state.Files {
		content := strings.ReplaceAll(string(f.Content), " /etc/", " "+root+"/etc/")
		writeFile(t, paths.In(root, f.Path), content, f.Mode)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, to, string(b), 0o600)
}

// TestKedgeRenderedConfigRunsTheDouble feeds k3srole's own config.yaml and
// token files to the double, against etcd from the etcd role's test helper
// with a datastore-client cert from its CA.
func TestKedgeRenderedConfigRunsTheDouble(t *testing.T) {
	c := etcdtest.StartCluster(t, 1)
	cli := c.Client()
	serverRoot := t.TempDir()
	copyFile(t, c.CAFile, paths.In(serverRoot, paths.EtcdCA))
	copyFile(t, c.ClientCertFile, paths.In(serverRoot, paths.DatastoreClientCert))
	copyFile(t, c.ClientKeyFile, paths.In(serverRoot, paths.DatastoreClientKey))
	extra, _ := structpb.NewStruct(map[string]any{"disable": []any{"traefik"}, "write-kubeconfig-mode": "0600"})
	server, err := k3srole.Desired(&kedgev1.Plan{K3S: &kedgev1.K3SPlan{
		Role: kedgev1.Role_ROLE_K3S_SERVER, DatastoreEndpoints: c.Endpoints,
		Token: serverToken, AgentToken: agentToken, NodeIp: "127.0.0.1", NodeName: "srv1",
		TlsSans: []string{"127.0.0.1", "k3s.test"}, ExtraConfig: extra,
	}})
	if err != nil {
		t.Fatal(err)
	}
	install(t, serverRoot, server)
	kubeconfigPath := paths.In(serverRoot, paths.K3sKubeconfig)
	s := start(t, []string{"k3s", "server", "--config", paths.In(serverRoot, paths.K3sConfig),
		"--bind-address", "127.0.0.1", "--https-listen-port", "0", "--write-kubeconfig", kubeconfigPath}, nil)
	s.awaitReady(t)
	if v := get(t, cli, "/registry/minions/srv1"); v == "" {
		t.Error("the double run from kedge's config wrote no /registry/minions/srv1")
	}

	kubeconfig, _ := os.ReadFile(kubeconfigPath)
	serverURL := string(serverURLLine.FindSubmatch(kubeconfig)[1])
	agentRoot := t.TempDir()
	agent, err := k3srole.Desired(&kedgev1.Plan{K3S: &kedgev1.K3SPlan{
		Role: kedgev1.Role_ROLE_K3S_AGENT, ServerUrl: serverURL, AgentToken: agentToken, NodeIp: "127.0.0.2", NodeName: "agent1",
	}})
	if err != nil {
		t.Fatal(err)
	}
	install(t, agentRoot, agent)
	a := start(t, []string{"k3s", "agent", "--config", paths.In(agentRoot, paths.K3sConfig)}, nil)
	a.awaitReady(t)
	if v := get(t, cli, "/registry/minions/agent1"); v == "" {
		t.Error("the agent run from kedge's config did not register")
	}

	rewritten, err := k3srole.Kubeconfig(serverRoot, "https://10.77.0.100:6443")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rewritten), "server: https://10.77.0.100:6443") {
		t.Errorf("Kubeconfig did not point the double's k3s.yaml at the registration address")
	}
	if st := k3srole.ProbeURL(context.Background(), serverURL+"/ping"); !st.GetReady() {
		t.Errorf("probe: %s", st.GetError())
	}
}

// TestKedgeRenderedEmbeddedConfigRunsTheDouble does the same for the
// embedded topology: cluster-init on the first server, server: on the next.
func TestKedgeRenderedEmbeddedConfigRunsTheDouble(t *testing.T) {
	roots := []string{t.TempDir(), t.TempDir()}
	var firstURL string
	for i, name := range []string{"srv1", "srv2"} {
		plan := &kedgev1.K3SPlan{Role: kedgev1.Role_ROLE_K3S_SERVER, Token: serverToken, AgentToken: agentToken,
			NodeIp: "127.0.0.1", NodeName: name, ClusterInit: i == 0, ServerUrl: firstURL}
		state, err := k3srole.Desired(&kedgev1.Plan{K3S: plan})
		if err != nil {
			t.Fatal(err)
		}
		install(t, roots[i], state)
		p := start(t, []string{"k3s", "server", "--config", paths.In(roots[i], paths.K3sConfig),
			"--data-dir", paths.In(roots[i], "/var/lib/rancher/k3s"),
			"--bind-address", "127.0.0.1", "--https-listen-port", "0", "--write-kubeconfig", paths.In(roots[i], paths.K3sKubeconfig),
			"--etcd-arg", "listen-client-urls=http://" + freeAddr(t), "--etcd-arg", "listen-peer-urls=http://" + freeAddr(t)}, nil)
		p.awaitReady(t)
		if i == 0 {
			kubeconfig, _ := os.ReadFile(paths.In(roots[0], paths.K3sKubeconfig))
			firstURL = string(serverURLLine.FindSubmatch(kubeconfig)[1])
		}
	}
	kc1, _ := os.ReadFile(paths.In(roots[0], paths.K3sKubeconfig))
	kc2, _ := os.ReadFile(paths.In(roots[1], paths.K3sKubeconfig))
	if caData(kc1) != caData(kc2) {
		t.Error("the server kedge configured to join did not end in the first server's cluster")
	}
}
