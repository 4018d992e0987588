package k3sdouble

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kedge-io/kedge/internal/atomicfile"
)

// DefaultKubeconfig is where a K3s server writes its admin kubeconfig.
const DefaultKubeconfig = "/etc/rancher/k3s/k3s.yaml"

// k8sPrefix starts every object Kubernetes stores in etcd as protobuf; the
// double stores JSON after it, enough for `etcdctl get` to show the object.
const k8sPrefix = "k8s\x00"

type server struct {
	ctx        context.Context // the server's lifetime, for background work
	log        *slog.Logger
	etcd       *clientv3.Client
	ca         *clusterCA
	token      string
	agentToken string
	embedded   *embeddedEtcd // nil with an external datastore
}

func runServer(ctx context.Context, args []string, opts Options) error {
	cfg, err := loadConfig(args, opts.Getenv)
	if err != nil {
		return err
	}
	embedded := cfg.str("datastore-endpoint") == "" && (cfg.boolean("cluster-init") || cfg.str("server") != "")
	if cfg.str("datastore-endpoint") == "" && !embedded {
		return errors.New("--datastore-endpoint, --cluster-init or --server is required: the k3s TEST DOUBLE has no SQLite datastore")
	}
	token, err := cfg.secret("token")
	if err != nil {
		return err
	}
	if token == "" {
		return errors.New("--token or --token-file is required (the k3s TEST DOUBLE does not generate one)")
	}
	agentToken, err := cfg.secret("agent-token")
	if err != nil {
		return err
	}
	s := &server{ctx: ctx, log: opts.Log, token: token, agentToken: agentToken}
	if embedded {
		if s.embedded, err = startEmbeddedEtcd(ctx, cfg, token, opts.Log); err != nil {
			return err
		}
		defer s.embedded.Close()
		s.etcd = s.embedded.client
	} else {
		if s.etcd, err = connectDatastore(ctx, cfg, opts.DatastoreTimeout); err != nil {
			return err
		}
		defer s.etcd.Close()
	}
	if s.ca, err = s.bootstrap(ctx, opts.DatastoreTimeout); err != nil {
		return err
	}
	name := cfg.nodeName()
	nodeIPs := cfg.list("node-ip")
	if err := s.putNode(ctx, name, nodeIPs, "control-plane"); err != nil {
		return err
	}

	sans := []string{"127.0.0.1", "::1", "localhost", "kubernetes", "kubernetes.default", name}
	sans = append(sans, nodeIPs...)
	sans = append(sans, cfg.list("tls-san")...)
	if a := cfg.str("advertise-address"); a != "" {
		sans = append(sans, a)
	}
	slices.Sort(sans)
	cert, err := s.ca.servingCert(slices.Compact(sans))
	if err != nil {
		return fmt.Errorf("serving cert: %w", err)
	}
	bind, port := cfg.str("bind-address"), cfg.str("https-listen-port")
	if port == "" {
		port = "6443"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(bind, port))
	if err != nil {
		return fmt.Errorf("--https-listen-port %s: %w", port, err)
	}
	srv := &http.Server{
		Handler: s.routes(),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			// kubectl authenticates with the client cert in k3s.yaml; agents with their token.
			ClientAuth: tls.VerifyClientCertIfGiven,
			ClientCAs:  s.ca.pool(),
			MinVersion: tls.VersionTLS12,
		},
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(opts.Log.Handler(), slog.LevelDebug),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ServeTLS(ln, "", "") }()
	defer func() {
		shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutCtx)
	}()

	kubeconfigPath, err := s.writeKubeconfig(cfg, ln.Addr().(*net.TCPAddr).Port)
	if err != nil {
		return err
	}
	opts.Log.Info("k3s TEST DOUBLE server running", "node", name, "listen", ln.Addr().String(), "kubeconfig", kubeconfigPath)
	if err := notifyReady(opts); err != nil {
		return err
	}
	lease := time.NewTicker(opts.RecheckInterval)
	defer lease.Stop()
	lastReached := time.Now()
	for {
		select {
		case <-ctx.Done():
			opts.Log.Info("k3s TEST DOUBLE server stopping")
			return nil
		case err := <-serveErr:
			return fmt.Errorf("serve https: %w", err)
		case <-lease.C:
		}
		if err := s.renewLease(ctx, name, opts.RecheckInterval); err == nil {
			lastReached = time.Now()
		} else if ctx.Err() == nil {
			if gone := time.Since(lastReached); gone >= opts.DatastoreLossLimit {
				return fmt.Errorf("datastore unreachable for %s: %w", gone.Round(time.Second), err)
			}
			opts.Log.Warn("failed to renew node lease", "node", name, "error", err)
		}
	}
}

