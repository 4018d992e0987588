package backoff

import (
	"testing"
	"time"
)

func TestNextGrowsCapsAndJitters(t *testing.T) {
	b := Backoff{Min: time.Second, Max: 5 * time.Minute}
	want := time.Second
	for i := 0; i < 20; i++ {
		d := b.Next()
		if d < want/2 || d > want {
			t.Fatalf("attempt %d: delay %v outside [%v, %v]", i, d, want/2, want)
		}
		want *= 2
		if want > b.Max {
			want = b.Max
		}
	}
	b.Reset()
	if d := b.Next(); d > time.Second {
		t.Fatalf("after Reset the delay is %v, want at most 1s", d)
	}
}
