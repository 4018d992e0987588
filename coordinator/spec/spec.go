// Package spec reads and validates kedge/v1 Cluster YAML documents.
//
// The format is strict: unknown fields, wrong types, duplicate keys or
// inventory entries, trailing documents and impossible combinations are
// refused. Every refusal reads `FILE: FIELD.PATH: what is wrong; the fix`, and
// Parse reports every problem it finds, one per line, in document order.
//
// A document, with every field (docs/spec.md says the same at more length):
//
//	apiVersion: kedge/v1            # required
//	kind: Cluster                   # required
//	metadata:
//	  name: edge-1                  # required; lowercase letters, digits, '-'
//	spec:
//	  topology: stacked             # required: stacked | external | embedded
//	  etcd:                         # stacked and external only
//	    members: 3                  # odd: 1, 3, 5 or 7; default 3
//	    quotaBackendBytes: 2GiB     # bytes or KiB/MiB/GiB; default 2 GiB, max 8 GiB
//	    snapshotCount: 10000        # default 10000
//	    heartbeatIntervalMs: 100    # default 100
//	    electionTimeoutMs: 1000     # default 1000; at least 5 x heartbeat
//	  k3s:
//	    servers: 3                  # stacked: = etcd members (default);
//	                                # external: default 2; embedded: odd, default 3
//	    version: v1.31.4+k3s1       # required
//	    binary:
//	      sha256: "<64 hex>"        # required
//	      path: /usr/local/bin/k3s  # pre-staged on the image, or
//	      artifact: k3s             # the coordinator's artifact store, or
//	      url: https://...          # a download; at least one of the three
//	      airgapImagesPath: /opt/k3s-airgap-images-amd64.tar.zst
//	    serverConfig: {}            # K3s config.yaml keys for servers, passed through
//	    agentConfig: {}             # K3s config.yaml keys for agents, passed through
//	    tlsSans: [k3s.example.lan]  # extra names in the servers' certs
//	    registrationAddress: 10.0.0.5:6443   # VIP / load balancer agents join through
//	  keepHostnames: false          # true leaves machines' hostnames alone
//	  inventory:                    # optional pins
//	    - name: nuc1                # the node's name
//	      match: {mac: "aa:bb:cc:dd:ee:01"}  # mac, dmiSerial, dmiUUID, machineID, hostname:
//	                                # at least one; every one given must match
//	      roles: [etcd, server]     # optional: etcd, server, agent
//	      labels: {zone: a}
//	      ip: 10.0.0.11             # the IP the node's services use
//
// Keys kedge sets itself (datastore-endpoint, token, node-ip, ...) are refused
// in serverConfig and agentConfig, naming the key.
package spec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/types/known/structpb"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Defaults sized for a NUC's disk and network.
const (
	DefaultEtcdMembers         = 3
	DefaultQuotaBackendBytes   = 2 << 30
	MaxQuotaBackendBytes       = 8 << 30 // etcd's own suggested maximum
	DefaultSnapshotCount       = 10000
	DefaultHeartbeatIntervalMs = 100
	DefaultElectionTimeoutMs   = 1000
	// Two servers on an external datastore already survive one server's loss.
	DefaultExternalServers = 2
	DefaultEmbeddedServers = 3
)

// Error is one refusal: the file, the field path and what is wrong with the fix.
type Error struct {
	File string
	Path string
	Msg  string
}

func (e *Error) Error() string { return e.File + ": " + e.Path + ": " + e.Msg }

// Keys kedge writes into K3s's config.yaml itself, with where the value comes from.
var ownedServerKeys = map[string]string{
	"datastore-endpoint": "from the etcd members",
	"datastore-cafile":   "from the cluster's etcd CA",
	"datastore-certfile": "from the cluster's etcd CA",
	"datastore-keyfile":  "from the cluster's etcd CA",
	"token":              "from the cluster's secrets",
	"token-file":         "from the cluster's secrets",
	"agent-token":        "from the cluster's secrets",
	"agent-token-file":   "from the cluster's secrets",
	"node-ip":            "from the node's IP (pin it with spec.inventory[].ip)",
	"node-name":          "from the node's name (pin it with spec.inventory[].name)",
	"server":             "from the servers it sees healthy (fix it with spec.k3s.registrationAddress)",
	"cluster-init":       "from the topology",
	"tls-san":            "from the node IPs (add names with spec.k3s.tlsSans)",
}

