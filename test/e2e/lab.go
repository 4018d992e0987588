// Package e2e is the NUC lab: real systemd machines (Debian booted with
// systemd-nspawn) on a private LAN that lives only in network namespaces,
// with a real kedge coordinator on the same LAN. It reads like the story an
// operator lives through:
//
//	lab := e2e.NewLab(t, e2e.Nodes(5))
//	lab.Coordinator.ApplySpec(t, lab.StackedSpec())
//	lab.PowerOnAll()
//	lab.WaitHealthy(t, 5*time.Minute)
//
// Everything it creates (machines, overlays, namespaces, links, temp dirs) is
// recorded in a state file under /run/kedge-lab and removed by Cleanup, on a
// signal, or by the next lab when the owning process died. It needs root.
// The library is in non-test files so the demo program uses it too; the
// scenarios are *_test.go files built with the e2e tag.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// TB is the part of testing.TB the lab uses, so a program (the demo) can
// drive a lab too.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Fatalf(format string, args ...any)
	Cleanup(func())
	Failed() bool
}

// Option configures NewLab.
type Option func(*config)

type config struct {
	nodes          int
	coordinator    bool
	cluster        string
	machineOptions []MachineOption
}

// Nodes makes n NUCs (nuc1..nucN, 10.77.0.11...).
func Nodes(n int) Option { return func(c *config) { c.nodes = n } }

// WithoutKedge boots plain machines: no coordinator, nothing flashed. The
// harness self-test uses it; it needs no kedge binary.
func WithoutKedge() Option {
	return func(c *config) {
		c.coordinator = false
		c.machineOptions = append(c.machineOptions, Unflashed())
	}
}

// Cluster names the cluster the lab's spec and token are for (default "lab").
func Cluster(name string) Option { return func(c *config) { c.cluster = name } }

// AllMachines applies machine options to every NUC NewLab makes.
func AllMachines(opts ...MachineOption) Option {
	return func(c *config) { c.machineOptions = append(c.machineOptions, opts...) }
}

// Lab is one running lab.
type Lab struct {
	t           TB
	owner       TB // the NewLab caller: cleanup reports go here
	prefix      string
	runDir      string
	image       string
	state       *stateFile
	net         *network
	bins        *Binaries
	cluster     string
	Coordinator *Coordinator
	Machines    []*Machine

	mu        sync.Mutex
	nextNode  int
	labToken  string
	teardown  sync.Once
	stopSigCh chan struct{}
}

// RequireRoot stops t when not root: a skip (via skip) normally, a failure
// under CI, where the lab must run.
func RequireRoot(t TB, skip func(args ...any)) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	msg := "the NUC lab needs root (systemd-nspawn, network namespaces, overlay mounts): run `sudo make e2e`"
	if os.Getenv("CI") != "" {
		t.Fatalf("%s; CI is set, so this is a failure, not a skip", msg)
	}
	skip(msg)
}

// NewLab builds (or reuses) the image, creates the LAN, starts the
// coordinator (unless WithoutKedge) and prepares the NUCs, powered off.
func NewLab(t TB, opts ...Option) *Lab {
	t.Helper()
	cfg := config{nodes: 3, coordinator: true, cluster: "lab"}
	for _, o := range opts {
		o(&cfg)
	}
	if err := CheckHostTools(); err != nil {
		t.Fatalf("%v", err)
	}
	if removed, err := SweepLeftovers(); err != nil {
		t.Logf("sweeping leftovers of earlier labs: %v", err)
	} else if len(removed) > 0 {
		t.Logf("removed leftovers of killed labs: %v", removed)
	}
	l := &Lab{t: t, owner: t, cluster: cfg.cluster, prefix: "kl" + randomHex(2), stopSigCh: make(chan struct{})}
	l.image = EnsureImage(t)
	var err error
	if l.runDir, err = os.MkdirTemp("", "kedge-lab-"+l.prefix+"-"); err != nil {
		t.Fatalf("run dir: %v", err)
	}
	if l.state, err = newStateFile(l.prefix, l.runDir); err != nil {
		t.Fatalf("lab state file: %v", err)
	}
	t.Cleanup(l.Teardown)
	l.handleSignals()
	t.Cleanup(func() {
		if t.Failed() {
			l.DumpDiagnostics()
		}
	})
	t.Logf("lab %s: image layers %s, run dir %s", l.prefix, l.image, l.runDir)
	if l.net, err = newNetwork(l.prefix, l.state); err != nil {
		t.Fatalf("lab network: %v", err)
	}
	if cfg.coordinator {
		if l.bins, err = FindBinaries(t); err != nil {
			t.Fatalf("%v", err)
		}
		if l.Coordinator, err = l.startCoordinator(); err != nil {
			t.Fatalf("coordinator: %v", err)
		}
	}
	for i := 0; i < cfg.nodes; i++ {
		l.AddMachine(cfg.machineOptions...)
	}
	return l
}

