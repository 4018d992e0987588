package k3sdouble

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// DefaultConfigFile is where K3s reads its config when no --config is given.
const DefaultConfigFile = "/etc/rancher/k3s/config.yaml"

// knownFlags are K3s server and agent flag names (and so config.yaml keys)
// the double accepts. Most it ignores; a key outside this list is refused,
// naming it, so a misspelt key kedge writes fails here rather than in the lab.
var knownFlags = []string{
	// cluster and datastore
	"token", "token-file", "agent-token", "agent-token-file", "server", "cluster-init", "cluster-reset",
	"datastore-endpoint", "datastore-cafile", "datastore-certfile", "datastore-keyfile",
	"data-dir", "config", "debug", "v",
	// listener and TLS
	"bind-address", "https-listen-port", "advertise-address", "advertise-port", "tls-san", "tls-san-security",
	// node
	"node-name", "with-node-id", "node-ip", "node-external-ip", "node-label", "node-taint",
	// kubeconfig
	"write-kubeconfig", "write-kubeconfig-mode", "write-kubeconfig-group",
	// components and networking, passed through from specs
	"disable", "disable-agent", "disable-scheduler", "disable-cloud-controller", "disable-kube-proxy",
	"disable-network-policy", "disable-helm-controller", "disable-apiserver", "disable-controller-manager", "disable-etcd",
	"flannel-backend", "flannel-iface", "flannel-ipv6-masq", "flannel-external-ip",
	"cluster-cidr", "service-cidr", "cluster-dns", "cluster-domain", "service-node-port-range", "egress-selector-mode",
	"kube-apiserver-arg", "kube-controller-manager-arg", "kube-scheduler-arg", "kubelet-arg", "kube-proxy-arg", "etcd-arg",
	"secrets-encryption", "protect-kernel-defaults", "selinux", "rootless", "prefer-bundled-bin",
	"etcd-disable-snapshots", "etcd-expose-metrics", "etcd-snapshot-schedule-cron", "etcd-snapshot-retention", "etcd-snapshot-dir",
	"container-runtime-endpoint", "pause-image", "private-registry", "system-default-registry", "embedded-registry",
	"resolv-conf", "lb-server-port", "default-local-storage-path", "kubelet-path", "log", "alsologtostderr",
}

// boolFlags take no value on the command line.
var boolFlags = []string{
	"cluster-init", "cluster-reset", "debug", "with-node-id", "disable-agent", "disable-scheduler",
	"disable-cloud-controller", "disable-kube-proxy", "disable-network-policy", "disable-helm-controller",
	"disable-apiserver", "disable-controller-manager", "disable-etcd", "flannel-ipv6-masq", "flannel-external-ip",
	"secrets-encryption", "protect-kernel-defaults", "selinux", "rootless", "prefer-bundled-bin",
	"etcd-disable-snapshots", "etcd-expose-metrics", "embedded-registry", "alsologtostderr",
}

// sliceFlags may repeat; K3s appends command-line values to the config file's.
var sliceFlags = []string{
	"tls-san", "node-label", "node-taint", "disable", "kube-apiserver-arg", "kube-controller-manager-arg",
	"kube-scheduler-arg", "kubelet-arg", "kube-proxy-arg", "etcd-arg", "node-ip", "node-external-ip",
}

// shortFlags maps K3s's one-letter aliases to their names.
var shortFlags = map[string]string{"t": "token", "s": "server", "c": "config", "d": "data-dir", "o": "write-kubeconfig", "i": "node-ip"}

// Config is the merged config.yaml and command line, by K3s key.
type Config map[string]any

// loadConfig reads the config file (--config, else K3S_CONFIG_FILE, else the
// default; a missing default file is fine, as for K3s) and applies the flags
// in args over it.
func loadConfig(args []string, getenv func(string) string) (Config, error) {
	flags, err := parseFlags(args)
	if err != nil {
		return nil, err
	}
	path, explicit := DefaultConfigFile, false
	if v := getenv("K3S_CONFIG_FILE"); v != "" {
		path, explicit = v, true
	}
	if v, ok := flags["config"]; ok {
		path, explicit = fmt.Sprint(v), true
	}
	cfg := Config{}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := yaml.Unmarshal(b, &cfg); err != nil {
			return nil, fmt.Errorf("config file %s: %w", path, err)
		}
		if cfg == nil {
			cfg = Config{}
		}
		for key := range cfg {
			if !slices.Contains(knownFlags, key) {
				return nil, fmt.Errorf("config file %s: unknown key %q: not a K3s flag name", path, key)
			}
		}
	case errors.Is(err, os.ErrNotExist) && !explicit:
	default:
		return nil, fmt.Errorf("config file: %w", err)
	}
	for key, v := range flags {
		if slices.Contains(sliceFlags, key) {
			cfg[key] = append(cfg.list(key), v.([]string)...)
		} else {
			cfg[key] = v
		}
	}
	return cfg, nil
}

// parseFlags reads --key value, --key=value and bare boolean flags.
func parseFlags(args []string) (map[string]any, error) {
	out := map[string]any{}
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if !strings.HasPrefix(arg, "-") {
			return nil, fmt.Errorf("unexpected argument %q: flags only", arg)
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(arg, "-"), "=")
		if long, ok := shortFlags[name]; ok {
			name = long
		}
		if !slices.Contains(knownFlags, name) {
			return nil, fmt.Errorf("flag provided but not defined: -%s", name)
		}
		if slices.Contains(boolFlags, name) {
			b := true
			if hasValue {
				var err error
				if b, err = strconv.ParseBool(value); err != nil {
					return nil, fmt.Errorf("flag --%s: %q is not a boolean", name, value)
				}
			}
			out[name] = b
			continue
		}
		if !hasValue {
			if i+1 >= len(args) {
				return nil, fmt.Errorf("flag needs an argument: --%s", name)
			}
			i++
			value = args[i]
		}
		if slices.Contains(sliceFlags, name) {
			prev, _ := out[name].([]string)
			out[name] = append(prev, value)
		} else {
			out[name] = value
		}
	}
	return out, nil
}

func (c Config) str(key string) string {
	switch v := c[key].(type) {
	case nil:
		return ""
	case string:
		return v
	case []any:
		if len(v) > 0 {
			return fmt.Sprint(v[0])
		}
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// strings reads a list key; K3s takes a YAML list or a comma-separated string.
func (c Config) list(key string) []string {
	var raw []string
	switch v := c[key].(type) {
	case nil:
	case []string:
		raw = v
	case []any:
		for _, x := range v {
			raw = append(raw, fmt.Sprint(x))
		}
	default:
		raw = []string{fmt.Sprint(v)}
	}
	var out []string
	for _, r := range raw {
		for _, p := range strings.Split(r, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

func (c Config) boolean(key string) bool {
	switch v := c[key].(type) {
	case bool:
		return v
	case string:
		b, _ := strconv.ParseBool(v)
		return b
	}
	return false
}

// secret reads key, else the file named by key-file; the value never
// appears in errors.
func (c Config) secret(key string) (string, error) {
	if v := c.str(key); v != "" {
		return v, nil
	}
	file := c.str(key + "-file")
	if file == "" {
		return "", nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--%s-file: %w", key, err)
	}
	v := strings.TrimSpace(string(b))
	if v == "" {
		return "", fmt.Errorf("--%s-file %s is empty", key, file)
	}
	return v, nil
}

func (c Config) nodeName() string {
	if n := c.str("node-name"); n != "" {
		return n
	}
	h, _ := os.Hostname()
	return strings.ToLower(h)
}
