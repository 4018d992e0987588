// Package server implements the coordinator's gRPC services (Bootstrap, Node,
// Admin) over the store: enrollment, authorisation by certificate identity,
// planning and plan fan-out, status, events and artifacts.
//
// State kept in memory: a cache of node records, plans and specs fed by ONE
// watch on the store prefix (so several coordinators on one external etcd
// see each other's writes, and plan changes fan out to every node's stream
// without per-node polling), plus each node's latest status and last-seen
// time, which only reach the store when the status really changes.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/kedge-io/kedge/coordinator/metrics"
	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/server/machine"
	"github.com/kedge-io/kedge/coordinator/store"
	"github.com/kedge-io/kedge/coordinator/tokens"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Config is what the services need.
type Config struct {
	Store *store.Store
	// CA is the coordinator CA: node identities, admins, serving cert.
	CA        *pki.CA
	Lifetimes pki.Lifetimes
	// Addresses are the coordinator's HOST:PORT addresses, for flash commands.
	Addresses []string
	// DataDir holds artifacts/.
	DataDir string
	Logger  *slog.Logger
	Metrics *metrics.Metrics
	// Now is the clock for TTLs and conditions; time.Now when nil.
	Now func() time.Time
	// UnreachableAfter: a node silent this long is Unreachable (default 30 s).
	UnreachableAfter time.Duration
	// Tick is how often conditions are re-derived (default 1 s).
	Tick time.Duration
}

// Server is the coordinator's gRPC services.
type Server struct {
	kedgev1.UnimplementedBootstrapServiceServer
	cfg     Config
	log     *slog.Logger
	store   *store.Store
	tokens  *tokens.Manager
	limiter *tokens.Limiter
	sealer  *pki.Sealer
	now     func() time.Time

	// mu guards the cache below and the subscriber sets.
	mu    sync.RWMutex
	nodes map[string]*cachedNode
	// Indexes for recognising machines at enrollment without a scan:
	// normalised MAC -> node names, machine-id -> node names.
	byMAC       map[string]map[string]struct{}
	byMachineID map[string]map[string]struct{}
	plans       map[string]*cachedPlan
	specs       map[string]*kedgev1.ClusterSpec
	joins       map[string]*kedgev1.EtcdPlan // by node: see joins.go
	joining     map[string]bool              // joins under way in this process
	subs        map[string]map[*planSub]struct{}
	started     time.Time
	pending     map[string]uint32 // unlimited tokens' uses not yet written
	dirty       map[string]bool   // clusters to re-plan
	kickCh      chan struct{}
	planMu      sync.Mutex // serialises re-planning in this process
	etcdCAMu    sync.Mutex
	etcdCAs     map[string]*pki.CA
	clientMu    sync.Mutex
	clients     map[string]tls.Certificate

	events *eventLog
	// stopped closes when Run returns, ending long-lived streams so a
	// graceful stop does not wait on them.
	stopped  chan struct{}
	stopOnce sync.Once
	// life ends when Run returns: background work (etcd joins) uses it.
	life    context.Context
	endLife context.CancelFunc
	// id names this coordinator process in the store's seen/ records.
	id string
	// lastShared is when shareSeen last ran; only the Run goroutine uses it.
	lastShared time.Time
	// peerSeenAt is when another coordinator's last-seen record last
	// arrived (guarded by mu); zero when this coordinator is alone.
	peerSeenAt time.Time
}

type cachedNode struct {
	node        *kedgev1.Node
	modRevision int64
	// In memory only: latest status and when the node was last heard from.
	status   *kedgev1.NodeStatus
	lastSeen time.Time
	// heardLocally is when this coordinator itself last got a report.
	heardLocally time.Time
	condition    kedgev1.NodeCondition
	reason       string
	// lostAt is when the node's last WatchPlan stream on this coordinator
	// ended with its connection (a power cut is seen by keepalive within
	// ~16 s); zero while a stream is open or none ever was.
	lostAt time.Time
}

type cachedPlan struct {
	plan        *kedgev1.Plan // Revision filled from modRevision
	modRevision int64
}

