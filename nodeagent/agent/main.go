package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kedge-io/kedge/nodeagent/config"
	"github.com/kedge-io/kedge/nodeagent/paths"
	"github.com/kedge-io/kedge/nodeagent/sysd"
)

// Main is `kedge-nodeagent run`: load the config under root, connect to
// systemd over D-Bus and run until ctx ends.
func Main(ctx context.Context, root, configPath string, log *slog.Logger) error {
	cfg, err := config.Load(paths.In(root, configPath))
	if err != nil {
		return fmt.Errorf("--config: %w", err)
	}
	sd, err := sysd.NewDBus(ctx, log)
	if err != nil {
		return fmt.Errorf("%w (the agent needs the system bus; is it running under systemd?)", err)
	}
	defer sd.Close()
	// A lost bus (dbus restarted) does not come back by itself: end the
	// agent so systemd restarts it with a fresh connection.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if !sd.Connected() {
					cancel(errBusLost)
					return
				}
			}
		}
	}()
	err = Run(ctx, Options{Root: root, Config: cfg, Systemd: sd, Log: log})
	if errors.Is(context.Cause(ctx), errBusLost) {
		return errBusLost
	}
	return err
}

var errBusLost = errors.New("lost the D-Bus connection to systemd; exiting so systemd restarts the agent")
