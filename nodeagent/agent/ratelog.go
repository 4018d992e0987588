package agent

import (
	"log/slog"
	"sync"
	"time"
)

// rateLog logs a message under a key at most once per interval, unless the
// message changes: a node retrying every few seconds for an hour must not
// flood the journal, but a new problem is logged at once.
type rateLog struct {
	log      *slog.Logger
	interval time.Duration
	mu       sync.Mutex // guards last
	last     map[string]logged
}

type logged struct {
	msg string
	at  time.Time
}

func newRateLog(log *slog.Logger, interval time.Duration) *rateLog {
	return &rateLog{log: log, interval: interval, last: map[string]logged{}}
}

func (r *rateLog) allow(key, msg string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	if l, ok := r.last[key]; ok && l.msg == msg && now.Sub(l.at) < r.interval {
		return false
	}
	r.last[key] = logged{msg: msg, at: now}
	return true
}

// Warn logs at warning level, rate-limited per key.
func (r *rateLog) Warn(key, msg string, args ...any) {
	if r.allow(key, msg) {
		r.log.Warn(msg, args...)
	}
}

// Info logs at info level, rate-limited per key.
func (r *rateLog) Info(key, msg string, args ...any) {
	if r.allow(key, msg) {
		r.log.Info(msg, args...)
	}
}