// New loads the store's state into memory. Call Run to start the watch and
// the periodic condition tick before serving.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.UnreachableAfter <= 0 {
		cfg.UnreachableAfter = 30 * time.Second
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Lifetimes == (pki.Lifetimes{}) {
		cfg.Lifetimes = pki.DefaultLifetimes()
	}
	sealer, err := pki.NewSealer(cfg.CA)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, store: cfg.Store, now: cfg.Now, sealer: sealer,
		tokens:  &tokens.Manager{Store: cfg.Store, Now: cfg.Now},
		limiter: tokens.NewLimiter(2*time.Second, 10),
		nodes:   map[string]*cachedNode{}, plans: map[string]*cachedPlan{}, specs: map[string]*kedgev1.ClusterSpec{},
		joins: map[string]*kedgev1.EtcdPlan{}, joining: map[string]bool{},
		subs: map[string]map[*planSub]struct{}{}, pending: map[string]uint32{}, dirty: map[string]bool{},
		kickCh: make(chan struct{}, 1), etcdCAs: map[string]*pki.CA{}, clients: map[string]tls.Certificate{},
		events: newEventLog(1000), stopped: make(chan struct{}), id: randomHex(8),
	}
	s.life, s.endLife = context.WithCancel(context.Background())
	if cfg.DataDir != "" {
		if err := os.MkdirAll(filepath.Join(cfg.DataDir, "artifacts"), 0o700); err != nil {
			return nil, fmt.Errorf("create artifacts dir: %w", err)
		}
	}
	if err := s.load(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Register adds the three services to g.
func (s *Server) Register(g *grpc.Server) {
	kedgev1.RegisterBootstrapServiceServer(g, s)
	kedgev1.RegisterNodeServiceServer(g, &nodeService{s: s})
	kedgev1.RegisterAdminServiceServer(g, &adminService{s: s})
}

// loadRevision is the store revision the cache reflects after load.
func (s *Server) load(ctx context.Context) error {
	s.started = s.now()
	nodes, ne, err := store.List(ctx, s.store, store.Nodes, func() *kedgev1.Node { return &kedgev1.Node{} })
	if err != nil {
		return err
	}
	statuses, se, err := store.List(ctx, s.store, store.Statuses, func() *kedgev1.NodeStatus { return &kedgev1.NodeStatus{} })
	if err != nil {
		return err
	}
	plans, pe, err := store.List(ctx, s.store, store.Plans, func() *kedgev1.Plan { return &kedgev1.Plan{} })
	if err != nil {
		return err
	}
	specs, spe, err := store.List(ctx, s.store, store.Specs, func() *kedgev1.ClusterSpec { return &kedgev1.ClusterSpec{} })
	if err != nil {
		return err
	}
	joins, je, err := store.List(ctx, s.store, store.EtcdJoins, func() *kedgev1.EtcdPlan { return &kedgev1.EtcdPlan{} })
	if err != nil {
		return err
	}
	// Plans are handed to putPlan after the cache is loaded, so streams
	// open across a reload get what changed while the watch was down.
	defer func() {
		for i, p := range plans {
			s.putPlan(p, pe[i].ModRevision)
		}
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, j := range joins {
		s.joins[strings.TrimPrefix(je[i].Key, store.EtcdJoins)] = j
	}
	for i, n := range nodes {
		n.EnrollSequence = uint64(ne[i].CreateRevision)
		if cn := s.nodes[n.Name]; cn != nil {
			// A reload keeps what only memory knows (heartbeats, the latest
			// status, conditions): RPCs may have arrived since the last load.
			if ne[i].ModRevision > cn.modRevision {
				cn.node, cn.modRevision = n, ne[i].ModRevision
			}
			continue
		}
		// After a restart nobody has been heard from yet; count the restart
		// as "seen" so nodes get a full silence period to reconnect.
		s.nodes[n.Name] = &cachedNode{node: n, modRevision: ne[i].ModRevision, lastSeen: s.started}
	}
	for i, st := range statuses {
		if cn := s.nodes[strings.TrimPrefix(se[i].Key, store.Statuses)]; cn != nil && cn.status == nil {
			cn.status = st
		}
	}
	for i, sp := range specs {
		s.specs[strings.TrimPrefix(spe[i].Key, store.Specs)] = sp
	}
	s.byMAC, s.byMachineID = map[string]map[string]struct{}{}, map[string]map[string]struct{}{}
	for _, n := range s.nodes {
		s.dirty[n.node.Cluster] = true
		s.indexLocked(nil, n.node)
	}
	for c := range s.specs {
		s.dirty[c] = true
	}
	return nil
}

// Run watches the store and re-derives conditions until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	defer s.stopOnce.Do(func() { close(s.stopped); s.endLife() })
	rev, err := s.store.Revision(ctx)
	if err == nil {
		// State may have changed between load and now; reload once so the
		// watch from rev+1 misses nothing.
		err = s.load(ctx)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: not a failure
		}
		return err
	}
	go s.planLoop(ctx)
	s.kick()
	tick := time.NewTicker(s.cfg.Tick)
	defer tick.Stop()
	for {
		changes := s.store.Watch(ctx, "", rev+1)
	watching:
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-tick.C:
				s.tick(ctx)
			case cs, ok := <-changes:
				if !ok {
					break watching
				}
				for _, c := range cs {
					s.applyChange(c)
					if c.ModRevision > rev {
						rev = c.ModRevision
					}
				}
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		// The watch ended (compaction, leader loss): reload and resume.
		s.log.Warn("store watch ended; reloading state")
		time.Sleep(time.Second)
		if r, err := s.store.Revision(ctx); err == nil {
			rev = r
			if err := s.load(ctx); err != nil {
				s.log.Error("reload after watch end", "err", err)
			}
		}
	}
}

