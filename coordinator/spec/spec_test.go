package spec

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

const sum = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

const minimal = `apiVersion: kedge/v1
kind: Cluster
metadata:
  name: edge-1
spec:
  topology: stacked
  etcd:
    members: 3
  k3s:
    servers: 3
    version: v1.31.4+k3s1
    binary:
      sha256: "` + sum + `"
      path: /usr/local/bin/k3s
`

var full = `apiVersion: kedge/v1
kind: Cluster
metadata:
  name: edge-2
spec:
  topology: external
  keepHostnames: true
  etcd:
    members: 5
    quotaBackendBytes: 4GiB
    snapshotCount: 5000
    heartbeatIntervalMs: 200
    electionTimeoutMs: 2000
  k3s:
    servers: 2
    version: v1.31.4+k3s1
    binary:
      sha256: "` + strings.ToUpper(sum) + `"
      artifact: k3s
      url: https://example.lan/k3s
      airgapImagesPath: /opt/k3s-airgap-images-amd64.tar.zst
    serverConfig:
      disable: [traefik, servicelb]
      write-kubeconfig-mode: "0644"
      kube-apiserver-arg:
        - max-requests-inflight=200
      secrets-encryption: true
      etcd-snapshot-retention: 5
    agentConfig:
      node-label: [site=shop-7]
    tlsSans: [k3s.example.lan, 10.0.0.5]
    registrationAddress: 10.0.0.5
  inventory:
    - name: etcd-a
      match: {mac: "AA:BB:CC:DD:EE:01"}
      roles: [etcd]
      labels: {zone: a}
      ip: 10.0.0.11
    - name: srv-a
      match: {dmiSerial: S123, hostname: nuc-srv-a}
      roles: [server]
    - name: spare
      match: {machineID: 0123456789abcdef0123456789abcdef}
`

