package k3srole

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func binaryPlan(bin *kedgev1.K3SBinary) *kedgev1.Plan {
	return &kedgev1.Plan{K3S: &kedgev1.K3SPlan{Role: kedgev1.Role_ROLE_K3S_AGENT, Binary: bin}}
}

func write(t *testing.T, path string, content []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, content, mode); err != nil {
		t.Fatal(err)
	}
}

func assertInstalled(t *testing.T, root string, want []byte) {
	t.Helper()
	target := paths.In(root, paths.K3sBinary)
	got, err := os.ReadFile(target)
	if err != nil {
		t.Fatalf("read installed binary: %v", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s holds %q, want %q", paths.K3sBinary, got, want)
	}
	fi, _ := os.Stat(target)
	if fi.Mode().Perm() != 0o755 {
		t.Errorf("%s mode %#o, want 0755", paths.K3sBinary, fi.Mode().Perm())
	}
	for _, name := range []string{"kubectl", "crictl", "ctr"} {
		dest, err := os.Readlink(filepath.Join(filepath.Dir(target), name))
		if err != nil || dest != "k3s" {
			t.Errorf("/usr/local/bin/%s -> %q (%v), want a link to k3s", name, dest, err)
		}
	}
}

func TestEnsureBinaryFromPrestagedPath(t *testing.T) {
	root := t.TempDir()
	content := []byte("k3s v1 binary")
	write(t, filepath.Join(root, "opt/k3s/k3s"), content, 0o644)
	write(t, filepath.Join(root, "opt/k3s/k3s-airgap-images-amd64.tar.zst"), []byte("images"), 0o644)
	plan := binaryPlan(&kedgev1.K3SBinary{Version: "v1.36.3+k3s1", Sha256: sum(content), Path: "/opt/k3s/k3s",
		AirgapImagesPath: "/opt/k3s/k3s-airgap-images-amd64.tar.zst"})

	changed, err := EnsureBinary(context.Background(), root, plan, nil, nil)
	if err != nil || !changed {
		t.Fatalf("first install: changed=%v err=%v, want changed", changed, err)
	}
	assertInstalled(t, root, content)
	if b, err := os.ReadFile(filepath.Join(root, paths.K3sAirgapDir, "k3s-airgap-images-amd64.tar.zst")); err != nil || string(b) != "images" {
		t.Errorf("air-gap images not copied to %s: %v", paths.K3sAirgapDir, err)
	}

	changed, err = EnsureBinary(context.Background(), root, plan, nil, nil)
	if err != nil || changed {
		t.Errorf("second install of the same binary: changed=%v err=%v, want a no-op", changed, err)
	}
}

func TestEnsureBinaryPrestagedAtTarget(t *testing.T) {
	root := t.TempDir()
	content := []byte("k3s on the image")
	write(t, paths.In(root, paths.K3sBinary), content, 0o755)
	plan := binaryPlan(&kedgev1.K3SBinary{Sha256: sum(content), Path: paths.K3sBinary})
	changed, err := EnsureBinary(context.Background(), root, plan, nil, nil)
	if err != nil || changed {
		t.Fatalf("binary already in place: changed=%v err=%v, want no change", changed, err)
	}
	assertInstalled(t, root, content)
}

func TestEnsureBinaryShaMismatchKeepsOldBinary(t *testing.T) {
	root := t.TempDir()
	old := []byte("k3s v1 binary")
	write(t, paths.In(root, paths.K3sBinary), old, 0o755)
	bad := []byte("tampered k3s v2")
	write(t, filepath.Join(root, "opt/k3s/k3s"), bad, 0o644)
	want := sum([]byte("the real k3s v2"))
	plan := binaryPlan(&kedgev1.K3SBinary{Sha256: want, Path: "/opt/k3s/k3s"})

	changed, err := EnsureBinary(context.Background(), root, plan, nil, nil)
	if err == nil || changed {
		t.Fatalf("mismatched binary: changed=%v err=%v, want an error", changed, err)
	}
	for _, h := range []string{sum(bad), want, "/opt/k3s/k3s"} {
		if !strings.Contains(err.Error(), h) {
			t.Errorf("error %q does not name %s", err, h)
		}
	}
	if got, _ := os.ReadFile(paths.In(root, paths.K3sBinary)); string(got) != string(old) {
		t.Errorf("old binary replaced by %q after a failed check", got)
	}
	if entries, _ := os.ReadDir(filepath.Dir(paths.In(root, paths.K3sBinary))); len(entries) != 1 {
		t.Errorf("leftovers next to the binary after a failed install: %v", entries)
	}
}

func TestEnsureBinaryFromURL(t *testing.T) {
	content := []byte("k3s from the release server")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1.36.3+k3s1/k3s" {
			http.NotFound(w, r)
			return
		}
		w.Write(content)
	}))
	defer srv.Close()
	root := t.TempDir()
	plan := binaryPlan(&kedgev1.K3SBinary{Sha256: sum(content), Path: "/opt/missing/k3s", Url: srv.URL + "/v1.36.3+k3s1/k3s"})
	changed, err := EnsureBinary(context.Background(), root, plan, nil, srv.Client())
	if err != nil || !changed {
		t.Fatalf("install from URL (after a missing pre-staged file): changed=%v err=%v", changed, err)
	}
	assertInstalled(t, root, content)

	plan.K3S.Binary.Url = srv.URL + "/nope"
	plan.K3S.Binary.Sha256 = sum([]byte("other"))
	if _, err := EnsureBinary(context.Background(), root, plan, nil, srv.Client()); err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("URL answering 404: %v, want an error saying so", err)
	}
	assertInstalled(t, root, content)
}

