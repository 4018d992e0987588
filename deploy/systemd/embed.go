// Package systemd holds every unit file kedge installs. The binaries embed
// them, so what a node runs is exactly what was reviewed here.
package systemd

import (
	"embed"
	"fmt"
)

//go:embed *.service
var units embed.FS

// Unit returns the named unit file's content.
func Unit(name string) ([]byte, error) {
	b, err := units.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("no unit %q in deploy/systemd", name)
	}
	return b, nil
}
