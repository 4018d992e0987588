// Package agent is the node agent daemon: apply the cached plan at boot,
// enroll (or load the stored identity), watch the plan over mutual TLS, apply
// each plan, report status, renew the identity. Every loop backs off with
// jitter, and nothing the coordinator does (or fails to do) blocks the node
// from running what it last applied.
package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kedge-io/kedge/internal/atomicfile"
	"github.com/kedge-io/kedge/internal/version"
	"github.com/kedge-io/kedge/nodeagent/config"
	"github.com/kedge-io/kedge/nodeagent/enroll"
	"github.com/kedge-io/kedge/nodeagent/facts"
	"github.com/kedge-io/kedge/nodeagent/install"
	"github.com/kedge-io/kedge/nodeagent/internal/backoff"
	"github.com/kedge-io/kedge/nodeagent/k3srole"
	"github.com/kedge-io/kedge/nodeagent/paths"
	"github.com/kedge-io/kedge/nodeagent/reconcile"
	"github.com/kedge-io/kedge/nodeagent/report"
	"github.com/kedge-io/kedge/nodeagent/statusfile"
	"github.com/kedge-io/kedge/nodeagent/sysd"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Options configure Run. Zero durations take production defaults; tests
// shorten them.
type Options struct {
	Root    string
	Config  *config.Config
	Systemd sysd.Conn
	Log     *slog.Logger
	Roles   *reconcile.Roles
	Probes  *report.Probes
	HTTP    *http.Client

	// RetryMin/RetryMax bound retries after a refusal (enrollment refused,
	// wrong pin) and of a failing apply.
	RetryMin, RetryMax time.Duration
	// ReconnectMax caps retries while the coordinator is unreachable: lower
	// than RetryMax so nodes are back within a minute of it, while jitter
	// still spreads a fleet's reconnects.
	ReconnectMax time.Duration
	// RejectedMin/RejectedMax bound retries after the coordinator rejected
	// the node's identity (removed): long, the node cannot fix that itself.
	RejectedMin, RejectedMax time.Duration
	// Reapply is how often an applied plan is re-checked for drift.
	Reapply time.Duration
}

func (o *Options) defaults() {
	if o.Root == "" {
		o.Root = "/"
	}
	if o.RetryMin == 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax == 0 {
		o.RetryMax = 5 * time.Minute
	}
	if o.ReconnectMax == 0 {
		o.ReconnectMax = time.Minute
	}
	if o.ReconnectMax > o.RetryMax {
		o.ReconnectMax = o.RetryMax
	}
	if o.RejectedMin == 0 {
		o.RejectedMin = time.Minute
	}
	if o.RejectedMax == 0 {
		o.RejectedMax = 30 * time.Minute
	}
	if o.Reapply == 0 {
		o.Reapply = 5 * time.Minute
	}
	if o.HTTP == nil {
		o.HTTP = &http.Client{Timeout: 10 * time.Minute}
	}
}

// Agent is one running node agent.
type Agent struct {
	opts    Options
	cfg     *config.Config
	log     *slog.Logger
	tracker *statusfile.Tracker
	applier *reconcile.PlanApplier
	probes  report.Probes
	limited *rateLog

	applyKick  chan struct{}
	reportKick chan struct{}

	mu          sync.Mutex // guards the fields below
	plan        *kedgev1.Plan
	appliedPlan *kedgev1.Plan
	applyErr    string
	applyStep   string
	client      kedgev1.NodeServiceClient
	identity    *enroll.Identity
	kubeconfig  [32]byte // hash of the last kubeconfig uploaded
	// endSession ends the current coordinator session, e.g. when a report
	// learns the identity was rejected while the watch stream still looks fine.
	endSession context.CancelFunc
	rejected   error
}

