package k3sdouble

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// embeddedEtcd is the double's stand-in for K3s's embedded etcd: a real etcd
// member in the server process. Unlike K3s it speaks plain HTTP on its peer
// port (no etcd CA of its own); the client port is loopback only.
type embeddedEtcd struct {
	etcd   *embed.Etcd
	client *clientv3.Client
}

func (e *embeddedEtcd) Close() {
	e.client.Close()
	e.etcd.Close()
}

// joinRequest and joinResponse are the double's own join call (K3s uses its
// supervisor API for the same step): a new server asks a running one to add
// it as an etcd member, authenticated with the server token.
type joinRequest struct {
	Name    string `json:"name"`
	PeerURL string `json:"peer_url"`
}

type joinResponse struct {
	InitialCluster string `json:"initial_cluster"`
}

// etcdURLs reads the member's URLs from etcd-arg (listen-client-urls=,
// listen-peer-urls=, initial-advertise-peer-urls=), else K3s's defaults:
// client on 127.0.0.1:2379, peer on the node IP's 2380.
func etcdURLs(cfg Config) (client, peerListen, peerAdvertise *url.URL, err error) {
	args := map[string]string{}
	for _, a := range cfg.list("etcd-arg") {
		k, v, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		args[k] = v
	}
	host := "127.0.0.1"
	if ips := cfg.list("node-ip"); len(ips) > 0 {
		host = ips[0]
	}
	raw := map[string]string{
		"listen-client-urls":          "http://127.0.0.1:2379",
		"listen-peer-urls":            "http://" + host + ":2380",
		"initial-advertise-peer-urls": "",
	}
	for k := range raw {
		if v, ok := args[k]; ok {
			raw[k] = v
		}
	}
	if raw["initial-advertise-peer-urls"] == "" {
		raw["initial-advertise-peer-urls"] = raw["listen-peer-urls"]
	}
	parsed := map[string]*url.URL{}
	for k, v := range raw {
		u, err := url.Parse(v)
		if err != nil || u.Host == "" {
			return nil, nil, nil, fmt.Errorf("--etcd-arg %s=%q: want one http://host:port URL", k, v)
		}
		parsed[k] = u
	}
	return parsed["listen-client-urls"], parsed["listen-peer-urls"], parsed["initial-advertise-peer-urls"], nil
}

func startEmbeddedEtcd(ctx context.Context, cfg Config, token string, log *slog.Logger) (*embeddedEtcd, error) {
	name := cfg.nodeName()
	clientURL, peerListen, peerAdvertise, err := etcdURLs(cfg)
	if err != nil {
		return nil, err
	}
	dataDir := cfg.str("data-dir")
	if dataDir == "" {
		dataDir = "/var/lib/rancher/k3s"
	}
	ec := embed.NewConfig()
	ec.Name = name
	ec.Dir = filepath.Join(dataDir, "server", "db", "etcd")
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*clientURL}, []url.URL{*clientURL}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*peerListen}, []url.URL{*peerAdvertise}
	ec.InitialClusterToken = "k3s-test-double"
	ec.InitialCluster = name + "=" + peerAdvertise.String()
	_, statErr := os.Stat(filepath.Join(ec.Dir, "member"))
	switch {
	case statErr == nil:
		log.Info("restarting embedded etcd member from its data dir", "dir", ec.Dir)
	case cfg.boolean("cluster-init"):
		log.Info("initialising a new embedded etcd cluster", "member", name)
	default:
		initial, err := joinEmbedded(ctx, cfg.str("server"), token, joinRequest{Name: name, PeerURL: peerAdvertise.String()}, log)
		if err != nil {
			return nil, err
		}
		ec.InitialCluster, ec.ClusterState = initial, embed.ClusterStateFlagExisting
	}
	if err := os.MkdirAll(ec.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir: %w", err)
	}
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	// A joined member starts as a learner, which serves no linearizable
	// reads; the server that added it promotes it once it has caught up.
	for e.Server.IsLearner() {
		select {
		case err := <-e.Err():
			e.Close()
			return nil, fmt.Errorf("embedded etcd: %w", err)
		case <-ctx.Done():
			e.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{clientURL.String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("embedded etcd client: %w", err)
	}
	return &embeddedEtcd{etcd: e, client: cli}, nil
}

// joinEmbedded asks the server at serverURL to add this member, retrying
// while it is unreachable; a refused token ends it.
func joinEmbedded(ctx context.Context, serverURL, token string, req joinRequest, log *slog.Logger) (string, error) {
	caHash, password := splitToken(token)
	a := &agent{server: strings.TrimSuffix(serverURL, "/"), caHash: caHash, password: password, user: "server"}
	body, _ := json.Marshal(req)
	for {
		resp, err := a.call(ctx, "/v1-k3s/etcd/join", body)
		if err == nil {
			var jr joinResponse
			if err := json.Unmarshal(resp, &jr); err != nil || jr.InitialCluster == "" {
				return "", fmt.Errorf("join %s: unreadable answer", serverURL)
			}
			return jr.InitialCluster, nil
		}
		if errors.Is(err, errRefused) {
			return "", err
		}
		log.Warn("waiting to join embedded etcd", "server", serverURL, "error", err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// joinEtcd adds a joining server as an etcd member. Only the server token
// may do this: an agent token joins agents, never servers.
func (s *server) joinEtcd(w http.ResponseWriter, r *http.Request) {
	_, password, _ := r.BasicAuth()
	if !constantEqual(password, s.token) {
		s.log.Warn("refused etcd join: not the server token", "remote", r.RemoteAddr)
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	if s.embedded == nil {
		http.Error(w, "this server uses an external datastore; servers join through datastore-endpoint", http.StatusBadRequest)
		return
	}
	var req joinRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Name == "" || req.PeerURL == "" {
		http.Error(w, "want {name, peer_url}", http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	list, err := s.etcd.MemberList(ctx)
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	members := list.Members
	known := slices.ContainsFunc(members, func(m *etcdserverpb.Member) bool { return slices.Contains(m.PeerURLs, req.PeerURL) })
	if !known {
		// As a learner first, as K3s does: a voter that has not started yet
		// would cost a small cluster its quorum until it catches up.
		added, err := s.etcd.MemberAddAsLearner(ctx, []string{req.PeerURL})
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		members = added.Members
		s.log.Info("added etcd learner", "name", req.Name, "peer", req.PeerURL)
		go s.promoteWhenReady(added.Member.ID, req.Name)
	}
	var initial []string
	for _, m := range members {
		name := m.Name
		if slices.Contains(m.PeerURLs, req.PeerURL) {
			name = req.Name // not started yet, so etcd does not know its name
		}
		for _, u := range m.PeerURLs {
			initial = append(initial, name+"="+u)
		}
	}
	json.NewEncoder(w).Encode(joinResponse{InitialCluster: strings.Join(initial, ",")})
}

// promoteWhenReady makes a learner a voter once etcd says it has caught up
// (until then MemberPromote is refused), giving up after two minutes.
func (s *server) promoteWhenReady(id uint64, name string) {
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(s.ctx, 5*time.Second)
		_, err := s.etcd.MemberPromote(ctx, id)
		cancel()
		if err == nil {
			s.log.Info("promoted etcd learner", "name", name)
			return
		}
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	s.log.Error("etcd learner never caught up; still not a voter", "name", name)
}
