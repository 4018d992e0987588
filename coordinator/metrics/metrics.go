// Package metrics holds the coordinator's Prometheus collectors, registered
// on a registry of their own so tests can run many coordinators in one process.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the coordinator's collectors. A nil *Metrics is valid and
// records nothing, so callers need no checks.
type Metrics struct {
	Registry *prometheus.Registry
	// NodesByCondition: cluster, condition (ready, degraded, ...).
	NodesByCondition *prometheus.GaugeVec
	Enrollments      *prometheus.CounterVec
	// RefusedEnrollments: reason (unknown, expired, used_up, ...).
	RefusedEnrollments *prometheus.CounterVec
	// PlanFanoutSeconds: from the store watch delivering a plan to the
	// node's stream having sent it.
	PlanFanoutSeconds prometheus.Histogram
	WatchStreams      prometheus.Gauge
}

// New creates and registers the collectors.
func New() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		NodesByCondition: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kedge_nodes", Help: "Enrolled nodes by cluster and derived condition.",
		}, []string{"cluster", "condition"}),
		Enrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kedge_enrollments_total", Help: "Accepted enrollments by result (enrolled, pending).",
		}, []string{"result"}),
		RefusedEnrollments: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kedge_enrollments_refused_total", Help: "Refused enrollments by reason.",
		}, []string{"reason"}),
		PlanFanoutSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "kedge_plan_fanout_seconds", Help: "Time from a plan change seen in the store to its send on the node's stream.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		WatchStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kedge_plan_watch_streams", Help: "Open WatchPlan streams.",
		}),
	}
	m.Registry.MustRegister(m.NodesByCondition, m.Enrollments, m.RefusedEnrollments, m.PlanFanoutSeconds, m.WatchStreams,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}

// Enrolled counts an accepted enrollment ("enrolled" or "pending").
func (m *Metrics) Enrolled(result string) {
	if m != nil {
		m.Enrollments.WithLabelValues(result).Inc()
	}
}

// Refused counts a refused enrollment.
func (m *Metrics) Refused(reason string) {
	if m != nil {
		m.RefusedEnrollments.WithLabelValues(reason).Inc()
	}
}

// Fanout records one plan delivery latency in seconds.
func (m *Metrics) Fanout(seconds float64) {
	if m != nil {
		m.PlanFanoutSeconds.Observe(seconds)
	}
}

// Streams adds delta to the open watch stream gauge.
func (m *Metrics) Streams(delta float64) {
	if m != nil {
		m.WatchStreams.Add(delta)
	}
}

// SetNodes replaces the node-count gauges: counts[cluster][condition].
func (m *Metrics) SetNodes(counts map[string]map[string]int) {
	if m == nil {
		return
	}
	m.NodesByCondition.Reset()
	for cluster, byCond := range counts {
		for cond, n := range byCond {
			m.NodesByCondition.WithLabelValues(cluster, cond).Set(float64(n))
		}
	}
}
