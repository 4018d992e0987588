// Package lab is the `make demo` program: it drives the e2e NUC lab as a
// person would watch it, boots a coordinator and 5 NUCs into a stacked HA
// cluster, shows progress live, says how to reach everything, and tears it
// all down on Ctrl-C. It installs nothing: it names the apt-get command for
// what is missing.
package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
	"github.com/kedge-io/kedge/test/e2e"
)

// DemoNodes is how many NUCs `up` boots.
const DemoNodes = 5

// healthyTimeout bounds the wait for the cluster; past it the demo keeps the
// lab up for inspection and says so.
const healthyTimeout = 10 * time.Minute

// Main runs `up`, `down` or `shell NAME`.
func Main(args []string, out io.Writer) error {
	if len(args) == 0 {
		return errors.New("usage: kedge-lab up | down | shell nucN")
	}
	switch args[0] {
	case "up":
		return up(out)
	case "down":
		return down(out)
	case "shell":
		if len(args) != 2 {
			return errors.New("usage: kedge-lab shell nucN")
		}
		return shell(args[1])
	}
	return fmt.Errorf("unknown command %q: use up, down or shell nucN", args[0])
}

// demoTB lets the e2e lab run outside `go test`: Fatalf panics with a
// fatal value that up recovers, after which the lab's cleanups run.
type demoTB struct {
	out      io.Writer
	cleanups []func()
	failed   bool
}

type fatal struct{ msg string }

func (d *demoTB) Helper()                         {}
func (d *demoTB) Logf(format string, args ...any) { fmt.Fprintf(d.out, "  "+format+"\n", args...) }
func (d *demoTB) Fatalf(format string, args ...any) {
	d.failed = true
	panic(fatal{fmt.Sprintf(format, args...)})
}
func (d *demoTB) Cleanup(f func()) { d.cleanups = append(d.cleanups, f) }
func (d *demoTB) Failed() bool     { return d.failed }

func (d *demoTB) runCleanups() {
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
	d.cleanups = nil
}

func up(out io.Writer) (err error) {
	k3s := "K3s is the kedge K3s test double (bin/k3s-test-double), not a real K3s: set K3S_BINARY=/path/to/k3s to use a real one."
	if p := os.Getenv("K3S_BINARY"); p != "" {
		k3s = "K3s is the real binary K3S_BINARY=" + p + "."
	}
	fmt.Fprintf(out, "kedge demo: a coordinator and %d NUCs (Debian + systemd in systemd-nspawn) on a private LAN, zero-touch into a stacked HA cluster.\n%s\n\n", DemoNodes, k3s)
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (systemd-nspawn, network namespaces, overlay mounts): run `sudo make demo`")
	}
	if err := e2e.CheckHostTools(); err != nil {
		return err
	}
	t := &demoTB{out: out}
	defer t.runCleanups()
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(fatal)
			if !ok {
				panic(r)
			}
			err = errors.New(f.msg)
		}
	}()

	start := time.Now()
	fmt.Fprintln(out, "1. Image, LAN and coordinator")
	l := e2e.NewLab(t, e2e.Nodes(DemoNodes), e2e.Cluster("demo"))
	fmt.Fprintf(out, "  coordinator on %s (netns %s)\n", e2e.CoordinatorAddress, l.Coordinator.Netns)

	fmt.Fprintln(out, "2. Cluster spec (stacked: etcd + K3s server on 3 NUCs, agents on the rest)")
	l.Coordinator.ApplySpec(t, l.StackedSpec())

	fmt.Fprintf(out, "3. Flashing %d NUCs with `kedge-nodeagent install --root` and powering them on\n", DemoNodes)
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	go followEvents(ctx, l, out, start)
	l.PowerOnAll()

	fmt.Fprintln(out, "4. Waiting for Healthy")
	took, healthy := waitHealthy(ctx, l, out, start)
	if ctx.Err() != nil {
		fmt.Fprintln(out, "\ninterrupted: tearing the lab down")
		return nil
	}
	if healthy {
		fmt.Fprintf(out, "\nHealthy %s after power-on.\n\n", took.Round(time.Second))
	} else {
		fmt.Fprintf(out, "\nNOT Healthy after %s; the lab stays up for inspection. Diagnostics:\n", healthyTimeout)
		l.DumpDiagnostics()
	}
	if status, err := l.KedgectlErr("status", l.ClusterName()); err == nil {
		fmt.Fprintf(out, "$ kedgectl status %s\n%s\n", l.ClusterName(), status)
	} else {
		fmt.Fprintf(out, "kedgectl status: %v\n", err)
	}
	printAccess(out, l)
	<-ctx.Done()
	fmt.Fprintln(out, "\nstopping: tearing the lab down")
	return nil
}

