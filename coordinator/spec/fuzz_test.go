package spec

import (
	"testing"

	"google.golang.org/protobuf/proto"
)

// FuzzParse: Parse never panics, and whatever it accepts renders to a
// document it accepts again as the same spec.
func FuzzParse(f *testing.F) {
	f.Add([]byte(minimal))
	f.Add([]byte(full))
	f.Add([]byte("apiVersion: kedge/v1\nkind: Cluster\nmetadata: {name: a}\nspec: {topology: embedded, k3s: {version: v1, binary: {sha256: \"" + sum + "\", url: \"http://x/k\"}}}\n"))
	f.Add([]byte("- [a, {b: c}]\n---\n&x y: *x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse("fuzz.yaml", data)
		if err != nil {
			return
		}
		out, err := Marshal(s)
		if err != nil {
			t.Fatalf("accepted spec does not render: %v", err)
		}
		back, err := Parse("rendered.yaml", out)
		if err != nil {
			t.Fatalf("rendered spec refused: %v\n%s", err, out)
		}
		if !proto.Equal(s, back) {
			t.Fatalf("round trip changed the spec\n%s", out)
		}
	})
}
