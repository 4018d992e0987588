// Package tokens manages bootstrap tokens: "id.secret" (6 and 16 lowercase
// alphanumerics, like kubeadm), of which only the SHA-256 of the secret is
// stored. Checks compare in constant time against an injected clock, and
// refusals say why in one line a person understands.
package tokens

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kedge-io/kedge/coordinator/store"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"

var format = regexp.MustCompile(`^([a-z0-9]{6})\.([a-z0-9]{16})$`)

// Refusal is why a token was not accepted; its message is the one line shown
// to the node and the operator. It never contains the secret.
type Refusal struct {
	// Reason is a short, fixed label for metrics: unknown, expired, used_up,
	// revoked, wrong_cluster, malformed.
	Reason string
	Msg    string
}

func (r *Refusal) Error() string { return r.Msg }

// IsRefusal reports whether err is a token refusal, returning it.
func IsRefusal(err error) (*Refusal, bool) {
	var r *Refusal
	ok := errors.As(err, &r)
	return r, ok
}

// Manager creates, checks and revokes tokens in the store.
type Manager struct {
	Store *store.Store
	// Now is the clock TTLs are checked against.
	Now func() time.Time
}

// Key is the store key of token id.
func Key(id string) string { return store.Tokens + id }

func randomString(n int) (string, error) {
	b := make([]byte, n)
	max := big.NewInt(int64(len(alphabet)))
	for i := range b {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			return "", err
		}
		b[i] = alphabet[v.Int64()]
	}
	return string(b), nil
}

// Split parses "id.secret".
func Split(token string) (id, secret string, ok bool) {
	m := format.FindStringSubmatch(token)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// Options describe a new token.
type Options struct {
	Cluster string
	TTL     time.Duration
	// MaxUses 0 is unlimited, 1 single use.
	MaxUses         uint32
	RequireApproval bool
	Description     string
}

// Create stores a new token and returns it as "id.secret" (shown once).
func (m *Manager) Create(ctx context.Context, o Options) (string, *kedgev1.BootstrapToken, error) {
	if o.Cluster == "" {
		return "", nil, errors.New("cluster is empty; name the cluster the token enrolls into")
	}
	if o.TTL <= 0 {
		return "", nil, fmt.Errorf("ttl %v must be positive", o.TTL)
	}
	for range 5 {
		id, err := randomString(6)
		if err != nil {
			return "", nil, err
		}
		secret, err := randomString(16)
		if err != nil {
			return "", nil, err
		}
		now := m.Now()
		sum := sha256.Sum256([]byte(secret))
		rec := &kedgev1.BootstrapToken{
			Id: id, Cluster: o.Cluster, MaxUses: o.MaxUses, RequireApproval: o.RequireApproval,
			Description: o.Description, CreatedAt: timestamppb.New(now), ExpiresAt: timestamppb.New(now.Add(o.TTL)),
		}
		_, err = m.Store.Commit(ctx, store.Write{Key: Key(id), Value: &kedgev1.StoredToken{Token: rec, SecretSha256: sum[:]}, IfModRevision: 0})
		if errors.Is(err, store.ErrConflict) {
			continue // id collision: draw again
		}
		if err != nil {
			return "", nil, err
		}
		return id + "." + secret, rec, nil
	}
	return "", nil, errors.New("could not draw an unused token id")
}

// Checked is a token that passed Check, with what UseWrite needs.
type Checked struct {
	Stored      *kedgev1.StoredToken
	ModRevision int64
}

// Check validates token for an enrollment into cluster (empty: any). The
// error is a *Refusal for every reason a person should see.
func (m *Manager) Check(ctx context.Context, token, cluster string) (*Checked, error) {
	id, secret, ok := Split(token)
	if !ok {
		return nil, &Refusal{Reason: "malformed", Msg: "unknown token (want the form abcdef.0123456789abcdef)"}
	}
	var st kedgev1.StoredToken
	e, found, err := m.Store.Get(ctx, Key(id), &st)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(secret))
	if !found || subtle.ConstantTimeCompare(sum[:], st.SecretSha256) != 1 {
		// One message for an unknown id and a wrong secret: which ids exist is
		// nobody's business.
		return nil, &Refusal{Reason: "unknown", Msg: "unknown token"}
	}
	return &Checked{Stored: &st, ModRevision: e.ModRevision}, m.Usable(st.Token, cluster)
}