// applyChange folds one watched write into the cache. Writes this process
// made were already applied; the mod revision check makes that idempotent.
func (s *Server) applyChange(c store.Change) {
	switch {
	case strings.HasPrefix(c.Key, store.Nodes):
		if c.Value == nil {
			return
		}
		n := &kedgev1.Node{}
		if proto.Unmarshal(c.Value, n) != nil {
			return
		}
		s.mu.Lock()
		s.putNodeLocked(n, c.ModRevision, 0)
		s.mu.Unlock()
	case strings.HasPrefix(c.Key, store.Plans):
		if c.Value == nil {
			return
		}
		p := &kedgev1.Plan{}
		if proto.Unmarshal(c.Value, p) != nil {
			return
		}
		s.putPlan(p, c.ModRevision)
	case strings.HasPrefix(c.Key, store.EtcdJoins):
		s.applyJoin(c)
		s.kick()
	case strings.HasPrefix(c.Key, store.Seen):
		s.applySeen(c)
	case strings.HasPrefix(c.Key, store.Statuses):
		// Another coordinator's node changed status; our own writes match
		// the cache already.
		st := &kedgev1.NodeStatus{}
		if c.Value == nil || proto.Unmarshal(c.Value, st) != nil {
			return
		}
		s.mu.Lock()
		if cn := s.nodes[strings.TrimPrefix(c.Key, store.Statuses)]; cn != nil && !statusEqual(cn.status, st) {
			cn.status = st
			s.dirty[cn.node.Cluster] = true
		}
		s.mu.Unlock()
	case strings.HasPrefix(c.Key, store.Specs):
		if c.Value == nil {
			return
		}
		sp := &kedgev1.ClusterSpec{}
		if proto.Unmarshal(c.Value, sp) != nil {
			return
		}
		cluster := strings.TrimPrefix(c.Key, store.Specs)
		s.mu.Lock()
		s.specs[cluster] = sp
		s.dirty[cluster] = true
		s.mu.Unlock()
		s.kick()
	}
}

// putNodeLocked stores n in the cache unless the cache holds a newer write.
// createRevision 0 keeps the known enroll sequence. Caller holds s.mu.
func (s *Server) putNodeLocked(n *kedgev1.Node, modRevision, createRevision int64) {
	cn := s.nodes[n.Name]
	if cn != nil && cn.modRevision >= modRevision {
		return
	}
	if cn == nil {
		cn = &cachedNode{lastSeen: s.now()}
		s.nodes[n.Name] = cn
		if createRevision == 0 {
			createRevision = modRevision
		}
	}
	if createRevision != 0 {
		n.EnrollSequence = uint64(createRevision)
	} else if cn.node != nil {
		n.EnrollSequence = cn.node.EnrollSequence
	}
	s.indexLocked(cn.node, n)
	cn.node, cn.modRevision = n, modRevision
	if n.State == kedgev1.NodeState_NODE_STATE_REMOVED {
		for sub := range s.subs[n.Name] {
			sub.closeRem.Do(func() { close(sub.removed) })
		}
	}
	s.dirty[n.Cluster] = true
	select {
	case s.kickCh <- struct{}{}:
	default:
	}
}

