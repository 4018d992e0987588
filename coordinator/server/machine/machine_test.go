package machine

import (
	"regexp"
	"strings"
	"testing"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

func TestSame(t *testing.T) {
	base := &kedgev1.MachineFacts{MachineId: "m1", DmiProductSerial: "S1", Macs: []string{"52:54:00:00:00:01", "52:54:00:00:00:02"}}
	for _, tc := range []struct {
		name  string
		other *kedgev1.MachineFacts
		want  bool
	}{
		{"identical", &kedgev1.MachineFacts{MachineId: "m1", DmiProductSerial: "S1", Macs: []string{"52:54:00:00:00:01"}}, true},
		{"one MAC in common, MAC case differs", &kedgev1.MachineFacts{MachineId: "m1", Macs: []string{"52:54:00:00:00:02", "52:54:00:00:00:09"}}, true},
		{"cloned image: machine-id shared, MACs differ", &kedgev1.MachineFacts{MachineId: "m1", DmiProductSerial: "S1", Macs: []string{"52:54:00:00:00:03"}}, false},
		{"MAC moved to another machine (serial differs)", &kedgev1.MachineFacts{MachineId: "m1", DmiProductSerial: "S2", Macs: []string{"52:54:00:00:00:01"}}, false},
		{"machine-id differs", &kedgev1.MachineFacts{MachineId: "m2", Macs: []string{"52:54:00:00:00:01"}}, false},
		{"machine-id absent on one side", &kedgev1.MachineFacts{Macs: []string{"52:54:00:00:00:01"}}, true},
	} {
		if got := Same(base, tc.other); got != tc.want {
			t.Errorf("%s: Same = %v; want %v", tc.name, got, tc.want)
		}
	}
}

func TestDerivedNameIsStable(t *testing.T) {
	a := &kedgev1.MachineFacts{MachineId: "m", Macs: []string{"52:54:00:00:00:02", "52:54:00:00:00:01"}}
	b := &kedgev1.MachineFacts{MachineId: "m", Macs: []string{"52:54:00:00:00:01", "52:54:00:00:00:02"}, Hostname: "other"}
	if DerivedName(a) != DerivedName(b) {
		t.Errorf("MAC order or hostname changed the name: %s vs %s", DerivedName(a), DerivedName(b))
	}
	c := &kedgev1.MachineFacts{MachineId: "m", Macs: []string{"52:54:00:00:00:03"}}
	if DerivedName(a) == DerivedName(c) {
		t.Error("different MACs, same name")
	}
}

var nameRE = regexp.MustCompile(`^node-[0-9a-f]{8}$`)

// FuzzFacts: any facts Validate accepts are the same machine as themselves
// and get a well-formed name; nothing panics.
func FuzzFacts(f *testing.F) {
	f.Add("m1", "S1", "U1", "52:54:00:00:00:01", "10.0.0.1", "nuc1")
	f.Add("", "", "", "", "", "")
	f.Add("m", "", "", "52:54:00:00:00:01,zz", "", "")
	f.Fuzz(func(t *testing.T, machineID, serial, uuid, macs, ips, host string) {
		facts := &kedgev1.MachineFacts{MachineId: machineID, DmiProductSerial: serial, DmiProductUuid: uuid,
			Macs: strings.Split(macs, ","), Ips: strings.Split(ips, ","), Hostname: host}
		if Validate(facts) != nil {
			return
		}
		if !Same(facts, facts) {
			t.Fatalf("accepted facts %v are not the same machine as themselves", facts)
		}
		if name := DerivedName(facts); !nameRE.MatchString(name) {
			t.Fatalf("derived name %q", name)
		}
	})
}
