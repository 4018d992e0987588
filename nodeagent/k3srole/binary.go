package k3srole

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// k3sLinks are the commands the upstream installer links to the k3s binary.
var k3sLinks = []string{"kubectl", "crictl", "ctr"}

// EnsureBinary installs the plan's K3s binary at /usr/local/bin/k3s under root
// (with the kubectl, crictl and ctr links) from the first source the plan
// names: pre-staged path, the coordinator's artifact store, a URL. It reports
// whether the binary changed. A plan without K3s is a no-op.
func EnsureBinary(ctx context.Context, root string, plan *kedgev1.Plan, client kedgev1.NodeServiceClient, httpClient *http.Client) (bool, error) {
	if plan.GetK3S() == nil {
		return false, nil
	}
	bin := plan.GetK3S().GetBinary()
	if bin == nil {
		return false, fmt.Errorf("plan.k3s.binary is empty: the cluster spec's k3s.binary names the binary's sha256 and where to get it")
	}
	want := strings.ToLower(bin.GetSha256())
	if len(want) != sha256.Size*2 {
		return false, fmt.Errorf("plan.k3s.binary.sha256 is %q: want the binary's 64-hex-digit SHA-256 (every source is checked against it)", bin.GetSha256())
	}
	target := paths.In(root, paths.K3sBinary)
	changed := false
	if have, err := fileSHA256(target); err != nil || have != want {
		if err := installBinary(ctx, root, bin, want, client, httpClient); err != nil {
			return false, err
		}
		changed = true
	}
	if err := ensureLinks(root); err != nil {
		return changed, err
	}
	if err := ensureAirgapImages(root, bin.GetAirgapImagesPath()); err != nil {
		return changed, err
	}
	return changed, nil
}

