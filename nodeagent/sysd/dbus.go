package sysd

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	sdbus "github.com/coreos/go-systemd/v22/dbus"
	"github.com/godbus/dbus/v5"
)

// DBus is Conn over the system bus.
//
// Changes come from Subscribe() plus SetSubStateSubscriber: systemd pushes
// PropertiesChanged signals, so a unit failing is seen at once, without the
// ListUnits polling of SubscribeUnitsCustomContext (which costs a full unit
// list per interval and still lags by up to one interval). The heartbeat
// re-reads every managed unit anyway, so a dropped signal costs at most one
// heartbeat interval.
type DBus struct {
	conn     *sdbus.Conn
	bus      *dbus.Conn // for systemd-hostnamed, which go-systemd does not cover
	log      *slog.Logger
	changes  chan string
	mu       sync.Mutex // guards watched
	watched  map[string]bool
	updates  chan *sdbus.SubStateUpdate
	errs     chan error
	stopOnce sync.Once
	stop     chan struct{}
}

// NewDBus connects to systemd on the system bus.
func NewDBus(ctx context.Context, log *slog.Logger) (*DBus, error) {
	conn, err := sdbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to systemd over D-Bus: %w", err)
	}
	bus, err := dbus.ConnectSystemBus(dbus.WithContext(ctx))
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("connect to the system bus: %w", err)
	}
	d := &DBus{conn: conn, bus: bus, log: log, changes: make(chan string, 16), watched: map[string]bool{},
		updates: make(chan *sdbus.SubStateUpdate, 64), errs: make(chan error, 8), stop: make(chan struct{})}
	if err := conn.Subscribe(); err != nil {
		d.Close()
		return nil, fmt.Errorf("subscribe to systemd signals: %w", err)
	}
	conn.SetSubStateSubscriber(d.updates, d.errs)
	go d.forward()
	return d, nil
}

func (d *DBus) forward() {
	for {
		select {
		case <-d.stop:
			return
		case u := <-d.updates:
			d.mu.Lock()
			watched := d.watched[u.UnitName]
			d.mu.Unlock()
			if watched {
				select {
				case d.changes <- u.UnitName:
				default:
				}
			}
		case err := <-d.errs:
			d.log.Debug("systemd subscription", "err", err)
		}
	}
}

// Changes implements Conn.
func (d *DBus) Changes() <-chan string { return d.changes }

// Watch implements Conn.
func (d *DBus) Watch(units ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, u := range units {
		d.watched[u] = true
	}
}

// Reload implements Conn.
func (d *DBus) Reload(ctx context.Context) error {
	if err := d.conn.ReloadContext(ctx); err != nil {
		return fmt.Errorf("systemd daemon-reload: %w", err)
	}
	return nil
}

type jobFunc func(ctx context.Context, name, mode string, ch chan<- string) (int, error)

