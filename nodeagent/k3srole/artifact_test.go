package k3srole_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/kedge-io/kedge/coordinator/coordtest"
	"github.com/kedge-io/kedge/nodeagent/k3srole"
	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// TestEnsureBinaryFromRealCoordinator pushes a binary as `kedgectl artifact
// push` does and installs it on an enrolled node over its mTLS identity.
func TestEnsureBinaryFromRealCoordinator(t *testing.T) {
	env := coordtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	content := make([]byte, 300_000) // several stream chunks
	for i := range content {
		content[i] = byte(i * 7)
	}
	push, err := env.Admin.PushArtifact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(content); i += 64 << 10 {
		msg := &kedgev1.PushArtifactRequest{Chunk: content[i:min(i+64<<10, len(content))]}
		if i == 0 {
			msg.Name, msg.Version = "k3s", "v1.36.3+k3s1"
		}
		if err := push.Send(msg); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := push.CloseAndRecv(); err != nil {
		t.Fatalf("push artifact: %v", err)
	}
	node := env.EnrollNode(t, &kedgev1.MachineFacts{Hostname: "nuc1", MachineId: "0123456789abcdef0123456789abcdef", Ips: []string{"127.0.0.1"}, Macs: []string{"aa:bb:cc:dd:ee:01"}})

	sum := sha256.Sum256(content)
	root := t.TempDir()
	plan := &kedgev1.Plan{K3S: &kedgev1.K3SPlan{Role: kedgev1.Role_ROLE_K3S_AGENT, Binary: &kedgev1.K3SBinary{
		Version: "v1.36.3+k3s1", Artifact: "k3s", Sha256: hex.EncodeToString(sum[:]),
	}}}
	changed, err := k3srole.EnsureBinary(ctx, root, plan, node.Client, nil)
	if err != nil || !changed {
		t.Fatalf("install from the coordinator: changed=%v err=%v", changed, err)
	}
	got, err := os.ReadFile(paths.In(root, paths.K3sBinary))
	if err != nil || string(got) != string(content) {
		t.Fatalf("installed binary differs from the pushed one (%v)", err)
	}

	other := sha256.Sum256([]byte("k3s v9.9.9"))
	plan.K3S.Binary.Version, plan.K3S.Binary.Sha256 = "v9.9.9", hex.EncodeToString(other[:])
	_, err = k3srole.EnsureBinary(ctx, root, plan, node.Client, nil)
	if err == nil {
		t.Error("an artifact version the coordinator does not have installed without error")
	}
	t.Logf("missing version: %v", err)
	if got, _ := os.ReadFile(paths.In(root, paths.K3sBinary)); string(got) != string(content) {
		t.Error("the installed binary changed after a failed fetch")
	}
}