// artifactClient serves one artifact over the real generated stream types;
// the coordinator's own store is tested with coordtest.
type artifactClient struct {
	kedgev1.NodeServiceClient
	name, version string
	content       []byte
}

func (c *artifactClient) FetchArtifact(ctx context.Context, req *kedgev1.FetchArtifactRequest, _ ...grpc.CallOption) (grpc.ServerStreamingClient[kedgev1.FetchArtifactResponse], error) {
	if req.GetName() != c.name || req.GetVersion() != c.version {
		return nil, io.ErrUnexpectedEOF
	}
	var msgs []*kedgev1.FetchArtifactResponse
	for i := 0; i < len(c.content); i += 4 {
		msg := &kedgev1.FetchArtifactResponse{Chunk: c.content[i:min(i+4, len(c.content))]}
		if i == 0 {
			msg.Sha256, msg.Size = sum(c.content), int64(len(c.content))
		}
		msgs = append(msgs, msg)
	}
	return &chunkStream{msgs: msgs, ctx: ctx}, nil
}

type chunkStream struct {
	grpc.ClientStream
	msgs []*kedgev1.FetchArtifactResponse
	ctx  context.Context
}

func (s *chunkStream) Recv() (*kedgev1.FetchArtifactResponse, error) {
	if len(s.msgs) == 0 {
		return nil, io.EOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}
func (s *chunkStream) Header() (metadata.MD, error) { return nil, nil }
func (s *chunkStream) Context() context.Context     { return s.ctx }

func TestEnsureBinaryFromArtifactStore(t *testing.T) {
	content := []byte("k3s streamed from the coordinator in small chunks")
	client := &artifactClient{name: "k3s", version: "v1.36.3+k3s1", content: content}
	root := t.TempDir()
	plan := binaryPlan(&kedgev1.K3SBinary{Sha256: sum(content), Version: "v1.36.3+k3s1", Artifact: "k3s"})
	changed, err := EnsureBinary(context.Background(), root, plan, client, nil)
	if err != nil || !changed {
		t.Fatalf("install from artifact: changed=%v err=%v", changed, err)
	}
	assertInstalled(t, root, content)
}

func TestEnsureBinaryNeedsAHash(t *testing.T) {
	plan := binaryPlan(&kedgev1.K3SBinary{Path: "/opt/k3s/k3s"})
	if _, err := EnsureBinary(context.Background(), t.TempDir(), plan, nil, nil); err == nil || !strings.Contains(err.Error(), "sha256") {
		t.Errorf("plan without a hash: %v, want an error naming sha256", err)
	}
	if _, err := EnsureBinary(context.Background(), t.TempDir(), binaryPlan(nil), nil, nil); err == nil || !strings.Contains(err.Error(), "plan.k3s.binary") {
		t.Errorf("K3s plan without a binary: %v, want an error naming plan.k3s.binary", err)
	}
	if changed, err := EnsureBinary(context.Background(), t.TempDir(), &kedgev1.Plan{}, nil, nil); err != nil || changed {
		t.Errorf("plan without k3s: %v %v, want a no-op", changed, err)
	}
}

func TestProbeAndKubeconfig(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ping" {
			io.WriteString(w, "pong")
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	if st := ProbeURL(context.Background(), srv.URL+"/ping"); !st.GetReady() || st.GetError() != "" {
		t.Errorf("probe of a server answering pong: %v", st)
	}
	if st := ProbeURL(context.Background(), srv.URL+"/other"); st.GetReady() || st.GetError() == "" {
		t.Errorf("probe of a server not answering pong: %v, want not ready with a reason", st)
	}
	srv.Close()
	if st := ProbeURL(context.Background(), srv.URL+"/ping"); st.GetReady() {
		t.Errorf("probe of a stopped server reported ready")
	}

	root := t.TempDir()
	write(t, paths.In(root, paths.K3sKubeconfig), []byte("apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: QUJD\n    server: https://127.0.0.1:6443\n  name: default\nusers:\n- name: default\n  user:\n    client-key-data: c2VjcmV0\n"), 0o600)
	got, err := Kubeconfig(root, "https://10.77.0.100:6443")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), "    server: https://10.77.0.100:6443\n") || strings.Contains(string(got), "127.0.0.1") {
		t.Errorf("rewritten kubeconfig:\n%s", got)
	}
	if !strings.Contains(string(got), "client-key-data: c2VjcmV0") {
		t.Errorf("rewrite lost the credentials:\n%s", got)
	}
	if _, err := Kubeconfig(t.TempDir(), "https://x:6443"); err == nil {
		t.Error("missing kubeconfig: no error")
	}
}
