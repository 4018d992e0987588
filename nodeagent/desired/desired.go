// Package desired is the vocabulary shared by the node agent's role renderers
// and its reconcile loop: the files and units a plan asks for. Paths are as
// seen inside the machine (absolute); the reconciler prefixes its root.
package desired

import "io/fs"

// File is one file a plan wants on disk.
type File struct {
	// Path inside the machine, absolute, e.g. /etc/rancher/k3s/config.yaml.
	Path    string
	Content []byte
	// Mode of the file; keys and tokens are 0600.
	Mode fs.FileMode
	// Restarts names the units to restart when this file's content changes.
	Restarts []string
}

// Unit is one systemd unit a plan wants installed.
type Unit struct {
	// Name, e.g. kedge-etcd.service; installed to /etc/systemd/system/NAME.
	Name    string
	Content []byte
	// Enable links the unit into its WantedBy target so it starts at boot.
	Enable bool
	// Start keeps the unit running.
	Start bool
}

// State is everything one role (or a whole plan) wants.
type State struct {
	Files []File
	Units []Unit
}

// Merge appends other's files and units to s.
func (s *State) Merge(other State) {
	s.Files = append(s.Files, other.Files...)
	s.Units = append(s.Units, other.Units...)
}