var ownedAgentKeys = map[string]string{
	"token":       "to the agent token",
	"token-file":  "to the agent token",
	"agent-token": "to the agent token",
	"node-ip":     "from the node's IP (pin it with spec.inventory[].ip)",
	"node-name":   "from the node's name (pin it with spec.inventory[].name)",
	"server":      "from the servers it sees healthy (fix it with spec.k3s.registrationAddress)",
}

var (
	dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	hex64    = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)
)

type parser struct {
	file string
	errs []error
}

func (p *parser) fail(path, format string, args ...any) {
	p.errs = append(p.errs, &Error{File: p.file, Path: path, Msg: fmt.Sprintf(format, args...)})
}

// Parse validates a Cluster document; errors name file, field path and fix.
func Parse(fileName string, data []byte) (*kedgev1.ClusterSpec, error) {
	p := &parser{file: fileName}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: empty; a kedge/v1 Cluster document needs apiVersion, kind, metadata and spec", fileName)
		}
		return nil, fmt.Errorf("%s: %s; fix the YAML syntax", fileName, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, fmt.Errorf("%s: line %d: a second YAML document follows the Cluster; a file holds exactly one, put others in their own files", fileName, extra.Line)
	} else if !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %s after the Cluster document; a file holds exactly one Cluster, fix or remove what follows", fileName, strings.TrimPrefix(err.Error(), "yaml: "))
	}
	s := p.document(&doc)
	if len(p.errs) > 0 {
		return nil, errors.Join(p.errs...)
	}
	return s, nil
}

func (p *parser) document(doc *yaml.Node) *kedgev1.ClusterSpec {
	root := doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if !present(root) {
		p.fail("(document)", "empty; a kedge/v1 Cluster document needs apiVersion, kind, metadata and spec")
		return nil
	}
	f, ok := p.fields(root, "", "apiVersion", "kind", "metadata", "spec")
	if !ok {
		return nil
	}
	if v, ok := p.str(f["apiVersion"], "apiVersion"); !present(f["apiVersion"]) || ok && v == "" {
		p.fail("apiVersion", "missing; set apiVersion: kedge/v1")
	} else if ok && v != "kedge/v1" {
		p.fail("apiVersion", "%q is not supported; use kedge/v1", v)
	}
	if v, ok := p.str(f["kind"], "kind"); !present(f["kind"]) || ok && v == "" {
		p.fail("kind", "missing; set kind: Cluster")
	} else if ok && v != "Cluster" {
		p.fail("kind", "%q is not supported; use Cluster", v)
	}
	s := &kedgev1.ClusterSpec{}
	if md, ok := p.fields(f["metadata"], "metadata", "name"); ok {
		name, ok := p.str(md["name"], "metadata.name")
		switch {
		case !present(md["name"]) || ok && name == "":
			p.fail("metadata.name", "missing; name the cluster, e.g. name: edge-1")
		case !ok:
		case !dnsLabel.MatchString(name):
			p.fail("metadata.name", "%q is not a valid name; use lowercase letters, digits and '-' (at most 63, starting and ending alphanumeric)", name)
		default:
			s.Name = name
		}
	} else if !present(f["metadata"]) {
		p.fail("metadata", "missing; add metadata: {name: <cluster name>}")
	}
	if !present(f["spec"]) {
		p.fail("spec", "missing; add spec with topology and k3s")
		return s
	}
	p.spec(f["spec"], s)
	return s
}

func (p *parser) spec(n *yaml.Node, s *kedgev1.ClusterSpec) {
	f, ok := p.fields(n, "spec", "topology", "etcd", "k3s", "inventory", "keepHostnames")
	if !ok {
		return
	}
	topo, ok := p.str(f["topology"], "spec.topology")
	switch {
	case !present(f["topology"]) || ok && topo == "":
		p.fail("spec.topology", "missing; choose stacked, external or embedded")
	case !ok:
	case topo == "stacked":
		s.Topology = kedgev1.Topology_TOPOLOGY_STACKED
	case topo == "external":
		s.Topology = kedgev1.Topology_TOPOLOGY_EXTERNAL
	case topo == "embedded":
		s.Topology = kedgev1.Topology_TOPOLOGY_EMBEDDED
	default:
		p.fail("spec.topology", "%q is not a topology; choose stacked, external or embedded", topo)
	}
	if v, ok := p.boolean(f["keepHostnames"], "spec.keepHostnames"); ok {
		s.KeepHostnames = v
	}

	if s.Topology == kedgev1.Topology_TOPOLOGY_EMBEDDED {
		if f["etcd"] != nil {
			p.fail("spec.etcd", "the embedded topology runs K3s's own etcd, not kedge's; remove spec.etcd (size it with spec.k3s.servers, tune it with spec.k3s.serverConfig etcd-arg)")
		}
	} else {
		s.Etcd = p.etcd(f["etcd"])
	}
	if !present(f["k3s"]) {
		p.fail("spec.k3s", "missing; add spec.k3s with version and binary")
	} else {
		s.K3S = p.k3s(f["k3s"], s)
	}
	if f["inventory"] != nil {
		s.Inventory = p.inventory(f["inventory"], s)
	}
}

