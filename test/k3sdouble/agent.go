package k3sdouble

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// errRefused is a server saying no to the token: retrying will not help.
var errRefused = errors.New("refused the token (401 Unauthorized)")

func runAgent(ctx context.Context, args []string, opts Options) error {
	cfg, err := loadConfig(args, opts.Getenv)
	if err != nil {
		return err
	}
	serverURL := strings.TrimSuffix(cfg.str("server"), "/")
	if serverURL == "" {
		return errors.New("--server is required for an agent (K3S_URL)")
	}
	token, err := cfg.secret("token")
	if err != nil {
		return err
	}
	if token == "" {
		return errors.New("--token or --token-file is required for an agent")
	}
	caHash, password := splitToken(token)
	a := &agent{server: serverURL, caHash: caHash, user: "node", password: password, name: cfg.nodeName(), ips: cfg.list("node-ip")}

	retry := time.NewTicker(2 * time.Second)
	defer retry.Stop()
	for {
		err := a.register(ctx)
		if err == nil {
			break
		}
		if errors.Is(err, errRefused) {
			return err
		}
		opts.Log.Warn("waiting for server", "server", serverURL, "error", err)
		select {
		case <-ctx.Done():
			return nil
		case <-retry.C:
		}
	}
	opts.Log.Info("k3s TEST DOUBLE agent registered", "node", a.name, "server", serverURL)
	if err := notifyReady(opts); err != nil {
		return err
	}
	recheck := time.NewTicker(opts.RecheckInterval)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			opts.Log.Info("k3s TEST DOUBLE agent stopping")
			return nil
		case <-recheck.C:
		}
		if err := a.register(ctx); errors.Is(err, errRefused) {
			return err
		} else if err != nil {
			// A server restarting is normal; K3s agents ride it out.
			opts.Log.Warn("server check failed", "server", serverURL, "error", err)
		}
	}
}

type agent struct {
	server   string
	caHash   string // from a K10 secure token; empty for a short token
	user     string // basic-auth user: "node" for agents, "server" for joining servers
	password string
	name     string
	ips      []string
	client   *http.Client
}

// splitToken reads K3s's secure format K10<ca-sha256>::<user>:<password>,
// else takes the whole token as the password (the short format).
func splitToken(token string) (caHash, password string) {
	if rest, ok := strings.CutPrefix(token, "K10"); ok {
		if hash, creds, ok := strings.Cut(rest, "::"); ok {
			if _, pw, ok := strings.Cut(creds, ":"); ok {
				return hash, pw
			}
			return hash, creds
		}
	}
	return "", token
}

// trust fetches the server's CA from /cacerts without verification, as K3s
// does: with a secure token the CA must match the token's hash; with a short
// token it is trusted on first use, as K3s trusts it. Either way every later
// request verifies the server against that CA, and the token is only sent then.
func (a *agent) trust(ctx context.Context) error {
	insecure := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // bootstrap fetch of a public CA, checked below
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.server+"/cacerts", nil)
	if err != nil {
		return err
	}
	resp, err := insecure.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	caPEM, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /cacerts answered %s", resp.Status)
	}
	if a.caHash != "" {
		sum := sha256.Sum256(caPEM)
		if got := hex.EncodeToString(sum[:]); got != a.caHash {
			return fmt.Errorf("server CA has sha256 %s, the token expects %s", got, a.caHash)
		}
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("server's /cacerts holds no PEM certificate")
	}
	a.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
	}}
	return nil
}

func (a *agent) register(ctx context.Context) error {
	_, err := a.call(ctx, "/v1-k3s/register", nil)
	return err
}

// call POSTs body to path on the server with the token, verifying the server
// against the CA fetched by trust; a 401 is errRefused.
func (a *agent) call(ctx context.Context, path string, body []byte) ([]byte, error) {
	if a.client == nil {
		if err := a.trust(ctx); err != nil {
			return nil, err
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.server+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(a.user, a.password)
	req.Header.Set("K3s-Node-Name", a.name)
	req.Header.Set("K3s-Node-IP", strings.Join(a.ips, ","))
	resp, err := a.client.Do(req)
	if err != nil {
		var unknownCA x509.UnknownAuthorityError
		if errors.As(err, &unknownCA) {
			a.client = nil // the server's CA changed; fetch it again next time
		}
		return nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
		return answer, nil
	case http.StatusUnauthorized:
		return nil, fmt.Errorf("server %s %w", a.server, errRefused)
	default:
		return nil, fmt.Errorf("server %s answered %s", a.server, resp.Status)
	}
}
