//go:build e2e

package e2e_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kedge-io/kedge/test/e2e"
)

// TestHarness checks the lab itself, with no kedge part: two plain machines
// boot to `running`, reach each other across the bridge, keep their disk
// across a power cut, and lose each other when one is partitioned.
func TestHarness(t *testing.T) {
	e2e.RequireRoot(t, t.Skip)
	var lab *e2e.Lab
	// Registered before the lab's own cleanup, so it runs after teardown.
	t.Cleanup(func() {
		if lab == nil {
			return
		}
		for _, p := range []string{lab.StatePath(), lab.RunDir(), filepath.Join("/run/netns", lab.Prefix()+"-lan")} {
			if _, err := os.Stat(p); err == nil {
				t.Errorf("%s left behind after teardown", p)
			}
		}
	})
	lab = e2e.NewLab(t, e2e.Nodes(2), e2e.WithoutKedge())
	nuc1, nuc2 := lab.Machine(1), lab.Machine(2)

	start := time.Now()
	lab.PowerOnAll()
	lab.WaitAllRunning(60 * time.Second)
	t.Logf("2 machines running in %s", time.Since(start).Round(100*time.Millisecond))

	if id := strings.TrimSpace(nuc1.MustExec("cat", "/etc/machine-id")); id != nuc1.MachineID {
		t.Errorf("nuc1 machine-id = %q, want its own %q", id, nuc1.MachineID)
	}
	if h := strings.TrimSpace(nuc2.MustExec("hostname")); h != "nuc" {
		t.Errorf("nuc2 hostname = %q, want the image's %q", h, "nuc")
	}
	nuc1.MustExec("ping", "-c", "1", "-W", "2", nuc2.IP)
	nuc2.MustExec("ping", "-c", "1", "-W", "2", nuc1.IP)

	// The upper dir is the machine's disk: a file survives a power cut.
	nuc1.MustExec("sh", "-c", "echo kept > /var/lib/lab-marker && sync")
	nuc1.PowerCut()
	if nuc1.IsOn() {
		t.Fatalf("nuc1 still on after a power cut")
	}
	nuc1.PowerOn()
	nuc1.WaitRunning(60 * time.Second)
	if got := strings.TrimSpace(nuc1.MustExec("cat", "/var/lib/lab-marker")); got != "kept" {
		t.Errorf("after power cut, /var/lib/lab-marker = %q, want %q", got, "kept")
	}

	nuc2.Partition()
	if _, err := nuc1.Exec("ping", "-c", "1", "-W", "1", nuc2.IP); err == nil {
		t.Errorf("nuc1 reached partitioned nuc2")
	}
	nuc2.Heal()
	nuc1.MustExec("ping", "-c", "1", "-W", "2", nuc2.IP)

	// A clean power-off ends the machine.
	nuc2.PowerOff()
	if nuc2.IsOn() {
		t.Errorf("nuc2 still on after power off")
	}

}
