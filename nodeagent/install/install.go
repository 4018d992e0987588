// Package install flashes the node agent onto a root filesystem (a mounted
// image, or / on a running machine): binary, agent.yaml, bootstrap token,
// unit file and the enable link, all without systemd running. Running it twice
// gives the same tree.
package install

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/kedge-io/kedge/deploy/systemd"
	"github.com/kedge-io/kedge/internal/atomicfile"
	"github.com/kedge-io/kedge/nodeagent/config"
	"github.com/kedge-io/kedge/nodeagent/internal/pkiutil"
	"github.com/kedge-io/kedge/nodeagent/paths"
)

// Options are the install flags.
type Options struct {
	Root              string
	Coordinators      []string
	CAPin             string
	TokenFile         string
	Labels            map[string]string
	Binary            string
	HeartbeatInterval time.Duration
}

// The enable link `systemctl enable` would make, per the unit's WantedBy=.
const wantsLink = "/etc/systemd/system/multi-user.target.wants/" + paths.NodeAgentUnit

var tokenPattern = regexp.MustCompile(`^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$`)

// ReadToken reads a bootstrap token file and checks it looks like id.secret.
// Errors never include the token.
func ReadToken(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(data))
	if !tokenPattern.MatchString(tok) {
		return "", fmt.Errorf("token file %s: content is not a bootstrap token of the form id.secret (kedgectl token create prints one)", path)
	}
	return tok, nil
}

// ParseLabels parses "k=v,k2=v2".
func ParseLabels(s string) (map[string]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--labels: %q is not key=value", kv)
		}
		out[k] = v
	}
	return out, nil
}

// Install writes the agent into opts.Root.
func Install(opts Options) error {
	if opts.Root == "" {
		return errors.New("--root is required (use / for this machine)")
	}
	if st, err := os.Stat(opts.Root); err != nil || !st.IsDir() {
		return fmt.Errorf("--root %s: not a directory", opts.Root)
	}
	if err := pkiutil.ValidatePin(opts.CAPin); err != nil {
		return fmt.Errorf("--ca-pin: %w", err)
	}
	token, err := ReadToken(opts.TokenFile)
	if err != nil {
		return fmt.Errorf("--token-file: %w", err)
	}
	if opts.HeartbeatInterval == 0 {
		opts.HeartbeatInterval = config.DefaultHeartbeatInterval
	}
	cfg := &config.Config{
		Coordinators:      opts.Coordinators,
		CAPin:             opts.CAPin,
		TokenFile:         paths.BootstrapToken,
		Labels:            opts.Labels,
		HeartbeatInterval: opts.HeartbeatInterval,
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("--coordinator: %w", err)
	}
	cfgYAML, err := cfg.Marshal()
	if err != nil {
		return err
	}
	binary := opts.Binary
	if binary == "" {
		if binary, err = os.Executable(); err != nil {
			return fmt.Errorf("--binary: cannot find this executable: %w", err)
		}
	}
	binData, err := os.ReadFile(binary)
	if err != nil {
		return fmt.Errorf("--binary: %w", err)
	}
	unit, err := systemd.Unit(paths.NodeAgentUnit)
	if err != nil {
		return err
	}
	files := []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{paths.AgentBinary, binData, 0o755},
		{paths.AgentConfig, cfgYAML, 0o644},
		{paths.BootstrapToken, []byte(token + "\n"), 0o600},
		{filepath.Join(paths.SystemdUnitDir, paths.NodeAgentUnit), unit, 0o644},
	}
	for _, f := range files {
		if err := writeIfChanged(paths.In(opts.Root, f.path), f.data, f.mode); err != nil {
			return err
		}
	}
	return ensureSymlink(paths.In(opts.Root, wantsLink), filepath.Join(paths.SystemdUnitDir, paths.NodeAgentUnit))
}

// writeIfChanged leaves an identical file alone, so a second install touches nothing.
func writeIfChanged(path string, data []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		if st, err := os.Stat(path); err == nil && st.Mode().Perm() == mode {
			return nil
		}
		return os.Chmod(path, mode)
	}
	return atomicfile.WriteFile(path, data, mode)
}

// ensureSymlink points link at target (an absolute path as seen inside the
// machine, as systemctl enable writes it).
func ensureSymlink(link, target string) error {
	if cur, err := os.Readlink(link); err == nil && cur == target {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return err
	}
	tmp := link + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("enable link %s: %w", link, err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("enable link %s: %w", link, err)
	}
	return nil
}
