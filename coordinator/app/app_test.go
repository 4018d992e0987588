package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/adminconfig"
	"github.com/kedge-io/kedge/coordinator/pki"
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

func TestServeAppliesSpecServesMetricsAndStops(t *testing.T) {
	dir := t.TempDir()
	if _, err := InitDataDir(context.Background(), InitOptions{DataDir: dir, Addresses: []string{"127.0.0.1:7443"}}); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: kedge/v1\nkind: Cluster\n"), 0o600)
	err := Serve(context.Background(), ServeOptions{DataDir: dir, Listen: "127.0.0.1:0", SpecFile: bad})
	if err == nil || !strings.Contains(err.Error(), "--spec") || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("serve with a bad spec: %v; want an error naming --spec and the file", err)
	}

	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(`apiVersion: kedge/v1
kind: Cluster
metadata:
  name: edge-1
spec:
  topology: stacked
  etcd:
    members: 1
  k3s:
    servers: 1
    version: v1.31.4+k3s1
    binary:
      sha256: "0000000000000000000000000000000000000000000000000000000000000000"
      path: /usr/local/bin/k3s
`), 0o600)
	metricsLis, _ := net.Listen("tcp", "127.0.0.1:0")
	metricsAddr := metricsLis.Addr().String()
	metricsLis.Close()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ServeOptions{DataDir: dir, Listen: "127.0.0.1:0", SpecFile: good, MetricsListen: metricsAddr,
			Ready: func(a net.Addr) { ready <- a }})
	}()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("serve: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("serve not ready")
	}
	// A node holds only the CA pin: the handshake must show it the CA.
	conn, err := tls.Dial("tcp", addr.String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	chain := conn.ConnectionState().PeerCertificates
	conn.Close()
	caPEM, _ := os.ReadFile(filepath.Join(dir, CACertFile))
	ca, err := pki.DecodeCertPEM(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 || pki.Pin(chain[1]) != pki.Pin(ca) {
		t.Errorf("serving chain has %d certs; want the serving cert followed by the CA whose pin nodes hold", len(chain))
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "kedge_plan_watch_streams") {
		t.Errorf("/metrics lacks kedge collectors")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve after stop: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop within 20s of its context ending")
	}
}

func TestInitCALifetimeIsConfigurable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	var out, errOut bytes.Buffer
	if err := Run(context.Background(), []string{"init", "--data-dir", dir, "--address", "127.0.0.1:7443", "--ca-lifetime", "720h"}, &out, &errOut); err != nil {
		t.Fatalf("init: %v\n%s", err, errOut.String())
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.DecodeCertPEM(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	if left := time.Until(ca.NotAfter); left < 719*time.Hour || left > 721*time.Hour {
		t.Errorf("CA valid for %s more; want about 720h from --ca-lifetime", left.Round(time.Hour))
	}
}
