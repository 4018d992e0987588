package k3sdouble

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// embeddedServerArgs runs a server of the embedded topology on its own
// loopback etcd ports and data dir.
func embeddedServerArgs(t *testing.T, dir, name, token string, extra ...string) []string {
	t.Helper()
	writeFile(t, filepath.Join(dir, "token"), token+"\n", 0o600)
	writeFile(t, filepath.Join(dir, "agent-token"), agentToken+"\n", 0o600)
	args := []string{"k3s", "server", "--config", os.DevNull,
		"--token-file", filepath.Join(dir, "token"), "--agent-token-file", filepath.Join(dir, "agent-token"),
		"--node-name", name, "--node-ip", "127.0.0.1", "--data-dir", filepath.Join(dir, "data"),
		"--bind-address", "127.0.0.1", "--https-listen-port", "0", "--write-kubeconfig", filepath.Join(dir, "k3s.yaml"),
		"--etcd-arg", "listen-client-urls=http://" + freeAddr(t), "--etcd-arg", "listen-peer-urls=http://" + freeAddr(t)}
	return append(args, extra...)
}

func kubeconfigServer(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "k3s.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return string(serverURLLine.FindSubmatch(b)[1])
}

func TestEmbeddedTopology(t *testing.T) {
	dir1, dir2 := t.TempDir(), t.TempDir()
	first := start(t, embeddedServerArgs(t, dir1, "srv1", serverToken, "--cluster-init"), nil)
	first.awaitReady(t)
	url1 := kubeconfigServer(t, dir1)

	t.Run("a joining server with the agent token is refused", func(t *testing.T) {
		p := start(t, embeddedServerArgs(t, t.TempDir(), "srvX", agentToken, "--server", url1), nil)
		if err := p.awaitRefusal(t); err == nil || !strings.Contains(err.Error(), "401") {
			t.Errorf("join with the agent token: %v, want a 401 refusal", err)
		}
	})

	second := start(t, embeddedServerArgs(t, dir2, "srv2", serverToken, "--server", url1), nil)
	second.awaitReady(t)
	kc1, _ := os.ReadFile(filepath.Join(dir1, "k3s.yaml"))
	kc2, _ := os.ReadFile(filepath.Join(dir2, "k3s.yaml"))
	if caData(kc1) == "" || caData(kc1) != caData(kc2) {
		t.Error("the joined server does not share the first server's cluster CA")
	}

	a := start(t, []string{"k3s", "agent", "--config", agentConfig(t, t.TempDir(), "agent1", kubeconfigServer(t, dir2), agentToken)}, nil)
	a.awaitReady(t)

	// Both servers see every node: one etcd cluster under both.
	for _, dir := range []string{dir1, dir2} {
		var out strings.Builder
		err := Run(t.Context(), []string{"kubectl", "--kubeconfig", filepath.Join(dir, "k3s.yaml"), "get", "nodes"}, Options{Stdout: &out, Getenv: func(string) string { return "" }})
		if err != nil {
			t.Fatalf("kubectl get nodes: %v", err)
		}
		for _, n := range []string{"srv1", "srv2", "agent1"} {
			if !strings.Contains(out.String(), n) {
				t.Errorf("kubectl get nodes via %s lacks %s:\n%s", filepath.Base(dir), n, out.String())
			}
		}
	}
}