// New builds an agent.
func New(opts Options) *Agent {
	opts.defaults()
	roles := reconcile.DefaultRoles()
	if opts.Roles != nil {
		roles = *opts.Roles
	}
	probes := report.DefaultProbes()
	if opts.Probes != nil {
		probes = *opts.Probes
	}
	a := &Agent{
		opts:       opts,
		cfg:        opts.Config,
		log:        opts.Log,
		tracker:    statusfile.NewTracker(opts.Root),
		probes:     probes,
		limited:    newRateLog(opts.Log, time.Minute),
		applyKick:  make(chan struct{}, 1),
		reportKick: make(chan struct{}, 1),
	}
	a.applier = &reconcile.PlanApplier{
		Reconciler: reconcile.Reconciler{Root: opts.Root, Systemd: opts.Systemd, Log: opts.Log},
		Roles:      roles,
		HTTP:       opts.HTTP,
	}
	return a
}

// Run runs the agent until ctx ends.
func Run(ctx context.Context, opts Options) error {
	return New(opts).Run(ctx)
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (a *Agent) status(fn func(*statusfile.Status)) {
	if err := a.tracker.Update(fn); err != nil {
		a.limited.Warn("status-file", "could not write the status file", "path", paths.AgentStatus, "err", err)
	}
}

// Run applies the cached plan, then enrolls or loads the identity, then
// watches, applies and reports until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	a.log.Info("node agent starting", "version", version.Version, "coordinators", a.cfg.Coordinators, "root", a.opts.Root)
	a.status(func(s *statusfile.Status) { s.AgentVersion = version.Version })
	managed := reconcile.ManagedUnits
	a.opts.Systemd.Watch(managed...)

	// Before any network: bring the node back as it was. The apply loop
	// takes it first; enrollment and the watch go on meanwhile, because a
	// unit waiting for quorum may hold the apply for a while.
	if plan, err := loadCachedPlan(a.opts.Root); err != nil {
		a.log.Warn("ignoring the cached plan", "path", paths.CachedPlan, "err", err)
	} else if plan != nil {
		a.log.Info("applying the cached plan before contacting the coordinator", "hash", plan.GetHash(), "revision", plan.GetRevision())
		a.setPlan(plan)
		kick(a.applyKick)
	}

	loopCtx, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); a.applyLoop(loopCtx) }()
	go func() { defer wg.Done(); a.reportLoop(loopCtx) }()

	id, err := enroll.Load(a.opts.Root)
	switch {
	case errors.Is(err, enroll.ErrNoIdentity):
		id, err = a.enroll(ctx)
	case err != nil:
		err = fmt.Errorf("stored identity: %w (remove %s to enroll again)", err, paths.IdentityCert)
	}
	if err == nil {
		a.setIdentity(id)
		a.sessions(ctx, id)
	}
	stopLoops()
	wg.Wait()
	if ctx.Err() != nil {
		a.log.Info("node agent stopping")
		return nil
	}
	return err
}

func (a *Agent) setIdentity(id *enroll.Identity) {
	a.mu.Lock()
	a.identity = id
	a.mu.Unlock()
	a.status(func(s *statusfile.Status) {
		s.NodeName = id.Name()
		s.IdentityNotAfter = id.Cert.NotAfter.UTC()
		if s.Enrollment != statusfile.Removed {
			s.Enrollment = statusfile.Enrolled
		}
	})
}

func (a *Agent) setPlan(plan *kedgev1.Plan) {
	a.mu.Lock()
	a.plan = plan
	a.mu.Unlock()
	a.status(func(s *statusfile.Status) {
		s.NodeName, s.Cluster = plan.GetNodeName(), plan.GetCluster()
		s.PlanWaiting = plan.GetWaiting()
		s.TargetPlanHash = plan.GetHash()
	})
}

func (a *Agent) setClient(c kedgev1.NodeServiceClient) {
	a.mu.Lock()
	a.client = c
	a.mu.Unlock()
}

func (a *Agent) contact(addr string) {
	a.status(func(s *statusfile.Status) {
		s.Coordinator = addr
		s.LastContact = time.Now().UTC().Truncate(time.Second)
	})
}