// putPlan stores p in the cache and hands it to the node's watchers.
func (s *Server) putPlan(p *kedgev1.Plan, modRevision int64) {
	p.Revision = uint64(modRevision)
	s.mu.Lock()
	cp := s.plans[p.NodeName]
	if cp != nil && cp.modRevision >= modRevision {
		s.mu.Unlock()
		return
	}
	s.plans[p.NodeName] = &cachedPlan{plan: p, modRevision: modRevision}
	subs := make([]*planSub, 0, len(s.subs[p.NodeName]))
	for sub := range s.subs[p.NodeName] {
		subs = append(subs, sub)
	}
	s.mu.Unlock()
	seen := time.Now()
	for _, sub := range subs {
		sub.offer(p, seen)
	}
}

// node returns a copy of the cached node record, or nil.
func (s *Server) node(name string) (*kedgev1.Node, int64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	cn := s.nodes[name]
	if cn == nil {
		return nil, 0
	}
	return proto.Clone(cn.node).(*kedgev1.Node), cn.modRevision
}

// plan returns the cached plan of node name (shared; do not modify), or nil.
func (s *Server) plan(name string) *kedgev1.Plan {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if cp := s.plans[name]; cp != nil {
		return cp.plan
	}
	return nil
}

// writeNode CAS-writes n over the cached revision and updates the cache.
func (s *Server) writeNode(ctx context.Context, n *kedgev1.Node, ifModRevision int64, extra ...store.Write) error {
	stored := proto.Clone(n).(*kedgev1.Node)
	clearDerived(stored)
	writes := append([]store.Write{{Key: store.Nodes + n.Name, Value: stored, IfModRevision: ifModRevision}}, extra...)
	rev, err := s.store.Commit(ctx, writes...)
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			s.refreshNode(ctx, n.Name)
		}
		return err
	}
	var create int64
	if ifModRevision == 0 {
		create = rev
	}
	s.mu.Lock()
	s.putNodeLocked(stored, rev, create)
	s.mu.Unlock()
	return nil
}

// refreshNode re-reads a node record after a conflict, so the retry sees
// what the other writer (maybe another coordinator) stored.
func (s *Server) refreshNode(ctx context.Context, name string) {
	n := &kedgev1.Node{}
	e, found, err := s.store.Get(ctx, store.Nodes+name, n)
	if err != nil || !found {
		return
	}
	s.mu.Lock()
	s.putNodeLocked(n, e.ModRevision, e.CreateRevision)
	s.mu.Unlock()
}

// clearDerived removes the fields filled on reads, which are not stored.
func clearDerived(n *kedgev1.Node) {
	n.Status, n.Condition, n.ConditionReason, n.LastSeen = nil, 0, "", nil
	n.PlanHash, n.PlanRevision, n.EnrollSequence = "", 0, 0
}

func (s *Server) kick() {
	select {
	case s.kickCh <- struct{}{}:
	default:
	}
}

// indexLocked moves a node's index entries from old to cur. Caller holds s.mu.
func (s *Server) indexLocked(old, cur *kedgev1.Node) {
	update := func(idx map[string]map[string]struct{}, keys []string, name string, add bool) {
		for _, k := range keys {
			if k == "" {
				continue
			}
			if add {
				if idx[k] == nil {
					idx[k] = map[string]struct{}{}
				}
				idx[k][name] = struct{}{}
			} else if idx[k] != nil {
				delete(idx[k], name)
				if len(idx[k]) == 0 {
					delete(idx, k)
				}
			}
		}
	}
	if old != nil {
		update(s.byMAC, machine.NormMACs(old.Facts.GetMacs()), old.Name, false)
		update(s.byMachineID, []string{old.Facts.GetMachineId()}, old.Name, false)
	}
	update(s.byMAC, machine.NormMACs(cur.Facts.GetMacs()), cur.Name, true)
	update(s.byMachineID, []string{cur.Facts.GetMachineId()}, cur.Name, true)
}
