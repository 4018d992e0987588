// Package paths names every file the node agent owns on a machine. All are
// absolute paths inside the machine; code that writes them prefixes a root
// (the machine's / in production, a temp dir in tests, the image when flashing).
package paths

import "path/filepath"

const (
	// Agent configuration and bootstrap secret, written by `kedge-nodeagent install`.
	AgentConfig    = "/etc/kedge/agent.yaml"
	BootstrapToken = "/etc/kedge/bootstrap-token"
	AgentBinary    = "/usr/local/bin/kedge-nodeagent"

	// State the agent keeps so a power cycle needs no coordinator.
	StateDir     = "/var/lib/kedge"
	IdentityKey  = "/var/lib/kedge/identity/node.key"
	IdentityCert = "/var/lib/kedge/identity/node.crt"
	IdentityCA   = "/var/lib/kedge/identity/ca.crt"
	CachedPlan   = "/var/lib/kedge/plan.pb"
	AgentStatus  = "/var/lib/kedge/status.json"
	// Content hashes of what the reconciler last wrote, by path and unit.
	AppliedState = "/var/lib/kedge/applied.json"
	// Optional DMI facts for machines without /sys/class/dmi (the lab writes it).
	DMIOverride = "/etc/kedge/dmi.yaml"

	// etcd role.
	EtcdConfig     = "/etc/kedge/etcd.yaml"
	EtcdDataDir    = "/var/lib/kedge/etcd"
	EtcdCA         = "/etc/kedge/etcd/ca.crt"
	EtcdServerCert = "/etc/kedge/etcd/server.crt"
	EtcdServerKey  = "/etc/kedge/etcd/server.key"
	EtcdPeerCert   = "/etc/kedge/etcd/peer.crt"
	EtcdPeerKey    = "/etc/kedge/etcd/peer.key"
	// Datastore client cert K3s servers use; also the agent's client for probing etcd.
	DatastoreClientCert = "/etc/kedge/etcd/datastore-client.crt"
	DatastoreClientKey  = "/etc/kedge/etcd/datastore-client.key"

	// K3s roles, laid out as K3s and its installer expect.
	K3sConfig      = "/etc/rancher/k3s/config.yaml"
	K3sKubeconfig  = "/etc/rancher/k3s/k3s.yaml"
	K3sToken       = "/etc/kedge/k3s/token"
	K3sAgentToken  = "/etc/kedge/k3s/agent-token"
	K3sBinary      = "/usr/local/bin/k3s"
	K3sAirgapDir   = "/var/lib/rancher/k3s/agent/images"
	K3sServiceEnv  = "/etc/systemd/system/k3s.service.env"
	K3sAgentEnv    = "/etc/systemd/system/k3s-agent.service.env"
	SystemdUnitDir = "/etc/systemd/system"

	// Units kedge installs.
	NodeAgentUnit = "kedge-nodeagent.service"
	EtcdUnit      = "kedge-etcd.service"
	K3sServerUnit = "k3s.service"
	K3sAgentUnit  = "k3s-agent.service"
)

// In returns p under root.
func In(root, p string) string {
	if root == "" {
		root = "/"
	}
	return filepath.Join(root, p)
}
