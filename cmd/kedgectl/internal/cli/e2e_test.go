package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kedge-io/kedge/coordinator/coordtest"
	"github.com/kedge-io/kedge/coordinator/pki"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// TestAgainstRealCoordinator drives kedgectl against an in-process real
// coordinator (coordtest): real PKI, real embedded etcd, real AdminService.
func TestAgainstRealCoordinator(t *testing.T) {
	env := coordtest.Start(t)
	e := newTestEnv(t)
	e.now = time.Now() // the coordinator's clock is real
	e.vars["KEDGE_CONFIG"] = env.AdminConfigPath

	tok := mustRun(t, e, "token", "create", "--cluster", "edge-1", "--ttl", "1h", "--uses", "3")
	if !regexp.MustCompile(`^[a-z0-9]{6}\.[a-z0-9]{16}\n$`).MatchString(tok) {
		t.Fatalf("token create printed %q; want id.secret alone", tok)
	}
	id, secret, _ := strings.Cut(strings.TrimSpace(tok), ".")
	list := mustRun(t, e, "token", "list")
	if !strings.Contains(list, id) || !strings.Contains(list, "0/3") || strings.Contains(list, secret) {
		t.Errorf("token list should show %s with 0/3 uses and never the secret:\n%s", id, list)
	}
	mustRun(t, e, "token", "revoke", id)
	if list := mustRun(t, e, "token", "list"); !regexp.MustCompile(id + `\s.*\syes\s`).MatchString(list) {
		t.Errorf("after token revoke %s, token list should show it revoked:\n%s", id, list)
	}
	flash := mustRun(t, e, "token", "create", "--cluster", "edge-1", "--print-flash-command")
	if !strings.Contains(flash, "--ca-pin "+env.CAPin) || !strings.Contains(flash, "--coordinator ") {
		t.Errorf("flash command lacks the coordinator's pin %s or address:\n%s", env.CAPin, flash)
	}

	dir := t.TempDir()
	bad := writeFile(t, filepath.Join(dir, "edge.yaml"), strings.Replace(coordtest.ThreeNodeSpec, "members: 3", "members: 2", 1))
	out, errOut, code := e.run(t, "spec", "apply", "-f", bad)
	if code != ExitError || out != "" || !strings.HasPrefix(errOut, "kedgectl: spec refused: ") || !strings.Contains(errOut, "spec.etcd.members") ||
		strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("invalid spec: exit %d, stdout %q, stderr %q; want one line naming spec.etcd.members", code, out, errOut)
	}
	good := writeFile(t, filepath.Join(dir, "edge-ok.yaml"), coordtest.ThreeNodeSpec)
	if out := mustRun(t, e, "spec", "apply", "--dry-run", "-f", good); !strings.HasPrefix(out, "cluster edge-1: dry run, nothing stored") {
		t.Errorf("spec apply --dry-run printed:\n%s", out)
	}
	if out := mustRun(t, e, "spec", "apply", "-f", good); !strings.HasPrefix(out, "cluster edge-1: spec stored") {
		t.Errorf("spec apply printed:\n%s", out)
	}
	if out := mustRun(t, e, "spec", "get", "edge-1"); !strings.Contains(out, "members: 3") {
		t.Errorf("spec get printed:\n%s", out)
	}

	node := env.EnrollNode(t, &kedgev1.MachineFacts{
		MachineId: "0123456789abcdef0123456789abcdef", Hostname: "nuc1",
		Macs: []string{"52:54:00:00:00:01"}, Ips: []string{"127.0.0.1"}, Arch: "amd64", Os: "linux",
	})
	nodes := mustRun(t, e, "nodes")
	if !strings.HasPrefix(nodes, "NAME ") || !strings.Contains(nodes, node.Name) || !strings.Contains(nodes, "edge-1") {
		t.Errorf("nodes should list %s in edge-1:\n%s", node.Name, nodes)
	}
	if out := mustRun(t, e, "node", "get", node.Name); !strings.Contains(out, node.Name) || !strings.Contains(out, "0123456789abcdef0123456789abcdef") {
		t.Errorf("node get printed:\n%s", out)
	}

	out = mustRun(t, e, "status", "edge-1", "-o", "json")
	var st kedgev1.GetClusterStatusResponse
	if err := protojson.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status -o json does not parse (%v):\n%s", err, out)
	}
	if st.GetStatus().GetCluster() != "edge-1" || st.GetStatus().GetPhase() != kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING {
		t.Errorf("status of a cluster with 1 of 3 nodes: cluster %q phase %s; want edge-1 Provisioning", st.GetStatus().GetCluster(), st.GetStatus().GetPhase())
	}
	var raw map[string]any
	if json.Unmarshal([]byte(out), &raw) != nil {
		t.Errorf("status -o json is not JSON:\n%s", out)
	}
	if out := mustRun(t, e, "status", "edge-1"); !strings.Contains(out, "Phase:    Provisioning") || !strings.Contains(out, node.Name) {
		t.Errorf("status table:\n%s", out)
	}
	_, errOut, code = e.run(t, "status", "edge-1", "--wait", "Healthy", "--timeout", "1500ms")
	if code != ExitTimeout || !strings.Contains(errOut, "last seen: Provisioning") {
		t.Errorf("status --wait on a provisioning cluster: exit %d, stderr %q", code, errOut)
	}

	if out := mustRun(t, e, "events", "--cluster", "edge-1"); !strings.Contains(out, node.Name) {
		t.Errorf("events should mention the enrolled node %s:\n%s", node.Name, out)
	}
	key, err := pki.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := pki.CreateCSR(key, "intruder")
	if err != nil {
		t.Fatal(err)
	}
	_, err = env.BootstrapClient(t).Enroll(context.Background(), &kedgev1.EnrollRequest{
		Token: "zzzzzz.0000000000000000", CsrDer: csr,
		Facts: &kedgev1.MachineFacts{Hostname: "intruder", MachineId: "ffff", Macs: []string{"52:54:00:00:00:99"}},
	})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("enrolling with an unknown token: %v; want PermissionDenied", err)
	}
	out = mustRun(t, e, "enrollments", "refused")
	if !strings.HasPrefix(out, "TIME ") || !strings.Contains(out, "zzzzzz") || !strings.Contains(out, "intruder") || strings.Contains(out, "0000000000000000") {
		t.Errorf("enrollments refused should list the unknown token's id and hostname, never its secret:\n%s", out)
	}
	data := bytes.Repeat([]byte{0x7f, 'E', 'L', 'F'}, 3<<18) // 3 MiB
	sum := sha256.Sum256(data)
	bin := writeFile(t, filepath.Join(dir, "k3s"), string(data))
	if out := mustRun(t, e, "artifact", "push", "--name", "k3s", "--version", "v1.31.4+k3s1", bin); !strings.Contains(out, hex.EncodeToString(sum[:])+", 3145728 bytes") {
		t.Errorf("artifact push printed %q; want sha256 %x and the size", out, sum)
	}

	if testing.Verbose() {
		for _, args := range [][]string{{"token", "list"}, {"nodes"}, {"status"}, {"node", "get", node.Name}, {"events"}, {"enrollments", "refused"}} {
			t.Logf("kedgectl %s\n%s", strings.Join(args, " "), mustRun(t, e, args...))
		}
	}
}

// TestStatusWaitAcrossCoordinatorRestart: `status --wait` outlives a
// coordinator that is down when the wait starts and comes back on the same
// address, as after an upgrade.
func TestStatusWaitAcrossCoordinatorRestart(t *testing.T) {
	env := coordtest.Start(t)
	env.ApplySpec(t, coordtest.ThreeNodeSpec)
	e := newTestEnv(t)
	e.vars["KEDGE_CONFIG"] = env.AdminConfigPath
	env.Stop(t)

	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Run(context.Background(), []string{"status", "edge-1", "--wait", "Provisioning", "--timeout", "60s"}, e.env(&out, &errOut))
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(errOut.String(), "coordinator unavailable") {
		if time.Now().After(deadline) {
			t.Fatalf("no 'coordinator unavailable' progress within 20s; stderr %q", errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	env.Restart(t)
	select {
	case code := <-done:
		t.Logf("stderr:\n%s", errOut.String())
		if code != ExitOK || !strings.Contains(out.String(), "Phase:    Provisioning") {
			t.Errorf("after the restart: exit %d, stdout %q, stderr %q", code, out.String(), errOut.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("status --wait did not see the coordinator back within 30s; stderr %q", errOut.String())
	}
}
