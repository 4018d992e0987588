package statusfile

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kedge-io/kedge/nodeagent/paths"
)

func TestTrackerWritesOnChangeAndPrint(t *testing.T) {
	root := t.TempDir()
	tr := NewTracker(root)
	if err := tr.Update(func(s *Status) {
		s.Enrollment = Refused
		s.LastError = "enrollment refused: token expired at 2026-01-01T00:00:00Z"
		s.Units = []Unit{{Name: "kedge-etcd.service", ActiveState: "active", SubState: "running"}}
	}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(paths.In(root, paths.AgentStatus))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("status file: %v %v", st, err)
	}
	first, _ := os.ReadFile(paths.In(root, paths.AgentStatus))
	tr.Update(func(s *Status) {}) // no change: no write
	second, _ := os.ReadFile(paths.In(root, paths.AgentStatus))
	if !bytes.Equal(first, second) {
		t.Fatal("an update that changed nothing rewrote the file")
	}

	s, err := Read(root)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	Print(&out, s, time.Now())
	for _, want := range []string{"token expired", "refused", "kedge-etcd.service", "running"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	if NewTracker(root).Get().Enrollment != Refused {
		t.Fatal("a new tracker did not start from the file on disk")
	}
}
