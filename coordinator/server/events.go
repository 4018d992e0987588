package server

import (
	"context"
	"log/slog"
	"sync"

	"google.golang.org/protobuf/types/known/timestamppb"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// eventLog is a bounded in-memory ring of recent events plus followers.
// Events are this coordinator's view; they are not stored.
type eventLog struct {
	mu        sync.Mutex
	ring      []*kedgev1.Event
	next      int
	full      bool
	followers map[chan *kedgev1.Event]struct{}
}

func newEventLog(size int) *eventLog {
	return &eventLog{ring: make([]*kedgev1.Event, size), followers: map[chan *kedgev1.Event]struct{}{}}
}

func (l *eventLog) add(e *kedgev1.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ring[l.next] = e
	l.next = (l.next + 1) % len(l.ring)
	if l.next == 0 {
		l.full = true
	}
	for ch := range l.followers {
		select {
		case ch <- e:
		default: // a slow follower misses events rather than stall the coordinator
		}
	}
}

// snapshot returns the ring in order and, if follow, a channel of new events.
func (l *eventLog) snapshot(follow bool) ([]*kedgev1.Event, chan *kedgev1.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*kedgev1.Event
	if l.full {
		out = append(out, l.ring[l.next:]...)
	}
	out = append(out, l.ring[:l.next]...)
	if !follow {
		return out, nil
	}
	ch := make(chan *kedgev1.Event, 256)
	l.followers[ch] = struct{}{}
	return out, ch
}

func (l *eventLog) unfollow(ch chan *kedgev1.Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.followers, ch)
}

// event records and logs an event.
func (s *Server) event(t kedgev1.EventType, cluster, node, msg string) {
	s.events.add(&kedgev1.Event{At: timestamppb.New(s.now()), Type: t, Cluster: cluster, Node: node, Message: msg})
	level := slog.LevelInfo
	if t == kedgev1.EventType_EVENT_TYPE_PLAN_RELEASED {
		// One per node on a fleet-wide change: thousands of lines. The event
		// stream still carries them.
		level = slog.LevelDebug
	}
	s.log.Log(context.Background(), level, msg, "event", t.String(), "cluster", cluster, "node", node)
}
