package pki

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// FuzzParseCSR: arbitrary bytes are refused with InvalidArgument or accepted
// as a CSR whose key is allowed and whose signature verifies; never a panic.
func FuzzParseCSR(f *testing.F) {
	key, _ := GenerateKey()
	csr, _ := CreateCSR(key, "n")
	f.Add(csr)
	f.Add(csr[:10])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, der []byte) {
		c, err := ParseCSR(der)
		if err != nil {
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("code %v", status.Code(err))
			}
			return
		}
		if c.CheckSignature() != nil {
			t.Fatal("accepted a CSR whose signature does not verify")
		}
	})
}
