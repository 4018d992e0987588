// Package machine recognises machines by their enrollment facts: which facts
// a request may carry, when two sets of facts are the same machine, and the
// stable name of an unpinned machine.
package machine

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Limits on what an enrollment request may carry; real machines are far below.
const (
	maxFactList  = 64
	maxFactBytes = 256
)

// Validate refuses requests no real machine sends.
func Validate(f *kedgev1.MachineFacts) error {
	if f == nil {
		return status.Error(codes.InvalidArgument, "facts is empty; send machine-id, MACs and IPs")
	}
	if len(f.Macs) == 0 {
		return status.Error(codes.InvalidArgument, "facts.macs is empty; a machine is recognised by its MACs, send at least one")
	}
	if len(f.Macs) > maxFactList || len(f.Ips) > maxFactList || len(f.Labels) > maxFactList {
		return status.Errorf(codes.InvalidArgument, "facts lists more than %d MACs, IPs or labels", maxFactList)
	}
	for _, m := range f.Macs {
		if _, err := net.ParseMAC(m); err != nil {
			return status.Errorf(codes.InvalidArgument, "facts.macs: %q is not a MAC address (want e.g. 52:54:00:12:34:56)", m)
		}
	}
	for _, v := range append(append([]string{f.MachineId, f.DmiProductSerial, f.DmiProductUuid, f.Hostname, f.Arch, f.Os}, f.Macs...), f.Ips...) {
		if len(v) > maxFactBytes {
			return status.Errorf(codes.InvalidArgument, "a fact is longer than %d bytes", maxFactBytes)
		}
	}
	return nil
}

func NormMAC(m string) string { return strings.ToLower(strings.TrimSpace(m)) }

// Same: at least one MAC in common, and machine-id, DMI serial and DMI
// UUID equal wherever both sides have them. A shared machine-id alone (cloned
// images) never makes two machines one.
func Same(a, b *kedgev1.MachineFacts) bool {
	if a == nil || b == nil {
		return false
	}
	shared := false
	for _, x := range a.Macs {
		for _, y := range b.Macs {
			if NormMAC(x) != "" && NormMAC(x) == NormMAC(y) {
				shared = true
			}
		}
	}
	if !shared {
		return false
	}
	agree := func(x, y string) bool { return x == "" || y == "" || strings.EqualFold(x, y) }
	return agree(a.MachineId, b.MachineId) && agree(a.DmiProductSerial, b.DmiProductSerial) && agree(a.DmiProductUuid, b.DmiProductUuid)
}

// DerivedName is "node-" + 8 hex of SHA-256 over the sorted MACs and the
// machine-id, DMI serial and UUID: stable across re-enrollment.
func DerivedName(f *kedgev1.MachineFacts) string {
	macs := make([]string, 0, len(f.Macs))
	for _, m := range f.Macs {
		macs = append(macs, NormMAC(m))
	}
	sort.Strings(macs)
	h := sha256.New()
	for _, part := range append(macs, f.MachineId, f.DmiProductSerial, f.DmiProductUuid) {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return "node-" + hex.EncodeToString(h.Sum(nil))[:8]
}

// NormMACs normalises a list of MACs.
func NormMACs(macs []string) []string {
	out := make([]string, len(macs))
	for i, m := range macs {
		out[i] = NormMAC(m)
	}
	return out
}
