package e2e

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// ImageCacheDir holds the NUC root filesystems, one per package list.
const ImageCacheDir = "/var/cache/kedge-lab"

// ImageSuite is the Debian release the NUC image is built from.
const ImageSuite = "bookworm"

// ImagePackages go into the NUC image. iputils-ping is there for the
// harness self-test; the rest is what a minimal systemd machine needs.
var ImagePackages = []string{"systemd", "systemd-sysv", "dbus", "iproute2", "ca-certificates", "iputils-ping"}

// maskedUnits degrade or slow a boot in nspawn: remount-fs, sysusers and
// update-utmp each failed now and then on an overlay root under load
// (`degraded`; the image has its users already and nothing reads utmp),
// and the rest have nothing to do in a container without a real console,
// clock or disks.
var maskedUnits = []string{
	"systemd-remount-fs.service",
	"systemd-sysusers.service",
	"systemd-update-utmp.service",
	"systemd-update-utmp-runlevel.service",
	"getty@tty1.service",
	"console-getty.service",
	"systemd-timesyncd.service",
	"apt-daily.timer",
	"apt-daily-upgrade.timer",
	"e2scrub_all.timer",
	"e2scrub_reap.service",
	"fstrim.timer",
}

// recipeFiles make a debootstrap tree a cloneable NUC image: the same
// hostname everywhere and an empty machine-id, as a cloned image has.
var recipeFiles = map[string]string{
	"etc/hostname":   "nuc\n",
	"etc/hosts":      "127.0.0.1 localhost\n127.0.1.1 nuc\n::1 localhost ip6-localhost ip6-loopback\n",
	"etc/machine-id": "",
}