// followEvents prints the coordinator's events as they happen.
func followEvents(ctx context.Context, l *e2e.Lab, out io.Writer, start time.Time) {
	stream, err := l.Coordinator.Admin.WatchEvents(ctx, &kedgev1.WatchEventsRequest{Follow: true, Cluster: l.ClusterName()})
	if err != nil {
		return
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return
		}
		ev := resp.GetEvent()
		fmt.Fprintf(out, "  [%5.1fs] %-18s %-6s %s\n", time.Since(start).Seconds(),
			strings.ToLower(strings.TrimPrefix(ev.GetType().String(), "EVENT_TYPE_")), ev.GetNode(), ev.GetMessage())
	}
}

// waitHealthy prints the status line each time it changes.
func waitHealthy(ctx context.Context, l *e2e.Lab, out io.Writer, start time.Time) (time.Duration, bool) {
	powerOn := time.Now()
	deadline := powerOn.Add(healthyTimeout)
	last := ""
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		if st, err := l.Coordinator.Status(l.ClusterName()); err == nil {
			if line := e2e.StatusLine(st); line != last {
				fmt.Fprintf(out, "  [%5.1fs] status: %s\n", time.Since(start).Seconds(), line)
				last = line
			}
			if st.GetPhase() == kedgev1.ClusterPhase_CLUSTER_PHASE_HEALTHY {
				return time.Since(powerOn), true
			}
		}
		select {
		case <-ctx.Done():
			return 0, false
		case <-tick.C:
		}
	}
	return 0, false
}

func printAccess(out io.Writer, l *e2e.Lab) {
	self, _ := os.Executable()
	kedgectl := filepath.Join(filepath.Dir(self), "kedgectl")
	fmt.Fprintf(out, `How to reach the lab (it lives only in network namespaces; the host has no address on it):
  kedgectl config:   %s
  kedgectl:          ip netns exec %s %s --config %s status
  etcdctl certs:     on an etcd NUC under %s/etc/kedge/etcd/
  a shell on a NUC:  %s shell nuc1        (or: nsenter -t PID -a bash, PIDs below)
`, l.Coordinator.AdminConfig, l.Coordinator.Netns, kedgectl, l.Coordinator.AdminConfig,
		l.Machine(1).Root(), self)
	for _, m := range l.Machines {
		pid, err := m.InitPID()
		if err != nil {
			fmt.Fprintf(out, "    %-5s %-11s off\n", m.Name, m.IP)
			continue
		}
		fmt.Fprintf(out, "    %-5s %-11s nsenter -t %d -a bash\n", m.Name, m.IP, pid)
	}
	fmt.Fprintf(out, "  coordinator log:   %s\n  state file:        %s (make demo-down tears the lab down if this program is killed)\n\nPress Ctrl-C to tear everything down.\n",
		l.Coordinator.LogPath, l.StatePath())
}

// down stops a running demo (SIGTERM to its owner) and removes every lab
// whose owner is gone.
func down(out io.Writer) error {
	stopped := 0
	files, _ := filepath.Glob(filepath.Join(e2e.StateDir, "*.json"))
	for _, f := range files {
		s, err := e2e.ReadState(f)
		if err != nil || s.OwnerPID == os.Getpid() || syscall.Kill(s.OwnerPID, 0) != nil || !isKedgeLab(s.OwnerPID) {
			continue // the sweep below handles labs whose owner is gone
		}
		fmt.Fprintf(out, "asking the running demo (pid %d) to stop\n", s.OwnerPID)
		syscall.Kill(s.OwnerPID, syscall.SIGTERM)
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) && syscall.Kill(s.OwnerPID, 0) == nil {
			time.Sleep(200 * time.Millisecond)
		}
		fmt.Fprintf(out, "the demo tore its lab %s down\n", s.Prefix)
		stopped++
	}
	removed, err := e2e.SweepLeftovers()
	sort.Strings(removed)
	for _, r := range removed {
		fmt.Fprintf(out, "removed %s\n", r)
	}
	if len(removed) == 0 && err == nil && stopped == 0 {
		fmt.Fprintln(out, "no lab left to tear down")
	}
	return err
}

func isKedgeLab(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.TrimSpace(string(b)) == "kedge-lab"
}

// shell opens bash on a NUC of the running lab.
func shell(name string) error {
	files, _ := filepath.Glob(filepath.Join(e2e.StateDir, "*.json"))
	for _, f := range files {
		s, err := e2e.ReadState(f)
		if err != nil {
			continue
		}
		if pid, ok := s.PIDs[name]; ok {
			init, err := e2e.InitPIDUnder(pid)
			if err != nil {
				return err
			}
			nsenter, err := exec.LookPath("nsenter")
			if err != nil {
				return err
			}
			return syscall.Exec(nsenter, []string{"nsenter", "-t", fmt.Sprint(init), "-a", "/bin/bash", "-l"}, os.Environ())
		}
	}
	return fmt.Errorf("no running lab machine named %q (is the demo up and %s powered on?)", name, name)
}
