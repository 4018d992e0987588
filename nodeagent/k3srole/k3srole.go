// Package k3srole installs and runs K3s as a server or an agent: the binary
// (always SHA-256 checked), config.yaml, token files and unit, plus the
// server's readiness probe and its admin kubeconfig.
package k3srole

import (
	"context"
	"errors"
	"net/http"

	"github.com/kedge-io/kedge/nodeagent/desired"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

var errTODO = errors.New("k3srole: not built yet")

// EnsureBinary installs the plan's K3s binary at /usr/local/bin/k3s under root
// (with the kubectl, crictl and ctr links) from the first source the plan
// names: pre-staged path, the coordinator's artifact store, a URL. It reports
// whether the binary changed. A plan without K3s is a no-op.
func EnsureBinary(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient, httpClient *http.Client) (bool, error) {
	return false, errTODO
}

// Desired renders config.yaml, the token files and k3s.service or
// k3s-agent.service for the plan; an empty State when the plan has no K3s role.
func Desired(plan *kedgev1.Plan) (desired.State, error) {
	return desired.State{}, errTODO
}

// Probe asks the local K3s server's /ping whether its supervisor is up.
func Probe(ctx context.Context) *kedgev1.K3SStatus {
	return &kedgev1.K3SStatus{Error: errTODO.Error()}
}

// Kubeconfig reads K3s's admin kubeconfig under root and points it at serverURL.
func Kubeconfig(root, serverURL string) ([]byte, error) {
	return nil, errTODO
}
