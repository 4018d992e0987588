package server

import (
	"context"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kedge-io/kedge/coordinator/store"
)

// Sharing last-seen times between coordinators. Heartbeats stay in memory
// (writing each would be thousands of writes a second), but a node connected
// to coordinator A must not look Unreachable to coordinator B, or the two
// would plan differently and fight over the plans. So each coordinator
// writes, every third of the Unreachable period, ONE record of the nodes it
// heard from since its last record (node -> unix ms), under a lease so a dead
// coordinator's record disappears; the others fold it in by the watch.

func (s *Server) shareInterval() time.Duration {
	return max(s.cfg.UnreachableAfter/3, time.Second)
}

// shareSeen writes this coordinator's record if it is due and non-empty.
func (s *Server) shareSeen(ctx context.Context) {
	now := s.now()
	if now.Sub(s.lastShared) < s.shareInterval() {
		return
	}
	since := s.lastShared
	s.lastShared = now
	fields := map[string]*structpb.Value{}
	s.mu.RLock()
	for name, cn := range s.nodes {
		if cn.heardLocally.After(since) {
			fields[name] = structpb.NewNumberValue(float64(cn.heardLocally.UnixMilli()))
		}
	}
	s.mu.RUnlock()
	if len(fields) == 0 {
		return
	}
	if err := s.store.PutWithTTL(ctx, store.Seen+s.id, &structpb.Struct{Fields: fields}, 3*s.shareInterval()); err != nil {
		s.log.Warn("share last-seen times", "err", err)
	}
}

// applySeen folds another coordinator's record into the cache.
func (s *Server) applySeen(c store.Change) {
	if c.Value == nil || strings.TrimPrefix(c.Key, store.Seen) == s.id {
		return
	}
	var rec structpb.Struct
	if proto.Unmarshal(c.Value, &rec) != nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peerSeenAt = s.now()
	for name, v := range rec.Fields {
		cn := s.nodes[name]
		if cn == nil {
			continue
		}
		if t := time.UnixMilli(int64(v.GetNumberValue())); t.After(cn.lastSeen) {
			cn.lastSeen = t
		}
	}
}
