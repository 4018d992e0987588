package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/kedge-io/kedge/coordinator/adminconfig"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Coordinator is the lab's kedge-coordinator: a child process in its own
// namespace on the LAN (10.77.0.2), with its data dir in the run dir.
type Coordinator struct {
	Netns       string
	DataDir     string
	LogPath     string
	AdminConfig string
	// CAPin is what NUCs are flashed with.
	CAPin string

	lab  *Lab
	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	conn *grpc.ClientConn
	// Admin is the admin API over the LAN, with the init-generated admin cert.
	Admin kedgev1.AdminServiceClient
}

func (l *Lab) startCoordinator() (*Coordinator, error) {
	c := &Coordinator{
		lab:     l,
		Netns:   l.prefix + "-coord",
		DataDir: filepath.Join(l.runDir, "coordinator", "data"),
		LogPath: filepath.Join(l.runDir, "coordinator", "coordinator.log"),
	}
	c.AdminConfig = filepath.Join(c.DataDir, "admin.yaml")
	if err := l.net.attach(c.Netns, l.prefix+"c", coordinatorIP); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(c.LogPath), 0o700); err != nil {
		return nil, err
	}
	log, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	// init prints the flash parameters, a token among them: it goes to the
	// 0600 log in the run dir, never to the test output.
	initCmd := exec.Command("ip", "netns", "exec", c.Netns, l.bins.Coordinator, "init",
		"--data-dir", c.DataDir, "--address", CoordinatorAddress, "--cluster", l.cluster)
	initCmd.Stdout, initCmd.Stderr = log, log
	err = initCmd.Run()
	log.Close()
	if err != nil {
		return nil, fmt.Errorf("kedge-coordinator init failed (%v); see %s:\n%s", err, c.LogPath, c.logTail(15))
	}
	cfg, err := adminconfig.Load(c.AdminConfig)
	if err != nil {
		return nil, err
	}
	c.CAPin = cfg.CAPin
	tlsConf, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	c.conn, err = grpc.NewClient("passthrough:///"+CoordinatorAddress,
		grpc.WithContextDialer(dialInNetns(c.Netns)),
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	if err != nil {
		return nil, err
	}
	c.Admin = kedgev1.NewAdminServiceClient(c.conn)
	l.state.update(func(s *State) { s.CoordinatorNetns, s.AdminConfig = c.Netns, c.AdminConfig })
	return c, c.start()
}

// Start starts the coordinator again after Stop (same data dir).
func (c *Coordinator) Start(t TB) {
	t.Helper()
	if err := c.start(); err != nil {
		t.Fatalf("start coordinator: %v", err)
	}
}

func (c *Coordinator) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cmd != nil {
		return nil // already running
	}
	log, err := os.OpenFile(c.LogPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "\n==== serve %s ====\n", time.Now().Format(time.RFC3339))
	cmd := exec.Command("ip", "netns", "exec", c.Netns, c.lab.bins.Coordinator, "serve",
		"--data-dir", c.DataDir, "--listen", CoordinatorAddress)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Close()
		return err
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		log.Close()
		close(done)
	}()
	c.cmd, c.done = cmd, done
	c.lab.state.update(func(s *State) { s.PIDs["coordinator"] = cmd.Process.Pid })
	// Ready when the admin API answers.
	deadline := time.Now().Add(60 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("kedge-coordinator serve exited at start; see %s:\n%s", c.LogPath, c.logTail(20))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, lastErr = c.Admin.ListTokens(ctx, &kedgev1.ListTokensRequest{})
		cancel()
		if lastErr == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("coordinator admin API did not answer within 60s: %v; log %s:\n%s", lastErr, c.LogPath, c.logTail(20))
}

// Running reports whether the coordinator process runs.
func (c *Coordinator) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cmd != nil
}

// Stop ends the coordinator (SIGTERM, then SIGKILL after 15 s).
func (c *Coordinator) Stop(t TB) {
	t.Helper()
	c.mu.Lock()
	cmd, done := c.cmd, c.done
	c.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Logf("coordinator ignored SIGTERM for 15s; killing it")
		cmd.Process.Kill()
		<-done
	}
	c.mu.Lock()
	c.cmd = nil
	c.mu.Unlock()
	c.lab.state.update(func(s *State) { delete(s.PIDs, "coordinator") })
}

func (c *Coordinator) closeClient() {
	if c.conn != nil {
		c.conn.Close()
	}
}

func (c *Coordinator) logTail(n int) string {
	data, _ := os.ReadFile(c.LogPath)
	return tail(string(data), n)
}

