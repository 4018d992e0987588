package agent

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRateLogOncePerIntervalUnlessTheMessageChanges(t *testing.T) {
	var buf bytes.Buffer
	r := newRateLog(slog.New(slog.NewTextHandler(&buf, nil)), time.Hour)
	for i := 0; i < 5; i++ {
		r.Info("pending", "waiting for approval")
	}
	r.Warn("pending", "enrollment refused: token revoked")
	if n := strings.Count(buf.String(), "waiting for approval"); n != 1 {
		t.Fatalf("logged %d times within the interval, want once:\n%s", n, buf.String())
	}
	if !strings.Contains(buf.String(), "token revoked") {
		t.Fatal("a changed message was held back")
	}
}
