package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

func statusNotFound(msg string) error { return status.Error(codes.NotFound, msg) }

// setup starts a coordinator double and points ~/.kedge/config.yaml at it.
func setup(t *testing.T) (*testEnv, *testCoordinator) {
	t.Helper()
	p := newTestPKI(t)
	d := startTestCoordinator(t, p)
	e := newTestEnv(t)
	e.homeConfig(t, p, d.addr)
	return e, d
}

func mustRun(t *testing.T, e *testEnv, args ...string) string {
	t.Helper()
	out, errOut, code := e.run(t, args...)
	if code != ExitOK {
		t.Fatalf("kedgectl %s: exit %d, stderr:\n%s", strings.Join(args, " "), code, errOut)
	}
	return out
}

// closedAddr is a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func TestConfigDiscoveryOrder(t *testing.T) {
	p := newTestPKI(t)
	flagCoord, envCoord, homeCoord := startTestCoordinator(t, p), startTestCoordinator(t, p), startTestCoordinator(t, p)
	flagCoord.nodes = []*kedgev1.Node{{Name: "from-flag"}}
	envCoord.nodes = []*kedgev1.Node{{Name: "from-env"}}
	homeCoord.nodes = []*kedgev1.Node{{Name: "from-home"}}
	e := newTestEnv(t)
	dir := t.TempDir()
	flagCfg := p.writeConfig(t, filepath.Join(dir, "flag.yaml"), flagCoord.addr)
	envCfg := p.writeConfig(t, filepath.Join(dir, "env.yaml"), envCoord.addr)

	_, errOut, code := e.run(t, "nodes")
	if code != ExitError || !strings.Contains(errOut, filepath.Join(e.home, ".kedge", "config.yaml")) || !strings.Contains(errOut, "--config FILE") {
		t.Errorf("no config anywhere: exit %d, stderr %q; want exit 1 naming ~/.kedge/config.yaml and the fix", code, errOut)
	}

	e.homeConfig(t, p, homeCoord.addr)
	if out := mustRun(t, e, "nodes"); !strings.Contains(out, "from-home") {
		t.Errorf("with only ~/.kedge/config.yaml, nodes printed:\n%s", out)
	}
	e.vars["KEDGE_CONFIG"] = envCfg
	if out := mustRun(t, e, "nodes"); !strings.Contains(out, "from-env") {
		t.Errorf("$KEDGE_CONFIG should beat ~/.kedge/config.yaml; nodes printed:\n%s", out)
	}
	if out := mustRun(t, e, "nodes", "--config", flagCfg); !strings.Contains(out, "from-flag") {
		t.Errorf("--config should beat $KEDGE_CONFIG; nodes printed:\n%s", out)
	}
	if out := mustRun(t, e, "--config", flagCfg, "nodes"); !strings.Contains(out, "from-flag") {
		t.Errorf("--config before the command should work too; nodes printed:\n%s", out)
	}

	e.vars["KEDGE_CONFIG"] = filepath.Join(dir, "missing.yaml")
	_, errOut, code = e.run(t, "nodes")
	if code != ExitError || !strings.Contains(errOut, "missing.yaml ($KEDGE_CONFIG)") {
		t.Errorf("missing $KEDGE_CONFIG file: exit %d, stderr %q; want the file and where its name came from", code, errOut)
	}
	bad := writeFile(t, filepath.Join(dir, "bad.yaml"), "apiVersion: kedge/v1\nkind: AdminConfig\ncoordinators: []\n")
	_, errOut, _ = e.run(t, "nodes", "--config", bad)
	if !strings.Contains(errOut, "bad.yaml") || !strings.Contains(errOut, "coordinators is empty") {
		t.Errorf("invalid config: stderr %q; want the file and the field", errOut)
	}
}