// job runs one systemd job and waits for its result. The channel is buffered
// so go-systemd's dispatcher never blocks on us, even after ctx ends.
func (d *DBus) job(ctx context.Context, verb, unit string, f jobFunc) error {
	ch := make(chan string, 1)
	if _, err := f(ctx, unit, "replace", ch); err != nil {
		return fmt.Errorf("%s %s: %w", verb, unit, err)
	}
	select {
	case res := <-ch:
		if res != "done" {
			return fmt.Errorf("%s %s: job %s (journalctl -u %s)", verb, unit, res, unit)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s %s: %w", verb, unit, ctx.Err())
	}
}

// Start implements Conn.
func (d *DBus) Start(ctx context.Context, unit string) error {
	return d.job(ctx, "start", unit, d.conn.StartUnitContext)
}

// Restart implements Conn.
func (d *DBus) Restart(ctx context.Context, unit string) error {
	return d.job(ctx, "restart", unit, d.conn.RestartUnitContext)
}

// Stop implements Conn.
func (d *DBus) Stop(ctx context.Context, unit string) error {
	return d.job(ctx, "stop", unit, d.conn.StopUnitContext)
}

// Enable implements Conn.
func (d *DBus) Enable(ctx context.Context, units ...string) error {
	_, changes, err := d.conn.EnableUnitFilesContext(ctx, units, false, true)
	if err != nil {
		return fmt.Errorf("enable %v: %w", units, err)
	}
	if len(changes) > 0 {
		// As systemctl enable does: make systemd see the new links (and the
		// unit's UnitFileState) now, not at the next reload.
		return d.Reload(ctx)
	}
	return nil
}

// Disable implements Conn.
func (d *DBus) Disable(ctx context.Context, units ...string) error {
	changes, err := d.conn.DisableUnitFilesContext(ctx, units, false)
	if err != nil {
		return fmt.Errorf("disable %v: %w", units, err)
	}
	if len(changes) > 0 {
		return d.Reload(ctx)
	}
	return nil
}

// State implements Conn.
func (d *DBus) State(ctx context.Context, unit string) (UnitState, error) {
	s := UnitState{Name: unit}
	props, err := d.conn.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return s, fmt.Errorf("state of %s: %w", unit, err)
	}
	s.LoadState, _ = props["LoadState"].(string)
	s.ActiveState, _ = props["ActiveState"].(string)
	s.SubState, _ = props["SubState"].(string)
	s.UnitFileState, _ = props["UnitFileState"].(string)
	if us, ok := props["StateChangeTimestamp"].(uint64); ok && us > 0 {
		s.Since = time.UnixMicro(int64(us)).UTC()
	}
	if s.LoadState != "loaded" {
		return s, nil
	}
	svc, err := d.conn.GetUnitTypePropertiesContext(ctx, unit, "Service")
	if err != nil {
		return s, nil // not a service, or gone in between: the Unit view is enough
	}
	s.Result, _ = svc["Result"].(string)
	s.NRestarts, _ = svc["NRestarts"].(uint32)
	s.ExecMainStatus, _ = svc["ExecMainStatus"].(int32)
	return s, nil
}

const hostnamed = "org.freedesktop.hostname1"

// StaticHostname implements Conn.
func (d *DBus) StaticHostname(ctx context.Context) (string, error) {
	obj := d.bus.Object(hostnamed, "/org/freedesktop/hostname1")
	v, err := obj.GetProperty(hostnamed + ".StaticHostname")
	if err != nil {
		return "", fmt.Errorf("read static hostname from systemd-hostnamed: %w", err)
	}
	name, _ := v.Value().(string)
	return name, nil
}

// SetStaticHostname implements Conn.
func (d *DBus) SetStaticHostname(ctx context.Context, name string) error {
	obj := d.bus.Object(hostnamed, "/org/freedesktop/hostname1")
	// interactive=false: there is nobody to answer a polkit prompt.
	if err := obj.CallWithContext(ctx, hostnamed+".SetStaticHostname", 0, name, false).Err; err != nil {
		return fmt.Errorf("set static hostname %q through systemd-hostnamed: %w", name, err)
	}
	// The static name survives reboots; processes read the kernel
	// (transient) name, so set it too rather than wait for a reboot.
	if err := obj.CallWithContext(ctx, hostnamed+".SetHostname", 0, name, false).Err; err != nil {
		return fmt.Errorf("set transient hostname %q through systemd-hostnamed: %w", name, err)
	}
	return nil
}

// Connected reports whether both bus connections are still up.
func (d *DBus) Connected() bool {
	return d.conn.Connected() && d.bus.Connected()
}

// Close implements Conn.
func (d *DBus) Close() {
	d.stopOnce.Do(func() {
		// Detach first: go-systemd would otherwise log "full error channel"
		// for every signal that arrives while the connection closes.
		d.conn.SetSubStateSubscriber(nil, nil)
		close(d.stop)
		d.conn.Close()
		d.bus.Close()
	})
}
