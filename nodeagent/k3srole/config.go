package k3srole

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kedge-io/kedge/deploy/systemd"
	"github.com/kedge-io/kedge/nodeagent/desired"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// ownedKeys are the config.yaml keys kedge sets itself. A spec passthrough key
// of the same name would silently fight kedge (or leak a secret into
// config.yaml), so it is refused instead.
var ownedKeys = []string{
	"datastore-endpoint", "datastore-cafile", "datastore-certfile", "datastore-keyfile",
	"token", "token-file", "agent-token", "agent-token-file",
	"node-ip", "node-name", "tls-san", "cluster-init", "server",
}

// Desired renders config.yaml, the token files and k3s.service or
// k3s-agent.service for the plan; an empty State when the plan has no K3s role.
func Desired(plan *kedgev1.Plan) (desired.State, error) {
	k := plan.GetK3S()
	if k == nil {
		return desired.State{}, nil
	}
	switch k.GetRole() {
	case kedgev1.Role_ROLE_K3S_SERVER:
		return serverState(k)
	case kedgev1.Role_ROLE_K3S_AGENT:
		return agentState(k)
	default:
		return desired.State{}, fmt.Errorf("plan.k3s.role is %s: want ROLE_K3S_SERVER or ROLE_K3S_AGENT", k.GetRole())
	}
}

// configEntry is one top-level config.yaml key; a slice of them keeps kedge's
// keys in a fixed, reviewable order ahead of the sorted passthrough keys.
type configEntry struct {
	key   string
	value any
}

func serverState(k *kedgev1.K3SPlan) (desired.State, error) {
	if k.GetToken() == "" {
		return desired.State{}, fmt.Errorf("plan.k3s.token is empty: a K3s server needs the cluster's server token")
	}
	if k.GetAgentToken() == "" {
		// Without an agent token K3s agents would have to join with the server token, which they must never hold.
		return desired.State{}, fmt.Errorf("plan.k3s.agent_token is empty: a K3s server needs the agent token agents join with")
	}
	var entries []configEntry
	switch {
	case len(k.GetDatastoreEndpoints()) > 0:
		for _, ep := range k.GetDatastoreEndpoints() {
			if !strings.HasPrefix(ep, "https://") {
				return desired.State{}, fmt.Errorf("plan.k3s.datastore_endpoints has %q: every etcd endpoint must be an https:// URL", ep)
			}
		}
		entries = append(entries,
			configEntry{"datastore-endpoint", strings.Join(k.GetDatastoreEndpoints(), ",")},
			configEntry{"datastore-cafile", paths.EtcdCA},
			configEntry{"datastore-certfile", paths.DatastoreClientCert},
			configEntry{"datastore-keyfile", paths.DatastoreClientKey},
		)
	case k.GetClusterInit():
		entries = append(entries, configEntry{"cluster-init", true})
	case k.GetServerUrl() != "":
		entries = append(entries, configEntry{"server", k.GetServerUrl()})
	default:
		return desired.State{}, fmt.Errorf("plan.k3s has no datastore_endpoints, no cluster_init and no server_url: a K3s server needs one of them")
	}
	entries = append(entries,
		configEntry{"token-file", paths.K3sToken},
		configEntry{"agent-token-file", paths.K3sAgentToken},
	)
	entries = append(entries, nodeEntries(k)...)
	if len(k.GetTlsSans()) > 0 {
		entries = append(entries, configEntry{"tls-san", k.GetTlsSans()})
	}
	return roleState(k, entries, paths.K3sServerUnit, []desired.File{
		secretFile(paths.K3sToken, k.GetToken(), paths.K3sServerUnit),
		secretFile(paths.K3sAgentToken, k.GetAgentToken(), paths.K3sServerUnit),
	})
}

