package reconcile

import (
	"context"
	"errors"
	"net/http"
	"os"

	"github.com/kedge-io/kedge/nodeagent/desired"
	"github.com/kedge-io/kedge/nodeagent/etcdrole"
	"github.com/kedge-io/kedge/nodeagent/k3srole"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Plan-level steps.
const (
	StepHostname       = "hostname"
	StepEtcdCerts      = "etcd certificates"
	StepDatastoreCert  = "datastore client certificate"
	StepK3sBinary      = "k3s binary"
	StepRenderEtcd     = "render etcd"
	StepRenderK3s      = "render k3s"
	stepOfflineMissing = "coordinator unreachable and %s is missing"
)

// errMissingOffline: a cached plan needs a file only the coordinator can provide.
var errMissingOffline = errors.New("missing, and the coordinator is unreachable to provide it")

// Roles are the role packages' entry points; tests swap them out.
type Roles struct {
	EnsureEtcdCerts           func(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient) (bool, error)
	EnsureDatastoreClientCert func(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient) (bool, error)
	EnsureK3sBinary           func(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient, httpClient *http.Client) (bool, error)
	EtcdDesired               func(plan *kedgev1.Plan) (desired.State, error)
	K3sDesired                func(plan *kedgev1.Plan) (desired.State, error)
}

// DefaultRoles are the real etcdrole and k3srole functions.
func DefaultRoles() Roles {
	return Roles{
		EnsureEtcdCerts:           etcdrole.EnsureCerts,
		EnsureDatastoreClientCert: etcdrole.EnsureDatastoreClientCert,
		EnsureK3sBinary:           k3srole.EnsureBinary,
		EtcdDesired:               etcdrole.Desired,
		K3sDesired:                k3srole.Desired,
	}
}

// PlanApplier turns a plan into files, units and running services.
type PlanApplier struct {
	Reconciler
	Roles Roles
	HTTP  *http.Client
}

// K3sUnit is the unit a plan's K3s role runs, "" without K3s.
func K3sUnit(plan *kedgev1.Plan) string {
	switch plan.GetK3S().GetRole() {
	case kedgev1.Role_ROLE_K3S_SERVER:
		return paths.K3sServerUnit
	case kedgev1.Role_ROLE_K3S_AGENT:
		return paths.K3sAgentUnit
	}
	return ""
}

// ApplyPlan runs every step for plan. client is nil when the coordinator is
// unreachable (applying the cached plan at boot): steps that need it are
// skipped when their files already exist. Errors are *StepError.
func (a *PlanApplier) ApplyPlan(ctx context.Context, plan *kedgev1.Plan, client kedgev1.NodeServiceClient) (Result, error) {
	// A hostname that cannot be set must not keep etcd and K3s down (K3s
	// gets its node name from its config): apply the rest, then report it.
	hostErr := a.hostname(ctx, plan)
	res, err := a.applyRoles(ctx, plan, client)
	if err == nil && hostErr != nil {
		return res, &StepError{Step: StepHostname, Err: hostErr}
	}
	return res, err
}

func (a *PlanApplier) applyRoles(ctx context.Context, plan *kedgev1.Plan, client kedgev1.NodeServiceClient) (Result, error) {
	var restarts []string
	k3sUnit := K3sUnit(plan)

	ensure := func(step string, need bool, files []string, f func() (bool, error)) (bool, error) {
		if !need {
			return false, nil
		}
		if client == nil {
			for _, p := range files {
				if _, err := os.Stat(paths.In(a.Root, p)); err != nil {
					return false, &StepError{Step: step, Path: p, Err: errMissingOffline}
				}
			}
			return false, nil
		}
		changed, err := f()
		if err != nil {
			return false, &StepError{Step: step, Err: err}
		}
		return changed, nil
	}

	// etcd reloads its certificates on every new connection, so new etcd
	// certs need no restart (a renewal must not bounce a quorum member).
	if _, err := ensure(StepEtcdCerts, plan.GetEtcd() != nil,
		[]string{paths.EtcdCA, paths.EtcdServerCert, paths.EtcdServerKey, paths.EtcdPeerCert, paths.EtcdPeerKey},
		func() (bool, error) { return a.Roles.EnsureEtcdCerts(ctx, a.Root, plan, client) }); err != nil {
		return Result{}, err
	}
	changed, err := ensure(StepDatastoreCert, len(plan.GetK3S().GetDatastoreEndpoints()) > 0,
		[]string{paths.DatastoreClientCert, paths.DatastoreClientKey},
		func() (bool, error) { return a.Roles.EnsureDatastoreClientCert(ctx, a.Root, plan, client) })
	if err != nil {
		return Result{}, err
	}
	if changed && k3sUnit != "" {
		restarts = append(restarts, k3sUnit)
	}
	changed, err = ensure(StepK3sBinary, plan.GetK3S() != nil, []string{paths.K3sBinary},
		func() (bool, error) { return a.Roles.EnsureK3sBinary(ctx, a.Root, plan, client, a.HTTP) })
	if err != nil {
		return Result{}, err
	}
	if changed && k3sUnit != "" {
		restarts = append(restarts, k3sUnit)
	}

	var st desired.State
	etcdState, err := a.Roles.EtcdDesired(plan)
	if err != nil {
		return Result{}, &StepError{Step: StepRenderEtcd, Err: err}
	}
	st.Merge(etcdState)
	k3sState, err := a.Roles.K3sDesired(plan)
	if err != nil {
		return Result{}, &StepError{Step: StepRenderK3s, Err: err}
	}
	st.Merge(k3sState)
	return a.Apply(ctx, st, restarts)
}

func (a *PlanApplier) hostname(ctx context.Context, plan *kedgev1.Plan) error {
	want := plan.GetHostname()
	if want == "" {
		return nil
	}
	have, err := a.Systemd.StaticHostname(ctx)
	if err != nil {
		return err
	}
	if have == want {
		return nil
	}
	if err := a.Systemd.SetStaticHostname(ctx, want); err != nil {
		return err
	}
	a.Log.Info("set static hostname", "from", have, "to", want)
	return nil
}

// AsStepError extracts the step of an apply error ("" and the message for others).
func AsStepError(err error) (step, msg string) {
	var se *StepError
	if errors.As(err, &se) {
		return se.Step, se.Error()
	}
	return "", err.Error()
}