func (p *parser) etcd(n *yaml.Node) *kedgev1.EtcdSpec {
	e := &kedgev1.EtcdSpec{
		Members:             DefaultEtcdMembers,
		QuotaBackendBytes:   DefaultQuotaBackendBytes,
		SnapshotCount:       DefaultSnapshotCount,
		HeartbeatIntervalMs: DefaultHeartbeatIntervalMs,
		ElectionTimeoutMs:   DefaultElectionTimeoutMs,
	}
	f, ok := p.fields(n, "spec.etcd", "members", "quotaBackendBytes", "snapshotCount", "heartbeatIntervalMs", "electionTimeoutMs")
	if !ok {
		return e
	}
	if v, ok := p.uint(f["members"], "spec.etcd.members", "a member count like 3"); ok {
		switch {
		case v == 0:
			p.fail("spec.etcd.members", "0 members; etcd needs an odd count (1, 3, 5)")
		case v%2 == 0:
			p.fail("spec.etcd.members", "%d is even; etcd needs an odd count (1, 3, 5)", v)
		case v > 7:
			p.fail("spec.etcd.members", "%d is more than etcd runs well; use 1, 3, 5 or 7", v)
		default:
			e.Members = uint32(v)
		}
	}
	if v, ok := p.size(f["quotaBackendBytes"], "spec.etcd.quotaBackendBytes"); ok {
		switch {
		case v == 0:
			p.fail("spec.etcd.quotaBackendBytes", "0 is no quota; give bytes or a size like 2GiB, or omit it for 2GiB")
		case v > MaxQuotaBackendBytes:
			p.fail("spec.etcd.quotaBackendBytes", "%d is over etcd's suggested maximum of 8GiB; use at most 8GiB", v)
		default:
			e.QuotaBackendBytes = int64(v)
		}
	}
	if v, ok := p.uint(f["snapshotCount"], "spec.etcd.snapshotCount", "a count like 10000"); ok {
		if v == 0 {
			p.fail("spec.etcd.snapshotCount", "0 would snapshot on every write; use a count like 10000, or omit it")
		} else {
			e.SnapshotCount = v
		}
	}
	if v, ok := p.uint(f["heartbeatIntervalMs"], "spec.etcd.heartbeatIntervalMs", "milliseconds like 100"); ok {
		if v == 0 || v > math.MaxUint32 {
			p.fail("spec.etcd.heartbeatIntervalMs", "%d is out of range; use milliseconds like 100, or omit it", v)
		} else {
			e.HeartbeatIntervalMs = uint32(v)
		}
	}
	if v, ok := p.uint(f["electionTimeoutMs"], "spec.etcd.electionTimeoutMs", "milliseconds like 1000"); ok {
		if v == 0 || v > 50000 {
			p.fail("spec.etcd.electionTimeoutMs", "%d is out of range; use milliseconds from 1 to 50000 like 1000, or omit it", v)
		} else {
			e.ElectionTimeoutMs = uint32(v)
		}
	}
	// etcd refuses to start otherwise; say it here, where it can be fixed.
	if 5*uint64(e.HeartbeatIntervalMs) > uint64(e.ElectionTimeoutMs) {
		p.fail("spec.etcd.electionTimeoutMs", "%d is less than 5 x heartbeatIntervalMs (%d); raise it to at least %d", e.ElectionTimeoutMs, e.HeartbeatIntervalMs, 5*e.HeartbeatIntervalMs)
	}
	return e
}

