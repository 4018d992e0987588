package config

import (
	"strings"
	"testing"
	"time"
)

const pin = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestRoundTrip(t *testing.T) {
	c := &Config{Coordinators: []string{"10.0.0.1:7443", "10.0.0.2:7443"}, CAPin: pin, TokenFile: "/etc/kedge/bootstrap-token",
		Labels: map[string]string{"rack": "a"}, HeartbeatInterval: 15 * time.Second}
	data, err := c.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "heartbeatInterval: 15s") || !strings.Contains(string(data), "apiVersion: kedge/v1") {
		t.Fatalf("unexpected YAML:\n%s", data)
	}
	got, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.HeartbeatInterval != 15*time.Second || got.Coordinators[1] != "10.0.0.2:7443" || got.Labels["rack"] != "a" || got.APIVersion != APIVersion {
		t.Fatalf("round trip lost data: %+v", got)
	}
}

func TestParseRejects(t *testing.T) {
	base := "apiVersion: kedge/v1\nkind: NodeAgentConfig\ncoordinators: [\"c:7443\"]\ncaPin: " + pin + "\ntokenFile: /t\n"
	if c, err := Parse([]byte(base)); err != nil || c.HeartbeatInterval != DefaultHeartbeatInterval {
		t.Fatalf("base config: %v %+v", err, c)
	}
	for name, tc := range map[string]struct{ yaml, want string }{
		"version":  {strings.Replace(base, "kedge/v1", "kedge/v9", 1), "apiVersion"},
		"unknown":  {base + "color: red\n", "color"},
		"pin":      {strings.Replace(base, pin, "sha256:abc", 1), "caPin"},
		"address":  {strings.Replace(base, "c:7443", "nohost", 1), "coordinators"},
		"trailing": {base + "---\nfoo: 1\n", "trailing"},
	} {
		_, err := Parse([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want mention of %q", name, err, tc.want)
		}
	}
}