// CheckHostTools says which Debian packages are missing, with the command
// that installs them.
func CheckHostTools() error {
	need := map[string]string{
		"systemd-nspawn": "systemd-container",
		"debootstrap":    "debootstrap",
		"ip":             "iproute2",
		"nsenter":        "util-linux",
		"etcdctl":        "etcd-client",
	}
	var missing []string
	seen := map[string]bool{}
	for _, tool := range []string{"systemd-nspawn", "debootstrap", "ip", "nsenter", "etcdctl"} {
		if _, err := exec.LookPath(tool); err != nil && !seen[need[tool]] {
			missing = append(missing, need[tool])
			seen[need[tool]] = true
		}
	}
	if len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("missing host packages %v: run `apt-get update && apt-get install -y systemd-container debootstrap iproute2 etcd-client`", missing)
}

// AddMachine makes one more NUC, powered off.
func (l *Lab) AddMachine(opts ...MachineOption) *Machine {
	l.t.Helper()
	l.mu.Lock()
	l.nextNode++
	n := l.nextNode
	l.mu.Unlock()
	m, err := l.newMachine(n, opts...)
	if err != nil {
		l.t.Fatalf("make nuc%d: %v", n, err)
	}
	l.mu.Lock()
	l.Machines = append(l.Machines, m)
	l.mu.Unlock()
	return m
}

// Machine returns nucN by its number (1-based) or fails.
func (l *Lab) Machine(n int) *Machine {
	l.t.Helper()
	for _, m := range l.Machines {
		if m.Name == fmt.Sprintf("nuc%d", n) {
			return m
		}
	}
	l.t.Fatalf("no machine nuc%d in this lab", n)
	return nil
}

// MachineByIP returns the machine with that LAN address, or nil.
func (l *Lab) MachineByIP(ip string) *Machine {
	for _, m := range l.Machines {
		if m.IP == ip {
			return m
		}
	}
	return nil
}

// PowerOnAll powers every machine that is off on at once, as a rack does.
func (l *Lab) PowerOnAll() {
	l.t.Helper()
	for _, m := range l.Machines {
		if !m.IsOn() {
			m.PowerOn()
		}
	}
}

// PowerOffAll shuts every machine down cleanly, in parallel.
func (l *Lab) PowerOffAll() {
	l.t.Helper()
	l.parallel(func(m *Machine) error { return m.stop(syscall.SIGTERM, 60*time.Second) })
}

// WaitAllRunning waits until every powered-on machine finished booting.
func (l *Lab) WaitAllRunning(timeout time.Duration) {
	l.t.Helper()
	l.parallel(func(m *Machine) error {
		if !m.IsOn() {
			return nil
		}
		return m.waitRunning(timeout)
	})
}

func (l *Lab) parallel(f func(*Machine) error) {
	l.t.Helper()
	errs := make([]error, len(l.Machines))
	var wg sync.WaitGroup
	for i, m := range l.Machines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(m)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			l.t.Fatalf("%v", err)
		}
	}
}

// Use makes the lab report to t from now on: a subtest sharing its
// parent's lab calls it first, so a failure fails the subtest.
func (l *Lab) Use(t TB) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t = t
}

// RunDir is this lab's temp dir (machines' disks, coordinator data, logs).
func (l *Lab) RunDir() string { return l.runDir }

// Prefix is this lab's name prefix (netns "PREFIX-lan", "PREFIX-nuc1", ...).
func (l *Lab) Prefix() string { return l.prefix }

// StatePath is the lab's state file, which `kedge-lab down` reads.
func (l *Lab) StatePath() string { return filepath.Join(StateDir, l.prefix+".json") }

// Teardown removes everything the lab created. Cleanup calls it; it is
// safe to call again.
func (l *Lab) Teardown() {
	l.teardown.Do(func() {
		close(l.stopSigCh)
		if l.Coordinator != nil {
			l.Coordinator.closeClient()
		}
		if err := Teardown(l.state.snapshot()); err != nil {
			l.owner.Logf("lab teardown: %v", err)
		}
	})
}

// handleSignals tears the lab down when the process is interrupted, since
// t.Cleanup does not run then.
func (l *Lab) handleSignals() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		defer signal.Stop(ch)
		select {
		case sig := <-ch:
			fmt.Fprintf(os.Stderr, "kedge lab %s: %s: tearing down\n", l.prefix, sig)
			l.Teardown()
			os.Exit(130)
		case <-l.stopSigCh:
		}
	}()
}