func (p *parser) k3s(n *yaml.Node, s *kedgev1.ClusterSpec) *kedgev1.K3SSpec {
	k := &kedgev1.K3SSpec{}
	f, ok := p.fields(n, "spec.k3s", "servers", "version", "binary", "serverConfig", "agentConfig", "tlsSans", "registrationAddress")
	if !ok {
		return k
	}
	servers, given := p.uint(f["servers"], "spec.k3s.servers", "a server count like 3")
	switch s.Topology {
	case kedgev1.Topology_TOPOLOGY_STACKED:
		members := uint64(DefaultEtcdMembers)
		if s.Etcd != nil {
			members = uint64(s.Etcd.Members)
		}
		if given && servers != members {
			p.fail("spec.k3s.servers", "%d differs from spec.etcd.members (%d); the stacked topology runs one K3s server on each etcd member: set servers to %d or omit it", servers, members, members)
		}
		k.Servers = uint32(members)
	case kedgev1.Topology_TOPOLOGY_EXTERNAL:
		k.Servers = DefaultExternalServers
		if given {
			if servers == 0 {
				p.fail("spec.k3s.servers", "0 servers; a cluster needs at least 1 K3s server")
			} else {
				k.Servers = uint32(servers)
			}
		}
	case kedgev1.Topology_TOPOLOGY_EMBEDDED:
		k.Servers = DefaultEmbeddedServers
		if given {
			switch {
			case servers == 0:
				p.fail("spec.k3s.servers", "0 servers; a cluster needs at least 1 K3s server")
			case servers%2 == 0:
				p.fail("spec.k3s.servers", "%d is even; K3s's embedded etcd needs an odd count of servers (1, 3, 5)", servers)
			default:
				k.Servers = uint32(servers)
			}
		}
	}
	version, ok := p.str(f["version"], "spec.k3s.version")
	switch {
	case !present(f["version"]) || ok && version == "":
		p.fail("spec.k3s.version", "missing; give the K3s release, e.g. v1.31.4+k3s1")
	case !ok:
	case !strings.HasPrefix(version, "v") || strings.ContainsAny(version, " /"):
		p.fail("spec.k3s.version", "%q is not a K3s release name; use the form v1.31.4+k3s1", version)
	default:
		k.Version = version
	}
	if !present(f["binary"]) {
		p.fail("spec.k3s.binary", "missing; give binary.sha256 and where nodes get it (path, artifact or url)")
	} else {
		k.Binary = p.binary(f["binary"])
	}
	k.ServerConfig = p.config(f["serverConfig"], "spec.k3s.serverConfig", ownedServerKeys)
	k.AgentConfig = p.config(f["agentConfig"], "spec.k3s.agentConfig", ownedAgentKeys)
	if items, ok := p.seq(f["tlsSans"], "spec.k3s.tlsSans"); ok {
		seen := map[string]bool{}
		for i, item := range items {
			path := fmt.Sprintf("spec.k3s.tlsSans[%d]", i)
			v, ok := p.str(item, path)
			switch {
			case !ok:
			case v == "" || strings.ContainsAny(v, " /:") && net.ParseIP(v) == nil:
				p.fail(path, "%q is not a DNS name or IP; give a name like k3s.example.lan or an IP", v)
			case seen[v]:
				p.fail(path, "%q is listed twice; keep one", v)
			default:
				seen[v] = true
				k.TlsSans = append(k.TlsSans, v)
			}
		}
	}
	if v, ok := p.str(f["registrationAddress"], "spec.k3s.registrationAddress"); ok && v != "" {
		if msg := checkAddress(v); msg != "" {
			p.fail("spec.k3s.registrationAddress", "%q %s", v, msg)
		} else {
			k.RegistrationAddress = v
		}
	}
	return k
}

