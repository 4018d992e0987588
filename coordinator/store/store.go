// Package store keeps the coordinator's state in etcd: protobuf values under
// one key prefix, compare-and-swap transactions wherever two coordinators on
// one external etcd could race, and watches for fan-out. The default is an
// embedded single-member etcd in the coordinator's data dir.
package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/protobuf/proto"
)

// Prefix is where every kedge key lives, versioned so a later layout can
// coexist during a migration.
const Prefix = "/kedge/v1/"

// Key prefixes, relative to Prefix.
const (
	Nodes       = "nodes/"
	Tokens      = "tokens/"
	Specs       = "specs/"
	Secrets     = "secrets/"
	Plans       = "plans/"
	EtcdCAs     = "etcdca/"
	Refused     = "refused/"
	Statuses    = "status/"
	Kubeconfigs = "kubeconfigs/"
	Artifacts   = "artifacts/"
	// Seen holds, per coordinator, when it last heard from each of its nodes.
	Seen = "seen/"
	// EtcdJoins holds, per node, the member list an etcd member added to a
	// running cluster was told to start with (an EtcdPlan).
	EtcdJoins = "etcdjoins/"
)

// ErrConflict means a compare in a transaction failed: someone else wrote
// first. Re-read and retry.
var ErrConflict = errors.New("store: concurrent update; retry")

// Store is the coordinator's etcd-backed state.
type Store struct {
	cli   *clientv3.Client
	close func()
}

// OpenEmbedded starts a single-member etcd in dataDir/etcd, reachable only on
// loopback (a free port), logging through its own zap logger at warn level,
// and connects to it.
func OpenEmbedded(ctx context.Context, dataDir string) (*Store, error) {
	dir := filepath.Join(dataDir, "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create etcd dir: %w", err)
	}
	cfg := embed.NewConfig()
	cfg.Name = "kedge-coordinator"
	cfg.Dir = dir
	// Port 0: the kernel picks free ports; the single member never needs to
	// be found by a peer, and we read the bound client address back below.
	local, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls = []url.URL{*local}
	cfg.AdvertiseClientUrls = []url.URL{*local}
	cfg.ListenPeerUrls = []url.URL{*local}
	cfg.AdvertisePeerUrls = []url.URL{*local}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ListenMetricsUrls = nil
	// Plans and statuses are rewritten for the life of the fleet: without
	// compaction the history grows until etcd's space quota stops all writes.
	// An hour of history is plenty for watches to resume from.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "1h"
	zcfg := zap.NewProductionConfig()
	zcfg.Level = zap.NewAtomicLevelAt(zapcore.WarnLevel)
	zcfg.Sampling = nil
	lg, err := zcfg.Build()
	if err != nil {
		return nil, err
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	cfg.LogLevel = "warn"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", dir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-e.Server.StopNotify():
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s stopped while starting", dir)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd in %s not ready after 60s", dir)
	}
	addr := e.Clients[0].Addr().String()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"http://" + addr},
		DialTimeout: 5 * time.Second,
		Logger:      lg,
	})
	if err != nil {
		e.Close()
		return nil, err
	}
	return &Store{cli: cli, close: func() {
		cli.Close()
		// etcd logs its listeners closing at error level on the way down:
		// noise on every clean stop, so raise the bar before closing.
		zcfg.Level.SetLevel(zapcore.FatalLevel)
		e.Close()
		_ = lg.Sync()
	}}, nil
}

// OpenExternal connects to an external etcd cluster with client TLS.
func OpenExternal(endpoints []string, caFile, certFile, keyFile string) (*Store, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("--etcd-endpoints is empty")
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-cafile: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--etcd-cafile %s: no PEM certificate in it", caFile)
		}
		tlsCfg.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("--etcd-certfile/--etcd-keyfile: %w", err)
		}
		tlsCfg.Certificates = []tls.Certificate{cert}
	}
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	for _, ep := range endpoints {
		if strings.HasPrefix(ep, "https://") {
			cfg.TLS = tlsCfg
		}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	return &Store{cli: cli, close: func() { cli.Close() }}, nil
}

// Close disconnects and, for the embedded etcd, stops it.
func (s *Store) Close() { s.close() }

// Client is the raw etcd client, for callers that need more than this API.
func (s *Store) Client() *clientv3.Client { return s.cli }

// Entry is one stored value with its revisions.
type Entry struct {
	Key         string // relative to Prefix
	ModRevision int64
	// CreateRevision orders records by creation (e.g. enrollment order).
	CreateRevision int64
}

