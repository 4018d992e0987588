// Package planner decides who is what: from a cluster spec, the enrolled
// nodes and their observed health, one plan per node. It is a pure function:
// the same inputs give byte-identical plans.
package planner

import (
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Input is everything a plan depends on.
type Input struct {
	Spec    *kedgev1.ClusterSpec
	Secrets *kedgev1.ClusterSecrets
	// Enrolled nodes of the cluster, with their stored (sticky) roles,
	// node_ip, enroll_sequence, and derived condition and status.
	Nodes []*kedgev1.Node
}

// Output is the plans and the role assignments to persist on the node records.
type Output struct {
	// By node name; Hash set, Revision left 0 for the store to fill.
	Plans map[string]*kedgev1.Plan
	// Roles per node name, to store so they stay with the node.
	Roles map[string][]kedgev1.Role
}

// Compute returns the plans for in.
func Compute(in Input) Output {
	return Output{}
}

// Hash is the content hash of a plan: every field but revision and hash.
func Hash(p *kedgev1.Plan) string {
	return ""
}