func (p *parser) binary(n *yaml.Node) *kedgev1.K3SBinary {
	b := &kedgev1.K3SBinary{}
	f, ok := p.fields(n, "spec.k3s.binary", "sha256", "path", "artifact", "url", "airgapImagesPath")
	if !ok {
		return b
	}
	sum, ok := p.str(f["sha256"], "spec.k3s.binary.sha256")
	switch {
	case !present(f["sha256"]) || ok && sum == "":
		p.fail("spec.k3s.binary.sha256", "missing; give the binary's SHA-256 (64 hex digits, e.g. from sha256sum-amd64.txt of the release)")
	case !ok:
	case !hex64.MatchString(sum):
		p.fail("spec.k3s.binary.sha256", "%q is not 64 hex digits; give the binary's SHA-256 as sha256sum prints it", sum)
	default:
		b.Sha256 = strings.ToLower(sum)
	}
	srcErrs := len(p.errs) // a source given but invalid is reported as that
	if v, ok := p.str(f["path"], "spec.k3s.binary.path"); ok && v != "" {
		if !strings.HasPrefix(v, "/") {
			p.fail("spec.k3s.binary.path", "%q is relative; give the absolute path on the image, e.g. /usr/local/bin/k3s", v)
		} else {
			b.Path = v
		}
	}
	if v, ok := p.str(f["artifact"], "spec.k3s.binary.artifact"); ok && v != "" {
		if !dnsLabel.MatchString(v) {
			p.fail("spec.k3s.binary.artifact", "%q is not an artifact name; use the name given to kedgectl artifact push, e.g. k3s", v)
		} else {
			b.Artifact = v
		}
	}
	if v, ok := p.str(f["url"], "spec.k3s.binary.url"); ok && v != "" {
		u, err := url.Parse(v)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			p.fail("spec.k3s.binary.url", "%q is not an http(s) URL; give the download URL, e.g. https://github.com/k3s-io/k3s/releases/download/v1.31.4%%2Bk3s1/k3s", v)
		} else {
			b.Url = v
		}
	}
	if v, ok := p.str(f["airgapImagesPath"], "spec.k3s.binary.airgapImagesPath"); ok && v != "" {
		if !strings.HasPrefix(v, "/") {
			p.fail("spec.k3s.binary.airgapImagesPath", "%q is relative; give the absolute path of the images tarball on the image", v)
		} else {
			b.AirgapImagesPath = v
		}
	}
	if b.Path == "" && b.Artifact == "" && b.Url == "" && len(p.errs) == srcErrs {
		p.fail("spec.k3s.binary", "no source; give path (pre-staged on the image), artifact (the coordinator's store) or url")
	}
	return b
}

// config converts a passthrough K3s config map. K3s's config.yaml values
// are scalars or lists of scalars, so nothing deeper is accepted.
func (p *parser) config(n *yaml.Node, path string, owned map[string]string) *structpb.Struct {
	if n == nil || isNull(n) {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		p.fail(path, "expected a mapping of K3s config.yaml keys, got %s; write key: value lines", describe(n))
		return nil
	}
	out := &structpb.Struct{Fields: map[string]*structpb.Value{}}
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn, vn := n.Content[i], n.Content[i+1]
		key := kn.Value
		kp := path + "." + key
		if line, dup := seen[key]; dup {
			p.fail(kp, "given twice (lines %d and %d); keep one", line, kn.Line)
			continue
		}
		seen[key] = kn.Line
		if from, ok := owned[key]; ok {
			p.fail(kp, "kedge sets %s itself (%s); remove it", key, from)
			continue
		}
		if v, ok := p.configValue(vn, kp); ok {
			out.Fields[key] = v
		}
	}
	if len(out.Fields) == 0 {
		return nil // so that {} and an absent map read back the same
	}
	return out
}

func (p *parser) configValue(n *yaml.Node, path string) (*structpb.Value, bool) {
	switch n.Kind {
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return structpb.NewStringValue(n.Value), true
		case "!!bool":
			var b bool
			_ = n.Decode(&b)
			return structpb.NewBoolValue(b), true
		case "!!int", "!!float":
			var f float64
			if err := n.Decode(&f); err != nil {
				p.fail(path, "%q is not a number K3s reads; quote it to pass it as a string", n.Value)
				return nil, false
			}
			return structpb.NewNumberValue(f), true
		default:
			p.fail(path, "%s is not a K3s config value; give a string, number, bool or list, or remove the key", describe(n))
			return nil, false
		}
	case yaml.SequenceNode:
		list := &structpb.ListValue{}
		for i, item := range n.Content {
			if item.Kind != yaml.ScalarNode {
				p.fail(fmt.Sprintf("%s[%d]", path, i), "%s in a list is not a K3s config value; give strings, numbers or bools", describe(item))
				return nil, false
			}
			v, ok := p.configValue(item, fmt.Sprintf("%s[%d]", path, i))
			if !ok {
				return nil, false
			}
			list.Values = append(list.Values, v)
		}
		return structpb.NewListValue(list), true
	default:
		p.fail(path, "%s is not a K3s config value; give a string, number, bool or list", describe(n))
		return nil, false
	}
}

var roleNames = map[string]kedgev1.Role{
	"etcd":   kedgev1.Role_ROLE_ETCD,
	"server": kedgev1.Role_ROLE_K3S_SERVER,
	"agent":  kedgev1.Role_ROLE_K3S_AGENT,
}

