package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Machine is one NUC: an overlay over the shared image (its upper dir is its
// disk, kept across power cycles), a network namespace with eth0 on the LAN,
// and, while powered on, a systemd-nspawn process booting it.
type Machine struct {
	Name      string // nucN: the nspawn machine name, not its hostname
	IP        string
	MachineID string
	Serial    string
	UUID      string
	Netns     string

	lab    *Lab
	port   string // its bridge port in the LAN namespace
	dir    string
	merged string
	flash  flashOptions

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	flashed bool
	console *os.File
}

// MachineOption changes how a machine is made or flashed.
type MachineOption func(*Machine)

// WithMachineID gives the machine this /etc/machine-id instead of a fresh
// one; several machines with the same id behave like a cloned image.
func WithMachineID(id string) MachineOption { return func(m *Machine) { m.MachineID = id } }

// WithWrongToken flashes a well-formed token the coordinator never issued.
func WithWrongToken() MachineOption { return func(m *Machine) { m.flash.token = tokenWrong } }

// WithExpiredToken flashes a real token that expired before power-on.
func WithExpiredToken() MachineOption { return func(m *Machine) { m.flash.token = tokenExpired } }

// WithWrongCAPin flashes the pin of a CA that is not the coordinator's.
func WithWrongCAPin() MachineOption { return func(m *Machine) { m.flash.wrongPin = true } }

// Unflashed leaves the machine a plain Debian box (the harness self-test).
func Unflashed() MachineOption { return func(m *Machine) { m.flash.skip = true } }

type tokenKind int

const (
	tokenLab tokenKind = iota
	tokenWrong
	tokenExpired
)

type flashOptions struct {
	skip     bool
	token    tokenKind
	wrongPin bool
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// RandomMachineID is a fresh machine-id (32 hex digits).
func RandomMachineID() string { return randomHex(16) }

func randomUUID() string {
	h := randomHex(16)
	return fmt.Sprintf("%s-%s-%s-%s-%s", h[:8], h[8:12], h[12:16], h[16:20], h[20:])
}

// newMachine makes machine n: overlay mounted, namespace attached, identity
// files written. It is flashed at its first power-on, once the lab has a token.
func (l *Lab) newMachine(n int, opts ...MachineOption) (*Machine, error) {
	m := &Machine{
		Name:      fmt.Sprintf("nuc%d", n),
		IP:        fmt.Sprintf("10.77.0.%d", firstNUCHost+n),
		MachineID: randomHex(16),
		Serial:    fmt.Sprintf("LAB%s%03d", strings.ToUpper(l.prefix[2:]), n),
		UUID:      randomUUID(),
		lab:       l,
	}
	for _, o := range opts {
		o(m)
	}
	m.Netns = fmt.Sprintf("%s-%s", l.prefix, m.Name)
	m.port = fmt.Sprintf("%sn%d", l.prefix, n)
	m.dir = filepath.Join(l.runDir, m.Name)
	m.merged = filepath.Join(m.dir, "root")
	upper, work := filepath.Join(m.dir, "upper"), filepath.Join(m.dir, "work")
	for _, d := range []string{upper, work, m.merged} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	opt := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", l.image, upper, work)
	if err := syscall.Mount("overlay", m.merged, "overlay", 0, opt); err != nil {
		return nil, fmt.Errorf("mount overlay for %s: %w", m.Name, err)
	}
	l.state.update(func(s *State) { s.Mounts = append(s.Mounts, m.merged) })
	if err := l.net.attach(m.Netns, m.port, m.IP); err != nil {
		return nil, err
	}
	files := map[string]string{
		"etc/machine-id":     m.MachineID + "\n",
		"etc/kedge/dmi.yaml": fmt.Sprintf("productSerial: %s\nproductUUID: %s\n", m.Serial, m.UUID),
	}
	for p, c := range files {
		full := filepath.Join(m.merged, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return nil, err
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Root is the machine's / as seen from the host (its overlay), for reading
// files it wrote, such as certificates.
func (m *Machine) Root() string { return m.merged }

// ConsoleLog is the file its boots' console output goes to.
func (m *Machine) ConsoleLog() string { return filepath.Join(m.dir, "console.log") }

// PowerOn boots the machine, flashing it first if it never was. It returns
// once nspawn runs; use WaitRunning to wait for the boot to finish.
func (m *Machine) PowerOn() {
	m.lab.t.Helper()
	if err := m.powerOn(); err != nil {
		m.lab.t.Fatalf("power on %s: %v", m.Name, err)
	}
}

func (m *Machine) powerOn() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return fmt.Errorf("%s is already on", m.Name)
	}
	if !m.flashed && !m.flash.skip {
		if err := m.lab.flashMachine(m); err != nil {
			return fmt.Errorf("flash: %w", err)
		}
		m.flashed = true
	}
	console, err := os.OpenFile(m.ConsoleLog(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(console, "\n==== power on %s ====\n", time.Now().Format(time.RFC3339))
	cmd := exec.Command("systemd-nspawn", "-q", "--keep-unit", "--register=no",
		"-D", m.merged, "-M", m.Name, "--network-namespace-path=/run/netns/"+m.Netns,
		"--console=read-only", "-b")
	// Hybrid cgroups on this host kind: systemd in the machine needs the v1 layout.
	cmd.Env = append(os.Environ(), "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=0")
	cmd.Stdout, cmd.Stderr = console, console
	// Its own process group: a Ctrl-C meant for the test does not reach it
	// before the harness powers it off.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		console.Close()
		return err
	}
	m.cmd, m.console, m.exited = cmd, console, make(chan struct{})
	exited := m.exited
	go func() {
		cmd.Wait()
		console.Close()
		close(exited)
	}()
	m.lab.state.update(func(s *State) { s.PIDs[m.Name] = cmd.Process.Pid })
	return nil
}

// PowerOff shuts the machine down cleanly (SIGTERM to nspawn makes its
// systemd halt) and waits until it is off.
func (m *Machine) PowerOff() {
	m.lab.t.Helper()
	if err := m.stop(syscall.SIGTERM, 60*time.Second); err != nil {
		m.lab.t.Fatalf("power off %s: %v", m.Name, err)
	}
}

// PowerCut kills the machine at once, as pulling its plug does.
func (m *Machine) PowerCut() {
	m.lab.t.Helper()
	if err := m.stop(syscall.SIGKILL, 20*time.Second); err != nil {
		m.lab.t.Fatalf("power cut %s: %v", m.Name, err)
	}
}

// IsOn reports whether the machine's nspawn process runs.
func (m *Machine) IsOn() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cmd != nil
}

func (m *Machine) stop(sig syscall.Signal, timeout time.Duration) error {
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if sig == syscall.SIGKILL {
		// Kill the machine's init first: that ends its whole PID namespace,
		// whatever nspawn does when it dies.
		if pid, err := m.initPID(); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(timeout):
		killTree(cmd.Process.Pid)
		<-exited
		if sig != syscall.SIGKILL {
			return fmt.Errorf("still running %s after %s; killed it", sig, timeout)
		}
	}
	m.mu.Lock()
	m.cmd = nil
	m.mu.Unlock()
	m.lab.state.update(func(s *State) { delete(s.PIDs, m.Name) })
	return nil
}

// initPID is the PID (in the host's namespace) of the machine's systemd: the
// child of the inner systemd-nspawn process.
func (m *Machine) initPID() (int, error) {
	m.mu.Lock()
	cmd := m.cmd
	m.mu.Unlock()
	if cmd == nil {
		return 0, fmt.Errorf("%s is off", m.Name)
	}
	pid, err := InitPIDUnder(cmd.Process.Pid)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", m.Name, err)
	}
	return pid, nil
}

// InitPID is the host PID of the machine's systemd, for `nsenter -t PID -a`.
func (m *Machine) InitPID() (int, error) { return m.initPID() }

// InitPIDUnder finds a machine's systemd below its systemd-nspawn process:
// the "systemd" process whose parent is a systemd-nspawn.
func InitPIDUnder(nspawnPID int) (int, error) {
	for _, p := range descendants(nspawnPID) {
		if comm(p) != "systemd" {
			continue
		}
		if parent := ppid(p); parent > 0 && comm(parent) == "systemd-nspawn" {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no systemd under nspawn pid %d (yet)", nspawnPID)
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

func ppid(pid int) int {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	var state string
	var parent int
	fmt.Sscan(s[i+1:], &state, &parent)
	return parent
}

// Exec runs a command inside the machine (all its namespaces) and returns
// its stdout; the error carries stderr.
func (m *Machine) Exec(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	return m.ExecContext(ctx, args...)
}

// ExecContext is Exec with a caller's deadline.
func (m *Machine) ExecContext(ctx context.Context, args ...string) (string, error) {
	pid, err := m.initPID()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", fmt.Sprint(pid), "-a", "--"}, args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "SYSTEMD_PAGER=", "TERM=dumb"}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s: %s: %v: %s", m.Name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// MustExec is Exec that fails the test on error.
func (m *Machine) MustExec(args ...string) string {
	m.lab.t.Helper()
	out, err := m.Exec(args...)
	if err != nil {
		m.lab.t.Fatalf("%v", err)
	}
	return out
}

// SystemctlShow returns a unit's properties (`systemctl show`), e.g.
// ActiveState, NRestarts, ActiveEnterTimestamp, MainPID.
func (m *Machine) SystemctlShow(unit string) (map[string]string, error) {
	out, err := m.Exec("systemctl", "show", "--no-pager", unit)
	if err != nil {
		return nil, err
	}
	props := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			props[k] = v
		}
	}
	return props, nil
}

// IsActive reports `systemctl is-active unit` == active.
func (m *Machine) IsActive(unit string) bool {
	out, _ := m.Exec("systemctl", "is-active", unit)
	return strings.TrimSpace(out) == "active"
}

// WaitRunning waits until the machine finished booting: systemd says
// `running`. `degraded` fails at once with the failed units named.
func (m *Machine) WaitRunning(timeout time.Duration) {
	m.lab.t.Helper()
	if err := m.waitRunning(timeout); err != nil {
		m.lab.t.Fatalf("%v", err)
	}
}

func (m *Machine) waitRunning(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := ""
	retried := map[string]bool{}
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		out, _ := m.ExecContext(ctx, "systemctl", "is-system-running")
		cancel()
		last = strings.TrimSpace(out)
		switch last {
		case "running":
			return nil
		case "degraded":
			failed, _ := m.Exec("systemctl", "--failed", "--no-legend", "--plain")
			var why strings.Builder
			restarted := false
			for _, line := range strings.Split(strings.TrimSpace(failed), "\n") {
				if f := strings.Fields(line); len(f) > 0 {
					j, _ := m.Exec("journalctl", "-b", "-u", f[0], "-n", "15", "--no-pager")
					fmt.Fprintf(&why, "--- journalctl -u %s:\n%s", f[0], j)
					// status=219/CGROUP: systemd in the machine could not put the
					// unit's process into its cgroup, a race of this host's hybrid
					// cgroup-v1 setup under nspawn seen now and then at boot, not
					// something kedge does. Retry such a unit once, and say so.
					if strings.Contains(j, "status=219/CGROUP") && !retried[f[0]] {
						retried[f[0]] = true
						m.lab.t.Logf("%s: %s failed with status=219/CGROUP at boot (host cgroup race under nspawn, not kedge); restarting it once", m.Name, f[0])
						if out, err := m.Exec("systemctl", "restart", f[0]); err != nil {
							fmt.Fprintf(&why, "--- restart %s: %v %s\n", f[0], err, out)
						} else {
							restarted = true
						}
					}
				}
			}
			if restarted {
				continue
			}
			return fmt.Errorf("%s booted degraded; failed units:\n%s%s", m.Name, failed, why.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s did not reach `running` within %s (last state %q); console: %s", m.Name, timeout, last, m.ConsoleLog())
}

// Partition takes the machine's link to the LAN down.
func (m *Machine) Partition() {
	m.lab.t.Helper()
	if err := m.lab.net.setPort(m.port, false); err != nil {
		m.lab.t.Fatalf("partition %s: %v", m.Name, err)
	}
}

// Heal brings the machine's link to the LAN back up.
func (m *Machine) Heal() {
	m.lab.t.Helper()
	if err := m.lab.net.setPort(m.port, true); err != nil {
		m.lab.t.Fatalf("heal %s: %v", m.Name, err)
	}
}
