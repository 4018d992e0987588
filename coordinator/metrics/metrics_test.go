package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestHandlerServesCollectors(t *testing.T) {
	m := New()
	m.Enrolled("enrolled")
	m.Refused("expired")
	m.Fanout(0.01)
	m.SetNodes(map[string]map[string]int{"edge-1": {"ready": 3}})
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{
		`kedge_enrollments_total{result="enrolled"} 1`,
		`kedge_enrollments_refused_total{reason="expired"} 1`,
		`kedge_nodes{cluster="edge-1",condition="ready"} 3`,
		`kedge_plan_fanout_seconds_count 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	var nilMetrics *Metrics
	nilMetrics.Enrolled("x") // a nil *Metrics records nothing and does not panic
}