func TestCoordinatorsTriedInOrder(t *testing.T) {
	p := newTestPKI(t)
	d := startTestCoordinator(t, p)
	d.nodes = []*kedgev1.Node{{Name: "nuc1"}}
	e := newTestEnv(t)
	down := closedAddr(t)
	e.homeConfig(t, p, down, d.addr)
	if out := mustRun(t, e, "nodes"); !strings.Contains(out, "nuc1") {
		t.Errorf("first coordinator down, second up: nodes printed\n%s", out)
	}

	e.homeConfig(t, p, down)
	_, errOut, code := e.run(t, "nodes")
	if code != ExitError || !strings.Contains(errOut, down) || !strings.Contains(errOut, "config.yaml") || !strings.Contains(errOut, "check they are running") {
		t.Errorf("every coordinator down: exit %d, stderr %q; want the addresses, the config file and what to check", code, errOut)
	}
	if strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
		t.Errorf("the error should be one line, got:\n%s", errOut)
	}
}

func TestTokenCreatePrintsOnlyTheToken(t *testing.T) {
	e, d := setup(t)
	d.createToken = &kedgev1.CreateTokenResponse{
		Token:                "abc123.0123456789abcdef",
		Info:                 &kedgev1.BootstrapToken{Id: "abc123"},
		CoordinatorAddresses: []string{"10.0.0.2:7443", "10.0.0.3:7443"},
		CaPin:                "sha256:00ff",
	}
	out, errOut, code := e.run(t, "token", "create", "--cluster", "edge-1", "--ttl", "2h", "--uses", "5", "--require-approval", "--description", "warehouse batch")
	if code != ExitOK || out != "abc123.0123456789abcdef\n" || errOut != "" {
		t.Fatalf("token create: exit %d, stdout %q, stderr %q; want the token alone", code, out, errOut)
	}
	req := lastRequest[*kedgev1.CreateTokenRequest](t, d)
	if req.GetCluster() != "edge-1" || req.GetTtl().AsDuration() != 2*time.Hour || req.GetMaxUses() != 5 || !req.GetRequireApproval() || req.GetDescription() != "warehouse batch" {
		t.Errorf("request = %v", req)
	}

	mustRun(t, e, "token", "create", "--cluster", "edge-1")
	req = lastRequest[*kedgev1.CreateTokenRequest](t, d)
	if req.GetTtl().AsDuration() != 24*time.Hour || req.GetMaxUses() != 1 || req.GetRequireApproval() {
		t.Errorf("defaults: request = %v; want ttl 24h, single use, no approval", req)
	}

	out = mustRun(t, e, "token", "create", "--cluster", "edge-1", "--print-flash-command")
	want := "(umask 077 && mkdir -p /etc/kedge && printf '%s\\n' abc123.0123456789abcdef > /etc/kedge/bootstrap-token.new && " +
		"kedge-nodeagent install --root / --coordinator 10.0.0.2:7443,10.0.0.3:7443 --ca-pin sha256:00ff --token-file /etc/kedge/bootstrap-token.new; " +
		"rc=$?; rm -f /etc/kedge/bootstrap-token.new; exit $rc)\n"
	if out != want {
		t.Errorf("--print-flash-command:\n got %s\nwant %s", out, want)
	}
	if msg, err := exec.Command("sh", "-n", "-c", out).CombinedOutput(); err != nil {
		t.Errorf("the flash command is not valid shell: %v %s", err, msg)
	}
	_, installer, _ := strings.Cut(out, "kedge-nodeagent install")
	if strings.Contains(installer, "0123456789abcdef") {
		t.Errorf("the token must not be in the installer's argv: %s", out)
	}

	out = mustRun(t, e, "token", "create", "--cluster", "edge-1", "--print-flash-command", "--image-root", "/mnt/image")
	if !strings.Contains(out, "install --root /mnt/image ") {
		t.Errorf("--image-root not used: %s", out)
	}

	// Without addresses and pin in the answer, the config's are used.
	d.createToken = &kedgev1.CreateTokenResponse{Token: "abc123.0123456789abcdef"}
	out = mustRun(t, e, "token", "create", "--cluster", "edge-1", "--print-flash-command")
	if !strings.Contains(out, "--coordinator "+d.addr+" ") || !strings.Contains(out, "--ca-pin sha256:") {
		t.Errorf("flash command should fall back to the config's coordinators and pin: %s", out)
	}
}

