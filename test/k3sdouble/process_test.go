package k3sdouble

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinaryUnderNotifySocket runs the built double as systemd would with
// Type=notify: it must send READY=1 only once it serves, and exit 0 on SIGTERM.
func TestBinaryUnderNotifySocket(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "k3s")
	build := exec.Command("go", "build", "-o", bin, "./cmd/k3s")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	e := startEtcd(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify.sock")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	var stderr bytes.Buffer
	cmd := exec.Command(bin, "server")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "K3S_CONFIG_FILE="+serverConfig(t, e, dir, "srv1", serverToken, e.certFile, e.keyFile))
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer cmd.Process.Kill()

	notify.SetReadDeadline(time.Now().Add(15 * time.Second))
	buf := make([]byte, 256)
	n, err := notify.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify message within 15s: %v\n%s", err, stderr.String())
	}
	if got := string(buf[:n]); !strings.Contains(got, "READY=1") {
		t.Fatalf("sd_notify sent %q, want READY=1", got)
	}
	if _, err := os.Stat(filepath.Join(dir, "k3s.yaml")); err != nil {
		t.Errorf("READY sent before k3s.yaml was written: %v", err)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v, want 0\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the double did not exit within 10s of SIGTERM")
	}
	if first := strings.SplitN(stderr.String(), "\n", 2)[0]; !strings.Contains(first, "k3s TEST DOUBLE (not K3s)") {
		t.Errorf("first log line %q does not name the test double", first)
	}
	if strings.Contains(stderr.String(), serverToken) || strings.Contains(stderr.String(), agentToken) {
		t.Error("a token appears in the double's log")
	}
}
