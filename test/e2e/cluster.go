package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// ClusterName is the cluster this lab's spec and token are for.
func (l *Lab) ClusterName() string { return l.cluster }

// K3sSHA256 is the hash of the K3s binary NUCs are flashed with.
func (l *Lab) K3sSHA256() string {
	l.t.Helper()
	if l.bins == nil || l.bins.K3sSHA256 == "" {
		l.t.Fatalf("no K3s binary to put in the spec: build bin/k3s-test-double (make build) or set K3S_BINARY")
	}
	return l.bins.K3sSHA256
}

// K3sIsDouble is true unless K3S_BINARY names a real K3s.
func (l *Lab) K3sIsDouble() bool { return l.bins == nil || l.bins.K3sIsDouble }

// StackedSpec is the common edge layout: etcd and K3s servers on the same 3
// nodes, the rest agents.
func (l *Lab) StackedSpec() string {
	return l.spec("stacked", 3)
}

// ExternalSpec is 3 dedicated etcd nodes and servers K3s servers elsewhere.
func (l *Lab) ExternalSpec(servers int) string {
	return l.spec("external", servers)
}

func (l *Lab) spec(topology string, servers int) string {
	l.t.Helper()
	return fmt.Sprintf(`apiVersion: kedge/v1
kind: Cluster
metadata:
  name: %s
spec:
  topology: %s
  etcd:
    members: 3
  k3s:
    servers: %d
    version: v1.31.4+k3s1
    binary:
      sha256: %q
      path: %s
`, l.cluster, topology, servers, l.K3sSHA256(), K3sPrestagedPath)
}

// Status is the cluster's status from the admin API; it fails the test
// when the coordinator does not answer.
func (l *Lab) Status() *kedgev1.ClusterStatus {
	l.t.Helper()
	st, err := l.Coordinator.Status(l.cluster)
	if err != nil {
		l.t.Fatalf("cluster status: %v", err)
	}
	return st
}

// WaitHealthy waits for phase Healthy, logging each change of the status
// line; it returns how long it took.
func (l *Lab) WaitHealthy(t TB, timeout time.Duration) time.Duration {
	t.Helper()
	return l.WaitStatus(t, timeout, "phase Healthy", func(s *kedgev1.ClusterStatus) bool {
		return s.GetPhase() == kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY
	})
}

// WaitStatus polls the cluster status until cond holds, logging progress;
// on timeout it fails with the last status. It returns the time waited.
func (l *Lab) WaitStatus(t TB, timeout time.Duration, what string, cond func(*kedgev1.ClusterStatus) bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	lastLine := ""
	var last *kedgev1.ClusterStatus
	var lastErr error
	for time.Now().Before(deadline) {
		st, err := l.Coordinator.Status(l.cluster)
		lastErr = err
		if err == nil {
			last = st
			if line := StatusLine(st); line != lastLine {
				t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), line)
				lastLine = line
			}
			if cond(st) {
				return time.Since(start)
			}
		}
		time.Sleep(time.Second)
	}
	detail := ""
	if last != nil {
		detail = protojson.Format(last)
	}
	t.Fatalf("cluster %s not %s within %s (last error: %v); last status:\n%s", l.cluster, what, timeout, lastErr, detail)
	return 0
}

// PollStatus is WaitStatus without failing: it reports whether cond held
// within timeout, and when.
func (l *Lab) PollStatus(timeout time.Duration, cond func(*kedgev1.ClusterStatus) bool) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) < timeout {
		if st, err := l.Coordinator.Status(l.cluster); err == nil && cond(st) {
			return time.Since(start), true
		}
		time.Sleep(500 * time.Millisecond)
	}
	return time.Since(start), false
}

// IsHealthy is the condition WaitHealthy waits for.
func IsHealthy(s *kedgev1.ClusterStatus) bool {
	return s.GetPhase() == kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY
}

// StatusLine is a one-line summary of a cluster status, for progress logs.
func StatusLine(s *kedgev1.ClusterStatus) string {
	phase := strings.TrimPrefix(s.GetPhase().String(), "CLUSTER_PHASE_")
	var nodes []string
	for _, n := range s.GetNodes() {
		nodes = append(nodes, fmt.Sprintf("%s=%s", n.GetName(), strings.TrimPrefix(n.GetCondition().String(), "NODE_CONDITION_")))
	}
	sort.Strings(nodes)
	line := fmt.Sprintf("%s etcd %d/%d servers %d/%d agents %d/%d [%s]", phase,
		s.GetEtcd().GetHealthy(), s.GetEtcd().GetTotal(), s.GetServersActive(), s.GetServersPlanned(),
		s.GetAgentsActive(), s.GetAgentsPlanned(), strings.Join(nodes, " "))
	if s.GetReason() != "" {
		line += ": " + s.GetReason()
	}
	return line
}

