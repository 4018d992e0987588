// Package report assembles the NodeStatus a node sends the coordinator: its
// managed units as systemd sees them, the plan it applied and how that went,
// etcd and K3s probes, certificate expiries and the agent version.
package report

import (
	"context"
	"crypto/x509"
	"os"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kedge-io/kedge/internal/version"
	"github.com/kedge-io/kedge/nodeagent/etcdrole"
	"github.com/kedge-io/kedge/nodeagent/internal/pkiutil"
	"github.com/kedge-io/kedge/nodeagent/k3srole"
	"github.com/kedge-io/kedge/nodeagent/paths"
	"github.com/kedge-io/kedge/nodeagent/reconcile"
	"github.com/kedge-io/kedge/nodeagent/statusfile"
	"github.com/kedge-io/kedge/nodeagent/sysd"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Probes are the role health checks; tests replace them.
type Probes struct {
	Etcd func(ctx context.Context, root string, plan *kedgev1.Plan) *kedgev1.EtcdMemberStatus
	K3s  func(ctx context.Context) *kedgev1.K3SStatus
}

// DefaultProbes are etcdrole.Probe and k3srole.Probe.
func DefaultProbes() Probes { return Probes{Etcd: etcdrole.Probe, K3s: k3srole.Probe} }

// Input is what the status is built from.
type Input struct {
	Root    string
	Systemd sysd.Conn
	Probes  Probes
	// Plan is the plan whose apply last finished (with ApplyError if it
	// failed); nil before any. Its hash is the one reported.
	Plan *kedgev1.Plan
	// Target is the newest plan, maybe still being applied: its units and
	// roles are what is reported on, so a unit slow to start shows up as
	// "activating" before the apply finishes. Nil means Plan.
	Target     *kedgev1.Plan
	ApplyError string
	ApplyStep  string
	Identity   *x509.Certificate
}

// Units returns the units a plan runs.
func Units(plan *kedgev1.Plan) []string {
	var units []string
	if plan.GetEtcd() != nil {
		units = append(units, paths.EtcdUnit)
	}
	if u := reconcile.K3sUnit(plan); u != "" {
		units = append(units, u)
	}
	return units
}

// Build collects the status. Probes are bounded so a hung etcd cannot stall
// the heartbeat.
func Build(ctx context.Context, in Input) (*kedgev1.NodeStatus, []statusfile.Unit) {
	st := &kedgev1.NodeStatus{
		PlanHash:     in.Plan.GetHash(),
		PlanRevision: in.Plan.GetRevision(),
		ApplyError:   in.ApplyError,
		ApplyStep:    in.ApplyStep,
		AgentVersion: version.Version,
		ObservedAt:   timestamppb.Now(),
		Waiting:      in.Plan.GetWaiting(),
	}
	target := in.Target
	if target == nil {
		target = in.Plan
	}
	var units []statusfile.Unit
	for _, name := range Units(target) {
		us, err := in.Systemd.State(ctx, name)
		if err != nil {
			us = sysd.UnitState{Name: name, ActiveState: "unknown", SubState: err.Error()}
		}
		u := &kedgev1.UnitStatus{Name: name, ActiveState: us.ActiveState, SubState: us.SubState, Result: us.Result,
			NRestarts: us.NRestarts, LoadState: us.LoadState}
		if !us.Since.IsZero() {
			u.Since = timestamppb.New(us.Since)
		}
		st.Units = append(st.Units, u)
		units = append(units, statusfile.Unit{Name: name, ActiveState: us.ActiveState, SubState: us.SubState,
			Result: us.Result, NRestarts: us.NRestarts, Since: us.Since})
	}
	probeCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if target.GetEtcd() != nil && in.Probes.Etcd != nil {
		st.Etcd = in.Probes.Etcd(probeCtx, in.Root, target)
	}
	if target.GetK3S().GetRole() == kedgev1.Role_ROLE_K3S_SERVER && in.Probes.K3s != nil {
		st.K3S = in.Probes.K3s(probeCtx)
	}
	if in.Identity != nil {
		st.Certificates = append(st.Certificates, &kedgev1.CertificateExpiry{Name: "identity", NotAfter: timestamppb.New(in.Identity.NotAfter)})
	}
	for _, c := range []struct{ name, path string }{
		{"etcd-server", paths.EtcdServerCert},
		{"etcd-peer", paths.EtcdPeerCert},
		{"etcd-ca", paths.EtcdCA},
		{"datastore-client", paths.DatastoreClientCert},
	} {
		data, err := os.ReadFile(paths.In(in.Root, c.path))
		if err != nil {
			continue
		}
		if certs, err := pkiutil.ParseCerts(data); err == nil {
			st.Certificates = append(st.Certificates, &kedgev1.CertificateExpiry{Name: c.name, NotAfter: timestamppb.New(certs[0].NotAfter)})
		}
	}
	return st, units
}