// installBinary tries each source the plan names, in order, until one yields
// a file with the wanted hash; each failure is kept so the error explains
// every source.
func installBinary(ctx context.Context, root string, bin *kedgev1.K3SBinary, want string, client kedgev1.NodeServiceClient, httpClient *http.Client) error {
	target := paths.In(root, paths.K3sBinary)
	var errs []error
	if p := bin.GetPath(); p != "" {
		src := paths.In(root, p)
		if src == target {
			// Pre-staged right where it runs: nothing to copy, and a wrong file is not ours to delete.
			have, err := fileSHA256(src)
			if err != nil {
				errs = append(errs, fmt.Errorf("k3s binary %s (plan.k3s.binary.path): %w", p, err))
			} else {
				errs = append(errs, fmt.Errorf("k3s binary from %s has sha256 %s, the plan wants %s", p, have, want))
			}
		} else if err := installFrom(target, p, want, func() (io.ReadCloser, error) { return os.Open(src) }); err == nil {
			return nil
		} else {
			errs = append(errs, err)
		}
	}
	if name := bin.GetArtifact(); name != "" {
		source := fmt.Sprintf("artifact %s version %s", name, bin.GetVersion())
		if client == nil {
			errs = append(errs, fmt.Errorf("k3s binary from %s: no coordinator connection", source))
		} else if err := installFrom(target, source, want, func() (io.ReadCloser, error) {
			return openArtifact(ctx, client, name, bin.GetVersion())
		}); err == nil {
			return nil
		} else {
			errs = append(errs, err)
		}
	}
	if url := bin.GetUrl(); url != "" {
		if httpClient == nil {
			httpClient = http.DefaultClient
		}
		if err := installFrom(target, url, want, func() (io.ReadCloser, error) { return openURL(ctx, httpClient, url) }); err == nil {
			return nil
		} else {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return fmt.Errorf("plan.k3s.binary names no source (path, artifact or url) and %s does not have sha256 %s", paths.K3sBinary, want)
	}
	return errors.Join(errs...)
}

// installFrom streams one source into a temp file next to target, hashing as
// it goes, and renames it into place only when the hash matches: until then
// the old binary keeps running and stays on disk.
func installFrom(target, source, want string, open func() (io.ReadCloser, error)) error {
	r, err := open()
	if err != nil {
		return fmt.Errorf("k3s binary from %s: %w", source, err)
	}
	defer r.Close()
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return fmt.Errorf("install k3s binary: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(target), ".k3s.tmp-*")
	if err != nil {
		return fmt.Errorf("install k3s binary: %w", err)
	}
	tmpName := tmp.Name()
	defer os.Remove(tmpName) // no-op after the rename
	h := sha256.New()
	_, copyErr := io.Copy(io.MultiWriter(tmp, h), r)
	if copyErr == nil {
		copyErr = tmp.Sync()
	}
	if err := tmp.Close(); copyErr == nil {
		copyErr = err
	}
	if copyErr != nil {
		return fmt.Errorf("k3s binary from %s: %w", source, copyErr)
	}
	if have := hex.EncodeToString(h.Sum(nil)); have != want {
		return fmt.Errorf("k3s binary from %s has sha256 %s, the plan wants %s", source, have, want)
	}
	if err := os.Chmod(tmpName, 0o755); err != nil {
		return fmt.Errorf("install k3s binary: %w", err)
	}
	if err := os.Rename(tmpName, target); err != nil {
		return fmt.Errorf("install k3s binary: %w", err)
	}
	syncDir(filepath.Dir(target))
	return nil
}

func openURL(ctx context.Context, client *http.Client, url string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET answered %s", resp.Status)
	}
	return resp.Body, nil
}

// openArtifact adapts the coordinator's FetchArtifact stream to a reader.
func openArtifact(ctx context.Context, client kedgev1.NodeServiceClient, name, version string) (io.ReadCloser, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := client.FetchArtifact(ctx, &kedgev1.FetchArtifactRequest{Name: name, Version: version})
	if err != nil {
		cancel()
		return nil, err
	}
	return &artifactReader{stream: stream, cancel: cancel}, nil
}

type artifactReader struct {
	stream kedgev1.NodeService_FetchArtifactClient
	cancel context.CancelFunc
	buf    []byte
}

func (a *artifactReader) Read(p []byte) (int, error) {
	for len(a.buf) == 0 {
		msg, err := a.stream.Recv()
		if err != nil {
			return 0, err // io.EOF at the stream's end
		}
		a.buf = msg.GetChunk()
	}
	n := copy(p, a.buf)
	a.buf = a.buf[n:]
	return n, nil
}

func (a *artifactReader) Close() error {
	a.cancel()
	return nil
}

// ensureLinks creates kubectl, crictl and ctr as relative links to k3s, as
// the upstream installer does, leaving any real file of that name alone.
func ensureLinks(root string) error {
	dir := filepath.Dir(paths.In(root, paths.K3sBinary))
	for _, name := range k3sLinks {
		link := filepath.Join(dir, name)
		fi, err := os.Lstat(link)
		switch {
		case err == nil && fi.Mode()&os.ModeSymlink == 0:
			continue // someone installed their own; upstream does not overwrite it either
		case err == nil:
			if dest, _ := os.Readlink(link); dest == "k3s" {
				continue
			}
			if err := os.Remove(link); err != nil {
				return fmt.Errorf("replace link %s: %w", link, err)
			}
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("check link %s: %w", link, err)
		}
		if err := os.Symlink("k3s", link); err != nil {
			return fmt.Errorf("link %s to k3s: %w", link, err)
		}
	}
	return nil
}

// ensureAirgapImages copies the air-gap images tarball where K3s imports it
// at start. A copy of the same size is taken as current: the tarball is
// hundreds of MB and hashing it on every apply would cost more than it saves.
func ensureAirgapImages(root, imagesPath string) error {
	if imagesPath == "" {
		return nil
	}
	src := paths.In(root, imagesPath)
	dst := filepath.Join(paths.In(root, paths.K3sAirgapDir), filepath.Base(imagesPath))
	if src == dst {
		return nil
	}
	si, err := os.Stat(src)
	if err != nil {
		return fmt.Errorf("plan.k3s.binary.airgap_images_path: %w", err)
	}
	if di, err := os.Stat(dst); err == nil && di.Size() == si.Size() {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("plan.k3s.binary.airgap_images_path: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("copy air-gap images: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".images.tmp-*")
	if err != nil {
		return fmt.Errorf("copy air-gap images: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, in)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dst)
	}
	if err != nil {
		return fmt.Errorf("copy air-gap images %s to %s: %w", imagesPath, paths.K3sAirgapDir, err)
	}
	return nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
