// Package loadgen measures a real kedge-coordinator process against the scale
// the design asks for: a warehouse of NUCs enrolling at once, every node
// holding a plan watch and heartbeating, and a spec change fanned out to all
// of them. It simulates nodes over the real gRPC API on loopback (real TLS,
// real ECDSA keys and CSRs) and prints figures; it asserts nothing.
package loadgen

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kedge-io/kedge/coordinator/adminconfig"
	"github.com/kedge-io/kedge/coordinator/pki"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Options size a run.
type Options struct {
	CoordinatorBinary string
	Nodes             int
	// Concurrency of enrollments in flight, like a rack of NUCs powering on.
	EnrollConcurrency int
	Heartbeat         time.Duration
	// Soak is how long every node holds its watch and heartbeats before the fan-out test.
	Soak time.Duration
	Out  io.Writer
}

type node struct {
	name   string
	conn   *grpc.ClientConn
	client kedgev1.NodeServiceClient
	// latest plan hash received, and when it arrived
	mu       sync.Mutex
	hash     string
	received time.Time
}

// Run starts a coordinator in a temp dir, drives it and prints figures.
func Run(ctx context.Context, o Options) error {
	dir, err := os.MkdirTemp("", "kedge-loadgen-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := lis.Addr().String()
	lis.Close()

	init := exec.CommandContext(ctx, o.CoordinatorBinary, "init", "--data-dir", dir, "--address", addr, "--cluster", "load")
	if out, err := init.CombinedOutput(); err != nil {
		return fmt.Errorf("coordinator init: %v: %s", err, out)
	}
	serve := exec.CommandContext(ctx, o.CoordinatorBinary, "serve", "--data-dir", dir, "--listen", addr, "--unreachable-after", "10m")
	logFile, err := os.Create(filepath.Join(dir, "coordinator.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	serve.Stdout, serve.Stderr = logFile, logFile
	if err := serve.Start(); err != nil {
		return fmt.Errorf("coordinator serve: %w", err)
	}
	defer func() {
		serve.Process.Signal(os.Interrupt)
		serve.Wait()
	}()
	pid := serve.Process.Pid

	cfg, err := adminconfig.Load(filepath.Join(dir, "admin.yaml"))
	if err != nil {
		return err
	}
	adminTLS, err := cfg.TLSConfig()
	if err != nil {
		return err
	}
	adminConn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(adminTLS)))
	if err != nil {
		return err
	}
	defer adminConn.Close()
	admin := kedgev1.NewAdminServiceClient(adminConn)
	if err := waitServing(ctx, admin); err != nil {
		return err
	}
	servers := 3
	if _, err := admin.ApplySpec(ctx, &kedgev1.ApplySpecRequest{SpecYaml: []byte(spec("wave=1")), FileName: "load.yaml"}); err != nil {
		return fmt.Errorf("apply spec: %w", err)
	}
	tok, err := admin.CreateToken(ctx, &kedgev1.CreateTokenRequest{Cluster: "load", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		return fmt.Errorf("create token: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(cfg.CAPEM))

	baseRSS, _ := rssBytes(pid)
	fmt.Fprintf(o.Out, "coordinator pid %d, RSS before load: %s\n", pid, mib(baseRSS))

	// 1. Enrollment burst.
	nodes := make([]*node, o.Nodes)
	lat := make([]time.Duration, o.Nodes)
	var failed atomic.Int64
	var firstErr atomic.Value
	cpu0, _ := cpuSeconds(pid)
	start := time.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < o.EnrollConcurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bconn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool})))
			if err != nil {
				firstErr.CompareAndSwap(nil, err)
				return
			}
			defer bconn.Close()
			boot := kedgev1.NewBootstrapServiceClient(bconn)
			for i := range work {
				t0 := time.Now()
				n, err := enroll(ctx, boot, addr, pool, tok.Token, i)
				lat[i] = time.Since(t0)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
					continue
				}
				nodes[i] = n
			}
		}()
	}
	for i := 0; i < o.Nodes; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, _ := cpuSeconds(pid)
	if f := failed.Load(); f > 0 {
		return fmt.Errorf("%d of %d enrollments failed, first: %v", f, o.Nodes, firstErr.Load())
	}
	fmt.Fprintf(o.Out, "enroll: %d nodes in %s = %.0f enrollments/s (concurrency %d); latency p50 %s p99 %s; coordinator CPU %.1f s (%.2f cores)\n",
		o.Nodes, elapsed.Round(time.Millisecond), float64(o.Nodes)/elapsed.Seconds(), o.EnrollConcurrency,
		pct(lat, 50), pct(lat, 99), cpu1-cpu0, (cpu1-cpu0)/elapsed.Seconds())

	// 2. Every node connects with its identity, watches its plan and heartbeats.
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var got sync.WaitGroup
	got.Add(len(nodes))
	for _, n := range nodes {
		go n.watch(watchCtx, got.Done)
		go n.heartbeat(watchCtx, o.Heartbeat)
	}
	connStart := time.Now()
	if err := waitGroup(ctx, &got, 5*time.Minute); err != nil {
		return fmt.Errorf("not every node received its first plan: %w", err)
	}
	fmt.Fprintf(o.Out, "watch: %d nodes connected (mTLS) and received their plans in %s\n", len(nodes), time.Since(connStart).Round(time.Millisecond))
	cpuSoak0, _ := cpuSeconds(pid)
	soakStart := time.Now()
	select {
	case <-time.After(o.Soak):
	case <-ctx.Done():
		return ctx.Err()
	}
	cpuSoak1, _ := cpuSeconds(pid)
	rss, _ := rssBytes(pid)
	perConn := float64(rss-baseRSS) / float64(len(nodes))
	fmt.Fprintf(o.Out, "steady: %d watch streams, heartbeat every %s: coordinator RSS %s (%.1f KiB per node), CPU %.2f cores over %s\n",
		len(nodes), o.Heartbeat, mib(rss), perConn/1024, (cpuSoak1-cpuSoak0)/time.Since(soakStart).Seconds(), o.Soak)

	// 3. A spec change that changes every plan at once (a node label passed
	// through to every K3s config; a new K3s version would roll instead):
	// time until every node has it.
	before := map[*node]string{}
	for _, n := range nodes {
		n.mu.Lock()
		before[n] = n.hash
		n.mu.Unlock()
	}
	applied := time.Now()
	if _, err := admin.ApplySpec(ctx, &kedgev1.ApplySpecRequest{SpecYaml: []byte(spec("wave=2")), FileName: "load.yaml"}); err != nil {
		return fmt.Errorf("apply changed spec: %w", err)
	}
	// ApplySpec returns once the new plans are stored: what remains is the fan-out itself.
	stored := time.Since(applied)
	deadline := time.Now().Add(2 * time.Minute)
	var fanout []time.Duration
	for {
		fanout = fanout[:0]
		for _, n := range nodes {
			n.mu.Lock()
			if n.hash != before[n] {
				fanout = append(fanout, n.received.Sub(applied))
			}
			n.mu.Unlock()
		}
		if len(fanout) == len(nodes) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(fanout) < len(nodes) {
		return fmt.Errorf("plan change reached %d of %d nodes in 2 minutes", len(fanout), len(nodes))
	}
	fmt.Fprintf(o.Out, "fan-out: plan change (node label on every node) reached all %d nodes: p50 %s p99 %s max %s after ApplySpec was sent; ApplySpec (plans computed and stored) took %s (%d servers, %d agents)\n",
		len(nodes), pct(fanout, 50), pct(fanout, 99), pct(fanout, 100), stored.Round(time.Millisecond), servers, len(nodes)-servers)
	stopWatch()
	for _, n := range nodes {
		n.conn.Close()
	}
	return nil
}

