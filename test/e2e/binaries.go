package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Binaries are the kedge programs the lab runs, from the repo's bin/.
type Binaries struct {
	Coordinator string
	NodeAgent   string
	Kedgectl    string
	// K3s is what NUCs get as their pre-staged K3s: $K3S_BINARY when set,
	// else the test double.
	K3s       string
	K3sSHA256 string
	// K3sIsDouble is false when K3S_BINARY names a real K3s.
	K3sIsDouble bool
}

// RepoRoot finds the kedge checkout from the working directory.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(data), "module github.com/kedge-io/kedge\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("not inside the kedge checkout (no go.mod of github.com/kedge-io/kedge above the working directory)")
		}
		dir = parent
	}
}

var (
	buildOnce sync.Once
	buildErrs map[string]error
)

// binaryPackages maps bin/ names to their main packages.
var binaryPackages = map[string]string{
	"kedge-coordinator": "./cmd/kedge-coordinator",
	"kedge-nodeagent":   "./cmd/kedge-nodeagent",
	"kedgectl":          "./cmd/kedgectl",
	"k3s-test-double":   "./test/k3sdouble/cmd/k3s",
}

// FindBinaries builds bin/ (once per process; the Go build cache makes it
// quick) unless KEDGE_LAB_PREBUILT is set (`make e2e` builds first), then
// returns the paths. A program that does not build yet is reported but only
// fails the lab when it is missing from bin/ altogether.
func FindBinaries(t TB) (*Binaries, error) {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	bin := filepath.Join(root, "bin")
	buildOnce.Do(func() {
		buildErrs = map[string]error{}
		if os.Getenv("KEDGE_LAB_PREBUILT") != "" {
			return
		}
		for name, pkg := range binaryPackages {
			cmd := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(bin, name), pkg)
			cmd.Dir = root
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErrs[name] = fmt.Errorf("%v: %s", err, tail(string(out), 10))
			}
		}
	})
	b := &Binaries{
		Coordinator: filepath.Join(bin, "kedge-coordinator"),
		NodeAgent:   filepath.Join(bin, "kedge-nodeagent"),
		Kedgectl:    filepath.Join(bin, "kedgectl"),
		K3s:         filepath.Join(bin, "k3s-test-double"),
		K3sIsDouble: true,
	}
	if real := os.Getenv("K3S_BINARY"); real != "" {
		b.K3s, b.K3sIsDouble = real, false
	}
	for name, path := range map[string]string{"kedge-coordinator": b.Coordinator, "kedge-nodeagent": b.NodeAgent, "kedgectl": b.Kedgectl, "k3s-test-double": b.K3s} {
		if berr := buildErrs[name]; berr != nil {
			t.Logf("go build %s failed; using the existing bin/%s if any: %v", binaryPackages[name], name, berr)
		}
		_, err := os.Stat(path)
		required := name == "kedge-coordinator" || name == "kedge-nodeagent"
		if err != nil && required {
			return nil, fmt.Errorf("%s is missing: run `make build` (build error: %v)", path, buildErrs[name])
		}
		if err != nil {
			t.Logf("%s is missing; lab steps that need it will fail", path)
		}
	}
	// Empty when K3s is missing: specs that need it say so.
	b.K3sSHA256, _ = fileSHA256(b.K3s)
	return b, nil
}

func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