// Get reads key into msg. found is false (and rev 0) when the key is absent.
func (s *Store) Get(ctx context.Context, key string, msg proto.Message) (e Entry, found bool, err error) {
	resp, err := s.cli.Get(ctx, Prefix+key)
	if err != nil {
		return Entry{}, false, fmt.Errorf("store get %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return Entry{}, false, nil
	}
	kv := resp.Kvs[0]
	if err := proto.Unmarshal(kv.Value, msg); err != nil {
		return Entry{}, false, fmt.Errorf("store get %s: decode: %w", key, err)
	}
	return Entry{Key: key, ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision}, true, nil
}

// List reads every value under prefix, in key order; newMsg makes an empty value.
func List[M proto.Message](ctx context.Context, s *Store, prefix string, newMsg func() M) ([]M, []Entry, error) {
	resp, err := s.cli.Get(ctx, Prefix+prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, nil, fmt.Errorf("store list %s: %w", prefix, err)
	}
	msgs := make([]M, 0, len(resp.Kvs))
	entries := make([]Entry, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		m := newMsg()
		if err := proto.Unmarshal(kv.Value, m); err != nil {
			return nil, nil, fmt.Errorf("store list %s: decode %s: %w", prefix, kv.Key, err)
		}
		msgs = append(msgs, m)
		entries = append(entries, Entry{Key: strings.TrimPrefix(string(kv.Key), Prefix), ModRevision: kv.ModRevision, CreateRevision: kv.CreateRevision})
	}
	return msgs, entries, nil
}

// AnyRevision in Write.IfModRevision writes unconditionally.
const AnyRevision int64 = -1

// Write is one put (Value set) or delete (Value nil) in a transaction.
type Write struct {
	Key   string
	Value proto.Message
	// IfModRevision guards the write: the key's mod revision must equal it;
	// 0 means the key must not exist; AnyRevision means no guard.
	IfModRevision int64
}

// Commit applies writes atomically. If any guard fails nothing is written
// and the error is ErrConflict. It returns the transaction's revision.
func (s *Store) Commit(ctx context.Context, writes ...Write) (int64, error) {
	var cmps []clientv3.Cmp
	var ops []clientv3.Op
	for _, w := range writes {
		k := Prefix + w.Key
		if w.IfModRevision != AnyRevision {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", w.IfModRevision))
		}
		if w.Value == nil {
			ops = append(ops, clientv3.OpDelete(k))
			continue
		}
		data, err := proto.Marshal(w.Value)
		if err != nil {
			return 0, fmt.Errorf("store put %s: encode: %w", w.Key, err)
		}
		ops = append(ops, clientv3.OpPut(k, string(data)))
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return 0, fmt.Errorf("store commit: %w", err)
	}
	if !resp.Succeeded {
		return 0, ErrConflict
	}
	return resp.Header.Revision, nil
}

// Put writes one value unconditionally.
func (s *Store) Put(ctx context.Context, key string, msg proto.Message) (int64, error) {
	return s.Commit(ctx, Write{Key: key, Value: msg, IfModRevision: AnyRevision})
}

// Delete removes keys under prefix.
func (s *Store) DeletePrefix(ctx context.Context, prefix string) error {
	_, err := s.cli.Delete(ctx, Prefix+prefix, clientv3.WithPrefix())
	return err
}

// Change is one watched write: Value nil for a delete.
type Change struct {
	Key         string
	ModRevision int64
	Value       []byte
}

// Watch streams changes under prefix after fromRevision (0: from now) until
// ctx ends. The channel closes when the watch ends; callers re-list and
// re-watch (the etcd client already retries transient failures).
func (s *Store) Watch(ctx context.Context, prefix string, fromRevision int64) <-chan []Change {
	opts := []clientv3.OpOption{clientv3.WithPrefix()}
	if fromRevision > 0 {
		opts = append(opts, clientv3.WithRev(fromRevision))
	}
	wch := s.cli.Watch(clientv3.WithRequireLeader(ctx), Prefix+prefix, opts...)
	out := make(chan []Change, 16)
	go func() {
		defer close(out)
		for resp := range wch {
			if resp.Err() != nil {
				return
			}
			changes := make([]Change, 0, len(resp.Events))
			for _, ev := range resp.Events {
				c := Change{Key: strings.TrimPrefix(string(ev.Kv.Key), Prefix), ModRevision: ev.Kv.ModRevision}
				if ev.Type == clientv3.EventTypePut {
					c.Value = ev.Kv.Value
				}
				changes = append(changes, c)
			}
			select {
			case out <- changes:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// Revision is the store's current revision.
func (s *Store) Revision(ctx context.Context) (int64, error) {
	resp, err := s.cli.Get(ctx, Prefix+"revision-probe")
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// TrimPrefix deletes the oldest keys (in key order) under prefix beyond keep.
func (s *Store) TrimPrefix(ctx context.Context, prefix string, keep int) error {
	resp, err := s.cli.Get(ctx, Prefix+prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || resp.Count <= int64(keep) {
		return err
	}
	old, err := s.cli.Get(ctx, Prefix+prefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend), clientv3.WithLimit(resp.Count-int64(keep)))
	if err != nil {
		return err
	}
	for _, kv := range old.Kvs {
		if _, err := s.cli.Delete(ctx, string(kv.Key)); err != nil {
			return err
		}
	}
	return nil
}

// PutWithTTL writes a value that etcd deletes after ttl unless written again:
// for liveness records of processes that may die without cleaning up.
func (s *Store) PutWithTTL(ctx context.Context, key string, msg proto.Message, ttl time.Duration) error {
	data, err := proto.Marshal(msg)
	if err != nil {
		return err
	}
	lease, err := s.cli.Grant(ctx, int64(max(ttl/time.Second, 1)))
	if err != nil {
		return fmt.Errorf("store lease for %s: %w", key, err)
	}
	_, err = s.cli.Put(ctx, Prefix+key, string(data), clientv3.WithLease(lease.ID))
	return err
}
