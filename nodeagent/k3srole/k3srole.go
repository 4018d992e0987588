// Package k3srole installs and runs K3s as a server or an agent: the binary
// (always SHA-256 checked), config.yaml, token files and unit, plus the
// server's readiness probe and its admin kubeconfig.
//
// config.yaml uses K3s's own keys (its flag names); secrets live in 0600
// token files that config.yaml names, never in argv or the unit.
package k3srole
