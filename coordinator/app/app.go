// Package app is the kedge-coordinator program: `init` creates a data dir
// (CAs, serving cert, admin config, first token) and `serve` runs the gRPC
// API until its context ends. main only parses the command line into Run.
//
// Where the CA keys live: the coordinator CA key is a 0600 file in the data
// dir (ca.key), written by init before any store exists. Every etcd CA (one
// per cluster, created at runtime) is kept IN THE STORE, its key encrypted
// with a key derived from ca.key (see pki.Sealer). Why: several coordinators
// on one external etcd must share every CA; they already must share the
// coordinator CA (a node's identity has to verify on any of them), so copying
// ca.crt/ca.key (and the serving cert) to each coordinator is the one step,
// and the etcd CAs follow through the store, while a store backup alone
// reveals no CA key.
package app

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/kedge-io/kedge/coordinator/adminconfig"
	"github.com/kedge-io/kedge/coordinator/metrics"
	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/server"
	"github.com/kedge-io/kedge/coordinator/store"
	"github.com/kedge-io/kedge/coordinator/tokens"
	"github.com/kedge-io/kedge/internal/atomicfile"
	"github.com/kedge-io/kedge/internal/version"
)

// Files in the data dir.
const (
	CACertFile      = "ca.crt"
	CAKeyFile       = "ca.key"
	ServingCertFile = "serving.crt"
	ServingKeyFile  = "serving.key"
	AdminConfigFile = "admin.yaml"
	AddressesFile   = "addresses"
)

// Run runs the command line args (without the program name).
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: kedge-coordinator init|serve|version [flags]")
	}
	switch args[0] {
	case "init":
		fs := flag.NewFlagSet("init", flag.ContinueOnError)
		fs.SetOutput(stderr)
		var o InitOptions
		var addrs string
		fs.StringVar(&o.DataDir, "data-dir", "", "data directory to create (required)")
		fs.StringVar(&addrs, "address", "", "HOST:PORT[,HOST:PORT...] nodes and admins reach this coordinator at (required)")
		fs.StringVar(&o.Cluster, "cluster", "default", "cluster the first bootstrap token enrolls into")
		o.Lifetimes = pki.DefaultLifetimes()
		fs.DurationVar(&o.Lifetimes.CA, "ca-lifetime", o.Lifetimes.CA, "lifetime of the coordinator CA")
		fs.DurationVar(&o.Lifetimes.Serving, "serving-cert-lifetime", o.Lifetimes.Serving, "lifetime of the serving and admin certs")
		addEtcdFlags(fs, &o.Etcd)
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		o.Addresses = splitList(addrs)
		o.Out = stdout
		return Init(ctx, o)
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		fs.SetOutput(stderr)
		var o ServeOptions
		fs.StringVar(&o.DataDir, "data-dir", "", "data directory made by init (required)")
		fs.StringVar(&o.Listen, "listen", ":7443", "address to serve gRPC on")
		fs.StringVar(&o.SpecFile, "spec", "", "cluster spec YAML to apply at start")
		fs.StringVar(&o.MetricsListen, "metrics-listen", "", "address to serve Prometheus /metrics on (off when empty)")
		fs.DurationVar(&o.UnreachableAfter, "unreachable-after", 30*time.Second, "silence after which a node is Unreachable")
		o.Lifetimes = pki.DefaultLifetimes()
		fs.DurationVar(&o.Lifetimes.NodeIdentity, "node-cert-lifetime", o.Lifetimes.NodeIdentity, "lifetime of node identity certs (agents renew at two thirds)")
		fs.DurationVar(&o.Lifetimes.EtcdLeaf, "etcd-cert-lifetime", o.Lifetimes.EtcdLeaf, "lifetime of etcd server, peer and datastore-client certs")
		fs.DurationVar(&o.Lifetimes.CA, "etcd-ca-lifetime", o.Lifetimes.CA, "lifetime of each cluster's etcd CA, made when the cluster first appears")
		addEtcdFlags(fs, &o.Etcd)
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		o.Logger = slog.New(slog.NewTextHandler(stderr, nil))
		return Serve(ctx, o)
	case "version":
		fmt.Fprintln(stdout, version.Version)
		return nil
	}
	return fmt.Errorf("unknown command %q; want init, serve or version", args[0])
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// EtcdOptions select an external etcd; empty Endpoints means the embedded one.
type EtcdOptions struct {
	Endpoints                 []string
	CAFile, CertFile, KeyFile string
}