// LogTail returns the last n lines of the coordinator's log.
func (c *Coordinator) LogTail(n int) string { return c.logTail(n) }

// ApplySpec stores a cluster spec (YAML) through the admin API.
func (c *Coordinator) ApplySpec(t TB, specYAML string) *kedgev1.ApplySpecResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Admin.ApplySpec(ctx, &kedgev1.ApplySpecRequest{SpecYaml: []byte(specYAML), FileName: "lab-spec.yaml"})
	if err != nil {
		t.Fatalf("apply spec: %v\nspec:\n%s", err, specYAML)
	}
	return resp
}

// CreateToken makes a bootstrap token for cluster.
func (c *Coordinator) CreateToken(t TB, cluster string, ttl time.Duration, description string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Admin.CreateToken(ctx, &kedgev1.CreateTokenRequest{
		Cluster: cluster, Ttl: durationpb.New(ttl), Description: description,
	})
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	return resp.GetToken()
}

// Status is the cluster's status from the admin API.
func (c *Coordinator) Status(cluster string) (*kedgev1.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Admin.GetClusterStatus(ctx, &kedgev1.GetClusterStatusRequest{Cluster: cluster})
	if err != nil {
		return nil, err
	}
	return resp.GetStatus(), nil
}

// Kedgectl runs `kedgectl --config ADMIN args...` in the coordinator's
// namespace, as an operator on the LAN does, and returns its stdout.
func (l *Lab) Kedgectl(args ...string) string {
	l.t.Helper()
	out, err := l.KedgectlErr(args...)
	if err != nil {
		l.t.Fatalf("%v", err)
	}
	return out
}

// KedgectlErr is Kedgectl returning the error instead of failing.
func (l *Lab) KedgectlErr(args ...string) (string, error) {
	if l.Coordinator == nil {
		return "", fmt.Errorf("this lab has no coordinator")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"netns", "exec", l.Coordinator.Netns, l.bins.Kedgectl, "--config", l.Coordinator.AdminConfig}, args...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kedgectl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// KedgectlJSON runs kedgectl with `-o json` and decodes its output into msg.
func (l *Lab) KedgectlJSON(msg proto.Message, args ...string) {
	l.t.Helper()
	out := l.Kedgectl(append(args, "-o", "json")...)
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal([]byte(out), msg); err != nil {
		l.t.Fatalf("kedgectl %s -o json: decode as %T: %v\n%s", strings.Join(args, " "), msg, err, out)
	}
}

// token returns the lab's shared bootstrap token, made on first use (after
// the spec, in the usual order), valid for the lab's life.
func (l *Lab) token() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.labToken == "" {
		l.labToken = l.Coordinator.CreateToken(l.t, l.cluster, 2*time.Hour, "lab "+l.prefix)
	}
	return l.labToken
}

// flashMachine does to the machine's disk what a user does to an image:
// pre-stage K3s, then `kedge-nodeagent install --root`.
func (l *Lab) flashMachine(m *Machine) error {
	if l.Coordinator == nil {
		return fmt.Errorf("this lab has no coordinator to flash %s for", m.Name)
	}
	var token string
	switch m.flash.token {
	case tokenLab:
		token = l.token()
	case tokenWrong:
		token = randomHex(3) + "." + randomHex(16)
	case tokenExpired:
		token = l.Coordinator.CreateToken(l.t, l.cluster, time.Second, "lab expired "+m.Name)
		// Let it expire before the machine can present it.
		time.Sleep(1500 * time.Millisecond)
	}
	pin := l.Coordinator.CAPin
	if m.flash.wrongPin {
		pin = "sha256:" + randomHex(32)
	}
	tokenFile := filepath.Join(m.dir, "bootstrap-token")
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return err
	}
	defer os.Remove(tokenFile)
	if l.bins.K3s != "" {
		if _, err := os.Stat(l.bins.K3s); err == nil {
			if err := copyFile(l.bins.K3s, filepath.Join(m.merged, K3sPrestagedPath), 0o755); err != nil {
				return fmt.Errorf("pre-stage K3s: %w", err)
			}
		}
	}
	cmd := exec.Command(l.bins.NodeAgent, "install", "--root", m.merged,
		"--coordinator", CoordinatorAddress, "--ca-pin", pin, "--token-file", tokenFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kedge-nodeagent install --root %s: %v: %s", m.merged, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// K3sPrestagedPath is where the image carries K3s for air-gapped installs.
const K3sPrestagedPath = "/opt/k3s/k3s"
