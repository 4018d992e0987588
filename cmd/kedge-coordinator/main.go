// Command kedge-coordinator is the kedge bootstrap server: `init` creates its
// data dir, `serve` runs the API. The program lives in coordinator/app.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kedge-io/kedge/coordinator/app"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := app.Run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "kedge-coordinator:", err)
		os.Exit(1)
	}
}
