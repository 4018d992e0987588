package install

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/kedge-io/kedge/nodeagent/config"
	"github.com/kedge-io/kedge/nodeagent/paths"
)

const pin = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// treeHash lists every entry under root with its mode, content hash or link target.
func treeHash(t *testing.T, root string) string {
	t.Helper()
	var lines []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		line := fmt.Sprintf("%s %v", rel, info.Mode())
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			line += " -> " + target
		case info.Mode().IsRegular():
			data, _ := os.ReadFile(p)
			line += fmt.Sprintf(" %x", sha256.Sum256(data))
		}
		lines = append(lines, line)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestInstallWritesTreeIdempotently(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	os.Mkdir(root, 0o755)
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("abc123.s3cretvalue\n"), 0o600)
	bin := filepath.Join(dir, "agent-bin")
	os.WriteFile(bin, []byte("#!binary"), 0o700)

	opts := Options{Root: root, Coordinators: []string{"10.77.0.2:7443"}, CAPin: pin, TokenFile: tokenFile,
		Labels: map[string]string{"site": "lab"}, Binary: bin}
	if err := Install(opts); err != nil {
		t.Fatal(err)
	}
	first := treeHash(t, root)
	if err := Install(opts); err != nil {
		t.Fatal(err)
	}
	if second := treeHash(t, root); second != first {
		t.Fatalf("second install changed the tree:\n%s\n---\n%s", first, second)
	}

	for p, mode := range map[string]fs.FileMode{
		paths.AgentBinary: 0o755, paths.AgentConfig: 0o644, paths.BootstrapToken: 0o600,
		"/etc/systemd/system/kedge-nodeagent.service": 0o644,
	} {
		st, err := os.Stat(paths.In(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", p, st.Mode().Perm(), mode)
		}
	}
	target, err := os.Readlink(paths.In(root, "/etc/systemd/system/multi-user.target.wants/kedge-nodeagent.service"))
	if err != nil || target != "/etc/systemd/system/kedge-nodeagent.service" {
		t.Fatalf("enable link: %q %v", target, err)
	}
	tok, _ := os.ReadFile(paths.In(root, paths.BootstrapToken))
	if strings.TrimSpace(string(tok)) != "abc123.s3cretvalue" {
		t.Fatalf("token file content wrong")
	}
	cfg, err := config.Load(paths.In(root, paths.AgentConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CAPin != pin || cfg.TokenFile != paths.BootstrapToken || cfg.Coordinators[0] != "10.77.0.2:7443" || cfg.Labels["site"] != "lab" || cfg.HeartbeatInterval != config.DefaultHeartbeatInterval {
		t.Fatalf("agent.yaml: %+v", cfg)
	}
	unit, _ := os.ReadFile(paths.In(root, "/etc/systemd/system/kedge-nodeagent.service"))
	if !strings.Contains(string(unit), "ExecStart=/usr/local/bin/kedge-nodeagent run") {
		t.Fatalf("unit file is not the embedded one:\n%s", unit)
	}
}

func TestInstallRejectsBadInputWithoutLeakingToken(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("not a token with spaces"), 0o600)
	bin := filepath.Join(dir, "bin")
	os.WriteFile(bin, []byte("x"), 0o700)
	err := Install(Options{Root: dir, Coordinators: []string{"c:7443"}, CAPin: pin, TokenFile: tokenFile, Binary: bin})
	if err == nil || strings.Contains(err.Error(), "spaces") || !strings.Contains(err.Error(), "id.secret") {
		t.Fatalf("bad token: %v", err)
	}
	os.WriteFile(tokenFile, []byte("a.b"), 0o600)
	if err := Install(Options{Root: dir, Coordinators: []string{"c:7443"}, CAPin: "sha256:zz", TokenFile: tokenFile, Binary: bin}); err == nil || !strings.Contains(err.Error(), "--ca-pin") {
		t.Fatalf("bad pin: %v", err)
	}
	if _, err := os.Stat(paths.In(dir, paths.AgentConfig)); err == nil {
		t.Fatal("a rejected install wrote agent.yaml")
	}
}