func TestParseMinimalAppliesDefaults(t *testing.T) {
	s, err := Parse("edge.yaml", []byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	want := &kedgev1.ClusterSpec{
		Name:     "edge-1",
		Topology: kedgev1.Topology_TOPOLOGY_STACKED,
		Etcd: &kedgev1.EtcdSpec{
			Members: 3, QuotaBackendBytes: 2 << 30, SnapshotCount: 10000,
			HeartbeatIntervalMs: 100, ElectionTimeoutMs: 1000,
		},
		K3S: &kedgev1.K3SSpec{
			Servers: 3, Version: "v1.31.4+k3s1",
			Binary: &kedgev1.K3SBinary{Sha256: sum, Path: "/usr/local/bin/k3s"},
		},
	}
	if !proto.Equal(s, want) {
		t.Fatalf("got\n%v\nwant\n%v", prototext.Format(s), prototext.Format(want))
	}
}

func TestParseDefaultsPerTopology(t *testing.T) {
	for _, tc := range []struct {
		topology, etcd   string
		members, servers uint32
	}{
		{"stacked", "", 3, 3},
		{"stacked", "  etcd: {members: 5}\n", 5, 5},
		{"external", "", 3, 2},
		{"embedded", "", 0, 3},
	} {
		doc := "apiVersion: kedge/v1\nkind: Cluster\nmetadata: {name: c}\nspec:\n  topology: " + tc.topology + "\n" + tc.etcd +
			"  k3s:\n    version: v1.31.4+k3s1\n    binary: {sha256: \"" + sum + "\", path: /usr/local/bin/k3s}\n"
		s, err := Parse("c.yaml", []byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", tc.topology, err)
		}
		if s.GetEtcd().GetMembers() != tc.members || s.K3S.Servers != tc.servers {
			t.Errorf("%s: members %d servers %d, want %d %d", tc.topology, s.GetEtcd().GetMembers(), s.K3S.Servers, tc.members, tc.servers)
		}
		if tc.topology == "embedded" && s.Etcd != nil {
			t.Errorf("embedded: etcd spec %v, want none", s.Etcd)
		}
	}
}

func TestParseFull(t *testing.T) {
	s, err := Parse("full.yaml", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	if s.K3S.Binary.Sha256 != sum {
		t.Errorf("sha256 %q, want lowercased %q", s.K3S.Binary.Sha256, sum)
	}
	if s.Etcd.QuotaBackendBytes != 4<<30 {
		t.Errorf("quota %d, want 4GiB", s.Etcd.QuotaBackendBytes)
	}
	if got := s.Inventory[0].Mac; got != "aa:bb:cc:dd:ee:01" {
		t.Errorf("mac %q, want lowercase", got)
	}
	if got := s.K3S.ServerConfig.Fields["write-kubeconfig-mode"].GetStringValue(); got != "0644" {
		t.Errorf("write-kubeconfig-mode %q, want the string 0644", got)
	}
	if got := s.K3S.ServerConfig.Fields["etcd-snapshot-retention"].GetNumberValue(); got != 5 {
		t.Errorf("etcd-snapshot-retention %v, want 5", got)
	}
	if got := s.Inventory[0].Roles; len(got) != 1 || got[0] != kedgev1.Role_ROLE_ETCD {
		t.Errorf("roles %v", got)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	for name, doc := range map[string]string{"minimal": minimal, "full": full} {
		s, err := Parse(name, []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		out, err := Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		back, err := Parse(name+"-rendered", out)
		if err != nil {
			t.Fatalf("%s: rendered document refused: %v\n%s", name, err, out)
		}
		if !proto.Equal(s, back) {
			t.Fatalf("%s: round trip changed the spec\n%s\nfirst %v\nthen  %v", name, out, s, back)
		}
		again, _ := Marshal(back)
		if string(again) != string(out) {
			t.Fatalf("%s: Marshal is not canonical:\n%s\n---\n%s", name, out, again)
		}
	}
}

// base is minimal with one line replaced, for refusal cases.
func with(old, new string) string {
	if !strings.Contains(minimal, old) {
		panic("test doc lacks " + old)
	}
	return strings.Replace(minimal, old, new, 1)
}

func TestParseRefusals(t *testing.T) {
	etcdLine := "  etcd:\n    members: 3\n"
	k3sHead := "  k3s:\n    servers: 3\n"
	for _, tc := range []struct{ name, doc, want string }{
		{"empty", "", "f.yaml: empty; a kedge/v1 Cluster document needs apiVersion, kind, metadata and spec"},
		{"second document", minimal + "---\nkind: Cluster\n", "f.yaml: line 15: a second YAML document follows the Cluster; a file holds exactly one, put others in their own files"},
		{"not a mapping", "- a\n", "f.yaml: (document): expected a mapping, got a list"},
		{"wrong apiVersion", with("kedge/v1", "kedge/v2"), `f.yaml: apiVersion: "kedge/v2" is not supported; use kedge/v1`},
		{"missing apiVersion", with("apiVersion: kedge/v1\n", ""), "f.yaml: apiVersion: missing; set apiVersion: kedge/v1"},
		{"wrong kind", with("kind: Cluster", "kind: Node"), `f.yaml: kind: "Node" is not supported; use Cluster`},
		{"bad name", with("name: edge-1", "name: Edge_1"), `f.yaml: metadata.name: "Edge_1" is not a valid name; use lowercase letters, digits and '-' (at most 63, starting and ending alphanumeric)`},
		{"missing name", with("  name: edge-1\n", "  name:\n"), "f.yaml: metadata.name: missing; name the cluster, e.g. name: edge-1"},
		{"unknown top field", minimal + "status: {}\n", "f.yaml: status: unknown field; known fields here are apiVersion, kind, metadata, spec"},
		{"unknown etcd field", with("    members: 3\n", "    members: 3\n    memebers: 3\n"), "f.yaml: spec.etcd.memebers: unknown field; known fields here are members, quotaBackendBytes, snapshotCount, heartbeatIntervalMs, electionTimeoutMs"},
		{"duplicate key", with("    members: 3\n", "    members: 3\n    members: 3\n"), "f.yaml: spec.etcd.members: given twice (lines 8 and 9); keep one"},
		{"even members", with("members: 3", "members: 2"), "f.yaml: spec.etcd.members: 2 is even; etcd needs an odd count (1, 3, 5)"},
		{"zero members", with("members: 3", "members: 0"), "f.yaml: spec.etcd.members: 0 members; etcd needs an odd count (1, 3, 5)"},
		{"too many members", with("members: 3", "members: 9"), "f.yaml: spec.etcd.members: 9 is more than etcd runs well; use 1, 3, 5 or 7"},
		{"members as string", with("members: 3", "members: three"), `f.yaml: spec.etcd.members: expected a whole number, got the string "three"; give a member count like 3`},
		{"quota too big", with("members: 3", "members: 3\n    quotaBackendBytes: 16GiB"), "f.yaml: spec.etcd.quotaBackendBytes: 17179869184 is over etcd's suggested maximum of 8GiB; use at most 8GiB"},
		{"quota bad unit", with("members: 3", "members: 3\n    quotaBackendBytes: 2GB"), `f.yaml: spec.etcd.quotaBackendBytes: expected a size, got the string "2GB"; give bytes or a size like 2GiB (KiB, MiB, GiB)`},
		{"election vs heartbeat", with("members: 3", "members: 3\n    heartbeatIntervalMs: 300"), "f.yaml: spec.etcd.electionTimeoutMs: 1000 is less than 5 x heartbeatIntervalMs (300); raise it to at least 1500"},
		{"stacked servers differ", with("servers: 3", "servers: 2"), "f.yaml: spec.k3s.servers: 2 differs from spec.etcd.members (3); the stacked topology runs one K3s server on each etcd member: set servers to 3 or omit it"},
		{"bad topology", with("topology: stacked", "topology: ha"), `f.yaml: spec.topology: "ha" is not a topology; choose stacked, external or embedded`},
		{"missing topology", with("  topology: stacked\n", ""), "f.yaml: spec.topology: missing; choose stacked, external or embedded"},
		{"embedded with etcd", with("topology: stacked", "topology: embedded"), "f.yaml: spec.etcd: the embedded topology runs K3s's own etcd, not kedge's; remove spec.etcd (size it with spec.k3s.servers, tune it with spec.k3s.serverConfig etcd-arg)"},
		{"embedded even servers", strings.Replace(with("topology: stacked", "topology: embedded"), etcdLine+k3sHead, "  k3s:\n    servers: 2\n", 1), "f.yaml: spec.k3s.servers: 2 is even; K3s's embedded etcd needs an odd count of servers (1, 3, 5)"},
		{"external zero servers", strings.Replace(with("topology: stacked", "topology: external"), "servers: 3", "servers: 0", 1), "f.yaml: spec.k3s.servers: 0 servers; a cluster needs at least 1 K3s server"},
		{"missing version", with("    version: v1.31.4+k3s1\n", ""), "f.yaml: spec.k3s.version: missing; give the K3s release, e.g. v1.31.4+k3s1"},
		{"bad version", with("v1.31.4+k3s1", "1.31"), `f.yaml: spec.k3s.version: expected a string, got the number 1.31; quote it if it is meant as text`},
		{"version without v", with("v1.31.4+k3s1", "latest"), `f.yaml: spec.k3s.version: "latest" is not a K3s release name; use the form v1.31.4+k3s1`},
		{"short sha", with(sum, "abc"), `f.yaml: spec.k3s.binary.sha256: "abc" is not 64 hex digits; give the binary's SHA-256 as sha256sum prints it`},
		{"missing sha", with("      sha256: \""+sum+"\"\n", ""), "f.yaml: spec.k3s.binary.sha256: missing; give the binary's SHA-256 (64 hex digits, e.g. from sha256sum-amd64.txt of the release)"},
		{"no source", with("      path: /usr/local/bin/k3s\n", ""), "f.yaml: spec.k3s.binary: no source; give path (pre-staged on the image), artifact (the coordinator's store) or url"},
		{"relative path", with("/usr/local/bin/k3s", "k3s"), `f.yaml: spec.k3s.binary.path: "k3s" is relative; give the absolute path on the image, e.g. /usr/local/bin/k3s`},
		{"ftp url", with("path: /usr/local/bin/k3s", "url: ftp://x/k3s"), `f.yaml: spec.k3s.binary.url: "ftp://x/k3s" is not an http(s) URL; give the download URL, e.g. https://github.com/k3s-io/k3s/releases/download/v1.31.4%2Bk3s1/k3s`},
		{"owned server key", minimal + "    serverConfig:\n      datastore-endpoint: https://x:2379\n", "f.yaml: spec.k3s.serverConfig.datastore-endpoint: kedge sets datastore-endpoint itself (from the etcd members); remove it"},
		{"owned token", minimal + "    serverConfig:\n      token: hunter2\n", "f.yaml: spec.k3s.serverConfig.token: kedge sets token itself (from the cluster's secrets); remove it"},
		{"owned agent key", minimal + "    agentConfig:\n      server: https://x:6443\n", "f.yaml: spec.k3s.agentConfig.server: kedge sets server itself (from the servers it sees healthy (fix it with spec.k3s.registrationAddress)); remove it"},
		{"nested config", minimal + "    serverConfig:\n      kubelet: {a: b}\n", "f.yaml: spec.k3s.serverConfig.kubelet: a mapping is not a K3s config value; give a string, number, bool or list"},
		{"duplicate san", minimal + "    tlsSans: [a.lan, a.lan]\n", `f.yaml: spec.k3s.tlsSans[1]: "a.lan" is listed twice; keep one`},
		{"reg address scheme", minimal + "    registrationAddress: https://10.0.0.5\n", `f.yaml: spec.k3s.registrationAddress: "https://10.0.0.5" has a scheme; give host or host:port, kedge adds https://`},
		{"reg address port", minimal + "    registrationAddress: 10.0.0.5:http\n", `f.yaml: spec.k3s.registrationAddress: "10.0.0.5:http" has no valid port; give host or host:port, e.g. 10.0.0.5:6443`},
		{"keepHostnames type", with("  topology: stacked\n", "  topology: stacked\n  keepHostnames: yes please\n"), `f.yaml: spec.keepHostnames: expected true or false, got the string "yes please"`},
		{"pin duplicate name", minimal + "  inventory:\n    - {name: a, match: {hostname: x}}\n    - {name: a, match: {hostname: y}}\n", `f.yaml: spec.inventory[1].name: "a" is already the name of spec.inventory[0]; give each pin its own name`},
		{"pin duplicate mac", minimal + "  inventory:\n    - {name: a, match: {mac: 'aa:bb:cc:dd:ee:ff'}}\n    - {name: b, match: {mac: 'AA:BB:CC:DD:EE:FF'}}\n", "f.yaml: spec.inventory[1].match.mac: aa:bb:cc:dd:ee:ff is already matched by spec.inventory[0]; a MAC belongs to one machine"},
		{"pin duplicate ip", minimal + "  inventory:\n    - {name: a, match: {hostname: x}, ip: 10.0.0.1}\n    - {name: b, match: {hostname: y}, ip: 10.0.0.1}\n", "f.yaml: spec.inventory[1].ip: 10.0.0.1 is already the IP of spec.inventory[0]; give each node its own"},
		{"pin bad mac", minimal + "  inventory:\n    - {name: a, match: {mac: nope}}\n", `f.yaml: spec.inventory[0].match.mac: "nope" is not a MAC address; give it as aa:bb:cc:dd:ee:ff`},
		{"pin bad ip", minimal + "  inventory:\n    - {name: a, match: {hostname: x}, ip: 10.0.0}\n", `f.yaml: spec.inventory[0].ip: "10.0.0" is not an IP address; give the address the node's services use, e.g. 10.0.0.11`},
		{"pin no match", minimal + "  inventory:\n    - {name: a}\n", "f.yaml: spec.inventory[0].match: missing; give at least one of mac, dmiSerial, dmiUUID, machineID, hostname"},
		{"pin empty match", minimal + "  inventory:\n    - {name: a, match: {}}\n", "f.yaml: spec.inventory[0].match: empty; give at least one of mac, dmiSerial, dmiUUID, machineID, hostname"},
		{"pin same match", minimal + "  inventory:\n    - {name: a, match: {hostname: x}}\n    - {name: b, match: {hostname: X}}\n", "f.yaml: spec.inventory[1].match: matches the same machines as spec.inventory[0]; make the match fields differ"},
		{"pin bad role", minimal + "  inventory:\n    - {name: a, match: {hostname: x}, roles: [master]}\n", `f.yaml: spec.inventory[0].roles[0]: "master" is not a role; use etcd, server or agent`},
		{"pin server and agent", minimal + "  inventory:\n    - {name: a, match: {hostname: x}, roles: [etcd, server, agent]}\n", "f.yaml: spec.inventory[0].roles: server and agent together; a K3s server already runs the node's kubelet: keep one"},
		{"pin stacked etcd only", minimal + "  inventory:\n    - {name: a, match: {hostname: x}, roles: [etcd]}\n", "f.yaml: spec.inventory[0].roles: etcd and server go together in the stacked topology; use [etcd, server] or [agent]"},
		{"pin too many etcd", minimal + "  inventory:\n    - {name: a, match: {hostname: a}, roles: [etcd, server]}\n    - {name: b, match: {hostname: b}, roles: [etcd, server]}\n    - {name: c, match: {hostname: c}, roles: [etcd, server]}\n    - {name: d, match: {hostname: d}, roles: [etcd, server]}\n", "f.yaml: spec.inventory: 4 pins have the etcd role but spec.etcd.members is 3; pin at most 3 or raise members"},
		{"pin unknown field", minimal + "  inventory:\n    - {name: a, match: {hostname: x, serial: y}}\n", "f.yaml: spec.inventory[0].match.serial: unknown field; known fields here are mac, dmiSerial, dmiUUID, machineID, hostname"},
		{"yaml syntax", "apiVersion: [\n", "f.yaml: line 1: did not find expected node content; fix the YAML syntax"},
		{"missing kind", with("kind: Cluster\n", ""), "f.yaml: kind: missing; set kind: Cluster"},
		{"missing metadata", with("metadata:\n  name: edge-1\n", ""), "f.yaml: metadata: missing; add metadata: {name: <cluster name>}"},
		{"missing spec", strings.Split(minimal, "spec:")[0], "f.yaml: spec: missing; add spec with topology and k3s"},
		{"missing k3s", strings.Split(minimal, "  k3s:")[0], "f.yaml: spec.k3s: missing; add spec.k3s with version and binary"},
		{"missing binary", strings.Split(minimal, "    binary:")[0], "f.yaml: spec.k3s.binary: missing; give binary.sha256 and where nodes get it (path, artifact or url)"},
		{"bad artifact", with("path: /usr/local/bin/k3s", "artifact: K3S_bin"), `f.yaml: spec.k3s.binary.artifact: "K3S_bin" is not an artifact name; use the name given to kedgectl artifact push, e.g. k3s`},
		{"relative airgap", with("path: /usr/local/bin/k3s", "path: /usr/local/bin/k3s\n      airgapImagesPath: images.tar"), `f.yaml: spec.k3s.binary.airgapImagesPath: "images.tar" is relative; give the absolute path of the images tarball on the image`},
		{"zero snapshot", with("members: 3", "members: 3\n    snapshotCount: 0"), "f.yaml: spec.etcd.snapshotCount: 0 would snapshot on every write; use a count like 10000, or omit it"},
		{"zero heartbeat", with("members: 3", "members: 3\n    heartbeatIntervalMs: 0"), "f.yaml: spec.etcd.heartbeatIntervalMs: 0 is out of range; use milliseconds like 100, or omit it"},
		{"huge election", with("members: 3", "members: 3\n    electionTimeoutMs: 60000"), "f.yaml: spec.etcd.electionTimeoutMs: 60000 is out of range; use milliseconds from 1 to 50000 like 1000, or omit it"},
		{"duplicate config key", minimal + "    serverConfig:\n      disable: traefik\n      disable: servicelb\n", "f.yaml: spec.k3s.serverConfig.disable: given twice (lines 16 and 17); keep one"},
		{"nested config list", minimal + "    agentConfig:\n      node-label: [[a]]\n", "f.yaml: spec.k3s.agentConfig.node-label[0]: a list in a list is not a K3s config value; give strings, numbers or bools"},
		{"config not a map", minimal + "    serverConfig: [a]\n", "f.yaml: spec.k3s.serverConfig: expected a mapping of K3s config.yaml keys, got a list; write key: value lines"},
		{"bad san", minimal + "    tlsSans: [\"http://x\"]\n", `f.yaml: spec.k3s.tlsSans[0]: "http://x" is not a DNS name or IP; give a name like k3s.example.lan or an IP`},
		{"pin duplicate role", minimal + "  inventory:\n    - {name: a, match: {hostname: x}, roles: [agent, agent]}\n", `f.yaml: spec.inventory[0].roles[1]: "agent" is listed twice; keep one`},
		{"pin external etcd and server", strings.Replace(with("topology: stacked", "topology: external"), "servers: 3", "servers: 2", 1) + "  inventory:\n    - {name: a, match: {hostname: x}, roles: [etcd, server]}\n", "f.yaml: spec.inventory[0].roles: an etcd host runs etcd only in the external topology; use [etcd], [server] or [agent]"},
		{"pin embedded etcd", strings.Replace(strings.Replace(with("topology: stacked", "topology: embedded"), "  etcd:\n    members: 3\n", "", 1), "servers: 3", "servers: 3", 1) + "  inventory:\n    - {name: a, match: {hostname: x}, roles: [etcd]}\n", "f.yaml: spec.inventory[0].roles: etcd in the embedded topology, where K3s runs its own; use server or agent"},
		{"pin too many servers", strings.Replace(with("topology: stacked", "topology: external"), "servers: 3", "servers: 1", 1) + "  inventory:\n    - {name: a, match: {hostname: a}, roles: [server]}\n    - {name: b, match: {hostname: b}, roles: [server]}\n", "f.yaml: spec.inventory: 2 pins have the server role but spec.k3s.servers is 1; pin at most 1 or raise servers"},
		{"pin labels not a map", minimal + "  inventory:\n    - {name: a, match: {hostname: x}, labels: [a]}\n", "f.yaml: spec.inventory[0].labels: expected a mapping of label: value, got a list"},
		{"null apiVersion", with("apiVersion: kedge/v1", "apiVersion:"), "f.yaml: apiVersion: missing; set apiVersion: kedge/v1"},
		{"null spec", strings.Split(minimal, "spec:")[0] + "spec:\n", "f.yaml: spec: missing; add spec with topology and k3s"},
		{"only a tag", "!\n", "f.yaml: (document): empty; a kedge/v1 Cluster document needs apiVersion, kind, metadata and spec"},
		{"inventory not a list", minimal + "  inventory: {a: b}\n", "f.yaml: spec.inventory: expected a list, got a mapping; write it as [a, b] or as '- a' lines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Parse("f.yaml", []byte(tc.doc))
			if err == nil {
				t.Fatalf("accepted:\n%s\nas %v", tc.doc, s)
			}
			if err.Error() != tc.want {
				t.Fatalf("error\n got: %s\nwant: %s", err, tc.want)
			}
			if s != nil {
				t.Errorf("a refused spec came back non-nil: %v", s)
			}
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	doc := with("members: 3", "members: 4")
	doc = strings.Replace(doc, "v1.31.4+k3s1", "latest", 1)
	_, err := Parse("f.yaml", []byte(doc))
	want := "f.yaml: spec.etcd.members: 4 is even; etcd needs an odd count (1, 3, 5)\n" +
		`f.yaml: spec.k3s.version: "latest" is not a K3s release name; use the form v1.31.4+k3s1`
	if err == nil || err.Error() != want {
		t.Fatalf("got %v\nwant %s", err, want)
	}
}

func TestMatchPin(t *testing.T) {
	s, err := Parse("full.yaml", []byte(full))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		facts *kedgev1.MachineFacts
		want  string
	}{
		{"mac any of several, other case", &kedgev1.MachineFacts{Macs: []string{"02:00:00:00:00:01", "aa:bb:cc:dd:ee:01"}}, "etcd-a"},
		{"mac uppercase fact", &kedgev1.MachineFacts{Macs: []string{"AA-BB-CC-DD-EE-01"}}, "etcd-a"},
		{"all given fields match", &kedgev1.MachineFacts{DmiProductSerial: "S123", Hostname: "NUC-SRV-A"}, "srv-a"},
		{"one of two fields differs", &kedgev1.MachineFacts{DmiProductSerial: "S123", Hostname: "other"}, ""},
		{"machine id", &kedgev1.MachineFacts{MachineId: "0123456789abcdef0123456789abcdef"}, "spare"},
		{"nothing matches", &kedgev1.MachineFacts{Macs: []string{"aa:bb:cc:dd:ee:02"}, Hostname: "x"}, ""},
	} {
		got := MatchPin(s, tc.facts)
		if got.GetName() != tc.want {
			t.Errorf("%s: matched %q, want %q", tc.name, got.GetName(), tc.want)
		}
	}
	if MatchPin(nil, &kedgev1.MachineFacts{}) != nil || MatchPin(s, nil) != nil {
		t.Error("nil spec or facts matched a pin")
	}
}
