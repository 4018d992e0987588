package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

var phases = []kedgev1.ClusterPhase{
	kedgev1.ClusterPhase_CLUSTER_PHASE_PROVISIONING,
	kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY,
	kedgev1.ClusterPhase_CLUSTER_PHASE_DEGRADED,
	kedgev1.ClusterPhase_CLUSTER_PHASE_DOWN,
}

func parsePhase(s string) (kedgev1.ClusterPhase, error) {
	var names []string
	for _, p := range phases {
		if strings.EqualFold(phaseName(p), s) {
			return p, nil
		}
		names = append(names, phaseName(p))
	}
	return 0, usagef("status: --wait %q is not a phase; use one of %s", s, strings.Join(names, ", "))
}

func clusterStatus(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("status")
	wait := fs.String("wait", "", "poll until the cluster reaches `PHASE` (Provisioning, Healthy, Degraded, Down)")
	timeout := fs.Duration("timeout", 10*time.Minute, "with --wait: give up after this long (exit code 3)")
	pos, err := s.parse(fs, args, 0, 1, "")
	if err != nil {
		return err
	}
	req := &kedgev1.GetClusterStatusRequest{}
	if len(pos) == 1 {
		req.Cluster = pos[0]
	}
	var resp *kedgev1.GetClusterStatusResponse
	if *wait == "" {
		resp, err = call(ctx, s, "status", kedgev1.AdminServiceClient.GetClusterStatus, req)
	} else {
		var want kedgev1.ClusterPhase
		if want, err = parsePhase(*wait); err != nil {
			return err
		}
		if *timeout <= 0 {
			return usagef("status: --timeout %s must be positive, e.g. --timeout 10m", *timeout)
		}
		resp, err = s.waitForPhase(ctx, req, want, *timeout)
	}
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	return s.printStatus(resp.GetStatus())
}

func (s *session) printStatus(st *kedgev1.ClusterStatus) error {
	w := s.env.Stdout
	phase := phaseName(st.GetPhase())
	if st.GetReason() != "" {
		phase += " (" + st.GetReason() + ")"
	}
	head := newTable(w, "Cluster:", st.GetCluster())
	head.row("Phase:", phase)
	head.row("etcd:", etcdSummary(st.GetEtcd()))
	head.row("Servers:", fmt.Sprintf("%d/%d active", st.GetServersActive(), st.GetServersPlanned()))
	head.row("Agents:", fmt.Sprintf("%d/%d active", st.GetAgentsActive(), st.GetAgentsPlanned()))
	if err := head.flush(); err != nil {
		return err
	}
	if len(st.GetNodes()) == 0 {
		_, err := fmt.Fprintln(w, "\nNo nodes enrolled.")
		return err
	}
	fmt.Fprintln(w)
	t := newTable(w, "NAME", "ROLES", "CONDITION", "UNITS", "REASON")
	for _, n := range st.GetNodes() {
		t.row(n.GetName(), roleNames(n.GetRoles()), conditionName(n.GetCondition()), unitsSummary(n.GetStatus()), nodeReason(n))
	}
	return t.flush()
}

// etcdSummary is "2/3 healthy, leader nuc1" or "1/3 healthy, NO QUORUM".
func etcdSummary(q *kedgev1.EtcdQuorum) string {
	if q.GetTotal() == 0 {
		return "none planned"
	}
	out := fmt.Sprintf("%d/%d healthy", q.GetHealthy(), q.GetTotal())
	if q.GetLeader() != "" {
		out += ", leader " + q.GetLeader()
	} else {
		out += ", no leader"
	}
	if !q.GetHasQuorum() {
		out += ", NO QUORUM"
	}
	return out
}

// progressLine is the one-line summary `status --wait` shows while waiting.
func progressLine(st *kedgev1.ClusterStatus) string {
	line := phaseName(st.GetPhase())
	if st.GetReason() != "" {
		line += ": " + st.GetReason()
	}
	return fmt.Sprintf("%s | etcd %d/%d | servers %d/%d | agents %d/%d", line,
		st.GetEtcd().GetHealthy(), st.GetEtcd().GetTotal(),
		st.GetServersActive(), st.GetServersPlanned(), st.GetAgentsActive(), st.GetAgentsPlanned())
}

// waitForPhase polls until the cluster is in want. An unreachable
// coordinator is waited out (it may be restarting); any other error ends the
// wait at once.
func (s *session) waitForPhase(ctx context.Context, req *kedgev1.GetClusterStatusRequest, want kedgev1.ClusterPhase, timeout time.Duration) (*kedgev1.GetClusterStatusResponse, error) {
	c, err := s.client()
	if err != nil {
		return nil, err
	}
	interval := s.env.PollInterval
	if interval <= 0 {
		interval = time.Second
	}
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	p := &progress{w: s.env.Stderr, terminal: s.env.StderrIsTerminal}
	defer p.done()
	start := s.env.Now()
	var lastSeen, lastErr string
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		callCtx, callCancel := context.WithTimeout(ctx, rpcTimeout)
		resp, err := c.GetClusterStatus(callCtx, req)
		callCancel()
		switch {
		case err == nil:
			lastSeen, lastErr = progressLine(resp.GetStatus()), ""
			if resp.GetStatus().GetPhase() == want {
				p.show(lastSeen, "")
				return resp, nil
			}
			p.show(lastSeen, shortDuration(s.env.Now().Sub(start)))
		case ctx.Err() != nil || (status.Code(err) == codes.DeadlineExceeded && time.Until(deadline) < time.Second):
			// The wait's own deadline cut the call short (the server may
			// answer DeadlineExceeded just before our context ends); reported below.
		case retryable(err):
			lastErr = status.Convert(err).Message()
			p.show("coordinator unavailable: "+lastErr, shortDuration(s.env.Now().Sub(start)))
		default:
			return nil, s.rpcErr("status", err)
		}
		select {
		case <-ctx.Done():
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return nil, errors.New("status --wait: interrupted")
			}
			msg := fmt.Sprintf("status --wait: timed out after %s waiting for phase %s", timeout, phaseName(want))
			if lastSeen != "" {
				msg += "; last seen: " + lastSeen
			}
			if lastErr != "" {
				msg += "; last error: " + lastErr
			}
			return nil, timeoutError{msg}
		case <-tick.C:
		}
	}
}

func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// progress draws the waiting line: redrawn in place on a terminal, one line
// per change otherwise (logs and CI keep a readable history).
type progress struct {
	w        io.Writer
	terminal bool
	last     string
	drawn    bool
}

func (p *progress) show(line, elapsed string) {
	if p.terminal {
		if elapsed != "" {
			line += " | " + elapsed
		}
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.drawn = true
		return
	}
	if line != p.last {
		fmt.Fprintln(p.w, line)
		p.last = line
	}
}

func (p *progress) done() {
	if p.terminal && p.drawn {
		fmt.Fprintln(p.w)
	}
}