// BaseKey names the debootstrap tree: it changes with the package list.
func BaseKey() string {
	h := sha256.New()
	fmt.Fprintf(h, "suite=%s\npackages=%s\n", ImageSuite, strings.Join(ImagePackages, ","))
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// recipeKey names the small layer of masks and files over the base, so
// changing a mask rebuilds that layer in milliseconds, not the base.
func recipeKey() string {
	h := sha256.New()
	fmt.Fprintf(h, "masked=%s\n", strings.Join(maskedUnits, ","))
	keys := make([]string, 0, len(recipeFiles))
	for k := range recipeFiles {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%q\n", k, recipeFiles[k])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// EnsureImage returns the NUC image as overlay lower dirs ("recipe:base"),
// building with debootstrap when the package list changed or it was never
// built. Every build goes to a temp dir renamed into place, so an
// interrupted build leaves no half image behind; a lock file serialises
// concurrent builders.
func EnsureImage(t TB) string {
	t.Helper()
	base := filepath.Join(ImageCacheDir, "base-"+BaseKey())
	recipe := filepath.Join(ImageCacheDir, "recipe-"+recipeKey())
	lower := recipe + ":" + base
	if isImage(base) && isImage(recipe) {
		return lower
	}
	if err := os.MkdirAll(ImageCacheDir, 0o755); err != nil {
		t.Fatalf("image cache: %v", err)
	}
	lock, err := os.OpenFile(filepath.Join(ImageCacheDir, "build.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatalf("image cache lock: %v", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("image cache lock: %v", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	removeStaleBuilds()
	if !isImage(base) { // another builder may have finished while we waited
		buildInto(t, base, buildBase)
	}
	if !isImage(recipe) {
		buildInto(t, recipe, buildRecipe)
	}
	return lower
}

func buildInto(t TB, dir string, build func(TB, string) error) {
	t.Helper()
	tmp, err := os.MkdirTemp(ImageCacheDir, ".building-")
	if err != nil {
		t.Fatalf("image build dir: %v", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		t.Fatalf("image build dir: %v", err)
	}
	if err := build(t, tmp); err != nil {
		t.Fatalf("build %s: %v", dir, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, ".kedge-lab-image"), []byte(filepath.Base(dir)+"\n"), 0o644); err != nil {
		t.Fatalf("image marker: %v", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		t.Fatalf("image rename: %v", err)
	}
}

func buildBase(t TB, dir string) error {
	mirror := DebianMirror()
	t.Logf("building the NUC image with debootstrap from %s (a few minutes, once; cached in %s)", mirror, ImageCacheDir)
	start := time.Now()
	cmd := exec.Command("debootstrap", "--variant=minbase", "--include="+strings.Join(ImagePackages, ","),
		ImageSuite, dir, mirror)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("debootstrap: %v\n%s", err, tail(string(out), 30))
	}
	os.Remove(filepath.Join(dir, "var/lib/dbus/machine-id"))
	// Keep the image small: package archives are not needed at run time.
	archives, _ := filepath.Glob(filepath.Join(dir, "var/cache/apt/archives/*.deb"))
	for _, a := range archives {
		os.Remove(a)
	}
	t.Logf("NUC image built in %s", time.Since(start).Round(time.Second))
	return nil
}

func buildRecipe(_ TB, dir string) error {
	units := filepath.Join(dir, "etc/systemd/system")
	if err := os.MkdirAll(units, 0o755); err != nil {
		return err
	}
	for _, u := range maskedUnits {
		if err := os.Symlink("/dev/null", filepath.Join(units, u)); err != nil {
			return err
		}
	}
	for p, c := range recipeFiles {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(c), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func isImage(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, ".kedge-lab-image"))
	return err == nil
}

// removeStaleBuilds deletes temp dirs of builds that were killed; the caller
// holds the build lock, so none of them is in progress.
func removeStaleBuilds() {
	old, _ := filepath.Glob(filepath.Join(ImageCacheDir, ".building-*"))
	for _, d := range old {
		os.RemoveAll(d)
	}
}

// DebianMirror is the Debian mirror apt already uses on this host, so the
// image builds wherever apt works (CI included).
func DebianMirror() string {
	const fallback = "http://deb.debian.org/debian"
	var candidates []string
	if f, err := os.Open("/etc/apt/sources.list"); err == nil {
		candidates = append(candidates, oneLineSources(f)...)
		f.Close()
	}
	lists, _ := filepath.Glob("/etc/apt/sources.list.d/*.list")
	for _, l := range lists {
		if f, err := os.Open(l); err == nil {
			candidates = append(candidates, oneLineSources(f)...)
			f.Close()
		}
	}
	deb822, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, l := range deb822 {
		if data, err := os.ReadFile(l); err == nil {
			candidates = append(candidates, deb822Sources(string(data))...)
		}
	}
	if len(candidates) > 0 {
		return candidates[0]
	}
	return fallback
}

// oneLineSources returns the URIs of "deb URI bookworm ..." lines.
func oneLineSources(f *os.File) []string {
	var out []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) < 3 || fields[0] != "deb" {
			continue
		}
		i := 1
		if strings.HasPrefix(fields[i], "[") { // options like [signed-by=...]
			for i < len(fields) && !strings.HasSuffix(fields[i], "]") {
				i++
			}
			i++
		}
		if i+1 < len(fields) && fields[i+1] == ImageSuite {
			out = append(out, fields[i])
		}
	}
	return out
}

// deb822Sources returns the URIs of deb822 stanzas that carry the suite.
func deb822Sources(data string) []string {
	var out []string
	for _, stanza := range strings.Split(data, "\n\n") {
		var uris, suites, types []string
		for _, line := range strings.Split(stanza, "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok || strings.HasPrefix(line, "#") {
				continue
			}
			switch strings.ToLower(strings.TrimSpace(k)) {
			case "uris":
				uris = strings.Fields(v)
			case "suites":
				suites = strings.Fields(v)
			case "types":
				types = strings.Fields(v)
			}
		}
		if contains(types, "deb") && contains(suites, ImageSuite) {
			out = append(out, uris...)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
