package etcdrole

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Config file identity. A file without these, or with others, is refused so a
// future format is never half-understood.
const (
	ConfigAPIVersion = "kedge/v1"
	ConfigKind       = "EtcdMember"
)

// Defaults for a NUC-class SSD when the plan leaves a knob at zero.
const (
	DefaultQuotaBackendBytes = 4 << 30 // etcd's recommended ceiling is 8 GiB; 4 leaves headroom on small disks
	DefaultSnapshotCount     = 10000
	DefaultHeartbeatMs       = 100
	DefaultElectionMs        = 1000
)

// Config is /etc/kedge/etcd.yaml: everything one member needs to start.
type Config struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`

	Name    string `yaml:"name"`
	DataDir string `yaml:"dataDir"`

	ListenClientURLs    []string `yaml:"listenClientURLs"`
	AdvertiseClientURLs []string `yaml:"advertiseClientURLs"`
	ListenPeerURLs      []string `yaml:"listenPeerURLs"`
	AdvertisePeerURLs   []string `yaml:"advertisePeerURLs"`

	// InitialCluster is etcd's name=peerURL,... list.
	InitialCluster string `yaml:"initialCluster"`
	// InitialClusterState is "new" for the initial members, "existing" for a joiner.
	InitialClusterState string `yaml:"initialClusterState"`
	InitialClusterToken string `yaml:"initialClusterToken"`

	QuotaBackendBytes   int64  `yaml:"quotaBackendBytes"`
	SnapshotCount       uint64 `yaml:"snapshotCount"`
	HeartbeatIntervalMs uint32 `yaml:"heartbeatIntervalMs"`
	ElectionTimeoutMs   uint32 `yaml:"electionTimeoutMs"`

	TLS TLSFiles `yaml:"tls"`
}

// TLSFiles are the member's certificate files. One CA (the cluster's etcd CA)
// verifies clients on both ports.
type TLSFiles struct {
	CAFile         string `yaml:"caFile"`
	ServerCertFile string `yaml:"serverCertFile"`
	ServerKeyFile  string `yaml:"serverKeyFile"`
	PeerCertFile   string `yaml:"peerCertFile"`
	PeerKeyFile    string `yaml:"peerKeyFile"`
}

// ConfigForPlan builds the member config for plan, with every file path under
// root (empty root: the machine's own paths, as written to etcd.yaml).
func ConfigForPlan(plan *kedgev1.Plan, root string) (*Config, error) {
	ep := plan.GetEtcd()
	if ep == nil || !hasRole(plan, kedgev1.Role_ROLE_ETCD) {
		return nil, errors.New("plan has no etcd role or no etcd section")
	}
	in := func(p string) string {
		if root == "" {
			return p
		}
		return paths.In(root, p)
	}
	c := &Config{
		APIVersion:          ConfigAPIVersion,
		Kind:                ConfigKind,
		Name:                ep.GetMemberName(),
		DataDir:             in(paths.EtcdDataDir),
		AdvertiseClientURLs: append([]string(nil), ep.GetClientUrls()...),
		ListenPeerURLs:      append([]string(nil), ep.GetPeerUrls()...),
		AdvertisePeerURLs:   append([]string(nil), ep.GetPeerUrls()...),
		InitialClusterState: ep.GetInitialClusterState(),
		InitialClusterToken: ep.GetInitialClusterToken(),
		QuotaBackendBytes:   ep.GetQuotaBackendBytes(),
		SnapshotCount:       ep.GetSnapshotCount(),
		HeartbeatIntervalMs: ep.GetHeartbeatIntervalMs(),
		ElectionTimeoutMs:   ep.GetElectionTimeoutMs(),
		TLS: TLSFiles{
			CAFile:         in(paths.EtcdCA),
			ServerCertFile: in(paths.EtcdServerCert),
			ServerKeyFile:  in(paths.EtcdServerKey),
			PeerCertFile:   in(paths.EtcdPeerCert),
			PeerKeyFile:    in(paths.EtcdPeerKey),
		},
	}
	if c.InitialClusterState == "" {
		c.InitialClusterState = "new"
	}
	if c.QuotaBackendBytes == 0 {
		c.QuotaBackendBytes = DefaultQuotaBackendBytes
	}
	if c.SnapshotCount == 0 {
		c.SnapshotCount = DefaultSnapshotCount
	}
	if c.HeartbeatIntervalMs == 0 {
		c.HeartbeatIntervalMs = DefaultHeartbeatMs
	}
	if c.ElectionTimeoutMs == 0 {
		c.ElectionTimeoutMs = DefaultElectionMs
	}
	// Listen on the advertised client URLs and on loopback, so local clients
	// (K3s on a stacked node, the agent's probe) never depend on the LAN address.
	c.ListenClientURLs = append([]string(nil), ep.GetClientUrls()...)
	if len(ep.GetClientUrls()) > 0 {
		if u, err := url.Parse(ep.GetClientUrls()[0]); err == nil && u.Port() != "" {
			loop := "https://" + net.JoinHostPort("127.0.0.1", u.Port())
			if !contains(c.ListenClientURLs, loop) {
				c.ListenClientURLs = append(c.ListenClientURLs, loop)
			}
		}
	}
	members := make([]string, 0, len(ep.GetInitialCluster()))
	for _, m := range ep.GetInitialCluster() {
		for _, u := range m.GetPeerUrls() {
			members = append(members, m.GetName()+"="+u)
		}
	}
	c.InitialCluster = strings.Join(members, ",")
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("etcd plan for %s: %w", plan.GetNodeName(), err)
	}
	return c, nil
}

// Marshal renders c as etcd.yaml.
func (c *Config) Marshal() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteString("# Written by kedge-nodeagent from the node's plan; local edits are overwritten.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// LoadConfig reads and strictly validates an etcd.yaml: the version is checked
// first, unknown fields and trailing documents are refused, and every error
// names the file and field.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("etcd config %s does not exist: the node agent writes it when the plan gives this node the etcd role", path)
		}
		return nil, fmt.Errorf("read etcd config: %w", err)
	}
	return ParseConfig(path, data)
}

// ParseConfig is LoadConfig on bytes already read; name is used in errors.
func ParseConfig(name string, data []byte) (*Config, error) {
	var head struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("%s: not valid YAML: %w", name, err)
	}
	if head.APIVersion != ConfigAPIVersion || head.Kind != ConfigKind {
		return nil, fmt.Errorf("%s: apiVersion %q kind %q: want apiVersion %q kind %q", name, head.APIVersion, head.Kind, ConfigAPIVersion, ConfigKind)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: more than one YAML document; want exactly one", name)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &c, nil
}

// Validate checks every field etcd would otherwise reject late or silently.
func (c *Config) Validate() error {
	if c.Name == "" {
		return errors.New("field name: empty; set the member name")
	}
	if c.DataDir == "" || !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("field dataDir: %q must be an absolute path", c.DataDir)
	}
	for _, f := range []struct {
		field string
		urls  []string
	}{
		{"listenClientURLs", c.ListenClientURLs},
		{"advertiseClientURLs", c.AdvertiseClientURLs},
		{"listenPeerURLs", c.ListenPeerURLs},
		{"advertisePeerURLs", c.AdvertisePeerURLs},
	} {
		if len(f.urls) == 0 {
			return fmt.Errorf("field %s: empty; want at least one https://IP:PORT", f.field)
		}
		if _, err := parseHTTPSURLs(f.urls); err != nil {
			return fmt.Errorf("field %s: %w", f.field, err)
		}
	}
	if c.InitialCluster == "" {
		return errors.New("field initialCluster: empty; want name=https://IP:PORT,...")
	}
	self := false
	for _, kv := range strings.Split(c.InitialCluster, ",") {
		name, u, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("field initialCluster: %q is not name=URL", kv)
		}
		if _, err := parseHTTPSURLs([]string{u}); err != nil {
			return fmt.Errorf("field initialCluster: member %q: %w", name, err)
		}
		if name == c.Name && contains(c.AdvertisePeerURLs, u) {
			self = true
		}
	}
	if !self {
		return fmt.Errorf("field initialCluster: no entry %s=<one of advertisePeerURLs>; this member must be listed", c.Name)
	}
	switch c.InitialClusterState {
	case "new", "existing":
	default:
		return fmt.Errorf("field initialClusterState: %q; want new or existing", c.InitialClusterState)
	}
	if c.InitialClusterToken == "" {
		return errors.New("field initialClusterToken: empty; every member of a cluster needs the same token")
	}
	if c.QuotaBackendBytes < 0 {
		return fmt.Errorf("field quotaBackendBytes: %d is negative", c.QuotaBackendBytes)
	}
	if c.HeartbeatIntervalMs == 0 || c.ElectionTimeoutMs == 0 {
		return errors.New("fields heartbeatIntervalMs and electionTimeoutMs: must be set")
	}
	if c.ElectionTimeoutMs < 5*c.HeartbeatIntervalMs {
		return fmt.Errorf("field electionTimeoutMs: %d must be at least 5 x heartbeatIntervalMs (%d)", c.ElectionTimeoutMs, c.HeartbeatIntervalMs)
	}
	for _, f := range []struct{ field, path string }{
		{"tls.caFile", c.TLS.CAFile},
		{"tls.serverCertFile", c.TLS.ServerCertFile},
		{"tls.serverKeyFile", c.TLS.ServerKeyFile},
		{"tls.peerCertFile", c.TLS.PeerCertFile},
		{"tls.peerKeyFile", c.TLS.PeerKeyFile},
	} {
		if f.path == "" || !filepath.IsAbs(f.path) {
			return fmt.Errorf("field %s: %q must be an absolute path", f.field, f.path)
		}
	}
	return nil
}

func parseHTTPSURLs(ss []string) ([]url.URL, error) {
	out := make([]url.URL, 0, len(ss))
	for _, s := range ss {
		u, err := url.Parse(s)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		if u.Scheme != "https" || u.Port() == "" || u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("%q: want https://HOST:PORT (plain http is refused: both ports require TLS)", s)
		}
		out = append(out, *u)
	}
	return out, nil
}

func hasRole(plan *kedgev1.Plan, r kedgev1.Role) bool {
	for _, have := range plan.GetRoles() {
		if have == r {
			return true
		}
	}
	return false
}

func contains(ss []string, s string) bool { return slices.Contains(ss, s) }
