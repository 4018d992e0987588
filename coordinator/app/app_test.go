package app

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kedge-io/kedge/coordinator/adminconfig"
)

func TestInitPrintsPinAndTokenAndRefusesTwice(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	var out bytes.Buffer
	ctx := context.Background()
	err := Run(ctx, []string{"init", "--data-dir", dir, "--address", "10.77.0.1:7443,coord.lan:7443", "--cluster", "edge-1"}, &out, &out)
	if err != nil {
		t.Fatal(err)
	}
	text := out.String()
	if !regexp.MustCompile(`(?m)^token: [a-z0-9]{6}\.[a-z0-9]{16}$`).MatchString(text) {
		t.Errorf("init output has no `token: id.secret` line:\n%s", text)
	}
	cfg, err := adminconfig.Load(filepath.Join(dir, AdminConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "ca-pin: "+cfg.CAPin+"\n") || !strings.Contains(text, filepath.Join(dir, AdminConfigFile)) {
		t.Errorf("init output lacks the pin %s or the admin.yaml path:\n%s", cfg.CAPin, text)
	}
	for _, f := range []string{CAKeyFile, ServingKeyFile, AdminConfigFile} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v, %v; want 0600", f, fi.Mode().Perm(), err)
		}
	}
	before, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))

	out.Reset()
	err = Run(ctx, []string{"init", "--data-dir", dir, "--address", "10.77.0.1:7443"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "already initialised") {
		t.Fatalf("second init: %v; want a refusal", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, CAKeyFile))
	if !bytes.Equal(before, after) || out.Len() != 0 {
		t.Error("second init changed the CA key or printed output")
	}
}

func TestInitFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"init", "--address", "a:1"}, "--data-dir is required"},
		{[]string{"init", "--data-dir", t.TempDir()}, "--address is required"},
		{[]string{"init", "--data-dir", t.TempDir(), "--address", "nohost"}, `--address "nohost": want HOST:PORT`},
		{[]string{"serve", "--data-dir", t.TempDir()}, "run kedge-coordinator init"},
	} {
		var out bytes.Buffer
		err := Run(context.Background(), tc.args, &out, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v; want %q", tc.args, err, tc.want)
		}
	}
}
