package etcdrole

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/kedge-io/kedge/coordinator/pki"
	"github.com/kedge-io/kedge/internal/atomicfile"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// certSpec is one cert/key pair the node keeps and what it must satisfy.
type certSpec struct {
	kind     kedgev1.CertificateKind
	label    string // for errors: "etcd server cert"
	certPath string
	keyPath  string
	// cn is the CSR's subject; the coordinator decides the signed subject.
	cn string
	// wantCN, when set, must equal the signed cert's CN.
	wantCN string
	// wantIPs must all be IP SANs of the cert.
	wantIPs []net.IP
	eku     x509.ExtKeyUsage
}

// EnsureCerts makes sure the etcd CA, server and peer cert/key files under root
// exist, match the plan (member name, IPs) and are not past two thirds of their
// lifetime; otherwise it generates keys on the node and asks the coordinator to
// sign. It reports whether any file changed. A plan without the etcd role is a no-op.
//
// It also keeps the datastore-client cert (as EnsureDatastoreClientCert
// does): the agent probes its member with it on every etcd node, including
// dedicated ones without K3s.
//
// With no coordinator (client nil or unreachable) and usable files present it
// returns (false, nil): renewal waits for the coordinator, etcd keeps running.
func EnsureCerts(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient) (bool, error) {
	return ensureCerts(ctx, root, plan, client, time.Now())
}

func ensureCerts(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient, now time.Time) (bool, error) {
	ep := plan.GetEtcd()
	if !hasRole(plan, kedgev1.Role_ROLE_ETCD) || ep == nil {
		return false, nil
	}
	if ep.GetMemberName() == "" {
		return false, errors.New("etcd plan: member_name is empty")
	}
	ips, err := memberIPs(ep)
	if err != nil {
		return false, err
	}
	specs := []certSpec{
		{
			kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_SERVER, label: "etcd server cert",
			certPath: paths.In(root, paths.EtcdServerCert), keyPath: paths.In(root, paths.EtcdServerKey),
			cn: ep.GetMemberName(), wantCN: ep.GetMemberName(), wantIPs: ips, eku: x509.ExtKeyUsageServerAuth,
		},
		{
			kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_PEER, label: "etcd peer cert",
			certPath: paths.In(root, paths.EtcdPeerCert), keyPath: paths.In(root, paths.EtcdPeerKey),
			cn: ep.GetMemberName(), wantCN: ep.GetMemberName(), wantIPs: ips, eku: x509.ExtKeyUsageServerAuth,
		},
		// Every etcd node also needs the datastore-client cert, K3s or not:
		// Probe reads the local member with it.
		datastoreClientSpec(root, plan),
	}
	return ensure(ctx, root, specs, client, now)
}

func datastoreClientSpec(root string, plan *kedgev1.Plan) certSpec {
	return certSpec{
		kind: kedgev1.CertificateKind_CERTIFICATE_KIND_ETCD_CLIENT, label: "etcd datastore-client cert",
		certPath: paths.In(root, paths.DatastoreClientCert), keyPath: paths.In(root, paths.DatastoreClientKey),
		cn: "kedge-datastore-" + plan.GetNodeName(), eku: x509.ExtKeyUsageClientAuth,
	}
}

// EnsureDatastoreClientCert does the same for the datastore-client cert a K3s
// server uses to reach etcd (and the etcd CA it trusts). A plan with no
// datastore endpoints is a no-op.
//
// An etcd node gets one too, even without K3s: the agent probes its local
// member with it.
func EnsureDatastoreClientCert(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient) (bool, error) {
	return ensureDatastoreClientCert(ctx, root, plan, client, time.Now())
}

func ensureDatastoreClientCert(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient, now time.Time) (bool, error) {
	if len(plan.GetK3S().GetDatastoreEndpoints()) == 0 && !(hasRole(plan, kedgev1.Role_ROLE_ETCD) && plan.GetEtcd() != nil) {
		return false, nil
	}
	return ensure(ctx, root, []certSpec{datastoreClientSpec(root, plan)}, client, now)
}

func memberIPs(ep *kedgev1.EtcdPlan) ([]net.IP, error) {
	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	for _, s := range ep.GetIps() {
		ip := net.ParseIP(s)
		if ip == nil {
			return nil, fmt.Errorf("etcd plan: ips: %q is not an IP address", s)
		}
		ips = append(ips, ip)
	}
	return ips, nil
}

