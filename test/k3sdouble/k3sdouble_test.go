package k3sdouble

import (
	"bytes"
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kedge-io/kedge/nodeagent/k3srole"
)

const (
	serverToken = "server-token-s3cret"
	agentToken  = "agent-token-s3cret"
)

// proc is the double running in-process, as systemd would run the binary.
type proc struct {
	ready  chan struct{}
	done   chan error
	cancel context.CancelFunc
	logs   *bytes.Buffer
}

func start(t *testing.T, args []string, env map[string]string, tune ...func(*Options)) *proc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &proc{ready: make(chan struct{}), done: make(chan error, 1), cancel: cancel, logs: &bytes.Buffer{}}
	opts := Options{
		Stdout:           &bytes.Buffer{},
		Log:              slog.New(slog.NewTextHandler(&lockedWriter{w: p.logs}, nil)),
		Getenv:           func(k string) string { return env[k] },
		Ready:            func() { close(p.ready) },
		DatastoreTimeout: 2 * time.Second, // loopback etcd answers in milliseconds; refusals wait this long
		RecheckInterval:  200 * time.Millisecond,
	}
	for _, f := range tune {
		f(&opts)
	}
	go func() { p.done <- Run(ctx, args, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			t.Error("the double did not stop within 5s of its context ending")
		}
	})
	return p
}

// awaitReady waits for READY, failing the test if the double exits first.
func (p *proc) awaitReady(t *testing.T) {
	t.Helper()
	select {
	case <-p.ready:
	case err := <-p.done:
		p.done <- err // for the cleanup
		t.Fatalf("the double exited before READY: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("the double was not READY within 15s")
	}
}

// awaitRefusal waits for the double to exit without ever reporting READY.
func (p *proc) awaitRefusal(t *testing.T) error {
	t.Helper()
	err := p.awaitExit(t)
	select {
	case <-p.ready:
		t.Errorf("the double reported READY before exiting; it should have refused to run")
	default:
	}
	return err
}

// awaitExit waits for the double to exit and returns its error.
func (p *proc) awaitExit(t *testing.T) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		return err
	case <-time.After(15 * time.Second):
		t.Fatal("the double did not exit within 15s")
	}
	return nil
}

// lockedWriter lets the double's goroutines log into one buffer.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// serverConfig writes a config.yaml as kedge's k3srole does, for loopback.
func serverConfig(t *testing.T, e *testEtcd, dir, name, token, certFile, keyFile string) string {
	t.Helper()
	writeFile(t, filepath.Join(dir, "token"), token+"\n", 0o600)
	writeFile(t, filepath.Join(dir, "agent-token"), agentToken+"\n", 0o600)
	cfg := "datastore-endpoint: " + e.endpoint + "\n" +
		"datastore-cafile: " + e.caFile + "\n" +
		"datastore-certfile: " + certFile + "\n" +
		"datastore-keyfile: " + keyFile + "\n" +
		"token-file: " + filepath.Join(dir, "token") + "\n" +
		"agent-token-file: " + filepath.Join(dir, "agent-token") + "\n" +
		"node-ip: 127.0.0.1\nnode-name: " + name + "\n" +
		"tls-san:\n  - 127.0.0.1\n  - k3s.test\n" +
		"bind-address: 127.0.0.1\nhttps-listen-port: \"0\"\n" +
		"write-kubeconfig: " + filepath.Join(dir, "k3s.yaml") + "\n" +
		"disable:\n  - traefik\n"
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, cfg, 0o600)
	return path
}

func agentConfig(t *testing.T, dir, name, serverURL, token string) string {
	t.Helper()
	writeFile(t, filepath.Join(dir, "agent-token"), token+"\n", 0o600)
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, "server: "+serverURL+"\ntoken-file: "+filepath.Join(dir, "agent-token")+"\nnode-name: "+name+"\nnode-ip: 127.0.0.2\n", 0o600)
	return path
}

