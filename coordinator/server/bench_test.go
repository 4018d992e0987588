package server

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/coordinator/tokens"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// BenchmarkEnroll measures the handler (token check, one store write, one
// signature) without TLS: go test -run X -bench Enroll ./coordinator/server
func BenchmarkEnroll(b *testing.B) {
	s := newTestServer(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	tok, _, err := s.tokens.Create(ctx, tokens.Options{Cluster: "c", TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	key, _ := pki.GenerateKey()
	csr, _ := pki.CreateCSR(key, "n")
	var seq atomic.Int64
	b.SetParallelism(50)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			_, err := s.Enroll(ctx, &kedgev1.EnrollRequest{Token: tok, CsrDer: csr, Facts: &kedgev1.MachineFacts{
				MachineId: fmt.Sprint(i), Macs: []string{fmt.Sprintf("52:54:00:%02x:%02x:%02x", i>>16&0xff, i>>8&0xff, i&0xff)},
			}})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}
