package store

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

func openTest(t *testing.T) *Store {
	t.Helper()
	s, err := OpenEmbedded(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestCASConflict(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	rev, err := s.Commit(ctx, Write{Key: Nodes + "a", Value: &kedgev1.Node{Name: "a"}, IfModRevision: 0})
	if err != nil {
		t.Fatal(err)
	}
	// Creating it again must fail: it exists.
	if _, err := s.Commit(ctx, Write{Key: Nodes + "a", Value: &kedgev1.Node{Name: "dup"}, IfModRevision: 0}); !errors.Is(err, ErrConflict) {
		t.Fatalf("second create: err = %v; want ErrConflict", err)
	}
	// Two writers read revision rev; the first wins, the second conflicts and
	// its other writes in the same transaction are not applied either.
	if _, err := s.Commit(ctx, Write{Key: Nodes + "a", Value: &kedgev1.Node{Name: "a", Cluster: "one"}, IfModRevision: rev}); err != nil {
		t.Fatal(err)
	}
	_, err = s.Commit(ctx,
		Write{Key: Nodes + "a", Value: &kedgev1.Node{Name: "a", Cluster: "two"}, IfModRevision: rev},
		Write{Key: Tokens + "t", Value: &kedgev1.StoredToken{}, IfModRevision: AnyRevision})
	if !errors.Is(err, ErrConflict) {
		t.Fatalf("stale write: err = %v; want ErrConflict", err)
	}
	var n kedgev1.Node
	if _, _, err := s.Get(ctx, Nodes+"a", &n); err != nil || n.Cluster != "one" {
		t.Errorf("node = %v, %v; want cluster one", &n, err)
	}
	if _, found, _ := s.Get(ctx, Tokens+"t", &kedgev1.StoredToken{}); found {
		t.Error("a write from the failed transaction was applied")
	}
}

func TestListWatchAndReopen(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := OpenEmbedded(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	changes := s.Watch(ctx, Plans, 0)
	if _, err := s.Put(ctx, Plans+"n1", &kedgev1.Plan{NodeName: "n1", Hash: "h1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case cs := <-changes:
		var p kedgev1.Plan
		if len(cs) != 1 || cs[0].Key != Plans+"n1" || proto.Unmarshal(cs[0].Value, &p) != nil || p.Hash != "h1" {
			t.Errorf("watch got %+v", cs)
		}
	case <-ctx.Done():
		t.Fatal("no watch event")
	}
	s.Close()

	s, err = OpenEmbedded(ctx, dir)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer s.Close()
	plans, entries, err := List(ctx, s, Plans, func() *kedgev1.Plan { return &kedgev1.Plan{} })
	if err != nil || len(plans) != 1 || plans[0].Hash != "h1" || entries[0].Key != Plans+"n1" {
		t.Errorf("after reopen: %v %v %v", plans, entries, err)
	}
}

// OpenExternal reaches an etcd it did not start (here: an embedded one's
// client URL) and sees the same data; a missing CA file is named.
func TestOpenExternal(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	if _, err := s.Put(ctx, Specs+"c", &kedgev1.ClusterSpec{Name: "c"}); err != nil {
		t.Fatal(err)
	}
	ext, err := OpenExternal(s.Client().Endpoints(), "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	defer ext.Close()
	var sp kedgev1.ClusterSpec
	if _, found, err := ext.Get(ctx, Specs+"c", &sp); err != nil || !found || sp.Name != "c" {
		t.Errorf("external read: %v %v %v", &sp, found, err)
	}
	if _, err := OpenExternal([]string{"https://127.0.0.1:1"}, "/nonexistent/ca.pem", "", ""); err == nil || !strings.Contains(err.Error(), "--etcd-cafile") {
		t.Errorf("missing CA file: %v; want an error naming --etcd-cafile", err)
	}
}
