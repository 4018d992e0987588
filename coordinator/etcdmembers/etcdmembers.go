// Package etcdmembers changes a cluster's etcd membership through the etcd
// API, with the coordinator's datastore-client cert for that cluster's etcd CA.
package etcdmembers

import (
	"context"
	"crypto/tls"
	"errors"
)

var errTODO = errors.New("etcdmembers: not built yet")

// Client talks to one cluster's etcd members.
type Client struct {
	Endpoints []string
	TLS       *tls.Config
}

// Remove removes the named member. Unless force, it refuses when the cluster
// would be left without quorum, saying so.
func (c *Client) Remove(ctx context.Context, memberName string, force bool) error {
	return errTODO
}

// AddLearner adds a member as a learner before its node starts etcd.
func (c *Client) AddLearner(ctx context.Context, memberName string, peerURLs []string) error {
	return errTODO
}

// PromoteWhenReady promotes the named learner once it has caught up.
func (c *Client) PromoteWhenReady(ctx context.Context, memberName string) error {
	return errTODO
}