func addEtcdFlags(fs *flag.FlagSet, o *EtcdOptions) {
	fs.Func("etcd-endpoints", "external etcd client URLs, comma-separated (default: embedded etcd in DATA_DIR/etcd)", func(v string) error {
		o.Endpoints = splitList(v)
		return nil
	})
	fs.StringVar(&o.CAFile, "etcd-cafile", "", "CA of the external etcd")
	fs.StringVar(&o.CertFile, "etcd-certfile", "", "client cert for the external etcd")
	fs.StringVar(&o.KeyFile, "etcd-keyfile", "", "client key for the external etcd")
}

func openStore(ctx context.Context, dataDir string, o EtcdOptions) (*store.Store, error) {
	if len(o.Endpoints) > 0 {
		return store.OpenExternal(o.Endpoints, o.CAFile, o.CertFile, o.KeyFile)
	}
	return store.OpenEmbedded(ctx, dataDir)
}

// InitOptions are init's inputs.
type InitOptions struct {
	DataDir   string
	Addresses []string
	Cluster   string
	Etcd      EtcdOptions
	Out       io.Writer
	Now       func() time.Time
	// TokenTTL of the first token; 24h when zero.
	TokenTTL time.Duration
	// Lifetimes of the CA and the serving/admin certs; pki.DefaultLifetimes when zero.
	Lifetimes pki.Lifetimes
}

// InitResult is what init made, for callers that need more than its output.
type InitResult struct {
	CAPin           string
	Token           string
	AdminConfigPath string
}

// Init creates a coordinator data dir. It refuses a dir that already holds
// one and changes nothing there.
func Init(ctx context.Context, o InitOptions) error {
	_, err := InitDataDir(ctx, o)
	return err
}