// enroll loops until the coordinator gives this node an identity.
func (a *Agent) enroll(ctx context.Context) (*enroll.Identity, error) {
	key, err := enroll.LoadOrCreateKey(a.opts.Root)
	if err != nil {
		return nil, fmt.Errorf("node key %s: %w", paths.IdentityKey, err)
	}
	b := backoff.Backoff{Min: a.opts.RetryMin, Max: a.opts.RetryMax}
	unreachable := backoff.Backoff{Min: a.opts.RetryMin, Max: a.opts.ReconnectMax}
	pending := backoff.Backoff{Min: a.opts.RetryMin, Max: a.opts.ReconnectMax}
	for i := 0; ; i++ {
		addr := a.cfg.Coordinators[i%len(a.cfg.Coordinators)]
		wait := b.Next
		token, err := install.ReadToken(paths.In(a.opts.Root, a.cfg.TokenFile))
		if err != nil {
			a.refused(statusfile.NotEnrolled, "bootstrap token: "+err.Error())
		} else {
			resp, err := enroll.Enroll(ctx, enroll.Request{Addr: addr, Pin: a.cfg.CAPin, Token: token,
				Facts: facts.Gather(a.opts.Root, a.cfg.Labels), Key: key})
			var pm *enroll.PinMismatchError
			var rf *enroll.RefusedError
			switch {
			case err == nil && resp.GetState() == kedgev1.EnrollState_ENROLL_STATE_ENROLLED:
				id, err := enroll.NewIdentity(key, resp.GetCertificatePem(), resp.GetCaBundlePem())
				if err != nil {
					a.refused(statusfile.NotEnrolled, "enrollment answer unusable: "+err.Error())
					break
				}
				if err := id.Save(a.opts.Root); err != nil {
					return nil, fmt.Errorf("store identity: %w", err)
				}
				for _, w := range resp.GetWarnings() {
					a.log.Warn("coordinator warning at enrollment", "warning", w)
				}
				a.log.Info("enrolled", "node", resp.GetNodeName(), "cluster", resp.GetCluster(), "coordinator", addr, "expires", id.Cert.NotAfter)
				a.contact(addr)
				a.status(func(s *statusfile.Status) {
					s.Enrollment, s.LastError, s.LastErrorAt = statusfile.Enrolled, "", time.Time{}
					s.NodeName, s.Cluster = resp.GetNodeName(), resp.GetCluster()
				})
				return id, nil
			case err == nil && resp.GetState() == kedgev1.EnrollState_ENROLL_STATE_PENDING_APPROVAL:
				a.contact(addr)
				a.status(func(s *statusfile.Status) {
					s.Enrollment, s.NodeName, s.Cluster = statusfile.PendingApproval, resp.GetNodeName(), resp.GetCluster()
					s.LastError, s.LastErrorAt = "", time.Time{}
				})
				a.limited.Info("pending", "waiting for an operator to approve this node (kedgectl node approve)", "node", resp.GetNodeName(), "coordinator", addr)
				wait = pending.Next
				b.Reset()
			case err == nil:
				a.refused(statusfile.NotEnrolled, fmt.Sprintf("coordinator answered enrollment with state %v", resp.GetState()))
			case errors.As(err, &pm):
				a.refused(statusfile.Refused, err.Error())
			case errors.As(err, &rf):
				a.contact(addr)
				a.refused(statusfile.Refused, err.Error())
			default:
				switch status.Code(err) {
				case codes.Unavailable, codes.DeadlineExceeded, codes.Unknown:
					a.refused(statusfile.NotEnrolled, "coordinator unreachable: "+err.Error())
				default: // e.g. ResourceExhausted: too many failed attempts from here
					a.refused(statusfile.NotEnrolled, "enrollment failed: "+errText(err))
				}
				wait = unreachable.Next
			}
		}
		if !backoff.SleepCtx(ctx, wait()) {
			return nil, ctx.Err()
		}
	}
}

// refused records why the node is not (yet) working with the coordinator,
// logging it at most once a minute unless the reason changes.
func (a *Agent) refused(state, reason string) {
	a.status(func(s *statusfile.Status) {
		s.Enrollment = state
		if s.LastError != reason {
			s.LastError, s.LastErrorAt = reason, time.Now().UTC().Truncate(time.Second)
		}
	})
	a.limited.Warn("refused", reason)
}

