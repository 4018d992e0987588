package etcdrole

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// healthReadTimeout bounds the linearizable read that decides "healthy".
const healthReadTimeout = time.Second

// Probe reports the local member's view of etcd, using the files under root.
// It never fails: what went wrong is in the status's error field.
func Probe(ctx context.Context, root string, plan *kedgev1.Plan) *kedgev1.EtcdMemberStatus {
	ep := plan.GetEtcd()
	if !hasRole(plan, kedgev1.Role_ROLE_ETCD) || ep == nil || len(ep.GetClientUrls()) == 0 {
		return &kedgev1.EtcdMemberStatus{Error: "plan has no etcd member for this node"}
	}
	tlsCfg, err := ClientTLS(paths.In(root, paths.EtcdCA), paths.In(root, paths.DatastoreClientCert), paths.In(root, paths.DatastoreClientKey))
	if err != nil {
		return &kedgev1.EtcdMemberStatus{Error: err.Error()}
	}
	return ProbeEndpoint(ctx, ep.GetClientUrls()[0], tlsCfg)
}

// ProbeEndpoint reports the view of the member serving endpoint.
func ProbeEndpoint(ctx context.Context, endpoint string, tlsCfg *tls.Config) *kedgev1.EtcdMemberStatus {
	st := &kedgev1.EtcdMemberStatus{}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		TLS:         tlsCfg,
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		st.Error = fmt.Sprintf("connect to %s: %v", endpoint, err)
		return st
	}
	defer cli.Close()

	sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	s, err := cli.Status(sctx, endpoint)
	if err != nil {
		st.Error = fmt.Sprintf("status of %s: %v", endpoint, err)
		return st
	}
	st.MemberId = s.Header.GetMemberId()
	st.LeaderId = s.Leader
	st.IsLeader = s.Leader != 0 && s.Leader == s.Header.GetMemberId()
	st.RaftTerm = s.RaftTerm
	st.RaftIndex = s.RaftIndex
	st.DbSizeBytes = s.DbSize

	if alarms, err := cli.AlarmList(sctx); err == nil {
		for _, a := range alarms.Alarms {
			st.Alarms = append(st.Alarms, fmt.Sprintf("%s (member %x)", a.Alarm, a.MemberID))
		}
	} else {
		st.Error = fmt.Sprintf("alarm list: %v", err)
	}

	// A linearizable read goes through the leader and a quorum: the one
	// thing that proves this member can serve consistent data right now.
	rctx, rcancel := context.WithTimeout(ctx, healthReadTimeout)
	defer rcancel()
	if _, err := cli.Get(rctx, "health"); err != nil {
		st.Error = joinErr(st.Error, fmt.Sprintf("linearizable read within %s: %v", healthReadTimeout, err))
		return st
	}
	st.Healthy = true
	return st
}

func joinErr(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// ClientTLS is a TLS config for an etcd client: the etcd CA and a client
// cert/key pair, e.g. the datastore-client cert.
func ClientTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("etcd CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("etcd CA %s: no PEM certificate", caFile)
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, errors.New("etcd client cert " + certFile + ": " + err.Error())
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}, nil
}
