package sysd

import (
	"context"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"
)

// TestDBusAgainstRealSystemd drives a real systemd: it runs only inside a
// systemd machine (the lab) with KEDGE_SYSTEMD_TEST=1, because it writes a
// unit to /etc/systemd/system and changes the hostname.
//
//	go test -c -o sysd.test ./nodeagent/sysd && (in the machine) KEDGE_SYSTEMD_TEST=1 ./sysd.test -test.v
func TestDBusAgainstRealSystemd(t *testing.T) {
	if os.Getenv("KEDGE_SYSTEMD_TEST") != "1" {
		t.Skip("set KEDGE_SYSTEMD_TEST=1 inside a systemd machine to run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	d, err := NewDBus(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const unit = "kedge-sysd-test.service"
	path := "/etc/systemd/system/" + unit
	if err := os.WriteFile(path, []byte("[Service]\nExecStart=/bin/sleep infinity\n[Install]\nWantedBy=multi-user.target\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	defer func() {
		d.Stop(context.Background(), unit)
		d.Disable(context.Background(), unit)
		os.Remove(path)
		d.Reload(context.Background())
	}()
	d.Watch(unit)
	if err := d.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Enable(ctx, unit); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, unit); err != nil {
		t.Fatal(err)
	}
	st, err := d.State(ctx, unit)
	if err != nil {
		t.Fatal(err)
	}
	if st.ActiveState != "active" || st.SubState != "running" || !st.Enabled() || st.LoadState != "loaded" || st.Since.IsZero() {
		t.Fatalf("after start: %+v", st)
	}
	t.Logf("after start: %+v", st)
	drain(d.Changes())
	if err := d.Restart(ctx, unit); err != nil {
		t.Fatal(err)
	}
	select {
	case name := <-d.Changes():
		if name != unit {
			t.Errorf("change for %q, want %q", name, unit)
		}
	case <-time.After(10 * time.Second):
		t.Error("no change notification within 10s of a restart")
	}
	if err := d.Stop(ctx, unit); err != nil {
		t.Fatal(err)
	}
	if err := d.Disable(ctx, unit); err != nil {
		t.Fatal(err)
	}
	st, _ = d.State(ctx, unit)
	if st.Running() || st.Enabled() {
		t.Fatalf("after stop and disable: %+v", st)
	}
	// A unit that fails reports it with the job result.
	os.WriteFile(path, []byte("[Service]\nType=oneshot\nExecStart=/bin/false\n"), 0o644)
	d.Reload(ctx)
	if err := d.Start(ctx, unit); err == nil {
		t.Error("starting a failing unit succeeded")
	} else {
		t.Logf("failing unit: %v", err)
	}
	st, _ = d.State(ctx, unit)
	if st.ActiveState != "failed" || st.Result != "exit-code" {
		t.Errorf("failed unit state: %+v", st)
	}

	old, err := d.StaticHostname(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.SetStaticHostname(ctx, "kedge-sysd-test"); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.StaticHostname(ctx); got != "kedge-sysd-test" {
		t.Errorf("static hostname %q after setting it", got)
	}
	if h, _ := os.Hostname(); h != "kedge-sysd-test" {
		t.Errorf("kernel hostname %q after setting it", h)
	}
	if old != "" {
		d.SetStaticHostname(ctx, old)
	}
}

func drain(ch <-chan string) {
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
