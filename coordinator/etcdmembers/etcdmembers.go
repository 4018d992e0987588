// Package etcdmembers changes a cluster's etcd membership through the etcd
// API, with the coordinator's datastore-client cert for that cluster's etcd CA.
package etcdmembers

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"slices"
	"sort"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Timeouts for one membership call and for one member's health probe.
const (
	dialTimeout   = 5 * time.Second
	probeTimeout  = time.Second
	promoteRetry  = 500 * time.Millisecond
	removeTimeout = 10 * time.Second
)

// ErrQuorum matches (errors.Is) Remove's refusal to break quorum.
var ErrQuorum = errors.New("would lose quorum")

// quorumError is the refusal itself; its message is complete on its own.
type quorumError struct{ msg string }

func (e *quorumError) Error() string        { return e.msg }
func (e *quorumError) Is(target error) bool { return target == ErrQuorum }

// Client talks to one cluster's etcd members.
type Client struct {
	Endpoints []string
	TLS       *tls.Config
}

// Member is one etcd member as the cluster sees it. A member added but never
// started has no Name yet.
type Member struct {
	ID         uint64
	Name       string
	PeerURLs   []string
	ClientURLs []string
	IsLearner  bool
}

func (c *Client) connect() (*clientv3.Client, error) {
	if len(c.Endpoints) == 0 {
		return nil, errors.New("etcdmembers: no etcd endpoints")
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   c.Endpoints,
		TLS:         c.TLS,
		DialTimeout: dialTimeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %v: %w", c.Endpoints, err)
	}
	return cli, nil
}

// Members lists the cluster's members (linearizable: it reflects every
// membership change that has been committed).
func (c *Client) Members(ctx context.Context) ([]Member, error) {
	cli, err := c.connect()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	return members(ctx, cli)
}