// dial opens a mutual-TLS connection to addr with the node identity.
func dial(addr string, id *enroll.Identity) (*grpc.ClientConn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	tlsCfg, err := id.TLSConfig(host)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
}

// sessions keeps a plan watch open against one coordinator after another,
// until ctx ends.
func (a *Agent) sessions(ctx context.Context, id *enroll.Identity) {
	b := backoff.Backoff{Min: a.opts.RetryMin, Max: a.opts.ReconnectMax}
	rejected := backoff.Backoff{Min: a.opts.RejectedMin, Max: a.opts.RejectedMax}
	addrIdx := 0
	for ctx.Err() == nil {
		if time.Now().After(id.Cert.NotAfter) {
			// Offline past its identity's lifetime: nothing accepts that
			// certificate any more, the bootstrap token is the only way back.
			reason := fmt.Sprintf("identity certificate expired at %s; enrolling again with the bootstrap token", id.Cert.NotAfter.UTC().Format(time.RFC3339))
			a.log.Error(reason)
			a.refused(statusfile.NotEnrolled, reason)
			nid, err := a.enroll(ctx)
			if err != nil {
				return
			}
			id = nid
			a.setIdentity(id)
		}
		addr := a.cfg.Coordinators[addrIdx%len(a.cfg.Coordinators)]
		conn, err := dial(addr, id)
		if err != nil {
			a.refused(statusfile.Enrolled, fmt.Sprintf("connect to %s: %v", addr, err))
			backoff.SleepCtx(ctx, b.Next())
			continue
		}
		client := kedgev1.NewNodeServiceClient(conn)
		sessCtx, cancel := context.WithCancel(ctx)
		a.mu.Lock()
		a.endSession = cancel
		a.mu.Unlock()
		renewed := make(chan *enroll.Identity, 1)
		go a.renewWhenDue(sessCtx, cancel, client, id, renewed)

		got, err := a.watch(sessCtx, client, addr)
		a.mu.Lock()
		if a.rejected != nil {
			// A report was rejected while the stream still looked fine.
			err, a.rejected = a.rejected, nil
		}
		a.mu.Unlock()
		cancel()
		a.setClient(nil)
		conn.Close()
		if got {
			b.Reset()
			rejected.Reset()
		}
		select {
		case nid := <-renewed:
			id = nid
			a.setIdentity(id)
			continue // reconnect at once with the new certificate
		default:
		}
		if ctx.Err() != nil {
			return
		}
		st, _ := status.FromError(err)
		switch st.Code() {
		case codes.Unauthenticated, codes.PermissionDenied:
			reason := "identity rejected by the coordinator: " + st.Message()
			a.status(func(s *statusfile.Status) {
				s.Enrollment = statusfile.Removed
				s.LastError, s.LastErrorAt = reason, time.Now().UTC().Truncate(time.Second)
			})
			d := rejected.Next()
			a.log.Error("the coordinator rejected this node's identity; the node keeps running what it last applied",
				"reason", st.Message(), "coordinator", addr, "retry_in", d.Round(time.Second),
				"fix", "re-enroll: remove "+paths.IdentityCert+" and restart kedge-nodeagent with a valid token")
			backoff.SleepCtx(ctx, d)
		default:
			addrIdx++ // the next coordinator may be up
			d := b.Next()
			a.refused(statusfile.Enrolled, fmt.Sprintf("plan watch on %s: %v", addr, errText(err)))
			a.log.Debug("retrying the plan watch", "retry_in", d.Round(time.Millisecond))
			backoff.SleepCtx(ctx, d)
		}
	}
}

func errText(err error) string {
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return err.Error()
}

