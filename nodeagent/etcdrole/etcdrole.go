// Package etcdrole runs a node's etcd member: the certificates it needs, the
// config and unit it is started from, the embedded etcd itself, and the
// member's health as the node reports it.
//
// Both etcd ports demand a client cert from the cluster's etcd CA. Keys are
// made on the node; the coordinator signs. etcd re-reads its server and peer
// cert/key files on every new TLS handshake, so a renewal (at two thirds of
// a cert's lifetime) takes effect without restarting the member; only a new
// CA needs a restart, because etcd reads the CA file once at start.
package etcdrole

import (
	"fmt"

	systemd "github.com/kedge-io/kedge/deploy/systemd"
	"github.com/kedge-io/kedge/nodeagent/desired"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Desired renders /etc/kedge/etcd.yaml and kedge-etcd.service for the plan;
// an empty State when the plan has no etcd role.
func Desired(plan *kedgev1.Plan) (desired.State, error) {
	if !hasRole(plan, kedgev1.Role_ROLE_ETCD) || plan.GetEtcd() == nil {
		return desired.State{}, nil
	}
	cfg, err := ConfigForPlan(plan, "")
	if err != nil {
		return desired.State{}, err
	}
	content, err := cfg.Marshal()
	if err != nil {
		return desired.State{}, fmt.Errorf("render %s: %w", paths.EtcdConfig, err)
	}
	unit, err := systemd.Unit(paths.EtcdUnit)
	if err != nil {
		return desired.State{}, err
	}
	return desired.State{
		Files: []desired.File{{
			Path:     paths.EtcdConfig,
			Content:  content,
			Mode:     0o644,
			Restarts: []string{paths.EtcdUnit},
		}},
		Units: []desired.Unit{{Name: paths.EtcdUnit, Content: unit, Enable: true, Start: true}},
	}, nil
}
