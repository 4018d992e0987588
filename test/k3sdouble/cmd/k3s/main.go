// Command k3s is the K3s TEST DOUBLE (not K3s) kedge's tests and lab install
// as /usr/local/bin/k3s; see package k3sdouble for what it covers.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kedge-io/kedge/test/k3sdouble"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	err := k3sdouble.Run(ctx, os.Args, k3sdouble.Options{Log: log})
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "k3s TEST DOUBLE (not K3s):", err)
		os.Exit(1)
	}
}