func agentState(k *kedgev1.K3SPlan) (desired.State, error) {
	if k.GetServerUrl() == "" {
		return desired.State{}, fmt.Errorf("plan.k3s.server_url is empty: a K3s agent needs the server to join")
	}
	if k.GetAgentToken() == "" {
		return desired.State{}, fmt.Errorf("plan.k3s.agent_token is empty: a K3s agent joins with the agent token")
	}
	entries := []configEntry{
		{"server", k.GetServerUrl()},
		// K3s agents read their join token from token-file; it holds the agent token, never the server token.
		{"token-file", paths.K3sAgentToken},
	}
	entries = append(entries, nodeEntries(k)...)
	return roleState(k, entries, paths.K3sAgentUnit, []desired.File{
		secretFile(paths.K3sAgentToken, k.GetAgentToken(), paths.K3sAgentUnit),
	})
}

func nodeEntries(k *kedgev1.K3SPlan) []configEntry {
	var entries []configEntry
	if k.GetNodeIp() != "" {
		entries = append(entries, configEntry{"node-ip", k.GetNodeIp()})
	}
	if k.GetNodeName() != "" {
		entries = append(entries, configEntry{"node-name", k.GetNodeName()})
	}
	return entries
}

func secretFile(path, secret, unit string) desired.File {
	return desired.File{Path: path, Content: []byte(secret + "\n"), Mode: 0o600, Restarts: []string{unit}}
}

// roleState assembles config.yaml (0600: it names the secret files and may
// carry passthrough secrets), the token files and the role's unit.
func roleState(k *kedgev1.K3SPlan, entries []configEntry, unit string, secrets []desired.File) (desired.State, error) {
	passthrough, err := passthroughEntries(k)
	if err != nil {
		return desired.State{}, err
	}
	config, err := renderConfig(append(entries, passthrough...))
	if err != nil {
		return desired.State{}, err
	}
	unitContent, err := systemd.Unit(unit)
	if err != nil {
		return desired.State{}, err
	}
	files := append([]desired.File{{Path: paths.K3sConfig, Content: config, Mode: 0o600, Restarts: []string{unit}}}, secrets...)
	return desired.State{
		Files: files,
		Units: []desired.Unit{{Name: unit, Content: unitContent, Enable: true, Start: true}},
	}, nil
}

func passthroughEntries(k *kedgev1.K3SPlan) ([]configEntry, error) {
	fields := k.GetExtraConfig().GetFields()
	keys := make([]string, 0, len(fields))
	for key := range fields {
		if slices.Contains(ownedKeys, key) {
			return nil, fmt.Errorf("plan.k3s.extra_config sets %q, which kedge sets itself: remove it from the cluster spec's k3s config", key)
		}
		keys = append(keys, key)
	}
	slices.Sort(keys)
	entries := make([]configEntry, 0, len(keys))
	for _, key := range keys {
		entries = append(entries, configEntry{key, integral(fields[key].AsInterface())})
	}
	return entries, nil
}

// integral turns whole numbers back into integers: protobuf's Struct holds
// every number as a float64, which YAML would print as 1e+06 for a million.
func integral(v any) any {
	switch x := v.(type) {
	case float64:
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return int64(x)
		}
	case []any:
		out := make([]any, len(x))
		for i := range x {
			out[i] = integral(x[i])
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			out[k] = integral(e)
		}
		return out
	}
	return v
}

// renderConfig writes the entries as one YAML mapping in the given order;
// nested maps from passthrough values come out with sorted keys (yaml.v3
// sorts map keys), so the same plan always renders the same bytes.
func renderConfig(entries []configEntry) ([]byte, error) {
	doc := &yaml.Node{Kind: yaml.MappingNode}
	for _, e := range entries {
		var value yaml.Node
		if err := value.Encode(e.value); err != nil {
			return nil, fmt.Errorf("render config.yaml key %q: %w", e.key, err)
		}
		doc.Content = append(doc.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: e.key}, &value)
	}
	var buf bytes.Buffer
	buf.WriteString("# Written by kedge from the node's plan; local edits are overwritten.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("render config.yaml: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("render config.yaml: %w", err)
	}
	return buf.Bytes(), nil
}