// NodeByName returns a node record from the status, or nil.
func NodeByName(s *kedgev1.ClusterStatus, name string) *kedgev1.Node {
	for _, n := range s.GetNodes() {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}

// HasRole reports whether the node holds role.
func HasRole(n *kedgev1.Node, role kedgev1.Role) bool {
	for _, r := range n.GetRoles() {
		if r == role {
			return true
		}
	}
	return false
}

// MachinesWithRole maps the status's nodes holding role to lab machines
// (by the IP the node uses).
func (l *Lab) MachinesWithRole(s *kedgev1.ClusterStatus, role kedgev1.Role) []*Machine {
	l.t.Helper()
	var out []*Machine
	for _, n := range s.GetNodes() {
		if !HasRole(n, role) {
			continue
		}
		m := l.MachineForNode(n)
		if m == nil {
			l.t.Fatalf("node %s (ip %q, observed %q) matches no lab machine", n.GetName(), n.GetNodeIp(), n.GetObservedAddress())
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// MachineForNode finds the machine behind a node record.
func (l *Lab) MachineForNode(n *kedgev1.Node) *Machine {
	for _, ip := range []string{n.GetNodeIp(), hostOf(n.GetObservedAddress())} {
		if m := l.MachineByIP(ip); m != nil {
			return m
		}
	}
	for _, m := range l.Machines {
		if m.MachineID == n.GetFacts().GetMachineId() && m.Serial == n.GetFacts().GetDmiProductSerial() {
			return m
		}
	}
	return nil
}

func hostOf(addr string) string {
	if i := strings.LastIndexByte(addr, ':'); i > 0 && !strings.HasSuffix(addr, "]") {
		return strings.Trim(addr[:i], "[]")
	}
	return addr
}

// Etcdctl runs Debian's etcdctl (v3 API) in the coordinator's namespace
// against endpoints, authenticating with a datastore-client cert copied
// from certSource (a machine holding /etc/kedge/etcd/).
func (l *Lab) Etcdctl(certSource *Machine, endpoints []string, args ...string) (string, error) {
	dir := filepath.Join(l.runDir, "etcdctl")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	files := map[string]string{
		"ca.crt":     "/etc/kedge/etcd/ca.crt",
		"client.crt": "/etc/kedge/etcd/datastore-client.crt",
		"client.key": "/etc/kedge/etcd/datastore-client.key",
	}
	for dst, src := range files {
		if err := copyFile(filepath.Join(certSource.Root(), src), filepath.Join(dir, dst), 0o600); err != nil {
			return "", fmt.Errorf("copy %s from %s: %w", src, certSource.Name, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := append([]string{"netns", "exec", l.Coordinator.Netns, "etcdctl",
		"--endpoints", strings.Join(endpoints, ","),
		"--cacert", filepath.Join(dir, "ca.crt"),
		"--cert", filepath.Join(dir, "client.crt"),
		"--key", filepath.Join(dir, "client.key"),
		"--command-timeout", "10s"}, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("etcdctl %s: %v: %s%s", strings.Join(args, " "), err, stderr.String(), stdout.String())
	}
	return stdout.String(), nil
}

// EtcdEndpoints are the https client URLs of machines (port 2379).
func EtcdEndpoints(ms []*Machine) []string {
	var out []string
	for _, m := range ms {
		out = append(out, fmt.Sprintf("https://%s:2379", m.IP))
	}
	return out
}

// DumpDiagnostics logs, per powered-on machine, its failed units and the
// last journal lines of kedge's units, then the coordinator's status and log
// tail: a red run explains itself.
func (l *Lab) DumpDiagnostics() {
	t := l.owner
	t.Logf("==== lab %s diagnostics (run dir %s) ====", l.prefix, l.runDir)
	for _, m := range l.Machines {
		if !m.IsOn() {
			t.Logf("---- %s (%s): powered off", m.Name, m.IP)
			continue
		}
		failed, err := m.Exec("systemctl", "--failed", "--no-legend", "--plain")
		if err != nil {
			t.Logf("---- %s (%s): cannot enter: %v (console %s)", m.Name, m.IP, err, m.ConsoleLog())
			continue
		}
		journal, _ := m.Exec("journalctl", "-u", "kedge-nodeagent", "-u", "kedge-etcd", "-u", "k3s", "-u", "k3s-agent", "-n", "40", "--no-pager")
		t.Logf("---- %s (%s) failed units:\n%s\n---- %s journal:\n%s", m.Name, m.IP, failed, m.Name, journal)
	}
	if l.Coordinator == nil {
		return
	}
	if out, err := l.KedgectlErr("status", l.cluster); err == nil {
		t.Logf("---- kedgectl status:\n%s", out)
	} else if st, err2 := l.Coordinator.Status(l.cluster); err2 == nil {
		t.Logf("---- cluster status (kedgectl failed: %v):\n%s", err, protojson.Format(st))
	} else {
		t.Logf("---- cluster status unavailable: %v; %v", err, err2)
	}
	t.Logf("---- coordinator log (%s):\n%s", l.Coordinator.LogPath, l.Coordinator.logTail(40))
}
