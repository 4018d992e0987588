// Package enroll turns a bootstrap token into a node identity and keeps that
// identity on disk. The coordinator's certificate is checked against the CA pin
// from agent.yaml during the TLS handshake, so the token never reaches a
// server the pin does not vouch for.
package enroll

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/internal/atomicfile"
	"github.com/kedge-io/kedge/internal/version"
	"github.com/kedge-io/kedge/nodeagent/internal/pkiutil"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// PinMismatchError says the coordinator's CA is not the pinned one.
type PinMismatchError struct {
	Pin    string
	Detail string
}

func (e *PinMismatchError) Error() string {
	msg := "coordinator CA does not match the pin " + e.Pin
	if e.Detail != "" {
		msg += ": " + e.Detail
	}
	return msg
}

// RefusedError is the coordinator turning the enrollment or identity down,
// with its reason (e.g. "token expired at ...", "node X was removed").
type RefusedError struct {
	Code   codes.Code
	Reason string
}

func (e *RefusedError) Error() string { return e.Reason }

// AsRefusal returns a RefusedError when err is a coordinator refusal
// (InvalidArgument, PermissionDenied, Unauthenticated), nil otherwise.
func AsRefusal(err error) *RefusedError {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	switch st.Code() {
	case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.FailedPrecondition:
		return &RefusedError{Code: st.Code(), Reason: st.Message()}
	}
	return nil
}

// PinnedTLSConfig trusts a server only if the chain it presents contains a CA
// whose SPKI hash is pin and the leaf verifies against that CA for host.
// Standard verification is off because there is no trust store yet: the pin is
// the trust anchor, checked in VerifyConnection before any request is sent.
func PinnedTLSConfig(pin, host string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		ServerName:         host,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyPinned(cs.PeerCertificates, pin, host)
		},
	}
}

