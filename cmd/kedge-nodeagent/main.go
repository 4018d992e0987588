// Command kedge-nodeagent is the kedge node agent: install it onto an image,
// run it as a daemon, run an etcd member, or ask it what it believes.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/kedge-io/kedge/internal/version"
	"github.com/kedge-io/kedge/nodeagent/agent"
	"github.com/kedge-io/kedge/nodeagent/etcdrole"
	"github.com/kedge-io/kedge/nodeagent/install"
	"github.com/kedge-io/kedge/nodeagent/paths"
	"github.com/kedge-io/kedge/nodeagent/statusfile"
)

const usage = `usage: kedge-nodeagent <command> [flags]

commands:
  install   write the agent, its config, token and unit into a root filesystem
  run       run the node agent daemon
  etcd      run this node's etcd member (started by kedge-etcd.service)
  status    print what the agent believes (identity, plan, units, last contact)
  version   print the version
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "kedge-nodeagent:", err)
		}
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return errors.New("a command is required")
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("kedge-nodeagent "+cmd, flag.ContinueOnError)
	switch cmd {
	case "install":
		root := fs.String("root", "", "root filesystem to install into (an image mount, or / for this machine)")
		coords := fs.String("coordinator", "", "coordinator HOST:PORT, comma-separated for several")
		pin := fs.String("ca-pin", "", "coordinator CA pin, sha256:<hex> (kedge-coordinator init prints it)")
		token := fs.String("token-file", "", "file holding the bootstrap token (id.secret)")
		labels := fs.String("labels", "", "node labels, k=v,k2=v2")
		binary := fs.String("binary", "", "agent binary to install (default: this executable)")
		heartbeat := fs.Duration("heartbeat-interval", 0, "status heartbeat interval (default 10s)")
		if err := fs.Parse(args); err != nil {
			return err
		}
		l, err := install.ParseLabels(*labels)
		if err != nil {
			return err
		}
		var addrs []string
		for _, a := range strings.Split(*coords, ",") {
			if a = strings.TrimSpace(a); a != "" {
				addrs = append(addrs, a)
			}
		}
		if err := install.Install(install.Options{Root: *root, Coordinators: addrs, CAPin: *pin, TokenFile: *token,
			Labels: l, Binary: *binary, HeartbeatInterval: *heartbeat}); err != nil {
			return err
		}
		fmt.Printf("installed kedge-nodeagent into %s (enabled %s)\n", *root, paths.NodeAgentUnit)
		return nil
	case "run":
		root := fs.String("root", "/", "machine root (tests use a temp dir)")
		cfg := fs.String("config", paths.AgentConfig, "agent config")
		logFormat := fs.String("log-format", "text", "log format: text or json")
		debug := fs.Bool("debug", false, "log debug messages")
		if err := fs.Parse(args); err != nil {
			return err
		}
		log := newLogger(*logFormat, *debug)
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return agent.Main(ctx, *root, *cfg, log)
	case "etcd":
		cfg := fs.String("config", paths.EtcdConfig, "etcd member config")
		if err := fs.Parse(args); err != nil {
			return err
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return etcdrole.Run(ctx, *cfg)
	case "status":
		root := fs.String("root", "/", "machine root")
		output := fs.String("o", "text", "output: text or json")
		if err := fs.Parse(args); err != nil {
			return err
		}
		return statusfile.Show(os.Stdout, *root, *output)
	case "version":
		fmt.Println(version.Version)
		return nil
	case "help", "-h", "--help":
		fmt.Print(usage)
		return nil
	default:
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// newLogger logs to stderr, which systemd hands to the journal.
func newLogger(format string, debug bool) *slog.Logger {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	if debug {
		opts.Level = slog.LevelDebug
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}
