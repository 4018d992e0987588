package reconcile

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kedge-io/kedge/nodeagent/desired"
	"github.com/kedge-io/kedge/nodeagent/paths"
	"github.com/kedge-io/kedge/nodeagent/sysd"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

func newReconciler(t *testing.T) (*Reconciler, *sysd.Fake) {
	fake := sysd.NewFake()
	return &Reconciler{Root: t.TempDir(), Systemd: fake, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}, fake
}

// state is a stacked etcd + K3s server node as the role renderers would describe it.
func state(etcdConf, k3sConf string, withK3s bool) desired.State {
	st := desired.State{
		Files: []desired.File{
			{Path: paths.EtcdConfig, Content: []byte(etcdConf), Mode: 0o600, Restarts: []string{paths.EtcdUnit}},
		},
		Units: []desired.Unit{{Name: paths.EtcdUnit, Content: []byte("[Service]\nExecStart=/usr/local/bin/kedge-nodeagent etcd\n"), Enable: true, Start: true}},
	}
	if withK3s {
		st.Files = append(st.Files,
			desired.File{Path: paths.K3sConfig, Content: []byte(k3sConf), Mode: 0o600, Restarts: []string{paths.K3sServerUnit}},
			desired.File{Path: paths.K3sToken, Content: []byte("secret-token\n"), Mode: 0o600, Restarts: []string{paths.K3sServerUnit}})
		st.Units = append(st.Units, desired.Unit{Name: paths.K3sServerUnit, Content: []byte("[Service]\nExecStart=/usr/local/bin/k3s server\n"), Enable: true, Start: true})
	}
	return st
}

