package tokens

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/store"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newManager(t *testing.T) (*Manager, *clock) {
	t.Helper()
	s, err := store.OpenEmbedded(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	c := &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	return &Manager{Store: s, Now: c.Now}, c
}

func wantRefusal(t *testing.T, err error, msg string) {
	t.Helper()
	r, ok := IsRefusal(err)
	if !ok || r.Msg != msg {
		t.Errorf("refusal = %v; want %q", err, msg)
	}
}

func TestRefusalReasons(t *testing.T) {
	m, clk := newManager(t)
	ctx := context.Background()
	tok, rec, err := m.Create(ctx, Options{Cluster: "edge-1", TTL: time.Hour, MaxUses: 1})
	if err != nil {
		t.Fatal(err)
	}
	id, secret, ok := Split(tok)
	if !ok || id != rec.Id || len(secret) != 16 {
		t.Fatalf("token %q is not id.secret", tok)
	}

	_, err = m.Check(ctx, id+".0000000000000000", "")
	wantRefusal(t, err, "unknown token")
	_, err = m.Check(ctx, "zzzzzz."+secret, "")
	wantRefusal(t, err, "unknown token")
	_, err = m.Check(ctx, tok, "edge-2")
	wantRefusal(t, err, "token is for cluster edge-1, not edge-2")

	c, err := m.Check(ctx, tok, "edge-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Store.Commit(ctx, UseWrite(c)); err != nil {
		t.Fatal(err)
	}
	_, err = m.Check(ctx, tok, "")
	wantRefusal(t, err, "token used up")

	tok2, _, _ := m.Create(ctx, Options{Cluster: "edge-1", TTL: time.Hour})
	clk.Add(time.Hour)
	_, err = m.Check(ctx, tok2, "")
	wantRefusal(t, err, "token expired at 2026-01-02T04:04:05Z")

	tok3, rec3, _ := m.Create(ctx, Options{Cluster: "edge-1", TTL: time.Hour})
	if err := m.Revoke(ctx, rec3.Id); err != nil {
		t.Fatal(err)
	}
	_, err = m.Check(ctx, tok3, "")
	wantRefusal(t, err, "token revoked")
	if err := m.Revoke(ctx, "nosuch"); !errors.Is(err, ErrNotFound) {
		t.Errorf("revoke unknown: %v", err)
	}
}

func TestOnlyHashStored(t *testing.T) {
	m, _ := newManager(t)
	ctx := context.Background()
	tok, rec, _ := m.Create(ctx, Options{Cluster: "c", TTL: time.Hour})
	_, secret, _ := Split(tok)
	var st kedgev1.StoredToken
	if _, _, err := m.Store.Get(ctx, Key(rec.Id), &st); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(secret))
	if string(st.SecretSha256) != string(sum[:]) || strings.Contains(st.String(), secret) {
		t.Error("stored token is not just the secret's SHA-256")
	}
}

// Concurrent enrollments with a 3-use token: exactly 3 commits succeed.
func TestUseCountUnderConcurrency(t *testing.T) {
	m, _ := newManager(t)
	ctx := context.Background()
	tok, _, _ := m.Create(ctx, Options{Cluster: "c", TTL: time.Hour, MaxUses: 3})
	var mu sync.Mutex
	used, refused := 0, 0
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := m.Check(ctx, tok, "c")
				if err != nil {
					mu.Lock()
					refused++
					mu.Unlock()
					return
				}
				_, err = m.Store.Commit(ctx, UseWrite(c))
				if errors.Is(err, store.ErrConflict) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				used++
				mu.Unlock()
				return
			}
		}()
	}
	wg.Wait()
	if used != 3 || refused != 7 {
		t.Errorf("used %d, refused %d; want 3 and 7", used, refused)
	}
}

func TestLimiter(t *testing.T) {
	l := NewLimiter(time.Hour, 3)
	for range 3 {
		if l.Blocked("10.0.0.1") {
			t.Fatal("blocked before the burst was used")
		}
		l.Failed("10.0.0.1")
	}
	if !l.Blocked("10.0.0.1") {
		t.Error("not blocked after 3 failures")
	}
	if l.Blocked("10.0.0.2") {
		t.Error("another address is blocked")
	}
}
