package etcdrole_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/kedge-io/kedge/nodeagent/etcdrole"
	"github.com/kedge-io/kedge/nodeagent/etcdrole/etcdtest"
	"github.com/kedge-io/kedge/nodeagent/paths"
)

func TestThreeMemberCluster(t *testing.T) {
	c := etcdtest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	t.Run("elects one leader and every member probes healthy", func(t *testing.T) {
		leaders := map[uint64]bool{}
		isLeader := 0
		for _, m := range c.Members {
			st := etcdrole.Probe(ctx, m.Root, m.Plan)
			if !st.Healthy || st.Error != "" {
				t.Fatalf("probe of %s: healthy=%v error=%q", m.Name, st.Healthy, st.Error)
			}
			if st.LeaderId == 0 || st.MemberId == 0 || st.RaftTerm == 0 || st.RaftIndex == 0 || st.DbSizeBytes == 0 {
				t.Errorf("probe of %s is missing facts: %+v", m.Name, st)
			}
			leaders[st.LeaderId] = true
			if st.IsLeader {
				isLeader++
			}
		}
		if len(leaders) != 1 || isLeader != 1 {
			t.Errorf("members disagree on the leader: %v, %d say they lead", leaders, isLeader)
		}
	})

	t.Run("a put through one member is read through another", func(t *testing.T) {
		if _, err := c.Client(c.Endpoints[0]).Put(ctx, "/kedge/test", "written-through-0"); err != nil {
			t.Fatalf("put through member 0: %v", err)
		}
		resp, err := c.Client(c.Endpoints[2]).Get(ctx, "/kedge/test")
		if err != nil {
			t.Fatalf("get through member 2: %v", err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "written-through-0" {
			t.Errorf("member 2 read %v, want written-through-0", resp.Kvs)
		}
	})

	t.Run("client port refuses clients without a cluster cert", func(t *testing.T) {
		other := etcdtest.NewCA(t, "some other CA")
		otherCert, otherKey := other.IssuePair(t, "intruder", "127.0.0.1")
		for name, certs := range map[string][]tls.Certificate{
			"no cert":            nil,
			"cert from other CA": {mustPair(t, otherCert, otherKey)},
		} {
			tlsCfg := &tls.Config{RootCAs: c.ClientTLS.RootCAs, Certificates: certs}
			cli, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints[:1], TLS: tlsCfg, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				continue // refused at dial: fine
			}
			gctx, gcancel := context.WithTimeout(ctx, 2*time.Second)
			_, err = cli.Get(gctx, "/kedge/test")
			gcancel()
			cli.Close()
			if err == nil {
				t.Errorf("%s: client port served a read", name)
			}
		}
	})

	t.Run("peer port refuses peers without a cluster cert", func(t *testing.T) {
		m := c.Members[1]
		peerURL := m.PeerURL + "/version"
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(c.CA.PEM)
		other := etcdtest.NewCA(t, "some other CA")
		otherCert, otherKey := other.IssuePair(t, "intruder", "127.0.0.1")
		peerCert, err := tls.LoadX509KeyPair(paths.In(c.Members[0].Root, paths.EtcdPeerCert), paths.In(c.Members[0].Root, paths.EtcdPeerKey))
		if err != nil {
			t.Fatal(err)
		}
		get := func(certs []tls.Certificate) error {
			hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: certs}}}
			resp, err := hc.Get(peerURL)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			_, err = io.ReadAll(resp.Body)
			return err
		}
		// A real peer's cert is accepted: the refusals below are about the cert.
		if err := get([]tls.Certificate{peerCert}); err != nil {
			t.Fatalf("peer port refused a member's own peer cert: %v", err)
		}
		if err := get(nil); err == nil {
			t.Error("peer port answered a client without a cert")
		}
		if err := get([]tls.Certificate{mustPair(t, otherCert, otherKey)}); err == nil {
			t.Error("peer port answered a client with a cert from another CA")
		}
	})

	t.Run("etcdctl with the datastore-client cert", func(t *testing.T) {
		etcdctl, err := exec.LookPath("etcdctl")
		if err != nil {
			if os.Getenv("CI") != "" {
				t.Fatal("etcdctl not installed (apt-get install etcd-client)")
			}
			t.Skip("etcdctl not installed (apt-get install etcd-client)")
		}
		run := func(withCert bool, args ...string) (string, error) {
			base := []string{"--endpoints=" + c.Endpoints[0], "--cacert=" + c.CAFile, "--dial-timeout=2s", "--command-timeout=3s"}
			if withCert {
				base = append(base, "--cert="+c.ClientCertFile, "--key="+c.ClientKeyFile)
			}
			cmd := exec.CommandContext(ctx, etcdctl, append(base, args...)...)
			cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		out, err := run(true, "endpoint", "health", "--cluster")
		if err != nil || strings.Count(out, "is healthy") != 3 {
			t.Errorf("endpoint health --cluster: %v\n%s", err, out)
		}
		out, err = run(true, "member", "list")
		if err != nil || !strings.Contains(out, "etcd-0") || !strings.Contains(out, "etcd-2") {
			t.Errorf("member list: %v\n%s", err, out)
		}
		if out, err := run(false, "member", "list"); err == nil {
			t.Errorf("member list without a client cert succeeded:\n%s", out)
		}
		if out, err := run(false, "endpoint", "health"); err == nil || strings.Contains(out, "is healthy") {
			t.Errorf("endpoint health without a client cert succeeded:\n%s", out)
		}
	})

	t.Run("renewed server cert is served without a restart", func(t *testing.T) {
		m := c.Members[0]
		before := servedSerial(t, m.ClientURL, c.ClientTLS)
		signer := &etcdtest.SigningNode{CA: c.CA, Node: m.Name, Lifetime: time.Hour}
		changed, err := etcdrole.EnsureCertsAt(ctx, m.Root, m.Plan, signer, time.Now().Add(50*time.Minute))
		if err != nil || !changed {
			t.Fatalf("renew: %v %v", changed, err)
		}
		after := servedSerial(t, m.ClientURL, c.ClientTLS)
		if after == before || after != serial(t, m.Root, paths.EtcdServerCert) {
			t.Errorf("member serves cert %s after renewal, file has %s (before: %s)", after, serial(t, m.Root, paths.EtcdServerCert), before)
		}
		if _, err := c.Client(m.ClientURL).Put(ctx, "/kedge/renewed", "ok"); err != nil {
			t.Errorf("put after renewal: %v", err)
		}
	})

	t.Run("two of three keep serving writes; the third catches up on restart", func(t *testing.T) {
		if err := c.Stop(2); err != nil {
			t.Fatalf("stop etcd-2: %v", err)
		}
		if st := etcdrole.Probe(ctx, c.Members[2].Root, c.Members[2].Plan); st.Healthy || st.Error == "" {
			t.Errorf("probe of a stopped member: healthy=%v error=%q", st.Healthy, st.Error)
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := c.Client(c.Endpoints[0], c.Endpoints[1]).Put(wctx, "/kedge/while-down", "written")
		wcancel()
		if err != nil {
			t.Fatalf("write with one member down: %v", err)
		}
		c.Start(2)
		// A serializable read answers from the restarted member's own data.
		cli := c.Client(c.Endpoints[2])
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := cli.Get(ctx, "/kedge/while-down", clientv3.WithSerializable())
			if err == nil && len(resp.Kvs) == 1 && string(resp.Kvs[0].Value) == "written" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("restarted member did not catch up: %v %v", resp, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
}

func mustPair(t *testing.T, certPEM, keyPEM []byte) tls.Certificate {
	t.Helper()
	p, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// servedSerial opens a fresh TLS connection to a member's client URL and
// returns the serial of the cert it presents.
func servedSerial(t *testing.T, clientURL string, base *tls.Config) string {
	t.Helper()
	cfg := base.Clone()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(clientURL, "https://"), cfg)
	if err != nil {
		t.Fatalf("TLS to %s: %v", clientURL, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

func clientFor(t *testing.T, root string, endpoints []string) *clientv3.Client {
	t.Helper()
	tlsCfg, err := etcdrole.ClientTLS(paths.In(root, paths.EtcdCA), paths.In(root, paths.DatastoreClientCert), paths.In(root, paths.DatastoreClientKey))
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
