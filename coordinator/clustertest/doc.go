// Package clustertest holds the end-to-end test of the cluster spec, planner
// and cluster health through a real in-process coordinator (coordtest):
// a spec applied, simulated nodes enrolling in random order, their plans
// checked against a table, and the cluster phase following their reports.
package clustertest
