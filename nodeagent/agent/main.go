package agent

import (
	"context"
	"fmt"
	"log/slog"

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
	return Run(ctx, Options{Root: root, Config: cfg, Systemd: sd, Log: log})
}
