package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kedge-io/kedge/coordinator/store"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Artifacts are content-addressed files in DATA_DIR/artifacts/<sha256>; the
// store maps name/version to the hash and size (a PushArtifactResponse), so
// every coordinator agrees on what "k3s v1.31.4+k3s1" is.

var artifactPart = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$`)

func artifactKey(name, version string) (string, error) {
	if !artifactPart.MatchString(name) || !artifactPart.MatchString(version) {
		return "", status.Errorf(codes.InvalidArgument, "artifact name %q and version %q must be 1-128 of [A-Za-z0-9._+-]", name, version)
	}
	return store.Artifacts + name + "/" + version, nil
}

const chunkSize = 256 << 10

func (s *Server) streamArtifact(ctx context.Context, name, version string, send func(*kedgev1.FetchArtifactResponse) error) error {
	key, err := artifactKey(name, version)
	if err != nil {
		return err
	}
	var meta kedgev1.PushArtifactResponse
	_, found, err := s.store.Get(ctx, key, &meta)
	if err != nil {
		return status.Errorf(codes.Unavailable, "store: %v", err)
	}
	if !found {
		return status.Errorf(codes.NotFound, "artifact %s %s is not in the coordinator's store; push it with kedgectl artifact push", name, version)
	}
	f, err := os.Open(filepath.Join(s.cfg.DataDir, "artifacts", meta.Sha256))
	if err != nil {
		return status.Errorf(codes.NotFound, "artifact %s %s (sha256 %s) is recorded but its file is missing on this coordinator: %v", name, version, meta.Sha256, err)
	}
	defer f.Close()
	first := &kedgev1.FetchArtifactResponse{Sha256: meta.Sha256, Size: meta.Size}
	buf := make([]byte, chunkSize)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			msg := &kedgev1.FetchArtifactResponse{Chunk: buf[:n]}
			if first != nil {
				first.Chunk, msg, first = buf[:n], first, nil
			}
			if err := send(msg); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return status.Errorf(codes.Internal, "read artifact: %v", err)
		}
	}
	if first != nil { // empty file
		return send(first)
	}
	return nil
}

func (a *adminService) PushArtifact(stream kedgev1.AdminService_PushArtifactServer) error {
	s := a.s
	msg, err := stream.Recv()
	if err != nil {
		return err
	}
	key, err := artifactKey(msg.Name, msg.Version)
	if err != nil {
		return err
	}
	dir := filepath.Join(s.cfg.DataDir, "artifacts")
	tmp, err := os.CreateTemp(dir, ".upload-*")
	if err != nil {
		return status.Errorf(codes.Internal, "create temp file: %v", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	var size int64
	for {
		if _, err := tmp.Write(msg.Chunk); err != nil {
			return status.Errorf(codes.Internal, "write: %v", err)
		}
		h.Write(msg.Chunk)
		size += int64(len(msg.Chunk))
		msg, err = stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
	}
	if err := tmp.Sync(); err != nil {
		return status.Errorf(codes.Internal, "sync: %v", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := os.Rename(tmp.Name(), filepath.Join(dir, sum)); err != nil {
		return status.Errorf(codes.Internal, "store artifact: %v", err)
	}
	meta := &kedgev1.PushArtifactResponse{Sha256: sum, Size: size}
	if _, err := s.store.Put(stream.Context(), key, meta); err != nil {
		return status.Errorf(codes.Unavailable, "store: %v", err)
	}
	return stream.SendAndClose(meta)
}