func (p *parser) inventory(n *yaml.Node, s *kedgev1.ClusterSpec) []*kedgev1.InventoryPin {
	items, ok := p.seq(n, "spec.inventory")
	if !ok {
		return nil
	}
	var pins []*kedgev1.InventoryPin
	names, macs, ips, matches := map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}
	var pinnedEtcd, pinnedServers uint32
	for i, item := range items {
		path := fmt.Sprintf("spec.inventory[%d]", i)
		f, ok := p.fields(item, path, "name", "match", "roles", "labels", "ip")
		if !ok {
			continue
		}
		pin := &kedgev1.InventoryPin{}
		name, ok := p.str(f["name"], path+".name")
		switch {
		case !present(f["name"]) || ok && name == "":
			p.fail(path+".name", "missing; give the node's name, e.g. nuc1")
		case !ok:
		case !dnsLabel.MatchString(name):
			p.fail(path+".name", "%q is not a valid node name; use lowercase letters, digits and '-' (at most 63)", name)
		default:
			if j, dup := names[name]; dup {
				p.fail(path+".name", "%q is already the name of spec.inventory[%d]; give each pin its own name", name, j)
			}
			names[name] = i
			pin.Name = name
		}
		errsBefore := len(p.errs)
		if mf, ok := p.fields(f["match"], path+".match", "mac", "dmiSerial", "dmiUUID", "machineID", "hostname"); ok {
			if v, ok := p.str(mf["mac"], path+".match.mac"); ok && v != "" {
				if hw, err := net.ParseMAC(v); err != nil {
					p.fail(path+".match.mac", "%q is not a MAC address; give it as aa:bb:cc:dd:ee:ff", v)
				} else {
					pin.Mac = hw.String()
					if j, dup := macs[pin.Mac]; dup {
						p.fail(path+".match.mac", "%s is already matched by spec.inventory[%d]; a MAC belongs to one machine", pin.Mac, j)
					}
					macs[pin.Mac] = i
				}
			}
			pin.DmiSerial, _ = p.str(mf["dmiSerial"], path+".match.dmiSerial")
			pin.DmiUuid, _ = p.str(mf["dmiUUID"], path+".match.dmiUUID")
			pin.MachineId, _ = p.str(mf["machineID"], path+".match.machineID")
			pin.Hostname, _ = p.str(mf["hostname"], path+".match.hostname")
			key := strings.Join([]string{pin.Mac, pin.DmiSerial, strings.ToLower(pin.DmiUuid), pin.MachineId, strings.ToLower(pin.Hostname)}, "\x00")
			if key == "\x00\x00\x00\x00" {
				if len(p.errs) == errsBefore {
					p.fail(path+".match", "empty; give at least one of mac, dmiSerial, dmiUUID, machineID, hostname")
				}
			} else if j, dup := matches[key]; dup && len(p.errs) == errsBefore {
				p.fail(path+".match", "matches the same machines as spec.inventory[%d]; make the match fields differ", j)
			} else {
				matches[key] = i
			}
		} else if !present(f["match"]) {
			p.fail(path+".match", "missing; give at least one of mac, dmiSerial, dmiUUID, machineID, hostname")
		}
		if roles, ok := p.seq(f["roles"], path+".roles"); ok {
			have := map[kedgev1.Role]bool{}
			for j, rn := range roles {
				rp := fmt.Sprintf("%s.roles[%d]", path, j)
				v, ok := p.str(rn, rp)
				if !ok {
					continue
				}
				r, known := roleNames[v]
				switch {
				case !known:
					p.fail(rp, "%q is not a role; use etcd, server or agent", v)
				case have[r]:
					p.fail(rp, "%q is listed twice; keep one", v)
				default:
					have[r] = true
					pin.Roles = append(pin.Roles, r)
				}
			}
			slices.Sort(pin.Roles)
			if msg := roleCombination(s.Topology, have); msg != "" {
				p.fail(path+".roles", "%s", msg)
			}
			if have[kedgev1.Role_ROLE_ETCD] {
				pinnedEtcd++
			}
			if have[kedgev1.Role_ROLE_K3S_SERVER] {
				pinnedServers++
			}
		}
		if lf := f["labels"]; lf != nil && !isNull(lf) {
			if lf.Kind != yaml.MappingNode {
				p.fail(path+".labels", "expected a mapping of label: value, got %s", describe(lf))
			} else {
				pin.Labels = map[string]string{}
				for j := 0; j+1 < len(lf.Content); j += 2 {
					k := lf.Content[j].Value
					if _, dup := pin.Labels[k]; dup {
						p.fail(path+".labels."+k, "given twice; keep one")
						continue
					}
					if v, ok := p.str(lf.Content[j+1], path+".labels."+k); ok {
						pin.Labels[k] = v
					}
				}
			}
		}
		if v, ok := p.str(f["ip"], path+".ip"); ok && v != "" {
			if ip := net.ParseIP(v); ip == nil {
				p.fail(path+".ip", "%q is not an IP address; give the address the node's services use, e.g. 10.0.0.11", v)
			} else {
				pin.Ip = ip.String()
				if j, dup := ips[pin.Ip]; dup {
					p.fail(path+".ip", "%s is already the IP of spec.inventory[%d]; give each node its own", pin.Ip, j)
				}
				ips[pin.Ip] = i
			}
		}
		pins = append(pins, pin)
	}
	if s.Etcd != nil && pinnedEtcd > s.Etcd.Members {
		p.fail("spec.inventory", "%d pins have the etcd role but spec.etcd.members is %d; pin at most %d or raise members", pinnedEtcd, s.Etcd.Members, s.Etcd.Members)
	} else if s.K3S != nil && s.K3S.Servers > 0 && pinnedServers > s.K3S.Servers {
		p.fail("spec.inventory", "%d pins have the server role but spec.k3s.servers is %d; pin at most %d or raise servers", pinnedServers, s.K3S.Servers, s.K3S.Servers)
	}
	return pins
}

