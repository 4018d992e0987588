// Command kedge-loadgen measures a kedge-coordinator under a simulated fleet;
// see package loadgen.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kedge-io/kedge/test/loadgen"
)

func main() {
	o := loadgen.Options{Out: os.Stdout}
	flag.StringVar(&o.CoordinatorBinary, "coordinator", "bin/kedge-coordinator", "kedge-coordinator binary to measure")
	flag.IntVar(&o.Nodes, "nodes", 2000, "simulated nodes")
	flag.IntVar(&o.EnrollConcurrency, "enroll-concurrency", 200, "enrollments in flight at once")
	flag.DurationVar(&o.Heartbeat, "heartbeat", 10*time.Second, "heartbeat interval of each node")
	flag.DurationVar(&o.Soak, "soak", 20*time.Second, "how long all nodes stay connected before the fan-out test")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := loadgen.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "kedge-loadgen:", err)
		os.Exit(1)
	}
}