func spec(label string) string {
	return `apiVersion: kedge/v1
kind: Cluster
metadata:
  name: load
spec:
  topology: stacked
  etcd:
    members: 3
  k3s:
    servers: 3
    version: v1.31.4+k3s1
    binary:
      sha256: "` + strings.Repeat("ab", 32) + `"
      path: /opt/k3s/k3s
    serverConfig:
      node-label: ["` + label + `"]
    agentConfig:
      node-label: ["` + label + `"]
`
}

func enroll(ctx context.Context, boot kedgev1.BootstrapServiceClient, addr string, pool *x509.CertPool, token string, i int) (*node, error) {
	key, err := pki.GenerateKey()
	if err != nil {
		return nil, err
	}
	csr, err := pki.CreateCSR(key, "nuc")
	if err != nil {
		return nil, err
	}
	facts := &kedgev1.MachineFacts{
		MachineId: fmt.Sprintf("%032x", i+1),
		Macs:      []string{fmt.Sprintf("02:00:%02x:%02x:%02x:%02x", byte(i>>24), byte(i>>16), byte(i>>8), byte(i))},
		Ips:       []string{"127.0.0.1"},
		Hostname:  "nuc",
		Arch:      "amd64",
	}
	ectx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	resp, err := boot.Enroll(ectx, &kedgev1.EnrollRequest{Token: token, CsrDer: csr, Facts: facts, AgentVersion: "loadgen"})
	if err != nil {
		return nil, err
	}
	keyPEM, err := pki.EncodeKeyPEM(key)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(resp.CertificatePem, keyPEM)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, Certificates: []tls.Certificate{cert}})),
		// Small buffers, as the node agent uses: the coordinator's side is what is measured.
		grpc.WithReadBufferSize(4096), grpc.WithWriteBufferSize(4096))
	if err != nil {
		return nil, err
	}
	return &node{name: resp.NodeName, conn: conn, client: kedgev1.NewNodeServiceClient(conn)}, nil
}