func TestUsageErrors(t *testing.T) {
	e, _ := setup(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"token", "create"}, "--cluster is required"},
		{[]string{"token", "create", "--cluster", "c", "--ttl", "-1h"}, "--ttl -1h0m0s must be positive"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"token", "mint"}, "token: want a subcommand, one of create, list, revoke"},
		{[]string{"nodes", "-o", "yaml"}, `-o "yaml": want table or json`},
		{[]string{"node", "get"}, "missing node NAME"},
		{[]string{"node", "get", "a", "b"}, `unexpected argument "b"`},
		{[]string{"status", "--wait", "Happy"}, `--wait "Happy" is not a phase; use one of Provisioning, Healthy, Degraded, Down`},
		{[]string{"spec", "apply"}, "-f FILE is required"},
		{[]string{"artifact", "push", "f"}, "--name and --version are required"},
	} {
		_, errOut, code := e.run(t, tc.args...)
		if code != ExitUsage || !strings.Contains(errOut, tc.want) {
			t.Errorf("kedgectl %s: exit %d, stderr %q; want exit 2 and %q", strings.Join(tc.args, " "), code, errOut, tc.want)
		}
	}
	if out := mustRun(t, e, "help"); !strings.Contains(out, "Exit codes: 0 ok, 1 failed or refused, 2 usage error, 3 status --wait timed out") {
		t.Errorf("help should document exit codes:\n%s", out)
	}
}

func TestTokenListAndRevoke(t *testing.T) {
	e, d := setup(t)
	d.tokens = []*kedgev1.BootstrapToken{
		{Id: "abc123", Cluster: "edge-1", ExpiresAt: ts(e.now.Add(23*time.Hour + 59*time.Minute)), MaxUses: 0, Uses: 3, RequireApproval: true, Description: "batch 7"},
		{Id: "zzz999", Cluster: "edge-2", ExpiresAt: ts(e.now.Add(-2 * time.Hour)), MaxUses: 1, Uses: 1, Revoked: true},
	}
	out := mustRun(t, e, "token", "list")
	want := "" +
		"ID      CLUSTER  EXPIRES                                  USES         APPROVAL  REVOKED  DESCRIPTION\n" +
		"abc123  edge-1   2026-11-26T11:59:00Z (in 23h59m)         3/unlimited  required  no       batch 7\n" +
		"zzz999  edge-2   2026-11-25T10:00:00Z (expired 2h0m ago)  1/1          no        yes      -\n"
	if out != want {
		t.Errorf("token list:\n%s\nwant:\n%s", out, want)
	}
	out = mustRun(t, e, "token", "revoke", "abc123.0123456789abcdef")
	if got := lastRequest[*kedgev1.RevokeTokenRequest](t, d).GetId(); got != "abc123" {
		t.Errorf("revoke sent id %q; want only the id part", got)
	}
	if strings.Contains(out, "0123456789abcdef") || !strings.Contains(out, "token abc123 revoked") {
		t.Errorf("token revoke printed %q", out)
	}
}

