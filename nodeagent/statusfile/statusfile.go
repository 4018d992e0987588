// Package statusfile keeps what the node agent believes (identity, enrollment,
// plan, units, last contact) in /var/lib/kedge/status.json, so
// `kedge-nodeagent status` can answer on the node even when the agent is
// stuck or the coordinator is gone. It holds no secrets.
package statusfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/kedge-io/kedge/internal/atomicfile"
	"github.com/kedge-io/kedge/nodeagent/paths"
)

// Enrollment states.
const (
	NotEnrolled     = "not enrolled"
	PendingApproval = "pending approval"
	Enrolled        = "enrolled"
	Refused         = "refused"
	Removed         = "removed"
)

// Unit is one managed unit as systemd last reported it.
type Unit struct {
	Name        string    `json:"name"`
	ActiveState string    `json:"activeState"`
	SubState    string    `json:"subState"`
	Result      string    `json:"result,omitempty"`
	NRestarts   uint32    `json:"nRestarts,omitempty"`
	Since       time.Time `json:"since,omitzero"`
}

// Status is the file's content.
type Status struct {
	NodeName         string    `json:"nodeName,omitempty"`
	Cluster          string    `json:"cluster,omitempty"`
	IdentityNotAfter time.Time `json:"identityNotAfter,omitzero"`
	Enrollment       string    `json:"enrollment"`
	// LastError is the latest refusal or connection problem, e.g.
	// "enrollment refused: token expired at ...".
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
	// PlanHash and PlanRevision are the plan whose apply last finished;
	// TargetPlanHash is the newest plan received, maybe still being applied.
	PlanHash       string    `json:"planHash,omitempty"`
	TargetPlanHash string    `json:"targetPlanHash,omitempty"`
	PlanRevision   uint64    `json:"planRevision,omitempty"`
	PlanWaiting    string    `json:"planWaiting,omitempty"`
	ApplyError     string    `json:"applyError,omitempty"`
	ApplyStep      string    `json:"applyStep,omitempty"`
	LastApplied    time.Time `json:"lastApplied,omitzero"`
	Units          []Unit    `json:"units,omitempty"`
	Coordinator    string    `json:"coordinator,omitempty"`
	LastContact    time.Time `json:"lastContact,omitzero"`
	AgentVersion   string    `json:"agentVersion,omitempty"`
	UpdatedAt      time.Time `json:"updatedAt,omitzero"`
}

// Read loads the status file under root.
func Read(root string) (*Status, error) {
	data, err := os.ReadFile(paths.In(root, paths.AgentStatus))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no status file at %s: the agent has not run yet (systemctl status kedge-nodeagent)", paths.AgentStatus)
	}
	if err != nil {
		return nil, err
	}
	var s Status
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", paths.AgentStatus, err)
	}
	return &s, nil
}

// Tracker holds the agent's current Status and writes the file whenever it
// changes. Safe for concurrent use.
type Tracker struct {
	root string
	mu   sync.Mutex // guards s and last
	s    Status
	last []byte
}

// NewTracker starts from the file already on disk, if any, so `status` keeps
// showing e.g. the node name while the agent restarts.
func NewTracker(root string) *Tracker {
	t := &Tracker{root: root, s: Status{Enrollment: NotEnrolled}}
	if s, err := Read(root); err == nil {
		t.s = *s
	}
	return t
}

// Update applies fn to the status and writes the file if anything changed.
func (t *Tracker) Update(fn func(*Status)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	fn(&t.s)
	probe := t.s
	probe.UpdatedAt = time.Time{}
	data, err := json.Marshal(probe)
	if err != nil {
		return err
	}
	if bytes.Equal(data, t.last) {
		return nil
	}
	t.last = data
	t.s.UpdatedAt = time.Now().UTC()
	out, err := json.MarshalIndent(t.s, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(paths.In(t.root, paths.AgentStatus), append(out, '\n'), 0o600)
}

// Get returns a copy of the current status.
func (t *Tracker) Get() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.s
	s.Units = append([]Unit(nil), t.s.Units...)
	return s
}

// Print writes s for a person.
func Print(w io.Writer, s *Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return fmt.Sprintf("%s (%s ago)", t.Local().Format(time.RFC3339), now.Sub(t).Round(time.Second))
	}
	row("Node", orDash(s.NodeName))
	row("Cluster", orDash(s.Cluster))
	row("Enrollment", orDash(s.Enrollment))
	if !s.IdentityNotAfter.IsZero() {
		row("Identity expires", s.IdentityNotAfter.Local().Format(time.RFC3339))
	}
	if s.LastError != "" {
		row("Last error", fmt.Sprintf("%s (%s)", s.LastError, ago(s.LastErrorAt)))
	}
	row("Coordinator", orDash(s.Coordinator))
	row("Last contact", ago(s.LastContact))
	if s.PlanHash != "" {
		row("Plan", fmt.Sprintf("%s (revision %d)", s.PlanHash, s.PlanRevision))
	} else {
		row("Plan", "none yet")
	}
	if s.TargetPlanHash != "" && s.TargetPlanHash != s.PlanHash {
		row("Applying", s.TargetPlanHash)
	}
	if s.PlanWaiting != "" {
		row("Waiting", s.PlanWaiting)
	}
	if s.ApplyError != "" {
		row("Apply error", fmt.Sprintf("%s: %s", s.ApplyStep, s.ApplyError))
	} else if !s.LastApplied.IsZero() {
		row("Last applied", ago(s.LastApplied))
	}
	row("Agent version", orDash(s.AgentVersion))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(s.Units) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "UNIT\tACTIVE\tSUB\tRESULT\tRESTARTS\tSINCE")
		for _, u := range s.Units {
			since := "-"
			if !u.Since.IsZero() {
				since = u.Since.Local().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", u.Name, u.ActiveState, u.SubState, orDash(u.Result), u.NRestarts, since)
		}
		return tw.Flush()
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Show is `kedge-nodeagent status`: the status file under root, as text or json.
func Show(w io.Writer, root, format string) error {
	if format != "text" && format != "json" {
		return fmt.Errorf("-o %q: want text or json", format)
	}
	s, err := Read(root)
	if err != nil {
		return err
	}
	if format == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	return Print(w, s, time.Now())
}
