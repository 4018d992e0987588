// Package etcdrole runs a node's etcd member: the certificates it needs, the
// config and unit it is started from, the embedded etcd itself, and the
// member's health as the node reports it.
package etcdrole

import (
	"context"
	"errors"

	"github.com/kedge-io/kedge/nodeagent/desired"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

var errTODO = errors.New("etcdrole: not built yet")

// EnsureCerts makes sure the etcd CA, server and peer cert/key files under root
// exist, match the plan (member name, IPs) and are not past two thirds of their
// lifetime; otherwise it generates keys on the node and asks the coordinator to
// sign. It reports whether any file changed. A plan without the etcd role is a no-op.
func EnsureCerts(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient) (bool, error) {
	return false, errTODO
}

// EnsureDatastoreClientCert does the same for the datastore-client cert a K3s
// server uses to reach etcd (and the etcd CA it trusts). A plan with no
// datastore endpoints is a no-op.
func EnsureDatastoreClientCert(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient) (bool, error) {
	return false, errTODO
}

// Desired renders /etc/kedge/etcd.yaml and kedge-etcd.service for the plan;
// an empty State when the plan has no etcd role.
func Desired(plan *kedgev1.Plan) (desired.State, error) {
	return desired.State{}, errTODO
}

// Probe reports the local member's view of etcd, using the files under root.
func Probe(ctx context.Context, root string, plan *kedgev1.Plan) *kedgev1.EtcdMemberStatus {
	return &kedgev1.EtcdMemberStatus{Error: errTODO.Error()}
}

// Run runs one etcd member from the config at configPath until ctx ends,
// notifying systemd READY once the member serves. `kedge-nodeagent etcd` calls it.
func Run(ctx context.Context, configPath string) error {
	return errTODO
}