// watch streams plans until the stream ends; it reports whether at least one
// message (or a clean start) was seen, to reset backoff.
func (a *Agent) watch(ctx context.Context, client kedgev1.NodeServiceClient, addr string) (bool, error) {
	a.mu.Lock()
	known := a.plan
	a.mu.Unlock()
	stream, err := client.WatchPlan(ctx, &kedgev1.WatchPlanRequest{KnownRevision: known.GetRevision(), KnownHash: known.GetHash()})
	if err != nil {
		return false, err
	}
	a.setClient(client)
	a.contact(addr)
	a.status(func(s *statusfile.Status) {
		if s.Enrollment != statusfile.PendingApproval {
			s.Enrollment = statusfile.Enrolled
		}
		s.LastError, s.LastErrorAt = "", time.Time{}
	})
	a.log.Info("watching the plan", "coordinator", addr, "known_revision", known.GetRevision())
	kick(a.reportKick)
	// A plan the coordinator does not resend (same hash) may still need the
	// client, e.g. for certificates missing at boot.
	kick(a.applyKick)
	for {
		resp, err := stream.Recv()
		if err != nil {
			return true, err
		}
		plan := resp.GetPlan()
		if plan == nil {
			continue
		}
		a.contact(addr)
		if err := saveCachedPlan(a.opts.Root, plan); err != nil {
			a.log.Warn("could not cache the plan; a reboot without the coordinator will not restore it", "path", paths.CachedPlan, "err", err)
		}
		a.log.Info("received plan", "hash", plan.GetHash(), "revision", plan.GetRevision(), "roles", plan.GetRoles(), "waiting", plan.GetWaiting())
		a.setPlan(plan)
		kick(a.applyKick)
	}
}

// renewWhenDue renews the identity at two thirds of its lifetime, then ends
// the session so it reconnects with the new certificate.
func (a *Agent) renewWhenDue(ctx context.Context, endSession context.CancelFunc, client kedgev1.NodeServiceClient, id *enroll.Identity, out chan<- *enroll.Identity) {
	if !backoff.SleepCtx(ctx, time.Until(id.RenewAt())) {
		return
	}
	b := backoff.Backoff{Min: a.opts.RetryMin, Max: a.opts.RetryMax}
	for {
		callCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		nid, err := enroll.Renew(callCtx, client, id)
		cancel()
		if err == nil {
			if err = nid.Save(a.opts.Root); err == nil {
				a.log.Info("renewed the node identity", "expires", nid.Cert.NotAfter)
				out <- nid
				endSession()
				return
			}
		}
		a.limited.Warn("renew", "identity renewal failed; retrying", "expires", id.Cert.NotAfter, "err", err)
		if !backoff.SleepCtx(ctx, b.Next()) {
			return
		}
	}
}

// applyLoop applies the latest plan whenever one arrives, retries failures
// with backoff, and re-applies periodically to repair drift.
func (a *Agent) applyLoop(ctx context.Context) {
	b := backoff.Backoff{Min: a.opts.RetryMin, Max: min(a.opts.RetryMax, 2*time.Minute)}
	timer := time.NewTimer(a.opts.Reapply)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.applyKick:
		case <-timer.C:
		}
		next := a.opts.Reapply
		if !a.applyOnce(ctx) {
			next = b.Next()
		} else {
			b.Reset()
		}
		timer.Reset(next)
	}
}

// applyOnce applies the current plan and records the outcome; it reports success.
func (a *Agent) applyOnce(ctx context.Context) bool {
	a.mu.Lock()
	plan := a.plan
	client := a.client
	a.mu.Unlock()
	if plan == nil {
		return true
	}
	_, err := a.applier.ApplyPlan(ctx, plan, client)
	if ctx.Err() != nil {
		return false // stopping: an interrupted apply is not a failure to report
	}
	var step, msg string
	if err != nil {
		step, msg = reconcile.AsStepError(err)
		a.limited.Warn("apply:"+msg, "applying the plan failed; will retry", "step", step, "err", msg, "hash", plan.GetHash())
	}
	a.mu.Lock()
	changed := a.appliedPlan != plan || a.applyErr != msg
	a.appliedPlan, a.applyErr, a.applyStep = plan, msg, step
	a.mu.Unlock()
	a.status(func(s *statusfile.Status) {
		s.PlanHash, s.PlanRevision, s.ApplyError, s.ApplyStep = plan.GetHash(), plan.GetRevision(), msg, step
		if err == nil {
			s.LastApplied = time.Now().UTC().Truncate(time.Second)
		}
	})
	if changed {
		kick(a.reportKick)
	}
	return err == nil
}