// VerifyPinned checks a presented chain against pin for host.
func VerifyPinned(presented []*x509.Certificate, pin, host string) error {
	if len(presented) == 0 {
		return &PinMismatchError{Pin: pin, Detail: "no certificate presented"}
	}
	var pinned *x509.Certificate
	inter := x509.NewCertPool()
	for _, c := range presented[1:] {
		if c.IsCA && pki.Pin(c) == pin {
			pinned = c
			continue
		}
		inter.AddCert(c)
	}
	if pinned == nil {
		// A self-signed leaf that is itself the CA is allowed too.
		if presented[0].IsCA && pki.Pin(presented[0]) == pin {
			pinned = presented[0]
		} else if len(presented) == 1 {
			// Nothing to check the pin against: the coordinator must send
			// its CA after its serving certificate.
			return &PinMismatchError{Pin: pin, Detail: "the coordinator presented its serving certificate without its CA; it must serve the chain (serving cert followed by the CA cert)"}
		} else {
			return &PinMismatchError{Pin: pin, Detail: "no CA in the presented chain has that pin"}
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(pinned)
	_, err := presented[0].Verify(x509.VerifyOptions{
		DNSName:       host,
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return &PinMismatchError{Pin: pin, Detail: "server certificate does not verify against the pinned CA: " + err.Error()}
	}
	return nil
}

// Request is one enrollment attempt's input.
type Request struct {
	Addr  string
	Pin   string
	Token string
	Facts *kedgev1.MachineFacts
	Key   *ecdsa.PrivateKey
}

// Enroll makes one enrollment call to req.Addr. A pin mismatch returns a
// *PinMismatchError, a refusal a *RefusedError; a PENDING_APPROVAL answer is
// returned as a response, not an error.
func Enroll(ctx context.Context, req Request) (*kedgev1.EnrollResponse, error) {
	host, _, err := net.SplitHostPort(req.Addr)
	if err != nil {
		return nil, fmt.Errorf("coordinator address %q: %w", req.Addr, err)
	}
	cfg := PinnedTLSConfig(req.Pin, host)
	// The handshake error reaches us only as text inside a gRPC status, so
	// keep the typed one to report the pin mismatch precisely.
	var mu sync.Mutex
	var verifyErr error
	verify := cfg.VerifyConnection
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if err != nil {
			mu.Lock()
			verifyErr = err
			mu.Unlock()
		}
		return err
	}
	conn, err := grpc.NewClient(req.Addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	csr, err := pki.CreateCSR(req.Key, req.Facts.GetHostname())
	if err != nil {
		return nil, err
	}
	callCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	resp, err := kedgev1.NewBootstrapServiceClient(conn).Enroll(callCtx, &kedgev1.EnrollRequest{
		Token: req.Token, CsrDer: csr, Facts: req.Facts, AgentVersion: version.Version,
	}, grpc.WaitForReady(false))
	if err != nil {
		mu.Lock()
		defer mu.Unlock()
		if verifyErr != nil {
			return nil, verifyErr
		}
		if r := AsRefusal(err); r != nil {
			return nil, &RefusedError{Code: r.Code, Reason: "enrollment refused: " + r.Reason}
		}
		return nil, fmt.Errorf("enroll at %s: %w", req.Addr, err)
	}
	if resp.GetState() == kedgev1.EnrollState_ENROLL_STATE_ENROLLED {
		if err := checkBundle(resp.GetCaBundlePem(), req.Pin); err != nil {
			return nil, err
		}
	}
	return resp, nil
}

// checkBundle makes sure the CA bundle the coordinator hands back holds the
// pinned CA, so the stored trust is the trust the pin established.
func checkBundle(bundle []byte, pin string) error {
	cas, err := pkiutil.ParseCerts(bundle)
	if err != nil {
		return fmt.Errorf("coordinator CA bundle: %w", err)
	}
	for _, c := range cas {
		if pki.Pin(c) == pin {
			return nil
		}
	}
	return &PinMismatchError{Pin: pin, Detail: "the CA bundle returned by enrollment does not contain the pinned CA"}
}

// ErrNoIdentity is returned by Load before the node has enrolled.
var ErrNoIdentity = errors.New("no node identity yet")

// Identity is the node's key, certificate and the coordinator CA it trusts.
type Identity struct {
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	CAPEM   []byte
	Cert    *x509.Certificate
	CAs     *x509.CertPool
}

// NewIdentity assembles and checks an identity.
func NewIdentity(key *ecdsa.PrivateKey, certPEM, caPEM []byte) (*Identity, error) {
	certs, err := pkiutil.ParseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("identity certificate: %w", err)
	}
	cas, err := pkiutil.ParseCerts(caPEM)
	if err != nil {
		return nil, fmt.Errorf("identity CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	for _, c := range cas {
		pool.AddCert(c)
	}
	if pub, ok := certs[0].PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, errors.New("identity certificate does not match the node key")
	}
	return &Identity{Key: key, CertPEM: certPEM, CAPEM: caPEM, Cert: certs[0], CAs: pool}, nil
}

// Name is the node name the coordinator gave (the cert's CN).
func (id *Identity) Name() string { return id.Cert.Subject.CommonName }

// RenewAt is two thirds into the certificate's lifetime.
func (id *Identity) RenewAt() time.Time {
	life := id.Cert.NotAfter.Sub(id.Cert.NotBefore)
	return id.Cert.NotBefore.Add(life * 2 / 3)
}

// TLSConfig is the mutual-TLS client config for host, trusting only the stored CA.
func (id *Identity) TLSConfig(host string) (*tls.Config, error) {
	keyPEM, err := pki.EncodeKeyPEM(id.Key)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(id.CertPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity key pair: %w", err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		ServerName:   host,
		RootCAs:      id.CAs,
		Certificates: []tls.Certificate{pair},
	}, nil
}

// LoadOrCreateKey returns the node key under root, generating it (0600) the
// first time. The key never leaves the machine.
func LoadOrCreateKey(root string) (*ecdsa.PrivateKey, error) {
	p := paths.In(root, paths.IdentityKey)
	if data, err := os.ReadFile(p); err == nil {
		key, err := pkiutil.DecodeKey(data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w (delete it to re-enroll with a new key)", p, err)
		}
		return key, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	pemBytes, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(paths.In(root, "/var/lib/kedge/identity"), 0o700); err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(p, pemBytes, 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

// Load reads the stored identity; ErrNoIdentity if the node has not enrolled.
func Load(root string) (*Identity, error) {
	certPEM, err := os.ReadFile(paths.In(root, paths.IdentityCert))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoIdentity
	}
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(paths.In(root, paths.IdentityCA))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", paths.IdentityCA, err)
	}
	keyPEM, err := os.ReadFile(paths.In(root, paths.IdentityKey))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", paths.IdentityKey, err)
	}
	key, err := pkiutil.DecodeKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", paths.IdentityKey, err)
	}
	return NewIdentity(key, certPEM, caPEM)
}

// Save writes the certificate and CA bundle (the key is already on disk).
// The CA goes first so a crash between the writes never leaves a cert without
// the CA that verifies the coordinator.
func (id *Identity) Save(root string) error {
	if err := atomicfile.WriteFile(paths.In(root, paths.IdentityCA), id.CAPEM, 0o644); err != nil {
		return err
	}
	return atomicfile.WriteFile(paths.In(root, paths.IdentityCert), id.CertPEM, 0o644)
}

// Renew asks the coordinator for a fresh certificate for the same key.
func Renew(ctx context.Context, client kedgev1.NodeServiceClient, id *Identity) (*Identity, error) {
	csr, err := pki.CreateCSR(id.Key, id.Name())
	if err != nil {
		return nil, err
	}
	resp, err := client.RenewIdentity(ctx, &kedgev1.RenewIdentityRequest{CsrDer: csr})
	if err != nil {
		return nil, err
	}
	caPEM := resp.GetCaBundlePem()
	if len(caPEM) == 0 {
		caPEM = id.CAPEM
	}
	return NewIdentity(id.Key, resp.GetCertificatePem(), caPEM)
}
