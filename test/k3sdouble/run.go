// Package k3sdouble is a K3s TEST DOUBLE, not K3s. No K3s release can be
// downloaded where kedge is tested, so this stand-in, installed as
// /usr/local/bin/k3s, behaves like K3s at the edges kedge touches and no
// further:
//
//   - `k3s server` and `k3s agent` read /etc/rancher/k3s/config.yaml (or
//     --config / K3S_CONFIG_FILE) and the same keys as flags; unknown keys
//     are refused by name.
//
//   - A server connects to datastore-endpoint with datastore-cafile,
//     -certfile and -keyfile through the real etcd v3 client, so wrong certs
//     fail as they do for K3s; it keeps its cluster CA in
//     /bootstrap/<12 hex of sha256(token)> encrypted with the token (a server
//     with another token exits with K3s's own message), records itself under
//     /registry/minions/NAME, serves /ping, /cacerts, agent registration and a
//     tiny pods API over TLS on 6443, writes /etc/rancher/k3s/k3s.yaml and
//     then notifies systemd READY.
//
//   - An agent fetches the server's CA from /cacerts (verified against the
//     hash in a K10 secure token; trusted on first use with a short token, as
//     K3s does), registers with its token (server or agent token; anything
//     else is refused with 401), notifies READY and re-checks every few seconds.
//
//   - `kubectl run NAME --image IMAGE` (as `kubectl` or `k3s kubectl`) creates
//     /registry/pods/default/NAME through the server, authenticated by the
//     client cert in k3s.yaml; `kubectl get nodes` lists the minions.
//
//   - A server renews /registry/leases/kube-node-lease/NAME every few seconds
//     and exits when the datastore has been unreachable for 25 s, as the K3s
//     server holding controller leadership did; systemd restarts it.
//
//   - Embedded topology: `cluster-init` starts a real etcd member inside the
//     server (client on 127.0.0.1:2379, peer on the node IP's 2380, data in
//     DATA_DIR/server/db/etcd; ports through etcd-arg listen-client-urls= /
//     listen-peer-urls=); a server with `server:` and no datastore asks that
//     server, with the server token, to add it as a member and joins. Unlike
//     K3s the peer port is plain HTTP.
//
// Not covered: no kubelet, no containers, no SQLite, no real API server.
package k3sdouble

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/kedge-io/kedge/internal/version"
)

// Version is the K3s version the double claims to be, marked as a double.
const Version = "v1.36.3+k3s1-testdouble"

// Options wires the double to its surroundings; tests run it in-process.
type Options struct {
	Stdout io.Writer
	Log    *slog.Logger
	// Getenv reads the environment (K3S_CONFIG_FILE, KUBECONFIG); os.Getenv if nil.
	Getenv func(string) string
	// Ready is called after READY has been sent to systemd.
	Ready func()
	// DatastoreTimeout bounds the first datastore round trip; 10 s if zero.
	DatastoreTimeout time.Duration
	// RecheckInterval is how often an agent re-checks its server and a server
	// renews its node lease in the datastore; 5 s if zero.
	RecheckInterval time.Duration
	// DatastoreLossLimit is how long a server runs without reaching its
	// datastore before it exits (K3s's did after about 25 s); 25 s if zero.
	DatastoreLossLimit time.Duration
}

const usage = `k3s TEST DOUBLE (not K3s): a stand-in for kedge's tests.

Usage:
  k3s server [flags]      run a server against datastore-endpoint (config.yaml keys as --flags)
  k3s agent [flags]       register with --server using --token / --token-file
  k3s kubectl run NAME --image IMAGE [--port N]
  k3s kubectl get nodes
  k3s --version
`

// Run runs the double as args asks; args[0] is the program name, so a
// `kubectl` symlink to the binary acts as kubectl.
func Run(ctx context.Context, args []string, opts Options) error {
	if opts.Stdout == nil {
		opts.Stdout = os.Stdout
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	if opts.Ready == nil {
		opts.Ready = func() {}
	}
	if opts.DatastoreTimeout == 0 {
		opts.DatastoreTimeout = 10 * time.Second
	}
	if opts.RecheckInterval == 0 {
		opts.RecheckInterval = 5 * time.Second
	}
	if opts.DatastoreLossLimit == 0 {
		opts.DatastoreLossLimit = 25 * time.Second
	}
	if len(args) == 0 {
		args = []string{"k3s"}
	}
	switch filepath.Base(args[0]) {
	case "kubectl":
		return runKubectl(ctx, args[1:], opts)
	case "crictl", "ctr":
		return fmt.Errorf("k3s TEST DOUBLE (not K3s) has no %s: it runs no containers", filepath.Base(args[0]))
	}
	if len(args) < 2 {
		fmt.Fprint(opts.Stdout, usage)
		return nil
	}
	switch args[1] {
	case "server":
		opts.Log.Info("k3s TEST DOUBLE (not K3s): starting server", "version", Version)
		return runServer(ctx, args[2:], opts)
	case "agent":
		opts.Log.Info("k3s TEST DOUBLE (not K3s): starting agent", "version", Version)
		return runAgent(ctx, args[2:], opts)
	case "kubectl":
		return runKubectl(ctx, args[2:], opts)
	case "--version", "-v", "version":
		fmt.Fprintf(opts.Stdout, "k3s version %s (k3s TEST DOUBLE, not K3s; kedge %s)\n", Version, version.Version)
		return nil
	case "--help", "-h", "help":
		fmt.Fprint(opts.Stdout, usage)
		return nil
	default:
		return fmt.Errorf("k3s TEST DOUBLE: no command %q\n%s", args[1], usage)
	}
}

// notifyReady tells systemd the service is up; outside systemd that is a no-op.
func notifyReady(opts Options) error {
	if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
		return fmt.Errorf("notify systemd READY: %w", err)
	}
	opts.Ready()
	return nil
}