// reportLoop sends the status on every unit change, after every apply and as
// a heartbeat. A failed send is retried with the freshest status at the next
// trigger; apply never waits for it.
func (a *Agent) reportLoop(ctx context.Context) {
	ticker := time.NewTicker(a.cfg.HeartbeatInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-a.reportKick:
		case <-a.opts.Systemd.Changes():
		}
		a.reportOnce(ctx)
	}
}

func (a *Agent) reportOnce(ctx context.Context) {
	a.mu.Lock()
	in := report.Input{Root: a.opts.Root, Systemd: a.opts.Systemd, Probes: a.probes, Plan: a.appliedPlan, Target: a.plan,
		ApplyError: a.applyErr, ApplyStep: a.applyStep}
	if a.identity != nil {
		in.Identity = a.identity.Cert
	}
	client := a.client
	a.mu.Unlock()
	st, units := report.Build(ctx, in)
	a.status(func(s *statusfile.Status) { s.Units = units })
	if client == nil {
		return
	}
	callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := client.ReportStatus(callCtx, &kedgev1.ReportStatusRequest{Status: st}); err != nil {
		a.limited.Warn("report", "status report failed; the next one carries the latest status", "err", errText(err))
		if c := status.Code(err); c == codes.Unauthenticated || c == codes.PermissionDenied {
			a.mu.Lock()
			end := a.endSession
			a.rejected = err
			a.mu.Unlock()
			if end != nil {
				end()
			}
		}
		return
	}
	a.status(func(s *statusfile.Status) { s.LastContact = time.Now().UTC().Truncate(time.Second) })
	a.uploadKubeconfig(callCtx, client, in.Target, st)
}

// uploadKubeconfig sends K3s's admin kubeconfig once per content change,
// when this node is an active K3s server.
func (a *Agent) uploadKubeconfig(ctx context.Context, client kedgev1.NodeServiceClient, plan *kedgev1.Plan, st *kedgev1.NodeStatus) {
	if plan.GetK3S().GetRole() != kedgev1.Role_ROLE_K3S_SERVER {
		return
	}
	active := false
	for _, u := range st.GetUnits() {
		if u.GetName() == paths.K3sServerUnit && u.GetActiveState() == "active" {
			active = true
		}
	}
	if !active {
		return
	}
	if _, err := os.Stat(paths.In(a.opts.Root, paths.K3sKubeconfig)); err != nil {
		return
	}
	ip := plan.GetK3S().GetNodeIp()
	if ip == "" {
		return
	}
	kc, err := k3srole.Kubeconfig(a.opts.Root, "https://"+net.JoinHostPort(ip, "6443"))
	if err != nil {
		a.limited.Warn("kubeconfig:"+err.Error(), "could not read the K3s kubeconfig", "err", err)
		return
	}
	sum := sha256.Sum256(kc)
	a.mu.Lock()
	same := sum == a.kubeconfig
	a.mu.Unlock()
	if same {
		return
	}
	if _, err := client.UploadKubeconfig(ctx, &kedgev1.UploadKubeconfigRequest{Kubeconfig: kc}); err != nil {
		a.limited.Warn("kubeconfig-upload", "kubeconfig upload failed; retrying with the next report", "err", errText(err))
		return
	}
	a.mu.Lock()
	a.kubeconfig = sum
	a.mu.Unlock()
	a.log.Info("uploaded the K3s admin kubeconfig to the coordinator")
}

func loadCachedPlan(root string) (*kedgev1.Plan, error) {
	data, err := os.ReadFile(paths.In(root, paths.CachedPlan))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var p kedgev1.Plan
	if err := proto.Unmarshal(data, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// saveCachedPlan writes the plan 0600: it carries K3s tokens.
func saveCachedPlan(root string, plan *kedgev1.Plan) error {
	data, err := proto.Marshal(plan)
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(paths.In(root, paths.CachedPlan), data, 0o600)
}
