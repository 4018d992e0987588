package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kedge-io/kedge/internal/version"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

func specApply(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("spec apply")
	file := fs.String("f", "", "cluster spec `FILE` (YAML, kind: Cluster)")
	dryRun := fs.Bool("dry-run", false, "validate and show the plan changes without storing anything")
	if _, err := s.parse(fs, args, 0, 0, ""); err != nil {
		return err
	}
	if *file == "" {
		return usagef("spec apply: -f FILE is required")
	}
	data, err := os.ReadFile(*file)
	if err != nil {
		return fmt.Errorf("spec apply: %v", err)
	}
	c, err := s.client()
	if err != nil {
		return err
	}
	callCtx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := c.ApplySpec(callCtx, &kedgev1.ApplySpecRequest{SpecYaml: data, FileName: *file, DryRun: *dryRun})
	if err != nil {
		switch status.Code(err) {
		case codes.InvalidArgument, codes.FailedPrecondition:
			// The coordinator's message names the file, the field and the fix: print it verbatim.
			return errors.New("spec refused: " + status.Convert(err).Message())
		}
		return s.rpcErr("spec apply", err)
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	w := s.env.Stdout
	switch {
	case *dryRun:
		fmt.Fprintf(w, "cluster %s: dry run, nothing stored; %d node plan(s) would change\n", resp.GetCluster(), len(resp.GetChanges()))
	case resp.GetStored():
		fmt.Fprintf(w, "cluster %s: spec stored; %d node plan(s) changed\n", resp.GetCluster(), len(resp.GetChanges()))
	default:
		fmt.Fprintf(w, "cluster %s: spec unchanged; %d node plan(s) changed\n", resp.GetCluster(), len(resp.GetChanges()))
	}
	for _, ch := range resp.GetChanges() {
		fmt.Fprintf(w, "%s  %s -> %s\n", ch.GetNode(), shortHash(ch.GetOldHash()), shortHash(ch.GetNewHash()))
		for _, line := range ch.GetChanges() {
			fmt.Fprintf(w, "    %s\n", line)
		}
	}
	return nil
}

func specGet(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("spec get")
	pos, err := s.parse(fs, args, 1, 1, "CLUSTER")
	if err != nil {
		return err
	}
	resp, err := call(ctx, s, "spec get "+pos[0], kedgev1.AdminServiceClient.GetSpec, &kedgev1.GetSpecRequest{Cluster: pos[0]})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	_, err = s.env.Stdout.Write(resp.GetSpecYaml())
	return err
}

// artifactChunk is the size of each PushArtifact message, well under gRPC's
// default 4 MiB message limit.
const artifactChunk = 1 << 20

func artifactPush(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("artifact push")
	name := fs.String("name", "", "artifact name, e.g. k3s (the spec's k3s.binary.artifact)")
	ver := fs.String("version", "", "artifact version, e.g. v1.31.4+k3s1")
	pos, err := s.parse(fs, args, 1, 1, "FILE")
	if err != nil {
		return err
	}
	if *name == "" || *ver == "" {
		return usagef("artifact push: --name and --version are required, e.g. --name k3s --version v1.31.4+k3s1")
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return fmt.Errorf("artifact push: %v", err)
	}
	defer f.Close()
	c, err := s.client()
	if err != nil {
		return err
	}
	stream, err := c.PushArtifact(ctx)
	if err != nil {
		return s.rpcErr("artifact push", err)
	}
	h := sha256.New()
	buf := make([]byte, artifactChunk)
	first := true
	var size int64
	for {
		n, rerr := io.ReadFull(f, buf)
		if n > 0 || first {
			h.Write(buf[:n])
			size += int64(n)
			req := &kedgev1.PushArtifactRequest{Chunk: buf[:n]}
			if first {
				req.Name, req.Version, first = *name, *ver, false
			}
			if err := stream.Send(req); err != nil {
				// The real reason comes with CloseAndRecv.
				break
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("artifact push: read %s: %v", pos[0], rerr)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return s.rpcErr("artifact push", err)
	}
	local := hex.EncodeToString(h.Sum(nil))
	if resp.GetSha256() != local || resp.GetSize() != size {
		return fmt.Errorf("artifact push: the coordinator stored sha256 %s, %d bytes, but %s is sha256 %s, %d bytes; push again",
			resp.GetSha256(), resp.GetSize(), pos[0], local, size)
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	_, err = fmt.Fprintf(s.env.Stdout, "pushed %s %s: sha256 %s, %d bytes\n", *name, *ver, resp.GetSha256(), resp.GetSize())
	return err
}

func kubeconfig(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("kubeconfig")
	pos, err := s.parse(fs, args, 1, 1, "CLUSTER")
	if err != nil {
		return err
	}
	resp, err := call(ctx, s, "kubeconfig "+pos[0], kedgev1.AdminServiceClient.GetKubeconfig, &kedgev1.GetKubeconfigRequest{Cluster: pos[0]})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	// A secret: stdout only, so the operator decides where it goes.
	_, err = s.env.Stdout.Write(resp.GetKubeconfig())
	return err
}

func events(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("events")
	follow := fs.Bool("follow", false, "keep streaming new events until interrupted")
	cluster := fs.String("cluster", "", "only this cluster's events")
	if _, err := s.parse(fs, args, 0, 0, ""); err != nil {
		return err
	}
	c, err := s.client()
	if err != nil {
		return err
	}
	streamCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.WatchEvents(streamCtx, &kedgev1.WatchEventsRequest{Follow: *follow, Cluster: *cluster})
	if err != nil {
		return s.rpcErr("events", err)
	}
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted by the operator: a normal end of --follow
			}
			return s.rpcErr("events", err)
		}
		if err := s.printEvent(resp.GetEvent()); err != nil {
			return err
		}
	}
}

// printEvent writes one line per event: JSON lines with -o json, else
// time, type, cluster, node, message separated by two spaces.
func (s *session) printEvent(e *kedgev1.Event) error {
	if s.json() {
		b, err := protojson.MarshalOptions{EmitUnpopulated: true}.Marshal(e)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(s.env.Stdout, string(b))
		return err
	}
	dash := func(v string) string {
		if v == "" {
			return "-"
		}
		return v
	}
	_, err := fmt.Fprintf(s.env.Stdout, "%-20s  %-18s  %-12s  %-12s  %s\n",
		timestamp(e.GetAt()), eventTypeName(e.GetType()), dash(e.GetCluster()), dash(e.GetNode()), e.GetMessage())
	return err
}

func printVersion(_ context.Context, s *session, args []string) error {
	fs := s.flagSet("version")
	if _, err := s.parse(fs, args, 0, 0, ""); err != nil {
		return err
	}
	_, err := fmt.Fprintf(s.env.Stdout, "kedgectl %s\n", version.Version)
	return err
}