// checkAddress says what is wrong with a host or host:port, or "".
func checkAddress(v string) string {
	if strings.Contains(v, "://") {
		return "has a scheme; give host or host:port, kedge adds https://"
	}
	host := v
	if h, port, err := net.SplitHostPort(v); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "has no valid port; give host or host:port, e.g. 10.0.0.5:6443"
		}
		host = h
	} else if strings.Contains(v, ":") && net.ParseIP(v) == nil {
		return "is not host or host:port; give e.g. 10.0.0.5 or k3s.example.lan:6443"
	}
	if host == "" || strings.ContainsAny(host, " /") {
		return "is not host or host:port; give e.g. 10.0.0.5 or k3s.example.lan:6443"
	}
	return ""
}

// roleCombination says what is wrong with a pin's roles under a topology.
func roleCombination(t kedgev1.Topology, have map[kedgev1.Role]bool) string {
	etcd, server, agent := have[kedgev1.Role_ROLE_ETCD], have[kedgev1.Role_ROLE_K3S_SERVER], have[kedgev1.Role_ROLE_K3S_AGENT]
	switch {
	case server && agent:
		return "server and agent together; a K3s server already runs the node's kubelet: keep one"
	case t == kedgev1.Topology_TOPOLOGY_EMBEDDED && etcd:
		return "etcd in the embedded topology, where K3s runs its own; use server or agent"
	case t == kedgev1.Topology_TOPOLOGY_STACKED && etcd != server:
		return "etcd and server go together in the stacked topology; use [etcd, server] or [agent]"
	case t == kedgev1.Topology_TOPOLOGY_STACKED && agent && etcd:
		return "etcd and agent together; in the stacked topology use [etcd, server] or [agent]"
	case t == kedgev1.Topology_TOPOLOGY_EXTERNAL && etcd && (server || agent):
		return "an etcd host runs etcd only in the external topology; use [etcd], [server] or [agent]"
	}
	return ""
}

// fields checks n is a mapping with only known, unique keys and returns the
// values by key. A missing or null n gives ok=false without complaint.
func (p *parser) fields(n *yaml.Node, path string, known ...string) (map[string]*yaml.Node, bool) {
	if n == nil || isNull(n) {
		return nil, false
	}
	if n.Kind != yaml.MappingNode {
		p.fail(orRoot(path), "expected a mapping, got %s", describe(n))
		return nil, false
	}
	out := map[string]*yaml.Node{}
	lines := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		kn := n.Content[i]
		key := kn.Value
		fp := join(path, key)
		if line, dup := lines[key]; dup {
			p.fail(fp, "given twice (lines %d and %d); keep one", line, kn.Line)
			continue
		}
		lines[key] = kn.Line
		if !slices.Contains(known, key) {
			p.fail(fp, "unknown field; known fields here are %s", strings.Join(known, ", "))
			continue
		}
		out[key] = n.Content[i+1]
	}
	return out, true
}

