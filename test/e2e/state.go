package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// StateDir holds one file per running lab: what it created, so a lab left by
// a killed process can be torn down by the next run or by `make demo-down`.
const StateDir = "/run/kedge-lab"

// netnsPrefix starts every lab's namespace names: "kl" + 4 hex per run.
var labPrefixRE = regexp.MustCompile(`^kl[0-9a-f]{4}-`)

// State is everything a lab created outside its own process.
type State struct {
	Prefix   string `json:"prefix"`
	OwnerPID int    `json:"ownerPid"`
	RunDir   string `json:"runDir"`
	// Netns in creation order; deleting one deletes the links in it.
	Netns  []string `json:"netns"`
	Mounts []string `json:"mounts"`
	// PIDs of machines' nspawn processes and the coordinator, by name.
	PIDs map[string]int `json:"pids"`
	// Informational, for the demo's "how to reach the lab".
	CoordinatorNetns string `json:"coordinatorNetns,omitempty"`
	AdminConfig      string `json:"adminConfig,omitempty"`
}

// stateFile tracks a State on disk; every change is written through.
type stateFile struct {
	mu   sync.Mutex
	path string
	s    State
}

func newStateFile(prefix, runDir string) (*stateFile, error) {
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return nil, err
	}
	sf := &stateFile{
		path: filepath.Join(StateDir, prefix+".json"),
		s:    State{Prefix: prefix, OwnerPID: os.Getpid(), RunDir: runDir, PIDs: map[string]int{}},
	}
	return sf, sf.save()
}

func (sf *stateFile) update(f func(*State)) {
	sf.mu.Lock()
	defer sf.mu.Unlock()
	f(&sf.s)
	_ = sf.save()
}

func (sf *stateFile) snapshot() State {
	sf.mu.Lock()
	defer sf.mu.Unlock()
	s := sf.s
	s.PIDs = map[string]int{}
	for k, v := range sf.s.PIDs {
		s.PIDs[k] = v
	}
	s.Netns = append([]string(nil), sf.s.Netns...)
	s.Mounts = append([]string(nil), sf.s.Mounts...)
	return s
}

func (sf *stateFile) save() error {
	data, err := json.MarshalIndent(sf.s, "", "  ")
	if err != nil {
		return err
	}
	tmp := sf.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, sf.path)
}

// Teardown removes everything a State records: processes killed (a machine's
// nspawn and its whole PID namespace), overlays unmounted, namespaces (and
// with them every link) deleted, the run dir removed. It keeps going past
// errors and returns them all; it is safe to run twice.
func Teardown(s State) error {
	var errs []error
	for name, pid := range s.PIDs {
		if err := killTree(pid); err != nil {
			errs = append(errs, fmt.Errorf("kill %s (pid %d): %w", name, pid, err))
		}
	}
	for i := len(s.Mounts) - 1; i >= 0; i-- {
		if err := unmount(s.Mounts[i]); err != nil {
			errs = append(errs, err)
		}
	}
	for i := len(s.Netns) - 1; i >= 0; i-- {
		if err := deleteNetns(s.Netns[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if s.RunDir != "" && strings.Contains(s.RunDir, "kedge-lab") {
		if err := os.RemoveAll(s.RunDir); err != nil {
			errs = append(errs, err)
		}
	}
	if s.Prefix != "" {
		os.Remove(filepath.Join(StateDir, s.Prefix+".json"))
	}
	return errors.Join(errs...)
}

// SweepLeftovers tears down labs whose owner process is gone, and deletes
// lab-named namespaces no live lab owns. It returns what it removed.
func SweepLeftovers() ([]string, error) {
	var removed []string
	var errs []error
	live := map[string]bool{}
	files, _ := filepath.Glob(filepath.Join(StateDir, "kl*.json"))
	for _, f := range files {
		s, err := ReadState(f)
		if err != nil {
			os.Remove(f)
			continue
		}
		if s.OwnerPID != os.Getpid() && processAlive(s.OwnerPID) {
			live[s.Prefix] = true
			continue
		}
		if err := Teardown(*s); err != nil {
			errs = append(errs, err)
		}
		removed = append(removed, "lab "+s.Prefix)
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		name := e.Name()
		if !labPrefixRE.MatchString(name) || live[name[:6]] {
			continue
		}
		if err := deleteNetns(name); err != nil {
			errs = append(errs, err)
		}
		removed = append(removed, "netns "+name)
	}
	return removed, errors.Join(errs...)
}

// ReadState reads one lab state file.
func ReadState(path string) (*State, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &s, nil
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	return syscall.Kill(pid, 0) == nil
}

// killTree SIGKILLs pid and every descendant, deepest first; for a machine
// that includes its init, which takes the whole PID namespace down. A pid
// that no longer runs a lab process (reused) is left alone.
func killTree(pid int) error {
	if !processAlive(pid) {
		return nil
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	c := strings.TrimSpace(string(comm))
	if c != "systemd-nspawn" && !strings.HasPrefix(c, "kedge") {
		return nil
	}
	desc := descendants(pid)
	for i := len(desc) - 1; i >= 0; i-- {
		syscall.Kill(desc[i], syscall.SIGKILL)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(10 * time.Second)
	for processAlive(pid) && !isZombie(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("pid %d still alive 10s after SIGKILL", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

func isZombie(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z'
	}
	return false
}

// descendants lists pid's descendants, parents before children.
func descendants(pid int) []int {
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children(p) {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			var c int
			if _, err := fmt.Sscan(f, &c); err == nil {
				out = append(out, c)
			}
		}
	}
	return out
}

func unmount(dir string) error {
	if err := syscall.Unmount(dir, 0); err != nil {
		if err == syscall.EINVAL || err == syscall.ENOENT { // not mounted
			return nil
		}
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
	return nil
}

func deleteNetns(name string) error {
	if _, err := os.Stat(filepath.Join("/run/netns", name)); os.IsNotExist(err) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns delete %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