// renewLease writes the node's lease as the kubelet does, proving the
// datastore still answers.
func (s *server) renewLease(ctx context.Context, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lease, _ := json.Marshal(map[string]any{
		"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
		"metadata": map[string]any{"name": name, "namespace": "kube-node-lease"},
		"spec":     map[string]any{"holderIdentity": name, "renewTime": time.Now().UTC().Format(time.RFC3339)},
	})
	_, err := s.etcd.Put(ctx, "/registry/leases/kube-node-lease/"+name, k8sPrefix+string(lease))
	return err
}

// connectDatastore opens the real etcd client with the datastore TLS files
// and makes one round trip, so bad certs fail here as they do for K3s.
func connectDatastore(ctx context.Context, cfg Config, timeout time.Duration) (*clientv3.Client, error) {
	endpoints := cfg.list("datastore-endpoint")
	for _, ep := range endpoints {
		if !strings.HasPrefix(ep, "https://") && !strings.HasPrefix(ep, "http://") {
			return nil, fmt.Errorf("--datastore-endpoint %q: want http(s)://host:port URLs, comma separated", ep)
		}
	}
	var tlsCfg *tls.Config
	if strings.HasPrefix(endpoints[0], "https://") {
		var err error
		if tlsCfg, err = datastoreTLS(cfg); err != nil {
			return nil, err
		}
	}
	// The etcd client retries a refused handshake until its deadline and then
	// says only "deadline exceeded"; one bare handshake fails fast and says why.
	if err := checkDatastoreTLS(ctx, endpoints[0], tlsCfg); err != nil {
		return nil, fmt.Errorf("datastore %s: %w", endpoints[0], err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		TLS:         tlsCfg,
		DialTimeout: timeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("datastore %s: %w", cfg.str("datastore-endpoint"), err)
	}
	rtCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := cli.Get(rtCtx, "/registry/health-check", clientv3.WithKeysOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("datastore %s: %w", cfg.str("datastore-endpoint"), err)
	}
	return cli, nil
}

func datastoreTLS(cfg Config) (*tls.Config, error) {
	caFile, certFile, keyFile := cfg.str("datastore-cafile"), cfg.str("datastore-certfile"), cfg.str("datastore-keyfile")
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pemBytes, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--datastore-cafile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return nil, fmt.Errorf("--datastore-cafile %s holds no PEM certificate", caFile)
		}
		tlsCfg.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--datastore-certfile %s / --datastore-keyfile %s: %w", certFile, keyFile, err)
		}
		tlsCfg.Certificates = []tls.Certificate{pair}
	}
	return tlsCfg, nil
}

// checkDatastoreTLS handshakes with one endpoint and waits briefly for the
// server's verdict on our client cert (TLS 1.3 sends it after the
// handshake). Only a TLS failure is an error: an endpoint not up yet is the
// etcd client's to retry.
func checkDatastoreTLS(ctx context.Context, endpoint string, tlsCfg *tls.Config) error {
	if tlsCfg == nil {
		return nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return err
	}
	raw, err := (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil
	}
	cfg := tlsCfg.Clone()
	cfg.NextProtos = []string{"h2"}
	cfg.ServerName = u.Hostname()
	conn := tls.Client(raw, cfg)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	if err := conn.HandshakeContext(ctx); err != nil {
		return err
	}
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := conn.Read(make([]byte, 1)); err != nil {
		var netErr net.Error
		if errors.As(err, &netErr) && netErr.Timeout() {
			return nil
		}
		return err
	}
	return nil
}

// bootstrap finds this token's bootstrap data or writes it. The write is a
// create-if-absent transaction, so servers starting together all end with
// the one cluster CA the winner wrote.
func (s *server) bootstrap(ctx context.Context, timeout time.Duration) (*clusterCA, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	key := bootstrapKey(s.token)
	resp, err := s.etcd.Get(ctx, "/bootstrap/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("read bootstrap data: %w", err)
	}
	for _, kv := range resp.Kvs {
		if string(kv.Key) == key {
			s.log.Info("found bootstrap data", "key", key)
			return openBootstrap(s.token, kv.Value)
		}
	}
	if len(resp.Kvs) > 0 {
		return nil, errDifferentToken
	}
	ca, err := newClusterCA()
	if err != nil {
		return nil, err
	}
	sealed, err := sealBootstrap(s.token, ca)
	if err != nil {
		return nil, err
	}
	txn, err := s.etcd.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(sealed))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, fmt.Errorf("write bootstrap data: %w", err)
	}
	if txn.Succeeded {
		s.log.Info("wrote bootstrap data", "key", key)
		return ca, nil
	}
	s.log.Info("another server wrote bootstrap data first", "key", key)
	return openBootstrap(s.token, txn.Responses[0].GetResponseRange().Kvs[0].Value)
}

// putNode records a node as K3s's kubelet registration would.
func (s *server) putNode(ctx context.Context, name string, ips []string, role string) error {
	node := map[string]any{
		"apiVersion": "v1", "kind": "Node",
		"metadata": map[string]any{"name": name, "labels": map[string]string{"node-role.kubernetes.io/" + role: "true"}},
		"status":   map[string]any{"addresses": nodeAddresses(ips)},
	}
	body, _ := json.Marshal(node)
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := s.etcd.Put(ctx, "/registry/minions/"+name, k8sPrefix+string(body)); err != nil {
		return fmt.Errorf("record node %s: %w", name, err)
	}
	return nil
}