func (n *node) watch(ctx context.Context, first func()) {
	var once sync.Once
	for ctx.Err() == nil {
		n.mu.Lock()
		req := &kedgev1.WatchPlanRequest{KnownHash: n.hash}
		n.mu.Unlock()
		stream, err := n.client.WatchPlan(ctx, req)
		if err != nil {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				break
			}
			now := time.Now()
			n.mu.Lock()
			n.hash, n.received = resp.GetPlan().GetHash(), now
			n.mu.Unlock()
			once.Do(first)
		}
	}
}

func (n *node) heartbeat(ctx context.Context, every time.Duration) {
	// Spread heartbeats over the interval, as agents starting at different times do.
	jitter := time.Duration(int64(every) * int64(len(n.name)*7919%1000) / 1000)
	select {
	case <-time.After(jitter):
	case <-ctx.Done():
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		n.mu.Lock()
		st := &kedgev1.NodeStatus{PlanHash: n.hash, AgentVersion: "loadgen", ObservedAt: timestamppb.Now()}
		n.mu.Unlock()
		n.client.ReportStatus(ctx, &kedgev1.ReportStatusRequest{Status: st})
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

func waitServing(ctx context.Context, admin kedgev1.AdminServiceClient) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := admin.ListTokens(ctx, &kedgev1.ListTokensRequest{})
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("coordinator not serving after 30 s: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func waitGroup(ctx context.Context, wg *sync.WaitGroup, timeout time.Duration) error {
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		return errors.New("timed out")
	case <-ctx.Done():
		return ctx.Err()
	}
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	if i < 1 {
		i = 1
	}
	return s[i-1].Round(100 * time.Microsecond)
}

var vmRSS = regexp.MustCompile(`(?m)^VmRSS:\s+(\d+) kB`)

func rssBytes(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	m := vmRSS.FindSubmatch(b)
	if m == nil {
		return 0, errors.New("no VmRSS")
	}
	kb, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return kb * 1024, nil
}

// cpuSeconds is the process's user+system CPU time (clock ticks of 1/100 s on Linux).
func cpuSeconds(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil && line == "" {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are the 14th and 15th.
	fields := strings.Fields(line[strings.LastIndexByte(line, ')')+2:])
	u, _ := strconv.ParseFloat(fields[11], 64)
	s, _ := strconv.ParseFloat(fields[12], 64)
	return (u + s) / 100, nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
