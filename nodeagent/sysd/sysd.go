// Package sysd is the node agent's small view of systemd: start, stop and
// restart units waiting for the job's result, enable and disable them,
// daemon-reload, read a unit's state, hear about changes, and set the static
// hostname. Conn is implemented over D-Bus (go-systemd) for machines and by
// Fake for unit tests.
package sysd

import (
	"context"
	"time"
)

// UnitState is systemd's view of one unit.
type UnitState struct {
	Name          string
	LoadState     string
	ActiveState   string
	SubState      string
	UnitFileState string
	// From the Service interface; empty/zero for other unit types.
	Result         string
	NRestarts      uint32
	ExecMainStatus int32
	// When ActiveState last changed.
	Since time.Time
}

// Running reports whether the unit is up or on its way up, so starting it
// again would do nothing.
func (s UnitState) Running() bool {
	switch s.ActiveState {
	case "active", "activating", "reloading":
		return true
	}
	return false
}

// Enabled reports whether the unit starts at boot.
func (s UnitState) Enabled() bool {
	return s.UnitFileState == "enabled" || s.UnitFileState == "enabled-runtime"
}

// Conn is what the agent needs from systemd.
type Conn interface {
	// Reload is daemon-reload: needed after unit files change.
	Reload(ctx context.Context) error
	Start(ctx context.Context, unit string) error
	Restart(ctx context.Context, unit string) error
	Stop(ctx context.Context, unit string) error
	Enable(ctx context.Context, units ...string) error
	Disable(ctx context.Context, units ...string) error
	State(ctx context.Context, unit string) (UnitState, error)
	// Changes delivers the name of a watched unit whenever its state changes.
	// Sends never block; a missed change is picked up by the next heartbeat.
	Changes() <-chan string
	// Watch limits Changes to these units.
	Watch(units ...string)
	StaticHostname(ctx context.Context) (string, error)
	SetStaticHostname(ctx context.Context, name string) error
	Close()
}