func members(ctx context.Context, cli *clientv3.Client) ([]Member, error) {
	resp, err := cli.MemberList(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcd member list: %w", err)
	}
	out := make([]Member, 0, len(resp.Members))
	for _, m := range resp.Members {
		out = append(out, Member{ID: m.ID, Name: m.Name, PeerURLs: m.PeerURLs, ClientURLs: m.ClientURLs, IsLearner: m.IsLearner})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// JoinCluster is the initial cluster a member joining with state "existing"
// must start with: every current member (by name and peer URLs) plus the
// joiner. etcd refuses a joiner whose list differs from the cluster's, so
// call it after AddLearner. Members that never started have no name yet; a
// name is not checked for them, so they are listed by peer URLs alone.
func (c *Client) JoinCluster(ctx context.Context, memberName string, peerURLs []string) ([]*kedgev1.EtcdMember, error) {
	ms, err := c.Members(ctx)
	if err != nil {
		return nil, err
	}
	var out []*kedgev1.EtcdMember
	found := false
	for _, m := range ms {
		name := m.Name
		if samePeers(m.PeerURLs, peerURLs) {
			name, found = memberName, true
		}
		out = append(out, &kedgev1.EtcdMember{Name: name, PeerUrls: m.PeerURLs, ClientUrls: m.ClientURLs})
	}
	if !found {
		return nil, fmt.Errorf("member %s (%v) is not in the etcd cluster yet; add it first", memberName, peerURLs)
	}
	return out, nil
}

// AddLearner adds a member as a learner before its node starts etcd. Adding a
// member whose peer URLs are already in the cluster does nothing, so a retry
// after a lost reply is safe.
func (c *Client) AddLearner(ctx context.Context, memberName string, peerURLs []string) error {
	if len(peerURLs) == 0 {
		return fmt.Errorf("add etcd learner %s: no peer URLs", memberName)
	}
	cli, err := c.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	ms, err := members(ctx, cli)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if samePeers(m.PeerURLs, peerURLs) {
			return nil
		}
		if m.Name == memberName {
			return fmt.Errorf("add etcd learner %s: a member of that name already exists with peer URLs %v; remove it first", memberName, m.PeerURLs)
		}
	}
	// etcd refuses reconfiguration until every member has been connected for
	// a few seconds (strict reconfig check), e.g. right after bootstrap or a
	// restart: that passes, so wait it out.
	for {
		_, err := cli.MemberAddAsLearner(ctx, peerURLs)
		if err == nil {
			return nil
		}
		if !sameErr(err, rpctypes.ErrGRPCUnhealthy) {
			return fmt.Errorf("add etcd learner %s: %w", memberName, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("add etcd learner %s: cluster still unhealthy: %w", memberName, err)
		case <-time.After(promoteRetry):
		}
	}
}

// sameErr matches an etcd server error whether it arrived typed or as a gRPC status.
func sameErr(err, grpcErr error) bool {
	return err != nil && rpctypes.ErrorDesc(err) == rpctypes.ErrorDesc(grpcErr)
}

// PromoteWhenReady promotes the named learner once it has caught up,
// retrying until it has or ctx ends. A member already promoted is fine.
func (c *Client) PromoteWhenReady(ctx context.Context, memberName string) error {
	cli, err := c.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	var last error
	for {
		last = c.tryPromote(ctx, cli, memberName)
		if last == nil {
			return nil
		}
		if !retryablePromote(last) {
			return last
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("promote etcd learner %s: gave up: %w", memberName, last)
		case <-time.After(promoteRetry):
		}
	}
}

var errNotStarted = errors.New("learner has not started yet (no member of that name)")

func (c *Client) tryPromote(ctx context.Context, cli *clientv3.Client, name string) error {
	ms, err := members(ctx, cli)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if m.Name != name {
			continue
		}
		if !m.IsLearner {
			return nil
		}
		_, err := cli.MemberPromote(ctx, m.ID)
		if errors.Is(err, rpctypes.ErrMemberNotLearner) {
			return nil
		}
		return err
	}
	return errNotStarted
}

func retryablePromote(err error) bool {
	if errors.Is(err, errNotStarted) || errors.Is(err, rpctypes.ErrMemberLearnerNotReady) {
		return true
	}
	// The same conditions arrive as gRPC errors from a remote member.
	return sameErr(err, rpctypes.ErrGRPCLearnerNotReady)
}

// Remove removes the named member. Unless force, it refuses when the cluster
// would be left without quorum, saying so. Removing a member that is not in
// the cluster does nothing: it is already removed.
func (c *Client) Remove(ctx context.Context, memberName string, force bool) error {
	cli, err := c.connect()
	if err != nil {
		return err
	}
	defer cli.Close()
	ms, err := members(ctx, cli)
	if err != nil {
		return err
	}
	idx := slices.IndexFunc(ms, func(m Member) bool { return m.Name == memberName })
	if idx < 0 {
		return nil
	}
	target := ms[idx]
	if !force && !target.IsLearner {
		// Only voters count toward quorum; a learner's removal never risks it.
		voters, healthy := 0, 0
		for _, m := range ms {
			if m.IsLearner || m.ID == target.ID {
				continue
			}
			voters++
			if c.memberHealthy(ctx, m) {
				healthy++
			}
		}
		quorum := voters/2 + 1
		if healthy < quorum {
			return &quorumError{fmt.Sprintf("removing %s would leave %d of %d members healthy and lose quorum (needs %d); use --force to remove anyway (the cluster stops accepting writes until quorum is restored)",
				memberName, healthy, voters, quorum)}
		}
	}
	rctx, cancel := context.WithTimeout(ctx, removeTimeout)
	defer cancel()
	if _, err := cli.MemberRemove(rctx, target.ID); err != nil {
		if errors.Is(err, rpctypes.ErrMemberNotFound) || sameErr(err, rpctypes.ErrGRPCMemberNotFound) {
			return nil
		}
		if sameErr(err, rpctypes.ErrGRPCMemberNotEnoughStarted) || sameErr(err, rpctypes.ErrGRPCUnhealthy) {
			// etcd's own strict reconfig check; --force does not override it.
			return fmt.Errorf("remove etcd member %s: etcd refused: too few of the other members have been connected to the leader for the last 5 s to remove a voter safely; bring members back (or wait a few seconds after a restart) and retry: %w", memberName, err)
		}
		return fmt.Errorf("remove etcd member %s: %w", memberName, err)
	}
	return nil
}

// memberHealthy: the member answers on its own client URL and follows a leader.
func (c *Client) memberHealthy(ctx context.Context, m Member) bool {
	if len(m.ClientURLs) == 0 {
		return false
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: m.ClientURLs, TLS: c.TLS, DialTimeout: probeTimeout, Logger: zap.NewNop(),
	})
	if err != nil {
		return false
	}
	defer cli.Close()
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	st, err := cli.Status(pctx, m.ClientURLs[0])
	return err == nil && st.Leader != 0 && len(st.Errors) == 0
}

func samePeers(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}
