package k3srole

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// PingURL is where a K3s server's supervisor answers "pong" once it is up.
const PingURL = "https://127.0.0.1:6443/ping"

// probeTimeout bounds one probe so a hung server cannot stall status reports.
const probeTimeout = time.Second

// Probe asks the local K3s server's /ping whether its supervisor is up.
func Probe(ctx context.Context) *kedgev1.K3SStatus {
	return ProbeURL(ctx, PingURL)
}

// ProbeURL is Probe against any URL (tests serve their own).
func ProbeURL(ctx context.Context, url string) *kedgev1.K3SStatus {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		// A liveness ping of our own loopback: the server's cert is signed by
		// K3s's cluster CA, which kedge does not hold, and nothing secret is sent.
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback liveness only
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return &kedgev1.K3SStatus{Error: err.Error()}
	}
	resp, err := client.Do(req)
	if err != nil {
		return &kedgev1.K3SStatus{Error: fmt.Sprintf("k3s server not answering %s: %v", url, err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
	if resp.StatusCode != http.StatusOK || string(bytes.TrimSpace(body)) != "pong" {
		return &kedgev1.K3SStatus{Error: fmt.Sprintf("k3s server %s answered %s, not pong", url, resp.Status)}
	}
	return &kedgev1.K3SStatus{Ready: true}
}

var serverLine = regexp.MustCompile(`(?m)^(\s*server:\s*).*$`)

// Kubeconfig reads K3s's admin kubeconfig under root and points it at serverURL.
// K3s writes it for https://127.0.0.1:6443, which only works on the server itself.
func Kubeconfig(root, serverURL string) ([]byte, error) {
	path := paths.In(root, paths.K3sKubeconfig)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read K3s admin kubeconfig: %w", err)
	}
	if !serverLine.Match(b) {
		// The content is a secret: name the file, never quote it.
		return nil, fmt.Errorf("K3s admin kubeconfig %s has no server: line to rewrite", paths.K3sKubeconfig)
	}
	return serverLine.ReplaceAll(b, []byte("${1}"+strings.ReplaceAll(serverURL, "$", "$$"))), nil
}