func testNodes(now time.Time) []*kedgev1.Node {
	return []*kedgev1.Node{
		{
			Name: "nuc1", Cluster: "edge-1", State: kedgev1.NodeState_NODE_STATE_ENROLLED,
			Roles:  []kedgev1.Role{kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER},
			NodeIp: "10.77.0.11", Condition: kedgev1.NodeCondition_NODE_CONDITION_READY, LastSeen: ts(now.Add(-4 * time.Second)),
			Status: &kedgev1.NodeStatus{Units: []*kedgev1.UnitStatus{
				{Name: "kedge-etcd.service", ActiveState: "active", SubState: "running", Result: "success"},
				{Name: "k3s.service", ActiveState: "active", SubState: "running"},
			}},
		},
		{
			Name: "nuc2", Cluster: "edge-1", State: kedgev1.NodeState_NODE_STATE_ENROLLED,
			Roles:  []kedgev1.Role{kedgev1.Role_ROLE_ETCD, kedgev1.Role_ROLE_K3S_SERVER},
			NodeIp: "10.77.0.12", Condition: kedgev1.NodeCondition_NODE_CONDITION_DEGRADED, ConditionReason: "k3s.service failed (exit-code)",
			LastSeen: ts(now.Add(-90 * time.Second)),
			Status: &kedgev1.NodeStatus{Units: []*kedgev1.UnitStatus{
				{Name: "kedge-etcd.service", ActiveState: "active"},
				{Name: "k3s.service", ActiveState: "failed", Result: "exit-code"},
			}},
		},
		{
			Name: "nuc4", Cluster: "edge-1", State: kedgev1.NodeState_NODE_STATE_PENDING_APPROVAL,
			Condition: kedgev1.NodeCondition_NODE_CONDITION_PROVISIONING,
			Status:    &kedgev1.NodeStatus{Waiting: "waiting for approval"},
		},
	}
}

func TestNodes(t *testing.T) {
	e, d := setup(t)
	d.nodes = testNodes(e.now)
	out := mustRun(t, e, "nodes", "--cluster", "edge-1")
	want := "" +
		"NAME  CLUSTER  STATE             ROLES        IP          CONDITION     LAST SEEN  REASON\n" +
		"nuc1  edge-1   enrolled          etcd,server  10.77.0.11  Ready         4s ago     -\n" +
		"nuc2  edge-1   enrolled          etcd,server  10.77.0.12  Degraded      1m30s ago  k3s.service failed (exit-code)\n" +
		"nuc4  edge-1   pending-approval  -            -           Provisioning  never      waiting for approval\n"
	if out != want {
		t.Errorf("nodes:\n%s\nwant:\n%s", out, want)
	}
	if got := lastRequest[*kedgev1.ListNodesRequest](t, d).GetCluster(); got != "edge-1" {
		t.Errorf("--cluster sent %q", got)
	}

	out = mustRun(t, e, "nodes", "-o", "json")
	var resp kedgev1.ListNodesResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil || len(resp.GetNodes()) != 3 || resp.GetNodes()[1].GetConditionReason() != "k3s.service failed (exit-code)" {
		t.Errorf("nodes -o json does not parse back (%v):\n%s", err, out)
	}
}

