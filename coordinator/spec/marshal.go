package spec

import (
	"bytes"
	"errors"
	"fmt"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/structpb"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// The canonical document's shape; field order here is the order written.
type docYAML struct {
	APIVersion string       `yaml:"apiVersion"`
	Kind       string       `yaml:"kind"`
	Metadata   metadataYAML `yaml:"metadata"`
	Spec       specYAML     `yaml:"spec"`
}

type metadataYAML struct {
	Name string `yaml:"name"`
}

type specYAML struct {
	Topology      string    `yaml:"topology"`
	Etcd          *etcdYAML `yaml:"etcd,omitempty"`
	K3s           k3sYAML   `yaml:"k3s"`
	KeepHostnames bool      `yaml:"keepHostnames,omitempty"`
	Inventory     []pinYAML `yaml:"inventory,omitempty"`
}

type etcdYAML struct {
	Members             uint32 `yaml:"members"`
	QuotaBackendBytes   int64  `yaml:"quotaBackendBytes"`
	SnapshotCount       uint64 `yaml:"snapshotCount"`
	HeartbeatIntervalMs uint32 `yaml:"heartbeatIntervalMs"`
	ElectionTimeoutMs   uint32 `yaml:"electionTimeoutMs"`
}

type k3sYAML struct {
	Servers             uint32         `yaml:"servers"`
	Version             string         `yaml:"version"`
	Binary              binaryYAML     `yaml:"binary"`
	ServerConfig        map[string]any `yaml:"serverConfig,omitempty"`
	AgentConfig         map[string]any `yaml:"agentConfig,omitempty"`
	TLSSans             []string       `yaml:"tlsSans,omitempty"`
	RegistrationAddress string         `yaml:"registrationAddress,omitempty"`
}

type binaryYAML struct {
	Sha256           string `yaml:"sha256"`
	Path             string `yaml:"path,omitempty"`
	Artifact         string `yaml:"artifact,omitempty"`
	URL              string `yaml:"url,omitempty"`
	AirgapImagesPath string `yaml:"airgapImagesPath,omitempty"`
}

type pinYAML struct {
	Name   string            `yaml:"name"`
	Match  matchYAML         `yaml:"match"`
	Roles  []string          `yaml:"roles,omitempty"`
	Labels map[string]string `yaml:"labels,omitempty"`
	IP     string            `yaml:"ip,omitempty"`
}

type matchYAML struct {
	Mac       string `yaml:"mac,omitempty"`
	DmiSerial string `yaml:"dmiSerial,omitempty"`
	DmiUUID   string `yaml:"dmiUUID,omitempty"`
	MachineID string `yaml:"machineID,omitempty"`
	Hostname  string `yaml:"hostname,omitempty"`
}

var topologyNames = map[kedgev1.Topology]string{
	kedgev1.Topology_TOPOLOGY_STACKED:  "stacked",
	kedgev1.Topology_TOPOLOGY_EXTERNAL: "external",
	kedgev1.Topology_TOPOLOGY_EMBEDDED: "embedded",
}

var roleWords = map[kedgev1.Role]string{
	kedgev1.Role_ROLE_ETCD:       "etcd",
	kedgev1.Role_ROLE_K3S_SERVER: "server",
	kedgev1.Role_ROLE_K3S_AGENT:  "agent",
}

// Marshal renders a spec back as a kedge/v1 Cluster document: canonical
// (defaults written out, fixed field order, map keys sorted), and one that
// Parse accepts and reads back to the same spec.
func Marshal(s *kedgev1.ClusterSpec) ([]byte, error) {
	if s == nil {
		return nil, errors.New("spec: Marshal of a nil spec")
	}
	topo, ok := topologyNames[s.Topology]
	if !ok {
		return nil, fmt.Errorf("spec: topology %v has no YAML name", s.Topology)
	}
	d := docYAML{
		APIVersion: "kedge/v1",
		Kind:       "Cluster",
		Metadata:   metadataYAML{Name: s.Name},
		Spec:       specYAML{Topology: topo, KeepHostnames: s.KeepHostnames},
	}
	if e := s.Etcd; e != nil && s.Topology != kedgev1.Topology_TOPOLOGY_EMBEDDED {
		d.Spec.Etcd = &etcdYAML{
			Members:             e.Members,
			QuotaBackendBytes:   e.QuotaBackendBytes,
			SnapshotCount:       e.SnapshotCount,
			HeartbeatIntervalMs: e.HeartbeatIntervalMs,
			ElectionTimeoutMs:   e.ElectionTimeoutMs,
		}
	}
	if k := s.K3S; k != nil {
		d.Spec.K3s = k3sYAML{
			Servers:             k.Servers,
			Version:             k.Version,
			ServerConfig:        configMap(k.ServerConfig),
			AgentConfig:         configMap(k.AgentConfig),
			TLSSans:             k.TlsSans,
			RegistrationAddress: k.RegistrationAddress,
		}
		if b := k.Binary; b != nil {
			d.Spec.K3s.Binary = binaryYAML{
				Sha256:           b.Sha256,
				Path:             b.Path,
				Artifact:         b.Artifact,
				URL:              b.Url,
				AirgapImagesPath: b.AirgapImagesPath,
			}
		}
	}
	for _, pin := range s.Inventory {
		py := pinYAML{
			Name: pin.Name,
			Match: matchYAML{
				Mac:       pin.Mac,
				DmiSerial: pin.DmiSerial,
				DmiUUID:   pin.DmiUuid,
				MachineID: pin.MachineId,
				Hostname:  pin.Hostname,
			},
			Labels: pin.Labels,
			IP:     pin.Ip,
		}
		for _, r := range pin.Roles {
			py.Roles = append(py.Roles, roleWords[r])
		}
		d.Spec.Inventory = append(d.Spec.Inventory, py)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(d); err != nil {
		return nil, fmt.Errorf("spec: render %s: %w", s.Name, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("spec: render %s: %w", s.Name, err)
	}
	return buf.Bytes(), nil
}

// configMap turns passthrough config into plain values; whole numbers are
// written as integers, as a person would write them.
func configMap(s *structpb.Struct) map[string]any {
	if s == nil {
		return nil
	}
	out := make(map[string]any, len(s.Fields))
	for k, v := range s.Fields {
		out[k] = plain(v)
	}
	return out
}

func plain(v *structpb.Value) any {
	switch x := v.GetKind().(type) {
	case *structpb.Value_NumberValue:
		if f := x.NumberValue; f == float64(int64(f)) {
			return int64(f)
		}
		return x.NumberValue
	case *structpb.Value_ListValue:
		out := make([]any, 0, len(x.ListValue.GetValues()))
		for _, item := range x.ListValue.GetValues() {
			out = append(out, plain(item))
		}
		return out
	default:
		return v.AsInterface()
	}
}
