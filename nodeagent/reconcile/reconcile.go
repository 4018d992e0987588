// Package reconcile makes a machine match a desired.State: it writes only the
// files and units whose content changed (atomically, with their modes),
// reloads systemd only when a unit file changed, restarts a unit only when one
// of its inputs changed, starts and enables what must run, and stops, disables
// and removes the kedge units a plan dropped. Applying the same state twice
// does nothing the second time.
package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/kedge-io/kedge/internal/atomicfile"
	"github.com/kedge-io/kedge/nodeagent/desired"
	"github.com/kedge-io/kedge/nodeagent/paths"
	"github.com/kedge-io/kedge/nodeagent/sysd"
)

// ManagedUnits are the units kedge installs for roles; only these are ever
// stopped or removed when a plan drops them.
var ManagedUnits = []string{paths.EtcdUnit, paths.K3sServerUnit, paths.K3sAgentUnit}

// Steps of an apply, as reported to the coordinator.
const (
	StepWriteFiles = "write files"
	StepWriteUnits = "write units"
	StepReload     = "systemd daemon-reload"
	StepDropUnits  = "stop dropped units"
	StepEnable     = "enable units"
	StepStart      = "start units"
	StepState      = "record applied state"
)

// StepError is an apply failure with the step (and file or unit) that failed.
type StepError struct {
	Step string
	// Path is the file or unit concerned, if any.
	Path string
	Err  error
}

