package facts

import (
	"os"
	"path/filepath"
	"testing"
)

func write(t *testing.T, root, p, content string) {
	t.Helper()
	full := filepath.Join(root, p)
	os.MkdirAll(filepath.Dir(full), 0o755)
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestGatherReadsRootAndDMIOverride(t *testing.T) {
	root := t.TempDir()
	write(t, root, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n")
	write(t, root, "/etc/os-release", "NAME=Debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
	write(t, root, "/etc/kedge/dmi.yaml", "productSerial: SN-7\nproductUUID: 11111111-2222-3333-4444-555555555555\n")
	f := Gather(root, map[string]string{"rack": "r1"})
	if f.MachineId != "0123456789abcdef0123456789abcdef" || f.Os != "Debian GNU/Linux 12 (bookworm)" ||
		f.DmiProductSerial != "SN-7" || f.DmiProductUuid != "11111111-2222-3333-4444-555555555555" || f.Labels["rack"] != "r1" || f.Arch == "" {
		t.Fatalf("facts: %+v", f)
	}

	write(t, root, "/sys/class/dmi/id/product_serial", "REAL-SN\n")
	if f := Gather(root, nil); f.DmiProductSerial != "REAL-SN" {
		t.Fatalf("real DMI should win over the override, got %q", f.DmiProductSerial)
	}
}