func read(t *testing.T, r *Reconciler, p string) string {
	t.Helper()
	b, err := os.ReadFile(paths.In(r.Root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestFirstApplyWritesAndStartsThenReapplyDoesNothing(t *testing.T) {
	r, fake := newReconciler(t)
	ctx := context.Background()
	res, err := r.Apply(ctx, state("name: a\n", "token-file: x\n", true), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Written) != 5 || !res.Reloaded {
		t.Fatalf("first apply: %+v", res)
	}
	calls := fake.Calls()
	for _, want := range []string{"reload ", "enable kedge-etcd.service", "start kedge-etcd.service", "enable k3s.service", "start k3s.service"} {
		if !slices.Contains(calls, want) {
			t.Errorf("first apply calls %v lack %q", calls, want)
		}
	}
	if st, _ := os.Stat(paths.In(r.Root, paths.K3sToken)); st.Mode().Perm() != 0o600 {
		t.Errorf("token mode %v, want 0600", st.Mode().Perm())
	}
	if got := read(t, r, "/etc/systemd/system/k3s.service"); !strings.Contains(got, "k3s server") {
		t.Errorf("unit file content: %q", got)
	}

	res, err = r.Apply(ctx, state("name: a\n", "token-file: x\n", true), nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed() {
		t.Fatalf("re-apply changed something: %+v", res)
	}
	if calls := fake.Calls(); len(calls) != 0 {
		t.Fatalf("re-apply called systemd: %v", calls)
	}
}

func TestChangedConfigRestartsOnlyItsUnit(t *testing.T) {
	r, fake := newReconciler(t)
	ctx := context.Background()
	if _, err := r.Apply(ctx, state("name: a\n", "x: 1\n", true), nil); err != nil {
		t.Fatal(err)
	}
	fake.Calls()
	res, err := r.Apply(ctx, state("name: a\n", "x: 2\n", true), nil)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(res.Written, []string{paths.K3sConfig}) || res.Reloaded {
		t.Fatalf("apply: %+v", res)
	}
	if calls := fake.Calls(); !slices.Equal(calls, []string{"restart k3s.service"}) {
		t.Fatalf("calls %v, want exactly a restart of k3s.service", calls)
	}
	// An input changed outside the state (a new binary) restarts its unit too.
	if _, err := r.Apply(ctx, state("name: a\n", "x: 2\n", true), []string{paths.K3sServerUnit}); err != nil {
		t.Fatal(err)
	}
	if calls := fake.Calls(); !slices.Equal(calls, []string{"restart k3s.service"}) {
		t.Fatalf("calls %v, want exactly a restart of k3s.service", calls)
	}
}

func TestDroppedRoleStopsDisablesAndRemovesItsUnit(t *testing.T) {
	r, fake := newReconciler(t)
	ctx := context.Background()
	if _, err := r.Apply(ctx, state("name: a\n", "x: 1\n", true), nil); err != nil {
		t.Fatal(err)
	}
	fake.Calls()
	res, err := r.Apply(ctx, state("name: a\n", "", false), nil)
	if err != nil {
		t.Fatal(err)
	}
	calls := fake.Calls()
	if !slices.Equal(calls, []string{"stop k3s.service", "disable k3s.service", "reload "}) {
		t.Fatalf("calls %v", calls)
	}
	if _, err := os.Stat(paths.In(r.Root, "/etc/systemd/system/k3s.service")); !os.IsNotExist(err) {
		t.Fatalf("dropped unit file still there: %v", err)
	}
	if len(res.Stopped) != 1 {
		t.Fatalf("result %+v", res)
	}
	st, _ := fake.State(ctx, paths.EtcdUnit)
	if !st.Running() {
		t.Fatal("etcd was disturbed by dropping k3s")
	}
	// Dropping again does nothing.
	if _, err := r.Apply(ctx, state("name: a\n", "", false), nil); err != nil {
		t.Fatal(err)
	}
	if calls := fake.Calls(); len(calls) != 0 {
		t.Fatalf("second apply without k3s called %v", calls)
	}
}

func TestFailingWriteLeavesPreviousFilesAndNamesStepAndPath(t *testing.T) {
	r, fake := newReconciler(t)
	ctx := context.Background()
	if _, err := r.Apply(ctx, state("name: a\n", "x: 1\n", true), nil); err != nil {
		t.Fatal(err)
	}
	fake.Calls()
	// Something made a directory where the token file should be.
	os.Remove(paths.In(r.Root, paths.K3sToken))
	os.Mkdir(paths.In(r.Root, paths.K3sToken), 0o755)
	_, err := r.Apply(ctx, state("name: b\n", "x: 2\n", true), nil)
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepWriteFiles || se.Path != paths.K3sToken {
		t.Fatalf("error %v, want step %q path %s", err, StepWriteFiles, paths.K3sToken)
	}
	if got := read(t, r, paths.EtcdConfig); got != "name: a\n" {
		t.Fatalf("etcd config is %q after a failed apply, want the previous content", got)
	}
	if got := read(t, r, paths.K3sConfig); got != "x: 1\n" {
		t.Fatalf("k3s config is %q after a failed apply, want the previous content", got)
	}
	if calls := fake.Calls(); len(calls) != 0 {
		t.Fatalf("failed apply called systemd: %v", calls)
	}
}

func TestRestartOwedAfterAFailedApplyIsDoneNextTime(t *testing.T) {
	r, fake := newReconciler(t)
	ctx := context.Background()
	if _, err := r.Apply(ctx, state("name: a\n", "x: 1\n", true), nil); err != nil {
		t.Fatal(err)
	}
	fake.Calls()
	// The config is written, then a unit write fails.
	unit := paths.In(r.Root, "/etc/systemd/system/k3s.service")
	os.Remove(unit)
	os.Mkdir(unit, 0o755)
	os.WriteFile(unit+"/keep", nil, 0o644) // non-empty, so rename over it fails
	if _, err := r.Apply(ctx, state("name: b\n", "x: 1\n", true), nil); err == nil {
		t.Fatal("apply over a directory succeeded")
	}
	os.RemoveAll(unit)
	if _, err := r.Apply(ctx, state("name: b\n", "x: 1\n", true), nil); err != nil {
		t.Fatal(err)
	}
	if calls := fake.Calls(); !slices.Contains(calls, "restart kedge-etcd.service") {
		t.Fatalf("etcd config changed in a failed apply but etcd was not restarted after: %v", calls)
	}
}

func TestApplyPlanNamesTheFailingStep(t *testing.T) {
	r, fake := newReconciler(t)
	a := &PlanApplier{Reconciler: *r, HTTP: http.DefaultClient, Roles: DefaultRoles()}
	plan := &kedgev1.Plan{NodeName: "nuc-1", Hostname: "nuc-1", Etcd: &kedgev1.EtcdPlan{MemberName: "nuc-1"}}

	// Offline with no certs on disk: the cached plan cannot be applied yet.
	_, err := a.ApplyPlan(context.Background(), plan, nil)
	if step, _ := AsStepError(err); step != StepEtcdCerts || !strings.Contains(err.Error(), paths.EtcdCA) {
		t.Fatalf("offline apply: %v", err)
	}
	if h, _ := fake.StaticHostname(context.Background()); h != "nuc-1" {
		t.Fatalf("hostname %q, want nuc-1", h)
	}

	ok := func(context.Context, string, *kedgev1.Plan, kedgev1.NodeServiceClient) (bool, error) {
		return false, nil
	}
	a.Roles.EnsureEtcdCerts = ok
	a.Roles.EnsureDatastoreClientCert = ok
	a.Roles.EtcdDesired = func(*kedgev1.Plan) (desired.State, error) { return state("name: nuc-1\n", "", false), nil }
	a.Roles.K3sDesired = func(*kedgev1.Plan) (desired.State, error) {
		return desired.State{}, errors.New("k3srole: not built yet")
	}
	_, err = a.ApplyPlan(context.Background(), plan, kedgev1.NewNodeServiceClient(nil))
	if step, msg := AsStepError(err); step != StepRenderK3s || !strings.Contains(msg, "not built yet") {
		t.Fatalf("apply with a failing renderer: step %q, %v", step, err)
	}
	a.Roles.K3sDesired = func(*kedgev1.Plan) (desired.State, error) { return desired.State{}, nil }
	if _, err := a.ApplyPlan(context.Background(), plan, kedgev1.NewNodeServiceClient(nil)); err != nil {
		t.Fatal(err)
	}
	if st, _ := fake.State(context.Background(), paths.EtcdUnit); !st.Running() || !st.Enabled() {
		t.Fatalf("etcd unit %+v", st)
	}
}

func TestHostnameFailureDoesNotHoldBackTheRoles(t *testing.T) {
	r, fake := newReconciler(t)
	fake.HostnameErr = errors.New("access denied")
	ok := func(context.Context, string, *kedgev1.Plan, kedgev1.NodeServiceClient) (bool, error) {
		return false, nil
	}
	a := &PlanApplier{Reconciler: *r, Roles: Roles{
		EnsureEtcdCerts: ok, EnsureDatastoreClientCert: ok,
		EtcdDesired: func(*kedgev1.Plan) (desired.State, error) { return state("name: nuc-1\n", "", false), nil },
		K3sDesired:  func(*kedgev1.Plan) (desired.State, error) { return desired.State{}, nil },
	}}
	_, err := a.ApplyPlan(context.Background(), &kedgev1.Plan{Hostname: "nuc-1", Etcd: &kedgev1.EtcdPlan{}}, kedgev1.NewNodeServiceClient(nil))
	if step, _ := AsStepError(err); step != StepHostname || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("error %v, want the hostname step", err)
	}
	if st, _ := fake.State(context.Background(), paths.EtcdUnit); !st.Running() {
		t.Fatal("etcd was not started because the hostname could not be set")
	}
}

func TestSlowUnitDoesNotHoldUpTheApply(t *testing.T) {
	r, fake := newReconciler(t)
	r.JobTimeout = 100 * time.Millisecond
	fake.Slow[paths.EtcdUnit] = true // waiting for quorum
	if _, err := r.Apply(context.Background(), state("name: a\n", "x: 1\n", true), nil); err != nil {
		t.Fatal(err)
	}
	if st, _ := fake.State(context.Background(), paths.EtcdUnit); st.ActiveState != "activating" {
		t.Fatalf("etcd %+v, want activating", st)
	}
	if st, _ := fake.State(context.Background(), paths.K3sServerUnit); !st.Running() {
		t.Fatal("k3s was not started after a slow etcd")
	}
	// The job is still queued in systemd: a re-apply does not start it again.
	fake.Calls()
	if _, err := r.Apply(context.Background(), state("name: a\n", "x: 1\n", true), nil); err != nil {
		t.Fatal(err)
	}
	if calls := fake.Calls(); len(calls) != 0 {
		t.Fatalf("re-apply with etcd still activating called %v", calls)
	}
}

// An apply cut short (the agent stopped while a unit was starting) must not
// make the next apply restart what is already up to date.
func TestInterruptedApplyRestartsNothingNextTime(t *testing.T) {
	r, fake := newReconciler(t)
	fake.Slow[paths.K3sServerUnit] = true
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			if st, _ := fake.State(context.Background(), paths.K3sServerUnit); st.ActiveState == "activating" {
				cancel()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	if _, err := r.Apply(ctx, state("name: a\n", "x: 1\n", true), nil); err == nil {
		t.Fatal("apply survived its context ending")
	}
	fake.Slow[paths.K3sServerUnit] = false
	fake.Calls()
	if _, err := r.Apply(context.Background(), state("name: a\n", "x: 1\n", true), nil); err != nil {
		t.Fatal(err)
	}
	if calls := fake.Calls(); len(calls) != 0 {
		t.Fatalf("after an interrupted apply the next one called %v", calls)
	}
}