func TestNodeGetApproveRemove(t *testing.T) {
	e, d := setup(t)
	n := testNodes(e.now)[1]
	n.PlanHash, n.PlanRevision = "0123456789abcdef0123", 42
	n.Warnings = []string{"machine-id 1234 is shared with nuc7"}
	n.Facts = &kedgev1.MachineFacts{Hostname: "nuc2", MachineId: "1234", Macs: []string{"aa:bb"}}
	d.getNode["nuc2"] = &kedgev1.GetNodeResponse{Node: n, Plan: &kedgev1.Plan{Hash: n.PlanHash}}
	out := mustRun(t, e, "node", "get", "nuc2")
	for _, want := range []string{"Name:", "nuc2", "hash 0123456789ab, revision 42", "Warnings:", "machine-id 1234 is shared with nuc7",
		"k3s.service         failed", "kedge-etcd.service  active", "Reason:", "k3s.service failed (exit-code)"} {
		if !strings.Contains(out, want) {
			t.Errorf("node get output lacks %q:\n%s", want, out)
		}
	}

	_, errOut, code := e.run(t, "node", "get", "nuc9")
	if code != ExitError || errOut != "kedgectl: node get nuc9: node nuc9 not found\n" {
		t.Errorf("unknown node: exit %d, stderr %q; want the status message alone", code, errOut)
	}

	if out := mustRun(t, e, "node", "approve", "nuc4"); out != "node nuc4 approved (state enrolled)\n" {
		t.Errorf("node approve printed %q", out)
	}
	out, errOut, code = e.run(t, "node", "remove", "nuc2")
	if code != ExitOK || out != "node nuc2 removed\n" || errOut != "" || lastRequest[*kedgev1.RemoveNodeRequest](t, d).GetForce() {
		t.Errorf("node remove: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	_, errOut, _ = e.run(t, "node", "remove", "nuc2", "--force")
	if !lastRequest[*kedgev1.RemoveNodeRequest](t, d).GetForce() || !strings.Contains(errOut, "loses quorum") {
		t.Errorf("node remove --force: force not sent or risk not stated: %q", errOut)
	}
}

func TestEnrollmentsRefused(t *testing.T) {
	e, d := setup(t)
	d.refused = []*kedgev1.RefusedEnrollment{
		{At: ts(e.now), Address: "10.77.0.50:41234", TokenId: "abc123", Hostname: "nuc9", Reason: "token abc123 expired at 2026-11-24T12:00:00Z"},
		{At: ts(e.now.Add(time.Second)), Address: "10.77.0.51:5000", Reason: "unknown token"},
	}
	out := mustRun(t, e, "enrollments", "refused")
	want := "" +
		"TIME                  ADDRESS           TOKEN ID  HOSTNAME  REASON\n" +
		"2026-11-25T12:00:00Z  10.77.0.50:41234  abc123    nuc9      token abc123 expired at 2026-11-24T12:00:00Z\n" +
		"2026-11-25T12:00:01Z  10.77.0.51:5000   -         -         unknown token\n"
	if out != want {
		t.Errorf("enrollments refused:\n%s\nwant:\n%s", out, want)
	}
}

func provisioning() *kedgev1.ClusterStatus {
	return &kedgev1.ClusterStatus{
		Cluster: "edge-1", Phase: kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING, Reason: "waiting for 2 of 3 etcd members to enroll",
		Etcd:          &kedgev1.EtcdQuorum{Healthy: 1, Total: 3},
		ServersActive: 0, ServersPlanned: 3, AgentsPlanned: 2,
	}
}

func healthy(now time.Time) *kedgev1.ClusterStatus {
	return &kedgev1.ClusterStatus{
		Cluster: "edge-1", Phase: kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY, Reason: "all members and servers healthy",
		Etcd:          &kedgev1.EtcdQuorum{Healthy: 3, Total: 3, Leader: "nuc1", HasQuorum: true},
		ServersActive: 3, ServersPlanned: 3, AgentsActive: 2, AgentsPlanned: 2,
		Nodes: testNodes(now)[:2],
	}
}

func TestStatus(t *testing.T) {
	e, d := setup(t)
	d.statuses = []*kedgev1.ClusterStatus{healthy(e.now)}
	out := mustRun(t, e, "status", "edge-1")
	want := "" +
		"Cluster:  edge-1\n" +
		"Phase:    Healthy (all members and servers healthy)\n" +
		"etcd:     3/3 healthy, leader nuc1\n" +
		"Servers:  3/3 active\n" +
		"Agents:   2/2 active\n" +
		"\n" +
		"NAME  ROLES        CONDITION  UNITS                                    REASON\n" +
		"nuc1  etcd,server  Ready      kedge-etcd:active k3s:active             -\n" +
		"nuc2  etcd,server  Degraded   kedge-etcd:active k3s:failed(exit-code)  k3s.service failed (exit-code)\n"
	if out != want {
		t.Errorf("status:\n%s\nwant:\n%s", out, want)
	}
	if got := lastRequest[*kedgev1.GetClusterStatusRequest](t, d).GetCluster(); got != "edge-1" {
		t.Errorf("status sent cluster %q", got)
	}

	d.statuses = []*kedgev1.ClusterStatus{provisioning()}
	out = mustRun(t, e, "status")
	if !strings.Contains(out, "etcd:     1/3 healthy, no leader, NO QUORUM") || !strings.Contains(out, "No nodes enrolled.") {
		t.Errorf("status while provisioning:\n%s", out)
	}

	out = mustRun(t, e, "status", "-o", "json")
	var resp kedgev1.GetClusterStatusResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil || resp.GetStatus().GetPhase() != kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING {
		t.Errorf("status -o json does not parse back (%v):\n%s", err, out)
	}
	var raw map[string]map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil || raw["status"]["agentsActive"] != float64(0) {
		t.Errorf("-o json should include zero fields for scripts (%v):\n%s", err, out)
	}
}

func TestStatusWaitReachesPhase(t *testing.T) {
	e, d := setup(t)
	d.statuses = []*kedgev1.ClusterStatus{provisioning(), provisioning(), healthy(e.now)}
	out, errOut, code := e.run(t, "status", "--wait", "healthy", "--timeout", "10s", "-o", "json")
	if code != ExitOK {
		t.Fatalf("status --wait: exit %d, stderr %q", code, errOut)
	}
	var resp kedgev1.GetClusterStatusResponse
	if err := protojson.Unmarshal([]byte(out), &resp); err != nil || resp.GetStatus().GetPhase() != kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY {
		t.Errorf("after the wait, stdout should be the healthy status (%v):\n%s", err, out)
	}
	// Not a terminal: one line per change, no carriage returns.
	wantErr := "Provisioning: waiting for 2 of 3 etcd members to enroll | etcd 1/3 | servers 0/3 | agents 0/2\n" +
		"Healthy: all members and servers healthy | etcd 3/3 | servers 3/3 | agents 2/2\n"
	if errOut != wantErr {
		t.Errorf("progress on a non-terminal:\n%q\nwant:\n%q", errOut, wantErr)
	}

	e.terminal = true
	d.mu.Lock()
	d.statusCalls = 0
	d.mu.Unlock()
	_, errOut, code = e.run(t, "status", "--wait", "Healthy")
	if code != ExitOK || strings.Count(errOut, "\r") != 3 || !strings.HasSuffix(errOut, "\n") {
		t.Errorf("progress on a terminal should redraw one line (3 polls) and end it: exit %d, %q", code, errOut)
	}
}

func TestStatusWaitTimesOut(t *testing.T) {
	e, d := setup(t)
	d.statuses = []*kedgev1.ClusterStatus{provisioning()}
	start := time.Now()
	out, errOut, code := e.run(t, "status", "--wait", "Healthy", "--timeout", "300ms")
	if code != ExitTimeout {
		t.Errorf("exit %d; want %d", code, ExitTimeout)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("timeout 300ms took %s", elapsed)
	}
	wantLast := "kedgectl: status --wait: timed out after 300ms waiting for phase Healthy; last seen: Provisioning: waiting for 2 of 3 etcd members to enroll | etcd 1/3 | servers 0/3 | agents 0/2\n"
	if !strings.HasSuffix(errOut, wantLast) || out != "" {
		t.Errorf("stdout %q, stderr:\n%s\nwant it to end with:\n%s", out, errOut, wantLast)
	}
}

func TestSpecApply(t *testing.T) {
	e, d := setup(t)
	file := writeFile(t, filepath.Join(t.TempDir(), "edge.yaml"), "apiVersion: kedge/v1\nkind: Cluster\n")
	d.applySpec = func(r *kedgev1.ApplySpecRequest) (*kedgev1.ApplySpecResponse, error) {
		if strings.Contains(string(r.GetSpecYaml()), "members: 2") {
			return nil, status.Error(codes.InvalidArgument, filepath.Base(r.GetFileName())+": spec.etcd.members: 2 is even; etcd needs an odd count (1, 3, 5)")
		}
		return &kedgev1.ApplySpecResponse{Cluster: "edge-1", Stored: !r.GetDryRun(), Changes: []*kedgev1.PlanChange{
			{Node: "nuc1", OldHash: "", NewHash: "aaaabbbbccccdddd", Changes: []string{"roles: [] -> [etcd server]", "etcd.member_name: \"\" -> \"nuc1\""}},
			{Node: "nuc5", OldHash: "1111222233334444", NewHash: "5555666677778888", Changes: []string{"k3s.server_url: https://10.77.0.12:6443 -> https://10.77.0.11:6443"}},
		}}, nil
	}
	out := mustRun(t, e, "spec", "apply", "-f", file)
	want := "" +
		"cluster edge-1: spec stored; 2 node plan(s) changed\n" +
		"nuc1  none -> aaaabbbbcccc\n" +
		"    roles: [] -> [etcd server]\n" +
		"    etcd.member_name: \"\" -> \"nuc1\"\n" +
		"nuc5  111122223333 -> 555566667777\n" +
		"    k3s.server_url: https://10.77.0.12:6443 -> https://10.77.0.11:6443\n"
	if out != want {
		t.Errorf("spec apply:\n%s\nwant:\n%s", out, want)
	}
	req := lastRequest[*kedgev1.ApplySpecRequest](t, d)
	if req.GetFileName() != file || string(req.GetSpecYaml()) != "apiVersion: kedge/v1\nkind: Cluster\n" || req.GetDryRun() {
		t.Errorf("request = %v", req)
	}

	out = mustRun(t, e, "spec", "apply", "--dry-run", "-f", file)
	if !lastRequest[*kedgev1.ApplySpecRequest](t, d).GetDryRun() || !strings.HasPrefix(out, "cluster edge-1: dry run, nothing stored; 2 node plan(s) would change\n") {
		t.Errorf("--dry-run printed:\n%s", out)
	}

	bad := writeFile(t, filepath.Join(t.TempDir(), "edge.yaml"), "spec:\n  etcd:\n    members: 2\n")
	out, errOut, code := e.run(t, "spec", "apply", "-f", bad)
	if code != ExitError || out != "" || errOut != "kedgectl: spec refused: edge.yaml: spec.etcd.members: 2 is even; etcd needs an odd count (1, 3, 5)\n" {
		t.Errorf("refused spec: exit %d, stdout %q, stderr %q", code, out, errOut)
	}

	_, errOut, code = e.run(t, "spec", "apply", "-f", filepath.Join(t.TempDir(), "nope.yaml"))
	if code != ExitError || !strings.Contains(errOut, "nope.yaml") {
		t.Errorf("missing file: exit %d, stderr %q", code, errOut)
	}

	d.specYAML = []byte("apiVersion: kedge/v1\nkind: Cluster\nmetadata:\n  name: edge-1\n")
	if out := mustRun(t, e, "spec", "get", "edge-1"); out != string(d.specYAML) {
		t.Errorf("spec get printed %q", out)
	}
}

func TestEvents(t *testing.T) {
	e, d := setup(t)
	d.events = []*kedgev1.Event{
		{At: ts(e.now), Type: kedgev1.EventType_EVENT_TYPE_NODE_ENROLLED, Cluster: "edge-1", Node: "nuc1", Message: "enrolled from 10.77.0.11"},
		{At: ts(e.now.Add(time.Second)), Type: kedgev1.EventType_EVENT_TYPE_SPEC_APPLIED, Cluster: "edge-1", Message: "spec applied; 3 plans changed"},
	}
	out := mustRun(t, e, "events", "--cluster", "edge-1")
	want := "" +
		"2026-11-25T12:00:00Z  node-enrolled       edge-1        nuc1          enrolled from 10.77.0.11\n" +
		"2026-11-25T12:00:01Z  spec-applied        edge-1        -             spec applied; 3 plans changed\n"
	if out != want {
		t.Errorf("events:\n%s\nwant:\n%s", out, want)
	}
	if req := lastRequest[*kedgev1.WatchEventsRequest](t, d); req.GetCluster() != "edge-1" || req.GetFollow() {
		t.Errorf("request = %v", req)
	}
	out = mustRun(t, e, "events", "-o", "json")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var ev kedgev1.Event
	if len(lines) != 2 || protojson.Unmarshal([]byte(lines[1]), &ev) != nil || ev.GetType() != kedgev1.EventType_EVENT_TYPE_SPEC_APPLIED {
		t.Errorf("events -o json should be one JSON object a line:\n%s", out)
	}
}

func TestArtifactPushChunks(t *testing.T) {
	e, d := setup(t)
	data := bytes.Repeat([]byte("k3s-binary"), (5<<20)/20) // 2.5 MiB
	file := writeFile(t, filepath.Join(t.TempDir(), "k3s"), string(data))
	sum := sha256.Sum256(data)
	out := mustRun(t, e, "artifact", "push", "--name", "k3s", "--version", "v1.31.4+k3s1", file)
	if want := "pushed k3s v1.31.4+k3s1: sha256 " + hex.EncodeToString(sum[:]) + ", 2621440 bytes\n"; out != want {
		t.Errorf("artifact push printed %q; want %q", out, want)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.artifactChunks) != 3 {
		t.Fatalf("got %d chunks; want 3 of at most 1 MiB", len(d.artifactChunks))
	}
	for i, c := range d.artifactChunks {
		if len(c.GetChunk()) > 1<<20 {
			t.Errorf("chunk %d is %d bytes", i, len(c.GetChunk()))
		}
		if (i == 0) != (c.GetName() == "k3s" && c.GetVersion() == "v1.31.4+k3s1") {
			t.Errorf("chunk %d: name %q version %q; want them on the first message only", i, c.GetName(), c.GetVersion())
		}
	}
}

func TestKubeconfigAndVersion(t *testing.T) {
	e, d := setup(t)
	d.kubecfg = []byte("apiVersion: v1\nkind: Config\nusers:\n- name: admin\n  user:\n    client-key-data: c2VjcmV0\n")
	out, errOut, code := e.run(t, "kubeconfig", "edge-1")
	if code != ExitOK || out != string(d.kubecfg) || errOut != "" {
		t.Errorf("kubeconfig: exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	if out := mustRun(t, e, "version"); !strings.HasPrefix(out, "kedgectl ") {
		t.Errorf("version printed %q", out)
	}
}

func TestEventsFollowUntilInterrupted(t *testing.T) {
	e, d := setup(t)
	d.events = []*kedgev1.Event{{At: ts(e.now), Type: kedgev1.EventType_EVENT_TYPE_UNIT_FAILED, Cluster: "edge-1", Node: "nuc2", Message: "k3s.service failed"}}
	ctx, interrupt := context.WithCancel(context.Background())
	defer interrupt()
	var out, errOut syncBuffer
	done := make(chan int)
	go func() { done <- Run(ctx, []string{"events", "--follow"}, e.env(&out, &errOut)) }()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "k3s.service failed") {
		if time.Now().After(deadline) {
			t.Fatalf("no event printed within 10s; stdout %q, stderr %q", out.String(), errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case code := <-done:
		t.Fatalf("events --follow ended by itself (exit %d) while the stream was open", code)
	default:
	}
	if !lastRequest[*kedgev1.WatchEventsRequest](t, d).GetFollow() {
		t.Error("--follow not sent")
	}
	interrupt()
	select {
	case code := <-done:
		if code != ExitOK || errOut.String() != "" {
			t.Errorf("interrupting --follow: exit %d, stderr %q; want a quiet exit 0", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("events --follow did not stop on interrupt")
	}
}