func (e *StepError) Error() string {
	if e.Path != "" {
		return fmt.Sprintf("%s: %s: %v", e.Step, e.Path, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Step, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// Result says what an apply did.
type Result struct {
	Written   []string
	Removed   []string
	Reloaded  bool
	Started   []string
	Restarted []string
	Stopped   []string
}

// Changed reports whether the apply touched anything.
func (r Result) Changed() bool {
	return len(r.Written)+len(r.Removed)+len(r.Started)+len(r.Restarted)+len(r.Stopped) > 0 || r.Reloaded
}

// applied is /var/lib/kedge/applied.json: content hashes of what the last
// successful apply wrote, and restarts still owed after a failed one (a file
// written before a later step failed would otherwise look unchanged next time
// and its unit would never restart).
type applied struct {
	Files           map[string]string `json:"files"`
	Units           map[string]string `json:"units"`
	PendingRestarts []string          `json:"pendingRestarts,omitempty"`
	// ReloadPending: a unit file was written but daemon-reload never ran.
	ReloadPending bool `json:"reloadPending,omitempty"`
}

// DefaultJobTimeout is how long Apply waits for one start or restart job.
const DefaultJobTimeout = time.Minute

// Reconciler applies desired states under Root through Systemd.
type Reconciler struct {
	Root    string
	Systemd sysd.Conn
	Log     *slog.Logger
	// JobTimeout bounds the wait for a start/restart job (0: DefaultJobTimeout).
	// Type=notify units with TimeoutStartSec=0 (etcd waiting for quorum, K3s
	// waiting for its datastore) may take arbitrarily long; past this the job
	// keeps running in systemd, Apply moves on and the report shows
	// "activating" until the unit is up.
	JobTimeout time.Duration
}

// job runs a start or restart and waits at most JobTimeout for it.
func (r *Reconciler) job(ctx context.Context, f func(context.Context, string) error, unit string) error {
	timeout := r.JobTimeout
	if timeout == 0 {
		timeout = DefaultJobTimeout
	}
	jctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := f(jctx, unit)
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		r.Log.Info("unit is still starting; not waiting for it any longer", "unit", unit, "waited", timeout)
		return nil
	}
	return err
}

func hash(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// diskHash is the hash of the file at p, "" if it is missing or unreadable.
func diskHash(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return hash(b)
}

func (r *Reconciler) loadApplied() applied {
	a := applied{Files: map[string]string{}, Units: map[string]string{}}
	if data, err := os.ReadFile(paths.In(r.Root, paths.AppliedState)); err == nil {
		if err := json.Unmarshal(data, &a); err != nil {
			r.Log.Warn("ignoring unreadable applied state; every file and unit counts as changed", "path", paths.AppliedState, "err", err)
			a = applied{}
		}
	}
	if a.Files == nil {
		a.Files = map[string]string{}
	}
	if a.Units == nil {
		a.Units = map[string]string{}
	}
	return a
}

func (r *Reconciler) saveApplied(a applied) error {
	sort.Strings(a.PendingRestarts)
	data, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	p := paths.In(r.Root, paths.AppliedState)
	if diskHash(p) == hash(data) {
		return nil
	}
	return atomicfile.WriteFile(p, data, 0o600)
}

func unitPath(name string) string { return filepath.Join(paths.SystemdUnitDir, name) }

// Apply makes the machine match st. extraRestarts names units whose inputs
// changed outside st (a new binary, new certificates).
func (r *Reconciler) Apply(ctx context.Context, st desired.State, extraRestarts []string) (Result, error) {
	var res Result
	prev := r.loadApplied()
	next := applied{Files: map[string]string{}, Units: map[string]string{}}

	pending := map[string]bool{}
	for _, u := range append(prev.PendingRestarts, extraRestarts...) {
		pending[u] = true
	}
	needReload := prev.ReloadPending
	// On failure, record the hashes of what was written or found right, and
	// the restarts and reload still owed, so the next apply neither rewrites
	// nor forgets them, and restarts nothing that is already up to date.
	fail := func(step, path string, err error) (Result, error) {
		keep := applied{Files: merged(prev.Files, next.Files), Units: merged(prev.Units, next.Units),
			ReloadPending: needReload && !res.Reloaded}
		for u := range pending {
			keep.PendingRestarts = append(keep.PendingRestarts, u)
		}
		if serr := r.saveApplied(keep); serr != nil {
			r.Log.Warn("could not record pending restarts", "err", serr)
		}
		return res, &StepError{Step: step, Path: path, Err: err}
	}

	if err := validate(st); err != nil {
		return fail(StepWriteFiles, "", err)
	}
	// Check every target first so a directory sitting where a file belongs
	// fails the apply before anything is written.
	for _, f := range st.Files {
		if fi, err := os.Lstat(paths.In(r.Root, f.Path)); err == nil && fi.IsDir() {
			return fail(StepWriteFiles, f.Path, errors.New("is a directory; remove it so the file can be written"))
		}
	}

	for _, f := range st.Files {
		full := paths.In(r.Root, f.Path)
		h := hash(f.Content)
		onDisk := diskHash(full)
		if onDisk != h {
			if err := atomicfile.WriteFile(full, f.Content, f.Mode); err != nil {
				return fail(StepWriteFiles, f.Path, err)
			}
			res.Written = append(res.Written, f.Path)
		} else if fi, err := os.Stat(full); err == nil && fi.Mode().Perm() != f.Mode.Perm() {
			if err := os.Chmod(full, f.Mode.Perm()); err != nil {
				return fail(StepWriteFiles, f.Path, err)
			}
		}
		if onDisk != h || prev.Files[f.Path] != h {
			for _, u := range f.Restarts {
				pending[u] = true
			}
		}
		next.Files[f.Path] = h
	}

	for _, u := range st.Units {
		full := paths.In(r.Root, unitPath(u.Name))
		h := hash(u.Content)
		onDisk := diskHash(full)
		if onDisk != h {
			if err := atomicfile.WriteFile(full, u.Content, 0o644); err != nil {
				return fail(StepWriteUnits, unitPath(u.Name), err)
			}
			res.Written = append(res.Written, unitPath(u.Name))
		}
		if onDisk != h || prev.Units[u.Name] != h {
			needReload = true
			pending[u.Name] = true
		}
		next.Units[u.Name] = h
	}

	// Units kedge manages that the state no longer wants: stop, disable, remove.
	for _, name := range ManagedUnits {
		if slices.ContainsFunc(st.Units, func(u desired.Unit) bool { return u.Name == name }) {
			continue
		}
		delete(pending, name)
		full := paths.In(r.Root, unitPath(name))
		_, onDisk := os.Lstat(full)
		if _, was := prev.Units[name]; !was && onDisk != nil {
			continue
		}
		state, err := r.Systemd.State(ctx, name)
		if err != nil {
			return fail(StepDropUnits, name, err)
		}
		if state.Running() {
			if err := r.Systemd.Stop(ctx, name); err != nil {
				return fail(StepDropUnits, name, err)
			}
			res.Stopped = append(res.Stopped, name)
		}
		if state.Enabled() {
			if err := r.Systemd.Disable(ctx, name); err != nil {
				return fail(StepDropUnits, name, err)
			}
		}
		if onDisk == nil {
			if err := os.Remove(full); err != nil {
				return fail(StepDropUnits, unitPath(name), err)
			}
			res.Removed = append(res.Removed, unitPath(name))
			needReload = true
		}
	}

	if needReload {
		if err := r.Systemd.Reload(ctx); err != nil {
			return fail(StepReload, "", err)
		}
		res.Reloaded = true
	}

	for _, u := range st.Units {
		state, err := r.Systemd.State(ctx, u.Name)
		if err != nil {
			return fail(StepStart, u.Name, err)
		}
		switch {
		case u.Enable && !state.Enabled():
			if err := r.Systemd.Enable(ctx, u.Name); err != nil {
				return fail(StepEnable, u.Name, err)
			}
		case !u.Enable && state.Enabled():
			if err := r.Systemd.Disable(ctx, u.Name); err != nil {
				return fail(StepEnable, u.Name, err)
			}
		}
		switch {
		case !u.Start:
			delete(pending, u.Name)
			if state.Running() {
				if err := r.Systemd.Stop(ctx, u.Name); err != nil {
					return fail(StepStart, u.Name, err)
				}
				res.Stopped = append(res.Stopped, u.Name)
			}
		case pending[u.Name] && state.Running():
			if err := r.job(ctx, r.Systemd.Restart, u.Name); err != nil {
				delete(pending, u.Name) // systemd did restart it; it failed on its own
				return fail(StepStart, u.Name, err)
			}
			delete(pending, u.Name)
			res.Restarted = append(res.Restarted, u.Name)
		case !state.Running():
			delete(pending, u.Name)
			if err := r.job(ctx, r.Systemd.Start, u.Name); err != nil {
				return fail(StepStart, u.Name, err)
			}
			res.Started = append(res.Started, u.Name)
		default:
			delete(pending, u.Name)
		}
	}

	// Restarts owed to units the state does not run are moot.
	next.PendingRestarts = nil
	if err := r.saveApplied(next); err != nil {
		return res, &StepError{Step: StepState, Path: paths.AppliedState, Err: err}
	}
	if res.Changed() {
		r.Log.Info("applied changes", "written", res.Written, "removed", res.Removed, "started", res.Started,
			"restarted", res.Restarted, "stopped", res.Stopped, "reloaded", res.Reloaded)
	}
	return res, nil
}

// merged is a copy of a overlaid with b.
func merged(a, b map[string]string) map[string]string {
	out := make(map[string]string, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func validate(st desired.State) error {
	seen := map[string]bool{}
	for _, f := range st.Files {
		if !filepath.IsAbs(f.Path) || filepath.Clean(f.Path) != f.Path {
			return fmt.Errorf("file path %q must be absolute and clean", f.Path)
		}
		if seen[f.Path] {
			return fmt.Errorf("file %s is wanted twice", f.Path)
		}
		seen[f.Path] = true
	}
	for _, u := range st.Units {
		if u.Name == "" || filepath.Base(u.Name) != u.Name {
			return fmt.Errorf("unit name %q is not a plain unit name", u.Name)
		}
		if seen["unit:"+u.Name] {
			return fmt.Errorf("unit %s is wanted twice", u.Name)
		}
		seen["unit:"+u.Name] = true
	}
	return nil
}
