package etcdrole

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Run runs one etcd member from the config at configPath until ctx ends,
// notifying systemd READY once the member serves. `kedge-nodeagent etcd` calls it.
func Run(ctx context.Context, configPath string) error {
	cfg, err := LoadConfig(configPath)
	if err != nil {
		return err
	}
	// etcd logs through its own zap logger to stderr, which systemd sends to
	// the journal under kedge-etcd.service.
	lg, err := zap.NewProduction()
	if err != nil {
		return fmt.Errorf("etcd logger: %w", err)
	}
	defer func() { _ = lg.Sync() }()
	// Tell systemd the stop it asked for is under way (etcd hands over
	// leadership first, which can take a moment).
	stopping := context.AfterFunc(ctx, func() { _, _ = daemon.SdNotify(false, daemon.SdNotifyStopping) })
	defer stopping()
	return RunMember(ctx, cfg, lg, func() {
		// (false, nil) outside systemd is normal: nothing to tell.
		if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
			lg.Warn("sd_notify READY failed", zap.Error(err))
		}
	})
}

// RunMember runs the member described by cfg until ctx ends or etcd fails,
// calling ready (if not nil) once the member has joined its cluster and serves
// clients. lg receives etcd's logs. A clean stop (ctx done) returns nil.
func RunMember(ctx context.Context, cfg *Config, lg *zap.Logger, ready func()) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	ecfg, err := embedConfig(cfg, lg)
	if err != nil {
		return err
	}
	// The data dir holds every key K3s stores (secrets included): 0700,
	// tightened if an earlier run or an image left it looser.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create etcd data dir: %w", err)
	}
	if err := os.Chmod(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("etcd data dir: %w", err)
	}
	e, err := embed.StartEtcd(ecfg)
	if err != nil {
		return fmt.Errorf("start etcd member %s: %w", cfg.Name, err)
	}
	defer e.Close()

	select {
	case <-e.Server.ReadyNotify():
	case <-e.Server.StopNotify():
		return fmt.Errorf("etcd member %s stopped before it was ready: %w", cfg.Name, serverErr(e))
	case err := <-e.Err():
		return fmt.Errorf("etcd member %s: %w", cfg.Name, err)
	case <-ctx.Done():
		// Stopping while waiting for peers is a normal shutdown, not a failure.
		return nil
	}
	lg.Info("etcd member ready", zap.String("name", cfg.Name), zap.String("id", e.Server.MemberID().String()))
	if ready != nil {
		ready()
	}

	select {
	case <-ctx.Done():
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd member %s: %w", cfg.Name, err)
	case <-e.Server.StopNotify():
		return fmt.Errorf("etcd member %s stopped: %w", cfg.Name, serverErr(e))
	}
}

func serverErr(e *embed.Etcd) error {
	select {
	case err := <-e.Err():
		if err != nil {
			return err
		}
	default:
	}
	return errors.New("no error reported (removed from the cluster?)")
}

func embedConfig(cfg *Config, lg *zap.Logger) (*embed.Config, error) {
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	var err error
	for _, f := range []struct {
		field string
		in    []string
		out   *[]url.URL
	}{
		{"listenClientURLs", cfg.ListenClientURLs, &ec.ListenClientUrls},
		{"advertiseClientURLs", cfg.AdvertiseClientURLs, &ec.AdvertiseClientUrls},
		{"listenPeerURLs", cfg.ListenPeerURLs, &ec.ListenPeerUrls},
		{"advertisePeerURLs", cfg.AdvertisePeerURLs, &ec.AdvertisePeerUrls},
	} {
		if *f.out, err = parseHTTPSURLs(f.in); err != nil {
			return nil, fmt.Errorf("field %s: %w", f.field, err)
		}
	}
	ec.InitialCluster = cfg.InitialCluster
	ec.ClusterState = cfg.InitialClusterState
	ec.InitialClusterToken = cfg.InitialClusterToken
	ec.QuotaBackendBytes = cfg.QuotaBackendBytes
	ec.SnapshotCount = cfg.SnapshotCount
	ec.TickMs = uint(cfg.HeartbeatIntervalMs)
	ec.ElectionMs = uint(cfg.ElectionTimeoutMs)
	// Both ports demand a client cert from the cluster's etcd CA. Cert and
	// key files are re-read on every handshake (transport.TLSInfo's
	// GetCertificate/GetClientCertificate), so a renewed cert takes effect
	// without a restart; the CA pool is read once at start.
	ec.ClientTLSInfo = transport.TLSInfo{
		CertFile:       cfg.TLS.ServerCertFile,
		KeyFile:        cfg.TLS.ServerKeyFile,
		TrustedCAFile:  cfg.TLS.CAFile,
		ClientCertAuth: true,
	}
	ec.PeerTLSInfo = transport.TLSInfo{
		CertFile:       cfg.TLS.PeerCertFile,
		KeyFile:        cfg.TLS.PeerKeyFile,
		TrustedCAFile:  cfg.TLS.CAFile,
		ClientCertAuth: true,
	}
	ec.Logger = "zap"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	// No metrics/pprof listeners: nothing listens that is not behind TLS.
	ec.ListenMetricsUrls = nil
	return ec, nil
}
