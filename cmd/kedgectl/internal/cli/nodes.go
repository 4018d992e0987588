package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// labelled is "label value", or "" when value is empty.
func labelled(label, value string) string {
	if value == "" {
		return ""
	}
	return label + " " + value
}

// joinSet joins the non-empty parts with ", ".
func joinSet(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, ", ")
}

func nodesList(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("nodes")
	cluster := fs.String("cluster", "", "only this cluster's nodes")
	if _, err := s.parse(fs, args, 0, 0, ""); err != nil {
		return err
	}
	resp, err := call(ctx, s, "nodes", kedgev1.AdminServiceClient.ListNodes, &kedgev1.ListNodesRequest{Cluster: *cluster})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	t := newTable(s.env.Stdout, "NAME", "CLUSTER", "STATE", "ROLES", "IP", "CONDITION", "LAST SEEN", "REASON")
	for _, n := range resp.GetNodes() {
		t.row(n.GetName(), n.GetCluster(), stateName(n.GetState()), roleNames(n.GetRoles()), n.GetNodeIp(),
			conditionName(n.GetCondition()), s.ago(n.GetLastSeen()), nodeReason(n))
	}
	return t.flush()
}

func nodeGet(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("node get")
	pos, err := s.parse(fs, args, 1, 1, "node NAME")
	if err != nil {
		return err
	}
	resp, err := call(ctx, s, "node get "+pos[0], kedgev1.AdminServiceClient.GetNode, &kedgev1.GetNodeRequest{Name: pos[0]})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	n, plan, st := resp.GetNode(), resp.GetPlan(), resp.GetNode().GetStatus()
	f := n.GetFacts()
	rows := [][2]string{
		{"Name:", n.GetName()},
		{"Cluster:", n.GetCluster()},
		{"State:", stateName(n.GetState())},
		{"Roles:", roleNames(n.GetRoles())},
		{"IP:", joinSet(n.GetNodeIp(), labelled("enrolled from", n.GetObservedAddress()))},
		{"Condition:", conditionName(n.GetCondition())},
		{"Reason:", nodeReason(n)},
		{"Last seen:", s.ago(n.GetLastSeen())},
		{"Enrolled:", joinSet(timestamp(n.GetEnrolledAt()), labelled("token", n.GetTokenId()), fmt.Sprintf("order %d", n.GetEnrollSequence()))},
		{"Plan:", fmt.Sprintf("hash %s, revision %d", shortHash(n.GetPlanHash()), n.GetPlanRevision())},
		{"Plan waiting:", plan.GetWaiting()},
		{"Node applied:", fmt.Sprintf("hash %s, revision %d", shortHash(st.GetPlanHash()), st.GetPlanRevision())},
		{"Apply error:", joinSet(st.GetApplyStep(), st.GetApplyError())},
	}
	if e := st.GetEtcd(); e != nil {
		etcd := "healthy"
		if !e.GetHealthy() {
			etcd = "unhealthy: " + e.GetError()
		}
		if e.GetIsLeader() {
			etcd += ", leader"
		}
		rows = append(rows, [2]string{"etcd member:", etcd})
	}
	if k := st.GetK3S(); k != nil {
		k3s := "ready"
		if !k.GetReady() {
			k3s = "not ready: " + k.GetError()
		}
		rows = append(rows, [2]string{"K3s:", k3s})
	}
	rows = append(rows,
		[2]string{"Facts:", joinSet(labelled("hostname", f.GetHostname()), labelled("machine-id", f.GetMachineId()),
			labelled("serial", f.GetDmiProductSerial()), labelled("uuid", f.GetDmiProductUuid()))},
		[2]string{"", joinSet(labelled("macs", strings.Join(f.GetMacs(), ",")), labelled("ips", strings.Join(f.GetIps(), ",")),
			strings.Trim(f.GetOs()+"/"+f.GetArch(), "/"))},
		[2]string{"Agent:", st.GetAgentVersion()},
	)
	for i, w := range n.GetWarnings() {
		label := ""
		if i == 0 {
			label = "Warnings:"
		}
		rows = append(rows, [2]string{label, w})
	}
	t := tabwriter.NewWriter(s.env.Stdout, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		if r[1] != "" {
			fmt.Fprintf(t, "%s\t%s\n", r[0], r[1])
		}
	}
	if err := t.Flush(); err != nil {
		return err
	}
	if len(st.GetUnits()) == 0 {
		_, err = fmt.Fprintln(s.env.Stdout, "\nUnits: none reported")
		return err
	}
	fmt.Fprintln(s.env.Stdout, "\nUnits:")
	u := newTable(s.env.Stdout, "UNIT", "ACTIVE", "SUB", "RESULT", "RESTARTS", "SINCE")
	for _, unit := range st.GetUnits() {
		u.row(unit.GetName(), unit.GetActiveState(), unit.GetSubState(), unit.GetResult(), fmt.Sprint(unit.GetNRestarts()), s.ago(unit.GetSince()))
	}
	return u.flush()
}

func nodeApprove(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("node approve")
	pos, err := s.parse(fs, args, 1, 1, "node NAME")
	if err != nil {
		return err
	}
	resp, err := call(ctx, s, "node approve "+pos[0], kedgev1.AdminServiceClient.ApproveNode, &kedgev1.ApproveNodeRequest{Name: pos[0]})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	_, err = fmt.Fprintf(s.env.Stdout, "node %s approved (state %s)\n", pos[0], stateName(resp.GetNode().GetState()))
	return err
}

func nodeRemove(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("node remove")
	force := fs.Bool("force", false, "remove even if the node's etcd member leaving would lose quorum")
	pos, err := s.parse(fs, args, 1, 1, "node NAME")
	if err != nil {
		return err
	}
	if *force {
		fmt.Fprintf(s.env.Stderr, "kedgectl: warning: --force removes %s even if its etcd member leaving loses quorum; "+
			"then etcd, and every K3s server using it, stops accepting writes until enough members are back\n", pos[0])
	}
	resp, err := call(ctx, s, "node remove "+pos[0], kedgev1.AdminServiceClient.RemoveNode, &kedgev1.RemoveNodeRequest{Name: pos[0], Force: *force})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	_, err = fmt.Fprintf(s.env.Stdout, "node %s removed\n", pos[0])
	return err
}

func enrollmentsRefused(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("enrollments refused")
	if _, err := s.parse(fs, args, 0, 0, ""); err != nil {
		return err
	}
	resp, err := call(ctx, s, "enrollments refused", kedgev1.AdminServiceClient.ListRefusedEnrollments, &kedgev1.ListRefusedEnrollmentsRequest{})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	t := newTable(s.env.Stdout, "TIME", "ADDRESS", "TOKEN ID", "HOSTNAME", "REASON")
	for _, r := range resp.GetRefused() {
		t.row(timestamp(r.GetAt()), r.GetAddress(), r.GetTokenId(), r.GetHostname(), r.GetReason())
	}
	return t.flush()
}
