package sysd

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Fake is an in-memory systemd for tests: units become active on start,
// inactive on stop; every call is recorded as "verb unit" in Calls.
type Fake struct {
	mu       sync.Mutex // guards everything below
	units    map[string]*UnitState
	calls    []string
	hostname string
	// FailStart makes Start and Restart of the named unit fail with job result "failed".
	FailStart map[string]bool
	// Slow units never finish starting: Start and Restart leave them
	// "activating" and wait until their context ends, like a Type=notify
	// unit that has not notified.
	Slow map[string]bool
	// HostnameErr, when set, is what SetStaticHostname returns.
	HostnameErr error
	changes     chan string
}

// NewFake returns an empty fake systemd.
func NewFake() *Fake {
	return &Fake{units: map[string]*UnitState{}, FailStart: map[string]bool{}, Slow: map[string]bool{}, changes: make(chan string, 64)}
}

func (f *Fake) record(verb, unit string) {
	f.calls = append(f.calls, verb+" "+unit)
}

func (f *Fake) unit(name string) *UnitState {
	u, ok := f.units[name]
	if !ok {
		u = &UnitState{Name: name, LoadState: "loaded", ActiveState: "inactive", SubState: "dead", UnitFileState: "disabled"}
		f.units[name] = u
	}
	return u
}

func (f *Fake) set(name, active, sub, result string) {
	u := f.unit(name)
	u.ActiveState, u.SubState, u.Result, u.Since = active, sub, result, time.Now().UTC()
	select {
	case f.changes <- name:
	default:
	}
}

// Calls returns the calls so far and forgets them.
func (f *Fake) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// SetState forces a unit's state, as if it had crashed, and notifies watchers.
func (f *Fake) SetState(name, active, sub, result string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.set(name, active, sub, result)
}

// Reload implements Conn.
func (f *Fake) Reload(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("reload", "")
	return nil
}

// Start implements Conn.
func (f *Fake) Start(ctx context.Context, unit string) error { return f.run(ctx, "start", unit) }

// Restart implements Conn.
func (f *Fake) Restart(ctx context.Context, unit string) error { return f.run(ctx, "restart", unit) }

func (f *Fake) run(ctx context.Context, verb, unit string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record(verb, unit)
	if f.Slow[unit] {
		f.set(unit, "activating", "start", "")
		f.mu.Unlock()
		<-ctx.Done()
		f.mu.Lock()
		return fmt.Errorf("%s %s: %w", verb, unit, ctx.Err())
	}
	if f.FailStart[unit] {
		f.set(unit, "failed", "failed", "exit-code")
		return fmt.Errorf("%s %s: job failed", verb, unit)
	}
	u := f.unit(unit)
	u.NRestarts += map[bool]uint32{true: 1}[verb == "restart"]
	f.set(unit, "active", "running", "success")
	return nil
}

// Stop implements Conn.
func (f *Fake) Stop(ctx context.Context, unit string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("stop", unit)
	f.set(unit, "inactive", "dead", "success")
	return nil
}

// Enable implements Conn.
func (f *Fake) Enable(ctx context.Context, units ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range units {
		f.record("enable", u)
		f.unit(u).UnitFileState = "enabled"
	}
	return nil
}

// Disable implements Conn.
func (f *Fake) Disable(ctx context.Context, units ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, u := range units {
		f.record("disable", u)
		f.unit(u).UnitFileState = "disabled"
	}
	return nil
}

// State implements Conn.
func (f *Fake) State(ctx context.Context, unit string) (UnitState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if u, ok := f.units[unit]; ok {
		return *u, nil
	}
	return UnitState{Name: unit, LoadState: "not-found", ActiveState: "inactive", SubState: "dead"}, nil
}

// Changes implements Conn.
func (f *Fake) Changes() <-chan string { return f.changes }

// Watch implements Conn; the fake reports every unit.
func (f *Fake) Watch(units ...string) {}

// StaticHostname implements Conn.
func (f *Fake) StaticHostname(ctx context.Context) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.hostname, nil
}

// SetStaticHostname implements Conn.
func (f *Fake) SetStaticHostname(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.record("hostname", name)
	if f.HostnameErr != nil {
		return f.HostnameErr
	}
	f.hostname = name
	return nil
}

// Close implements Conn.
func (f *Fake) Close() {}