func (p *parser) str(n *yaml.Node, path string) (string, bool) {
	if n == nil || isNull(n) {
		return "", false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		p.fail(path, "expected a string, got %s; quote it if it is meant as text", describe(n))
		return "", false
	}
	return n.Value, true
}

func (p *parser) boolean(n *yaml.Node, path string) (bool, bool) {
	if n == nil || isNull(n) {
		return false, false
	}
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" {
		p.fail(path, "expected true or false, got %s", describe(n))
		return false, false
	}
	return n.Value == "true" || n.Value == "True" || n.Value == "TRUE", true
}

func (p *parser) uint(n *yaml.Node, path, example string) (uint64, bool) {
	if n == nil || isNull(n) {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
		if v, err := strconv.ParseUint(n.Value, 0, 64); err == nil {
			return v, true
		}
	}
	p.fail(path, "expected a whole number, got %s; give %s", describe(n), example)
	return 0, false
}

var sizeUnits = []struct {
	suffix string
	mult   uint64
}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}}

// size reads bytes as a number or with a KiB/MiB/GiB suffix.
func (p *parser) size(n *yaml.Node, path string) (uint64, bool) {
	if n == nil || isNull(n) {
		return 0, false
	}
	if n.Kind == yaml.ScalarNode {
		if n.ShortTag() == "!!int" {
			if v, err := strconv.ParseUint(n.Value, 0, 64); err == nil {
				return v, true
			}
		}
		for _, u := range sizeUnits {
			if num, ok := strings.CutSuffix(n.Value, u.suffix); ok {
				if v, err := strconv.ParseUint(strings.TrimSpace(num), 10, 64); err == nil && v <= math.MaxUint64/u.mult {
					return v * u.mult, true
				}
			}
		}
	}
	p.fail(path, "expected a size, got %s; give bytes or a size like 2GiB (KiB, MiB, GiB)", describe(n))
	return 0, false
}

func (p *parser) seq(n *yaml.Node, path string) ([]*yaml.Node, bool) {
	if n == nil || isNull(n) {
		return nil, false
	}
	if n.Kind != yaml.SequenceNode {
		p.fail(path, "expected a list, got %s; write it as [a, b] or as '- a' lines", describe(n))
		return nil, false
	}
	return n.Content, true
}

// present reports whether n holds a value: absent and null do not.
func present(n *yaml.Node) bool { return n != nil && !isNull(n) }

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what was found, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.ShortTag() {
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	case "!!int", "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the bool " + n.Value
	case "!!null":
		return "nothing"
	}
	return fmt.Sprintf("%q", n.Value)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orRoot(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}

// MatchPin returns the inventory pin that facts match, or nil. A pin matches
// when every match field it gives matches; MACs, DMI UUIDs and hostnames
// compare case-insensitively, the MAC against any of the machine's MACs.
func MatchPin(s *kedgev1.ClusterSpec, facts *kedgev1.MachineFacts) *kedgev1.InventoryPin {
	if s == nil || facts == nil {
		return nil
	}
	for _, pin := range s.Inventory {
		if pinMatches(pin, facts) {
			return pin
		}
	}
	return nil
}

func pinMatches(pin *kedgev1.InventoryPin, facts *kedgev1.MachineFacts) bool {
	given := false
	if pin.Mac != "" {
		given = true
		if !slices.ContainsFunc(facts.Macs, func(m string) bool { return sameMAC(m, pin.Mac) }) {
			return false
		}
	}
	if pin.DmiSerial != "" {
		given = true
		if facts.DmiProductSerial != pin.DmiSerial {
			return false
		}
	}
	if pin.DmiUuid != "" {
		given = true
		if !strings.EqualFold(facts.DmiProductUuid, pin.DmiUuid) {
			return false
		}
	}
	if pin.MachineId != "" {
		given = true
		if !strings.EqualFold(facts.MachineId, pin.MachineId) {
			return false
		}
	}
	if pin.Hostname != "" {
		given = true
		if !strings.EqualFold(facts.Hostname, pin.Hostname) {
			return false
		}
	}
	return given
}

func sameMAC(a, b string) bool {
	ha, errA := net.ParseMAC(a)
	hb, errB := net.ParseMAC(b)
	if errA != nil || errB != nil {
		return strings.EqualFold(a, b)
	}
	return bytes.Equal(ha, hb)
}