// Usable says why rec cannot enroll into cluster (empty: any) now, or nil.
func (m *Manager) Usable(rec *kedgev1.BootstrapToken, cluster string) error {
	switch {
	case rec.Revoked:
		return &Refusal{Reason: "revoked", Msg: "token revoked"}
	case !m.Now().Before(rec.ExpiresAt.AsTime()):
		return &Refusal{Reason: "expired", Msg: "token expired at " + rec.ExpiresAt.AsTime().UTC().Format(time.RFC3339)}
	case rec.MaxUses > 0 && rec.Uses >= rec.MaxUses:
		return &Refusal{Reason: "used_up", Msg: "token used up"}
	case cluster != "" && rec.Cluster != cluster:
		return &Refusal{Reason: "wrong_cluster", Msg: fmt.Sprintf("token is for cluster %s, not %s", rec.Cluster, cluster)}
	}
	return nil
}

// UseWrite is the store write that consumes one use of c. Put it in the
// same transaction as the node record: if another enrollment used the token
// meanwhile, the guard fails and the caller re-checks (maybe now used up).
func UseWrite(c *Checked) store.Write {
	next := &kedgev1.StoredToken{Token: proto.Clone(c.Stored.Token).(*kedgev1.BootstrapToken), SecretSha256: c.Stored.SecretSha256}
	next.Token.Uses++
	return store.Write{Key: Key(next.Token.Id), Value: next, IfModRevision: c.ModRevision}
}

// List returns every token record, without secrets.
func (m *Manager) List(ctx context.Context) ([]*kedgev1.BootstrapToken, error) {
	sts, _, err := store.List(ctx, m.Store, store.Tokens, func() *kedgev1.StoredToken { return &kedgev1.StoredToken{} })
	if err != nil {
		return nil, err
	}
	out := make([]*kedgev1.BootstrapToken, len(sts))
	for i, st := range sts {
		out[i] = st.Token
	}
	return out, nil
}

// ErrNotFound is returned by Revoke for an unknown id.
var ErrNotFound = errors.New("no such token")

// Revoke marks token id revoked; nodes it enrolled keep their identities.
func (m *Manager) Revoke(ctx context.Context, id string) error {
	for {
		var st kedgev1.StoredToken
		e, found, err := m.Store.Get(ctx, Key(id), &st)
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("token %q: %w; list ids with kedgectl token list", id, ErrNotFound)
		}
		st.Token.Revoked = true
		_, err = m.Store.Commit(ctx, store.Write{Key: Key(id), Value: &st, IfModRevision: e.ModRevision})
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
}

// Limiter rate-limits failed enrollments per source address, so guessing
// tokens from one address is slow while honest nodes are unaffected.
type Limiter struct {
	mu      sync.Mutex
	perAddr map[string]*rate.Limiter
	every   rate.Limit
	burst   int
}

// NewLimiter allows burst failures, then one per interval, per address.
func NewLimiter(interval time.Duration, burst int) *Limiter {
	return &Limiter{perAddr: map[string]*rate.Limiter{}, every: rate.Every(interval), burst: burst}
}

// Blocked reports whether addr has used up its failure allowance.
func (l *Limiter) Blocked(addr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.perAddr[addr]
	return ok && lim.Tokens() < 1
}

// Failed records a failure from addr.
func (l *Limiter) Failed(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.perAddr[addr]
	if !ok {
		if len(l.perAddr) > 100000 {
			// Bound memory under a spray of addresses: start over.
			l.perAddr = map[string]*rate.Limiter{}
		}
		lim = rate.NewLimiter(l.every, l.burst)
		l.perAddr[addr] = lim
	}
	lim.Allow()
}
