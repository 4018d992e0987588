// Package facts gathers what a node says about itself at enrollment: no single
// fact identifies a machine (cloned images share machine-ids), so it collects
// several and lets the coordinator decide.
package facts

import (
	"bufio"
	"bytes"
	"net"
	"os"
	"runtime"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kedge-io/kedge/nodeagent/paths"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// dmiOverride is the file the lab writes where /sys/class/dmi is absent.
type dmiOverride struct {
	ProductSerial string `yaml:"productSerial"`
	ProductUUID   string `yaml:"productUUID"`
}

// Gather collects facts from the machine under root. Files that are missing
// leave their fact empty: a machine without DMI is normal (VMs, containers).
func Gather(root string, labels map[string]string) *kedgev1.MachineFacts {
	f := &kedgev1.MachineFacts{
		MachineId:        readTrim(paths.In(root, "/etc/machine-id")),
		DmiProductSerial: readTrim(paths.In(root, "/sys/class/dmi/id/product_serial")),
		DmiProductUuid:   readTrim(paths.In(root, "/sys/class/dmi/id/product_uuid")),
		Arch:             runtime.GOARCH,
		Os:               osPrettyName(root),
		Labels:           labels,
	}
	if f.DmiProductSerial == "" && f.DmiProductUuid == "" {
		if data, err := os.ReadFile(paths.In(root, paths.DMIOverride)); err == nil {
			var o dmiOverride
			if yaml.Unmarshal(data, &o) == nil {
				f.DmiProductSerial, f.DmiProductUuid = o.ProductSerial, o.ProductUUID
			}
		}
	}
	f.Hostname, _ = os.Hostname()
	f.Macs, f.Ips = interfaces()
	return f
}

func readTrim(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func osPrettyName(root string) string {
	data, err := os.ReadFile(paths.In(root, "/etc/os-release"))
	if err != nil {
		return ""
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "PRETTY_NAME="); ok {
			return strings.Trim(v, `"'`)
		}
	}
	return ""
}

// interfaces returns the MACs and global unicast addresses of up, non-loopback
// interfaces, sorted so the same machine reports the same facts every time.
func interfaces() (macs, ips []string) {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil, nil
	}
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		if len(ifc.HardwareAddr) > 0 {
			macs = append(macs, ifc.HardwareAddr.String())
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if ok && ipn.IP.IsGlobalUnicast() {
				ips = append(ips, ipn.IP.String())
			}
		}
	}
	sort.Strings(macs)
	sort.Strings(ips)
	return macs, ips
}