// InitDataDir is Init returning what it made.
func InitDataDir(ctx context.Context, o InitOptions) (*InitResult, error) {
	if o.DataDir == "" {
		return nil, errors.New("--data-dir is required")
	}
	if len(o.Addresses) == 0 {
		return nil, errors.New("--address is required: the HOST:PORT nodes reach this coordinator at")
	}
	var hosts []string
	for _, a := range o.Addresses {
		h, _, err := net.SplitHostPort(a)
		if err != nil || h == "" {
			return nil, fmt.Errorf("--address %q: want HOST:PORT (e.g. 10.77.0.1:7443)", a)
		}
		hosts = append(hosts, h)
	}
	if o.Cluster == "" {
		o.Cluster = "default"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = 24 * time.Hour
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	for _, f := range []string{CACertFile, CAKeyFile, AdminConfigFile, "etcd"} {
		if _, err := os.Stat(filepath.Join(o.DataDir, f)); err == nil {
			return nil, fmt.Errorf("%s is already initialised (%s exists); init changes nothing there: use a new --data-dir, or serve this one", o.DataDir, f)
		}
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create --data-dir: %w", err)
	}
	lt := o.Lifetimes
	if lt == (pki.Lifetimes{}) {
		lt = pki.DefaultLifetimes()
	}
	now := o.Now()
	ca, err := pki.NewCA("kedge coordinator CA", lt.CA, now)
	if err != nil {
		return nil, err
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return nil, err
	}
	servingCert, servingKey, err := ca.Issue(pki.Serving(hosts, lt), now)
	if err != nil {
		return nil, err
	}
	adminCert, adminKey, err := ca.Issue(pki.Admin("admin", lt), now)
	if err != nil {
		return nil, err
	}
	// The first token needs the store; create it before writing the files
	// whose presence marks the dir as initialised.
	st, err := openStore(ctx, o.DataDir, o.Etcd)
	if err != nil {
		return nil, err
	}
	m := &tokens.Manager{Store: st, Now: o.Now}
	tok, _, err := m.Create(ctx, tokens.Options{Cluster: o.Cluster, TTL: o.TokenTTL, Description: "created by kedge-coordinator init"})
	st.Close()
	if err != nil {
		return nil, fmt.Errorf("create first token: %w", err)
	}
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{
		{ServingCertFile, servingCert, 0o644},
		{ServingKeyFile, servingKey, 0o600},
		{AddressesFile, []byte(strings.Join(o.Addresses, "\n") + "\n"), 0o644},
		{CACertFile, ca.CertPEM, 0o644},
		{CAKeyFile, caKey, 0o600},
	} {
		if err := atomicfile.WriteFile(filepath.Join(o.DataDir, f.name), f.data, f.mode); err != nil {
			return nil, fmt.Errorf("write %s: %w", f.name, err)
		}
	}
	adminPath := filepath.Join(o.DataDir, AdminConfigFile)
	if err := adminconfig.Save(adminPath, &adminconfig.Config{
		Coordinators: o.Addresses, CAPin: ca.Pin(), CAPEM: string(ca.CertPEM), CertPEM: string(adminCert), KeyPEM: string(adminKey),
	}); err != nil {
		return nil, fmt.Errorf("write %s: %w", adminPath, err)
	}
	fmt.Fprintf(o.Out, "coordinator: %s\n", strings.Join(o.Addresses, ","))
	fmt.Fprintf(o.Out, "ca-pin: %s\n", ca.Pin())
	fmt.Fprintf(o.Out, "admin-config: %s\n", adminPath)
	fmt.Fprintf(o.Out, "cluster: %s\n", o.Cluster)
	fmt.Fprintf(o.Out, "token: %s\n", tok)
	return &InitResult{CAPin: ca.Pin(), Token: tok, AdminConfigPath: adminPath}, nil
}

// ServeOptions are serve's inputs.
type ServeOptions struct {
	DataDir          string
	Listen           string
	SpecFile         string
	MetricsListen    string
	UnreachableAfter time.Duration
	Etcd             EtcdOptions
	Logger           *slog.Logger
	// Listener, when set, is served instead of listening on Listen (tests).
	Listener net.Listener
	// Ready, when set, is called once the coordinator accepts connections.
	Ready func(addr net.Addr)
	Now   func() time.Time
	// Lifetimes of the certs serve signs; pki.DefaultLifetimes when zero.
	Lifetimes pki.Lifetimes
}

// loadCA reads the coordinator CA from the data dir.
func loadCA(dataDir string) (*pki.CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dataDir, CACertFile))
	if err != nil {
		return nil, fmt.Errorf("%w; run kedge-coordinator init --data-dir %s first", err, dataDir)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dataDir, CAKeyFile))
	if err != nil {
		return nil, err
	}
	ca, err := pki.LoadCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", dataDir, err)
	}
	return ca, nil
}

// GRPCServerOptions tune gRPC for tens of thousands of mostly idle
// connections (one watch stream plus a heartbeat every few seconds each):
// gRPC's defaults (64 KiB windows, 32 KiB read and write buffers per
// connection) cost ~100 KiB per idle agent, 2 GB at 20,000. Plans and
// statuses are a few KiB, so small buffers lose nothing. Keepalive
// enforcement lets agents ping idle streams through NATs yet stops a
// misbehaving client from pinging in a loop. Server pings find dead peers (a
// NUC that lost power) so their streams and memory are freed and the node is
// reported Unreachable within ~25 s rather than after the full silence
// period: a ping goes out only after 12 s without a frame from the peer, so
// agents heartbeating every 10 s are almost never pinged at all.
func GRPCServerOptions(creds credentials.TransportCredentials) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.Creds(creds),
		grpc.InitialWindowSize(32 << 10),
		grpc.InitialConnWindowSize(64 << 10),
		grpc.ReadBufferSize(4 << 10),
		grpc.WriteBufferSize(4 << 10),
		grpc.SharedWriteBuffer(true),
		grpc.MaxRecvMsgSize(4 << 20),
		// An agent needs two or three streams; bound what one client can hold.
		grpc.MaxConcurrentStreams(100),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 12 * time.Second, Timeout: 4 * time.Second}),
	}
}

