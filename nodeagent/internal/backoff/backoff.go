// Package backoff computes capped exponential retry delays with jitter, so a
// fleet of nodes powering on together spreads its retries instead of
// stampeding the coordinator.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Backoff hands out growing delays between Min and Max. The zero value is not
// usable; set Min and Max. Not safe for concurrent use.
type Backoff struct {
	Min, Max time.Duration
	attempt  int
}

// Next returns the delay before the next attempt: Min*2^n capped at Max, then
// jittered into [d/2, d] ("equal jitter"), so delays never collapse to zero
// but two nodes rarely retry in step.
func (b *Backoff) Next() time.Duration {
	d := b.Min
	for i := 0; i < b.attempt && d < b.Max; i++ {
		d *= 2
	}
	if d > b.Max {
		d = b.Max
	}
	b.attempt++
	half := d / 2
	if half <= 0 {
		return d
	}
	return half + rand.N(half+1)
}

// Reset starts over from Min, after a success.
func (b *Backoff) Reset() { b.attempt = 0 }

// Sleep waits for Next() or until ctx ends; it reports false when ctx ended.
func (b *Backoff) Sleep(ctx context.Context) bool {
	return SleepCtx(ctx, b.Next())
}

// SleepCtx waits d or until ctx ends; it reports false when ctx ended.
func SleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