func etcdClient(t *testing.T, e *testEtcd) *clientv3.Client {
	t.Helper()
	tlsCfg, err := datastoreTLS(Config{"datastore-cafile": e.caFile, "datastore-certfile": e.certFile, "datastore-keyfile": e.keyFile})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.endpoint}, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func get(t *testing.T, cli *clientv3.Client, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("etcd get %s: %v", key, err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

var serverURLLine = regexp.MustCompile(`server: (https://\S+)`)

func TestServerAgentAndKubectlAgainstRealEtcd(t *testing.T) {
	e := startEtcd(t)
	cli := etcdClient(t, e)
	dir := t.TempDir()
	cfgPath := serverConfig(t, e, dir, "srv1", serverToken, e.certFile, e.keyFile)

	server := start(t, []string{"k3s", "server"}, map[string]string{"K3S_CONFIG_FILE": cfgPath})
	server.awaitReady(t)
	if !strings.HasPrefix(server.logs.String(), "time=") || !strings.Contains(strings.SplitN(server.logs.String(), "\n", 2)[0], "k3s TEST DOUBLE (not K3s)") {
		t.Errorf("first log line does not name the test double: %q", strings.SplitN(server.logs.String(), "\n", 2)[0])
	}

	if v := get(t, cli, "/registry/minions/srv1"); !strings.HasPrefix(v, "k8s\x00") {
		t.Errorf("/registry/minions/srv1 = %q, want a stored node starting k8s\\x00", v)
	}
	if v := get(t, cli, bootstrapKey(serverToken)); v == "" {
		t.Errorf("no bootstrap data at %s", bootstrapKey(serverToken))
	} else if strings.Contains(v, "PRIVATE KEY") {
		t.Errorf("bootstrap data holds the cluster CA key in the clear")
	}

	kubeconfigPath := filepath.Join(dir, "k3s.yaml")
	fi, err := os.Stat(kubeconfigPath)
	if err != nil {
		t.Fatalf("server wrote no kubeconfig: %v", err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("k3s.yaml mode %#o, want 0600", fi.Mode().Perm())
	}
	kubeconfig, _ := os.ReadFile(kubeconfigPath)
	m := serverURLLine.FindSubmatch(kubeconfig)
	if m == nil {
		t.Fatalf("k3s.yaml has no server URL")
	}
	serverURL := string(m[1])
	if !strings.HasPrefix(serverURL, "https://127.0.0.1:") {
		t.Errorf("k3s.yaml server %s, want https://127.0.0.1:PORT as K3s writes it", serverURL)
	}

	if st := k3srole.ProbeURL(context.Background(), serverURL+"/ping"); !st.GetReady() {
		t.Errorf("k3srole probe of the double: %v", st.GetError())
	}

	t.Run("agent registers with the agent token", func(t *testing.T) {
		a := start(t, []string{"k3s", "agent", "--config", agentConfig(t, t.TempDir(), "agent1", serverURL, agentToken)}, nil)
		a.awaitReady(t)
		if v := get(t, cli, "/registry/minions/agent1"); !strings.Contains(v, `"agent1"`) {
			t.Errorf("/registry/minions/agent1 = %q, want the agent's node", v)
		}
	})

	t.Run("agent with a wrong token is refused", func(t *testing.T) {
		a := start(t, []string{"k3s", "agent", "--config", agentConfig(t, t.TempDir(), "intruder", serverURL, "not-the-token")}, nil)
		err := a.awaitRefusal(t)
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Errorf("agent with a wrong token exited with %v, want a 401 refusal", err)
		}
		if err != nil && strings.Contains(err.Error(), "not-the-token") {
			t.Errorf("error quotes the token: %v", err)
		}
		if v := get(t, cli, "/registry/minions/intruder"); v != "" {
			t.Errorf("a refused agent was recorded: %q", v)
		}
	})

	t.Run("kubectl run stores the pod", func(t *testing.T) {
		var out bytes.Buffer
		err := Run(context.Background(), []string{"/usr/local/bin/kubectl", "run", "nginx", "--image", "nginx", "--port", "80"},
			Options{Stdout: &out, Log: slog.New(slog.DiscardHandler), Getenv: func(k string) string {
				return map[string]string{"KUBECONFIG": kubeconfigPath}[k]
			}})
		if err != nil || out.String() != "pod/nginx created\n" {
			t.Fatalf("kubectl run: %q, %v", out.String(), err)
		}
		v := get(t, cli, "/registry/pods/default/nginx")
		if !strings.HasPrefix(v, "k8s\x00") || !strings.Contains(v, `"image":"nginx"`) {
			t.Errorf("/registry/pods/default/nginx = %q, want a pod with image nginx", v)
		}
		err = Run(context.Background(), []string{"k3s", "kubectl", "--kubeconfig", kubeconfigPath, "run", "nginx", "--image", "nginx"},
			Options{Stdout: &out, Log: slog.New(slog.DiscardHandler), Getenv: func(string) string { return "" }})
		if err == nil || !strings.Contains(err.Error(), "AlreadyExists") {
			t.Errorf("second kubectl run: %v, want AlreadyExists", err)
		}
	})

	t.Run("second server with the same token shares the cluster CA", func(t *testing.T) {
		dir2 := t.TempDir()
		s2 := start(t, []string{"k3s", "server", "--config", serverConfig(t, e, dir2, "srv2", serverToken, e.certFile, e.keyFile)}, nil)
		s2.awaitReady(t)
		kc2, _ := os.ReadFile(filepath.Join(dir2, "k3s.yaml"))
		if caData(kubeconfig) != caData(kc2) {
			t.Error("servers sharing a token ended with different cluster CAs")
		}
	})

	t.Run("server with a different token exits", func(t *testing.T) {
		s3 := start(t, []string{"k3s", "server", "--config", serverConfig(t, e, t.TempDir(), "srv3", "another-token", e.certFile, e.keyFile)}, nil)
		err := s3.awaitRefusal(t)
		if err == nil || !strings.Contains(err.Error(), "bootstrap data already found and encrypted with different token") {
			t.Errorf("server with another token: %v, want K3s's different-token error", err)
		}
	})
}

var caDataLine = regexp.MustCompile(`certificate-authority-data: (\S+)`)

func caData(kubeconfig []byte) string {
	if m := caDataLine.FindSubmatch(kubeconfig); m != nil {
		return string(m[1])
	}
	return ""
}

func TestServerRefusesDatastoreCertsFromAnotherCA(t *testing.T) {
	e := startEtcd(t)
	other := newTestCA(t, "some other CA")
	otherDir := t.TempDir()
	certFile, keyFile := other.issue(t, otherDir, "datastore-client", nil, x509.ExtKeyUsageClientAuth)

	t.Run("client cert from another CA", func(t *testing.T) {
		p := start(t, []string{"k3s", "server", "--config", serverConfig(t, e, t.TempDir(), "srv", serverToken, certFile, keyFile)}, nil)
		err := p.awaitRefusal(t)
		t.Logf("refused with: %v", err)
		if err == nil || !strings.Contains(err.Error(), "datastore") || !strings.Contains(err.Error(), "tls:") {
			t.Errorf("server with a foreign client cert: %v, want a datastore TLS error", err)
		}
	})
	t.Run("CA file of another CA", func(t *testing.T) {
		caFile := filepath.Join(otherDir, "ca.crt")
		writeFile(t, caFile, string(other.pem), 0o644)
		wrong := *e
		wrong.caFile = caFile
		p := start(t, []string{"k3s", "server", "--config", serverConfig(t, &wrong, t.TempDir(), "srv", serverToken, e.certFile, e.keyFile)}, nil)
		err := p.awaitRefusal(t)
		t.Logf("refused with: %v", err)
		if err == nil || !strings.Contains(err.Error(), "certificate") {
			t.Errorf("server trusting another CA: %v, want a certificate error", err)
		}
	})
}

func TestConfigRefusesUnknownKeysAndCoversWhatItSays(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	writeFile(t, path, "datastore-endpont: https://127.0.0.1:2379\n", 0o600)
	err := Run(context.Background(), []string{"k3s", "server", "--config", path}, Options{Log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), `"datastore-endpont"`) {
		t.Errorf("misspelt key: %v, want an error naming it", err)
	}
	err = Run(context.Background(), []string{"k3s", "server", "--no-such-flag"}, Options{Log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "no-such-flag") {
		t.Errorf("unknown flag: %v, want an error naming it", err)
	}
	err = Run(context.Background(), []string{"k3s", "server", "--config", os.DevNull, "--token", "x"}, Options{Log: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "SQLite") {
		t.Errorf("server without a datastore: %v, want a clear not-covered error", err)
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"k3s", "--version"}, Options{Stdout: &out}); err != nil || !strings.Contains(out.String(), "TEST DOUBLE") {
		t.Errorf("--version printed %q (%v), want it to say test double", out.String(), err)
	}
}

func TestServerExitsWhenDatastoreIsGone(t *testing.T) {
	e := startEtcd(t)
	cli := etcdClient(t, e)
	p := start(t, []string{"k3s", "server", "--config", serverConfig(t, e, t.TempDir(), "srv1", serverToken, e.certFile, e.keyFile)}, nil,
		func(o *Options) { o.DatastoreLossLimit = time.Second })
	p.awaitReady(t)
	deadline := time.Now().Add(5 * time.Second)
	for get(t, cli, "/registry/leases/kube-node-lease/srv1") == "" {
		if time.Now().After(deadline) {
			t.Fatal("server did not renew its node lease within 5s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.stop()
	err := p.awaitExit(t)
	if err == nil || !strings.Contains(err.Error(), "datastore unreachable") {
		t.Errorf("server after etcd stopped: %v, want it to exit naming the datastore", err)
	}
}