// ensure checks specs against the files under root and has the coordinator
// sign new certs for those that are unusable or due for renewal.
func ensure(ctx context.Context, root string, specs []certSpec, client kedgev1.NodeServiceClient, now time.Time) (bool, error) {
	caPath := paths.In(root, paths.EtcdCA)
	ca, caErr := readCACert(caPath)
	var due []certSpec
	var unusable []string
	for _, s := range specs {
		if caErr != nil {
			due = append(due, s)
			unusable = append(unusable, caErr.Error())
			continue
		}
		usable, reason := checkCert(s, ca, now)
		if reason == "" {
			continue
		}
		due = append(due, s)
		if !usable {
			unusable = append(unusable, s.label+": "+reason)
		}
	}
	if len(due) == 0 {
		return false, nil
	}
	offline := func(err error) (bool, error) {
		if len(unusable) == 0 {
			// Still valid: renewal waits until the coordinator is back.
			return false, nil
		}
		return false, fmt.Errorf("%s; cannot get new certs: %w", strings.Join(unusable, "; "), err)
	}
	if client == nil {
		return offline(errors.New("no coordinator connection"))
	}

	keys := make([]*ecdsa.PrivateKey, len(due))
	req := &kedgev1.SignCertificatesRequest{}
	for i, s := range due {
		// The key is made here and never leaves the node; only the CSR does.
		key, err := pki.GenerateKey()
		if err != nil {
			return false, fmt.Errorf("generate key for %s: %w", s.label, err)
		}
		csr, err := pki.CreateCSR(key, s.cn)
		if err != nil {
			return false, fmt.Errorf("create CSR for %s: %w", s.label, err)
		}
		keys[i] = key
		req.Requests = append(req.Requests, &kedgev1.CertificateRequest{Kind: s.kind, CsrDer: csr})
	}
	resp, err := client.SignCertificates(ctx, req)
	if err != nil {
		return offline(fmt.Errorf("coordinator SignCertificates: %w", err))
	}
	newCA, err := parseCertPEM(resp.GetCaPem())
	if err != nil {
		return false, fmt.Errorf("coordinator returned an unusable etcd CA: %w", err)
	}
	type signed struct {
		spec    certSpec
		keyPEM  []byte
		certPEM []byte
		cert    *x509.Certificate
	}
	var out []signed
	for i, s := range due {
		var certPEM []byte
		for _, c := range resp.GetCertificates() {
			if c.GetKind() == s.kind {
				certPEM = c.GetCertificatePem()
			}
		}
		if certPEM == nil {
			return false, fmt.Errorf("coordinator signed no %s (kind %s)", s.label, s.kind)
		}
		cert, err := parseCertPEM(certPEM)
		if err != nil {
			return false, fmt.Errorf("coordinator returned an unusable %s: %w", s.label, err)
		}
		if !publicKeyMatches(cert, keys[i].Public()) {
			return false, fmt.Errorf("coordinator returned a %s for another key", s.label)
		}
		if err := verifyChain(cert, newCA, s.eku); err != nil {
			return false, fmt.Errorf("coordinator returned a %s the etcd CA does not verify: %w", s.label, err)
		}
		keyPEM, err := pki.EncodeKeyPEM(keys[i])
		if err != nil {
			return false, err
		}
		out = append(out, signed{s, keyPEM, certPEM, cert})
	}
	// Key before cert: a crash in between leaves a pair that fails the key
	// check next time and is simply requested again.
	for _, o := range out {
		if err := atomicfile.WriteFile(o.spec.keyPath, o.keyPEM, 0o600); err != nil {
			return true, err
		}
		if err := atomicfile.WriteFile(o.spec.certPath, o.certPEM, 0o644); err != nil {
			return true, err
		}
	}
	if err := atomicfile.WriteFile(caPath, resp.GetCaPem(), 0o644); err != nil {
		return true, err
	}
	// The coordinator decides SANs; say so when they still miss what the plan needs.
	for _, o := range out {
		if reason := matchesPlan(o.spec, o.cert); reason != "" {
			return true, fmt.Errorf("coordinator signed a %s that %s: fix the node's IP in the coordinator's inventory", o.spec.label, reason)
		}
	}
	return true, nil
}

// checkCert says whether the pair at s's paths can be used now and, if it
// should be replaced, why ("" when it is fine).
func checkCert(s certSpec, ca *x509.Certificate, now time.Time) (usable bool, reason string) {
	certPEM, err := os.ReadFile(s.certPath)
	if err != nil {
		return false, "missing"
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return false, err.Error()
	}
	keyPEM, err := os.ReadFile(s.keyPath)
	if err != nil {
		return false, "key missing"
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return false, "key " + err.Error()
	}
	if !publicKeyMatches(cert, key.Public()) {
		return false, "key does not match cert"
	}
	if err := verifyChain(cert, ca, s.eku); err != nil {
		return false, "not signed by the current etcd CA"
	}
	if now.After(cert.NotAfter) || now.Before(cert.NotBefore) {
		return false, fmt.Sprintf("not valid now (valid %s to %s)", cert.NotBefore.Format(time.RFC3339), cert.NotAfter.Format(time.RFC3339))
	}
	if r := matchesPlan(s, cert); r != "" {
		return false, r
	}
	renewAt := cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) * 2 / 3)
	if now.After(renewAt) {
		return true, "past two thirds of its lifetime"
	}
	return true, ""
}

func matchesPlan(s certSpec, cert *x509.Certificate) string {
	if s.wantCN != "" && cert.Subject.CommonName != s.wantCN {
		return fmt.Sprintf("has CN %q, want %q", cert.Subject.CommonName, s.wantCN)
	}
	for _, want := range s.wantIPs {
		found := false
		for _, have := range cert.IPAddresses {
			if have.Equal(want) {
				found = true
				break
			}
		}
		if !found {
			return fmt.Sprintf("lacks IP SAN %s", want)
		}
	}
	return ""
}

func verifyChain(cert, ca *x509.Certificate, eku x509.ExtKeyUsage) error {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	// Validity is checked separately against the injected clock; here only
	// the chain and usage, at a moment both certs are valid.
	at := cert.NotBefore
	if ca.NotBefore.After(at) {
		at = ca.NotBefore
	}
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:       pool,
		KeyUsages:   []x509.ExtKeyUsage{eku},
		CurrentTime: at.Add(time.Second),
	})
	return err
}

func publicKeyMatches(cert *x509.Certificate, pub crypto.PublicKey) bool {
	k, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(pub)
}

func readCACert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("etcd CA %s missing", path)
	}
	c, err := parseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("etcd CA %s: %w", path, err)
	}
	return c, nil
}

func parseCertPEM(b []byte) (*x509.Certificate, error) { return pki.DecodeCertPEM(b) }

func parseKeyPEM(b []byte) (crypto.Signer, error) { return pki.DecodeKeyPEM(b) }
