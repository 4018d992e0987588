package server

import (
	"context"
	"regexp"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/server/machine"
	"github.com/kedge-io/kedge/coordinator/store"
	"github.com/kedge-io/kedge/coordinator/tokens"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// newTestServer is a Server over a real embedded etcd and a real CA, not
// started (no watch, no tick): enough to call handlers directly.
func newTestServer(tb testing.TB) *Server {
	tb.Helper()
	st, err := store.OpenEmbedded(context.Background(), tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(st.Close)
	ca, err := pki.NewCA("test", time.Hour*24*365, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	s, err := New(context.Background(), Config{Store: st, CA: ca, DataDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

var derivedNameRE = regexp.MustCompile(`^node-[0-9a-f]{8}$`)

// FuzzEnroll feeds arbitrary EnrollRequest bytes (token, CSR, facts) to the
// real Enroll handler. It must never panic, must answer InvalidArgument,
// PermissionDenied or ResourceExhausted for bad input, and an accepted
// request must yield a cert for the name it reports.
func FuzzEnroll(f *testing.F) {
	s := newTestServer(f)
	tok, _, err := s.tokens.Create(context.Background(), tokens.Options{Cluster: "c", TTL: time.Hour})
	if err != nil {
		f.Fatal(err)
	}
	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key, "n")
	seed := func(r *kedgev1.EnrollRequest) {
		b, _ := proto.Marshal(r)
		f.Add(b)
	}
	good := &kedgev1.MachineFacts{MachineId: "m", Macs: []string{"52:54:00:00:00:01"}, Ips: []string{"10.0.0.1"}}
	seed(&kedgev1.EnrollRequest{Token: tok, CsrDer: csr, Facts: good})
	seed(&kedgev1.EnrollRequest{Token: tok, CsrDer: csr[:len(csr)/2], Facts: good})
	seed(&kedgev1.EnrollRequest{Token: tok, CsrDer: csr})
	seed(&kedgev1.EnrollRequest{Token: "abcdef.0123456789abcdef", CsrDer: csr, Facts: good})
	seed(&kedgev1.EnrollRequest{Token: tok, CsrDer: csr, Facts: &kedgev1.MachineFacts{Macs: []string{""}}})
	f.Add([]byte{0xff, 0x01})

	f.Fuzz(func(t *testing.T, data []byte) {
		var req kedgev1.EnrollRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		resp, err := s.Enroll(context.Background(), &req)
		if err != nil {
			switch status.Code(err) {
			case codes.InvalidArgument, codes.PermissionDenied, codes.ResourceExhausted:
			default:
				t.Fatalf("unexpected error code: %v", err)
			}
			return
		}
		if resp.State == kedgev1.EnrollState_ENROLL_STATE_ENROLLED {
			cert, err := pki.DecodeCertPEM(resp.CertificatePem)
			if err != nil || cert.Subject.CommonName != resp.NodeName {
				t.Fatalf("enrolled %q with cert %v (%v)", resp.NodeName, cert, err)
			}
		}
		if !machine.Same(req.Facts, req.Facts) {
			t.Fatalf("accepted facts %v are not the same machine as themselves", req.Facts)
		}
		if name := machine.DerivedName(req.Facts); !derivedNameRE.MatchString(name) {
			t.Fatalf("derived name %q", name)
		}
	})
}

// Heartbeats repeating the last status are not store writes; a change is.
func TestHeartbeatIsNotAWrite(t *testing.T) {
	s := newTestServer(t)
	ctx := context.Background()
	n := &kedgev1.Node{Name: "n1", Cluster: "c", State: kedgev1.NodeState_NODE_STATE_ENROLLED}
	if err := s.writeNode(ctx, n, 0); err != nil {
		t.Fatal(err)
	}
	ns := &nodeService{s: s}
	nctx := context.WithValue(ctx, nodeNameKey, "n1")
	report := func(active string, at time.Time) int64 {
		t.Helper()
		st := &kedgev1.NodeStatus{Units: []*kedgev1.UnitStatus{{Name: "k3s.service", ActiveState: active}}}
		st.ObservedAt = timestamppbOrNil(at)
		if _, err := ns.ReportStatus(nctx, &kedgev1.ReportStatusRequest{Status: st}); err != nil {
			t.Fatal(err)
		}
		rev, err := s.store.Revision(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return rev
	}
	r1 := report("active", time.Now())
	r2 := report("active", time.Now().Add(10*time.Second))
	if r2 != r1 {
		t.Errorf("a heartbeat wrote to the store (revision %d -> %d)", r1, r2)
	}
	if r3 := report("failed", time.Now().Add(20*time.Second)); r3 == r2 {
		t.Error("a changed status was not written")
	}
	var stored kedgev1.NodeStatus
	if _, found, _ := s.store.Get(ctx, store.Statuses+"n1", &stored); !found || stored.Units[0].ActiveState != "failed" {
		t.Errorf("stored status %v", &stored)
	}
}
