package server_test

import (
	"crypto/tls"
	"crypto/x509"

	"github.com/kedge-io/kedge/coordinator/coordtest"
)

// tlsNoCert trusts the coordinator CA and presents no client cert.
func tlsNoCert(env *coordtest.Env) *tls.Config {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(env.CAPEM)
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool}
}