func nodeAddresses(ips []string) []map[string]string {
	out := []map[string]string{}
	for _, ip := range ips {
		out = append(out, map[string]string{"type": "InternalIP", "address": ip})
	}
	return out
}

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "pong")
	})
	mux.HandleFunc("GET /cacerts", func(w http.ResponseWriter, r *http.Request) {
		w.Write(s.ca.CertPEM)
	})
	mux.HandleFunc("POST /v1-k3s/register", s.register)
	mux.HandleFunc("POST /v1-k3s/etcd/join", s.joinEtcd)
	mux.HandleFunc("POST /api/v1/namespaces/{ns}/pods", s.createPod)
	mux.HandleFunc("GET /api/v1/nodes", s.listNodes)
	return mux
}

// tokenAccepted checks a presented token against the server token and the
// agent token, each a separate secret, in constant time.
func (s *server) tokenAccepted(presented string) bool {
	server := constantEqual(presented, s.token)
	agent := s.agentToken != "" && constantEqual(presented, s.agentToken)
	return server || agent
}

func constantEqual(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

func (s *server) register(w http.ResponseWriter, r *http.Request) {
	_, password, _ := r.BasicAuth()
	name := r.Header.Get("K3s-Node-Name")
	if !s.tokenAccepted(password) {
		s.log.Warn("refused agent registration: wrong token", "node", name, "remote", r.RemoteAddr)
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	if name == "" {
		http.Error(w, "K3s-Node-Name header is required", http.StatusBadRequest)
		return
	}
	var ips []string
	if ip := r.Header.Get("K3s-Node-IP"); ip != "" {
		ips = strings.Split(ip, ",")
	}
	if err := s.putNode(r.Context(), name, ips, "agent"); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	io.WriteString(w, "registered\n")
}

// admin reports whether the request carries a client cert from the cluster CA.
func admin(r *http.Request) bool {
	return r.TLS != nil && len(r.TLS.VerifiedChains) > 0
}

func (s *server) createPod(w http.ResponseWriter, r *http.Request) {
	if !admin(r) {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var pod struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(body, &pod); err != nil || pod.Metadata.Name == "" {
		http.Error(w, "pod needs metadata.name", http.StatusBadRequest)
		return
	}
	key := "/registry/pods/" + r.PathValue("ns") + "/" + pod.Metadata.Name
	txn, err := s.etcd.Txn(r.Context()).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, k8sPrefix+string(body))).
		Commit()
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	if !txn.Succeeded {
		http.Error(w, fmt.Sprintf("pods %q already exists", pod.Metadata.Name), http.StatusConflict)
		return
	}
	w.WriteHeader(http.StatusCreated)
	w.Write(body)
}

func (s *server) listNodes(w http.ResponseWriter, r *http.Request) {
	if !admin(r) {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	resp, err := s.etcd.Get(r.Context(), "/registry/minions/", clientv3.WithPrefix())
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	items := []json.RawMessage{}
	for _, kv := range resp.Kvs {
		items = append(items, json.RawMessage(strings.TrimPrefix(string(kv.Value), k8sPrefix)))
	}
	json.NewEncoder(w).Encode(map[string]any{"kind": "NodeList", "items": items})
}

// writeKubeconfig writes K3s's admin kubeconfig: the cluster CA, a
// system:masters client cert, and the loopback server URL K3s uses.
func (s *server) writeKubeconfig(cfg Config, port int) (string, error) {
	path := cfg.str("write-kubeconfig")
	if path == "" {
		path = DefaultKubeconfig
	}
	mode := os.FileMode(0o600)
	if m := cfg.str("write-kubeconfig-mode"); m != "" {
		v, err := strconv.ParseUint(m, 8, 32)
		if err != nil {
			return "", fmt.Errorf("--write-kubeconfig-mode %q: want an octal mode like 0600", m)
		}
		mode = os.FileMode(v)
	}
	host := "127.0.0.1"
	if ip := net.ParseIP(cfg.str("bind-address")); ip != nil && !ip.IsUnspecified() {
		host = ip.String()
	}
	certPEM, keyPEM, err := s.ca.issue("system:admin", []string{"system:masters"}, nil)
	if err != nil {
		return "", err
	}
	b64 := base64.StdEncoding.EncodeToString
	kubeconfig := fmt.Sprintf(`apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: %s
    server: https://%s
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: %s
    client-key-data: %s
`, b64(s.ca.CertPEM), net.JoinHostPort(host, strconv.Itoa(port)), b64(certPEM), b64(keyPEM))
	if err := atomicfile.WriteFile(path, []byte(kubeconfig), mode); err != nil {
		return "", err
	}
	return path, nil
}
