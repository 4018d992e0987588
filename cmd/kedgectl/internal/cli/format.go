package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// printJSON writes m as indented protojson. Unpopulated fields are emitted
// so scripts see 0 and "" rather than a missing key.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

// table writes aligned columns; call row per line, then flush.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer, header ...string) *table {
	t := &table{tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
	t.row(header...)
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		// A tab or newline inside a cell would break the columns.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cells[i])
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

func roleName(r kedgev1.Role) string {
	switch r {
	case kedgev1.Role_ROLE_ETCD:
		return "etcd"
	case kedgev1.Role_ROLE_K3S_SERVER:
		return "server"
	case kedgev1.Role_ROLE_K3S_AGENT:
		return "agent"
	}
	return "none"
}

func roleNames(rs []kedgev1.Role) string {
	var names []string
	for _, r := range rs {
		names = append(names, roleName(r))
	}
	return strings.Join(names, ",")
}

// enumWord turns NODE_CONDITION_READY into "Ready".
func enumWord(name, prefix string) string {
	w := strings.TrimPrefix(name, prefix)
	if w == "UNSPECIFIED" || w == "" {
		return "Unknown"
	}
	parts := strings.Split(strings.ToLower(w), "_")
	for i, p := range parts {
		if p != "" {
			parts[i] = strings.ToUpper(p[:1]) + p[1:]
		}
	}
	return strings.Join(parts, "")
}

func conditionName(c kedgev1.NodeCondition) string { return enumWord(c.String(), "NODE_CONDITION_") }
func phaseName(p kedgev1.ClusterPhase) string      { return enumWord(p.String(), "CLUSTER_PHASE_") }

// stateName turns NODE_STATE_PENDING_APPROVAL into "pending-approval".
func stateName(s kedgev1.NodeState) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), "NODE_STATE_")), "_", "-")
}

// eventTypeName turns EVENT_TYPE_NODE_ENROLLED into "node-enrolled": one
// word, so `awk '{print $2}'` works on `kedgectl events`.
func eventTypeName(t kedgev1.EventType) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(t.String(), "EVENT_TYPE_")), "_", "-")
}

func timestamp(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// ago is a relative past time: "4s ago", "never".
func (s *session) ago(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "never"
	}
	d := s.env.Now().Sub(ts.AsTime())
	if d < 0 {
		d = 0
	}
	return shortDuration(d) + " ago"
}

// until is a relative future time for expiries: "in 23h59m", "expired 2h ago".
func (s *session) until(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "never"
	}
	d := ts.AsTime().Sub(s.env.Now())
	if d <= 0 {
		return "expired " + shortDuration(-d) + " ago"
	}
	return "in " + shortDuration(d)
}

// shortDuration keeps the two largest units: 2d3h, 3h5m, 5m3s, 4s.
func shortDuration(d time.Duration) string {
	d = d.Round(time.Second)
	day := 24 * time.Hour
	switch {
	case d >= day:
		return fmt.Sprintf("%dd%dh", d/day, (d%day)/time.Hour)
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", d/time.Hour, (d%time.Hour)/time.Minute)
	case d >= time.Minute:
		return fmt.Sprintf("%dm%ds", d/time.Minute, (d%time.Minute)/time.Second)
	}
	return fmt.Sprintf("%ds", d/time.Second)
}

// shortHash keeps enough of a plan hash to tell plans apart at a glance.
func shortHash(h string) string {
	if h == "" {
		return "none"
	}
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// unitsSummary is "kedge-etcd:active k3s:failed(exit-code)".
func unitsSummary(st *kedgev1.NodeStatus) string {
	var parts []string
	for _, u := range st.GetUnits() {
		s := strings.TrimSuffix(u.GetName(), ".service") + ":" + u.GetActiveState()
		if r := u.GetResult(); r != "" && r != "success" {
			s += "(" + r + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, " ")
}

// nodeReason is the one thing a person should read about a node: its
// condition reason, else an apply error, else what it is waiting for.
func nodeReason(n *kedgev1.Node) string {
	if r := n.GetConditionReason(); r != "" {
		return r
	}
	if e := n.GetStatus().GetApplyError(); e != "" {
		if step := n.GetStatus().GetApplyStep(); step != "" {
			return step + ": " + e
		}
		return e
	}
	return n.GetStatus().GetWaiting()
}