// Serve runs the coordinator until ctx ends, then stops gracefully.
func Serve(ctx context.Context, o ServeOptions) error {
	if o.DataDir == "" {
		return errors.New("--data-dir is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	ca, err := loadCA(o.DataDir)
	if err != nil {
		return err
	}
	serving, err := tls.LoadX509KeyPair(filepath.Join(o.DataDir, ServingCertFile), filepath.Join(o.DataDir, ServingKeyFile))
	if err != nil {
		return fmt.Errorf("serving cert in %s: %w", o.DataDir, err)
	}
	// Present the chain up to the CA: a node has no CA yet, only its pin, and
	// checks the pin against the CA it is shown before it sends anything.
	if last := serving.Certificate[len(serving.Certificate)-1]; !bytes.Equal(last, ca.Cert.Raw) {
		serving.Certificate = append(serving.Certificate, ca.Cert.Raw)
	}
	var addresses []string
	if data, err := os.ReadFile(filepath.Join(o.DataDir, AddressesFile)); err == nil {
		addresses = splitList(strings.ReplaceAll(string(data), "\n", ","))
	}
	var specYAML []byte
	if o.SpecFile != "" {
		if specYAML, err = os.ReadFile(o.SpecFile); err != nil {
			return fmt.Errorf("--spec: %w", err)
		}
	}
	st, err := openStore(ctx, o.DataDir, o.Etcd)
	if err != nil {
		return err
	}
	defer st.Close()
	m := metrics.New()
	srv, err := server.New(ctx, server.Config{
		Store: st, CA: ca, Addresses: addresses, DataDir: o.DataDir, Logger: o.Logger,
		Metrics: m, Now: o.Now, UnreachableAfter: o.UnreachableAfter, Lifetimes: o.Lifetimes,
	})
	if err != nil {
		return err
	}
	if specYAML != nil {
		if _, err := srv.ApplySpec(ctx, o.SpecFile, specYAML, false); err != nil {
			return fmt.Errorf("--spec: %w", err)
		}
	}

	creds := credentials.NewTLS(&tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{serving},
		// Bootstrap needs no client cert; Node and Admin services are
		// checked per RPC by the interceptors against the verified chain.
		ClientAuth: tls.VerifyClientCertIfGiven,
		ClientCAs:  ca.Pool(),
	})
	opts := append(GRPCServerOptions(creds),
		grpc.ChainUnaryInterceptor(srv.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(srv.StreamInterceptor()))
	g := grpc.NewServer(opts...)
	srv.Register(g)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	reflection.Register(g)

	lis := o.Listener
	if lis == nil {
		if lis, err = net.Listen("tcp", o.Listen); err != nil {
			return fmt.Errorf("--listen %s: %w", o.Listen, err)
		}
	}
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return srv.Run(ctx) })
	eg.Go(func() error { return g.Serve(lis) })
	if o.MetricsListen != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", m.Handler())
		hsrv := &http.Server{Addr: o.MetricsListen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		mlis, err := net.Listen("tcp", o.MetricsListen)
		if err != nil {
			g.Stop()
			return fmt.Errorf("--metrics-listen %s: %w", o.MetricsListen, err)
		}
		eg.Go(func() error {
			if err := hsrv.Serve(mlis); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		eg.Go(func() error {
			<-ctx.Done()
			return hsrv.Close()
		})
	}
	eg.Go(func() error {
		<-ctx.Done()
		hs.Shutdown()
		// Watch streams never end on their own: give unary calls a moment,
		// then cut the rest.
		done := make(chan struct{})
		go func() { g.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			g.Stop()
		}
		return nil
	})
	o.Logger.Info("coordinator serving", "listen", lis.Addr().String(), "ca_pin", ca.Pin(), "version", version.Version)
	if o.Ready != nil {
		o.Ready(lis.Addr())
	}
	err = eg.Wait()
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}
