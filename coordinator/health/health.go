// Package health derives node conditions and a cluster's phase from the
// nodes' reports. Pure functions over an injected clock.
package health

import (
	"time"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Options tune the derivation.
type Options struct {
	Now time.Time
	// A node silent for longer is Unreachable; default 30 s.
	UnreachableAfter time.Duration
}

// NodeCondition derives one node's condition and the reason in words.
func NodeCondition(n *kedgev1.Node, plan *kedgev1.Plan, opts Options) (kedgev1.NodeCondition, string) {
	return kedgev1.NodeCondition_NODE_CONDITION_UNSPECIFIED, "not built yet"
}

// Cluster derives a cluster's status. nodes carry status and last_seen;
// plans are by node name.
func Cluster(spec *kedgev1.ClusterSpec, nodes []*kedgev1.Node, plans map[string]*kedgev1.Plan, opts Options) *kedgev1.ClusterStatus {
	return &kedgev1.ClusterStatus{}
}
