// Package cli is kedgectl, the operator's command line for a kedge
// coordinator's AdminService. The kedgectl main only calls Run; every command
// here returns an error, and Run turns it into one line on stderr and an exit
// code (see the Exit constants).
//
// Configuration: --config FILE, else $KEDGE_CONFIG, else ~/.kedge/config.yaml,
// in the coordinator/adminconfig format that `kedge-coordinator init` writes
// as DATA_DIR/admin.yaml. The config's coordinators are tried in order.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"

	"github.com/kedge-io/kedge/coordinator/adminconfig"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// Exit codes. Scripts may rely on them.
const (
	// ExitOK: the command did what was asked.
	ExitOK = 0
	// ExitError: the command failed (the coordinator refused, could not be
	// reached, a spec was refused, a file could not be read, ...).
	ExitError = 1
	// ExitUsage: unknown command, bad flag or missing argument.
	ExitUsage = 2
	// ExitTimeout: `status --wait` did not see the phase before --timeout.
	ExitTimeout = 3
)

// rpcTimeout bounds every unary call so an unreachable coordinator ends in an
// error rather than a hang.
const rpcTimeout = 30 * time.Second

// Env is what kedgectl needs from its process; tests pass their own.
type Env struct {
	Stdout, Stderr io.Writer
	// Getenv reads the environment (KEDGE_CONFIG).
	Getenv func(string) string
	// HomeDir locates ~/.kedge/config.yaml.
	HomeDir func() (string, error)
	// Now is the clock used for relative times ("5s ago").
	Now func() time.Time
	// StderrIsTerminal makes `status --wait` redraw one progress line with \r
	// instead of printing a line per change.
	StderrIsTerminal bool
	// PollInterval is how often `status --wait` asks; 1 s when zero.
	PollInterval time.Duration
}

// OSEnv is the Env of a real process.
func OSEnv() Env {
	return Env{
		Stdout:           os.Stdout,
		Stderr:           os.Stderr,
		Getenv:           os.Getenv,
		HomeDir:          os.UserHomeDir,
		Now:              time.Now,
		StderrIsTerminal: isTerminal(os.Stderr),
	}
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// usageError is a mistake on the command line; Run exits ExitUsage.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// timeoutError is `status --wait` giving up; Run exits ExitTimeout.
type timeoutError struct{ msg string }

func (e timeoutError) Error() string { return e.msg }

// command is one kedgectl command, e.g. "token create".
type command struct {
	name    string
	args    string
	summary string
	run     func(ctx context.Context, s *session, args []string) error
}

func commands() []command {
	return []command{
		{"token create", "--cluster NAME [--ttl 24h] [--uses N] [--require-approval] [--description S] [--print-flash-command]", "create a bootstrap token; prints the token alone", tokenCreate},
		{"token list", "", "list bootstrap tokens (never their secrets)", tokenList},
		{"token revoke", "ID", "revoke a bootstrap token", tokenRevoke},
		{"nodes", "[--cluster C]", "list nodes", nodesList},
		{"node get", "NAME", "show one node: facts, plan, units, warnings", nodeGet},
		{"node approve", "NAME", "admit a node waiting for approval", nodeApprove},
		{"node remove", "NAME [--force]", "retire a node (an etcd member leaves etcd first)", nodeRemove},
		{"enrollments refused", "", "list recent refused enrollments", enrollmentsRefused},
		{"status", "[CLUSTER] [--wait PHASE --timeout 10m]", "cluster health at a glance; --wait polls until PHASE", clusterStatus},
		{"events", "[--follow] [--cluster C]", "print events, one a line; --follow keeps streaming", events},
		{"spec apply", "-f FILE [--dry-run]", "validate and store a cluster spec; prints the plan changes", specApply},
		{"spec get", "CLUSTER", "print a cluster's stored spec as YAML", specGet},
		{"artifact push", "--name k3s --version V FILE", "upload an artifact (e.g. the K3s binary)", artifactPush},
		{"kubeconfig", "CLUSTER", "print a cluster's admin kubeconfig (a secret: stdout only)", kubeconfig},
		{"version", "", "print kedgectl's version", printVersion},
	}
}

// Run runs kedgectl with args (without the program name) and returns the exit code.
func Run(ctx context.Context, args []string, env Env) int {
	s := &session{env: env}
	defer s.close()
	err := s.dispatch(ctx, args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	fmt.Fprintf(env.Stderr, "kedgectl: %s\n", err)
	var ue usageError
	var te timeoutError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintln(env.Stderr, "Run 'kedgectl help' for usage.")
		return ExitUsage
	case errors.As(err, &te):
		return ExitTimeout
	}
	return ExitError
}

func (s *session) dispatch(ctx context.Context, args []string) error {
	global := s.flagSet("kedgectl")
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			s.usage(s.env.Stderr)
		}
		return err
	}
	words := global.Args()
	if len(words) == 0 {
		s.usage(s.env.Stderr)
		return usagef("no command given")
	}
	if words[0] == "help" {
		s.usage(s.env.Stdout)
		return nil
	}
	for _, c := range commands() {
		name := strings.Fields(c.name)
		if len(words) >= len(name) && strings.Join(words[:len(name)], " ") == c.name {
			return c.run(ctx, s, words[len(name):])
		}
	}
	var subs []string
	for _, c := range commands() {
		if group, sub, ok := strings.Cut(c.name, " "); ok && group == words[0] {
			subs = append(subs, sub)
		}
	}
	if len(subs) > 0 {
		return usagef("%s: want a subcommand, one of %s", words[0], strings.Join(subs, ", "))
	}
	return usagef("unknown command %q", strings.Join(words, " "))
}

func (s *session) usage(w io.Writer) {
	fmt.Fprintln(w, "kedgectl: operate a kedge coordinator.")
	fmt.Fprintln(w, "\nUsage: kedgectl [--config FILE] [-o table|json] COMMAND [ARGS]")
	fmt.Fprintln(w, "\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-20s %s\n", c.name, c.summary)
		if c.args != "" {
			fmt.Fprintf(w, "  %-20s   %s %s\n", "", c.name, c.args)
		}
	}
	fmt.Fprintln(w, `
Config: --config FILE, else $KEDGE_CONFIG, else ~/.kedge/config.yaml (the
admin.yaml that kedge-coordinator init writes). Coordinators are tried in order.
Output: tables by default; -o json prints the API response as JSON for scripts.
Exit codes: 0 ok, 1 failed or refused, 2 usage error, 3 status --wait timed out.`)
}

// session holds the global flags and the lazily dialled connection.
type session struct {
	env        Env
	configFlag string
	output     string

	cfgPath string
	cfg     *adminconfig.Config
	conn    *grpc.ClientConn
	admin   kedgev1.AdminServiceClient
}

// flagSet returns a FlagSet carrying the global flags, so they work before
// or after the command name.
func (s *session) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(s.env.Stderr)
	fs.Usage = func() {
		synopsis := "kedgectl [--config FILE] [-o table|json] COMMAND [ARGS]"
		for _, c := range commands() {
			if c.name == name {
				synopsis = strings.TrimSpace("kedgectl " + c.name + " " + c.args)
				fmt.Fprintf(s.env.Stderr, "%s: %s\n", c.name, c.summary)
			}
		}
		fmt.Fprintf(s.env.Stderr, "Usage: %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	fs.StringVar(&s.configFlag, "config", s.configFlag, "admin config `FILE` (default $KEDGE_CONFIG, else ~/.kedge/config.yaml)")
	fs.StringVar(&s.output, "o", s.output, "output `format`: table or json")
	return fs
}

// parse parses flags anywhere among args (Go's flag package stops at the
// first positional) and checks the positional count.
func (s *session) parse(fs *flag.FlagSet, args []string, minPos, maxPos int, posNames string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		rest := fs.Args()
		if len(rest) == 0 {
			break
		}
		if consumed := len(args) - len(rest); consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	switch s.output {
	case "", "table", "json":
	default:
		return nil, usagef("-o %q: want table or json", s.output)
	}
	if len(pos) < minPos {
		return nil, usagef("%s: missing %s", fs.Name(), posNames)
	}
	if len(pos) > maxPos {
		return nil, usagef("%s: unexpected argument %q", fs.Name(), pos[maxPos])
	}
	return pos, nil
}

func (s *session) json() bool { return s.output == "json" }

// loadConfig finds and reads the admin config: --config, $KEDGE_CONFIG, ~/.kedge/config.yaml.
func (s *session) loadConfig() error {
	if s.cfg != nil {
		return nil
	}
	path, source := s.configFlag, "--config"
	if path == "" {
		if v := s.env.Getenv("KEDGE_CONFIG"); v != "" {
			path, source = v, "$KEDGE_CONFIG"
		}
	}
	if path == "" {
		home, err := s.env.HomeDir()
		if err != nil {
			return fmt.Errorf("no admin config: pass --config FILE or set KEDGE_CONFIG (home directory unknown: %v)", err)
		}
		path, source = filepath.Join(home, ".kedge", "config.yaml"), "default location"
	}
	cfg, err := adminconfig.Load(path)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no admin config at %s (%s): copy DATA_DIR/admin.yaml written by `kedge-coordinator init` to ~/.kedge/config.yaml, or pass --config FILE or set KEDGE_CONFIG", path, source)
	}
	if err != nil {
		return fmt.Errorf("admin config %s (%s): %v", path, source, err)
	}
	s.cfgPath, s.cfg = path, cfg
	return nil
}

// client dials the config's coordinators on first use. pick_first over a
// static address list tries them in the config's order.
func (s *session) client() (kedgev1.AdminServiceClient, error) {
	if s.admin != nil {
		return s.admin, nil
	}
	if err := s.loadConfig(); err != nil {
		return nil, err
	}
	tlsCfg, err := s.cfg.TLSConfig()
	if err != nil {
		return nil, fmt.Errorf("%s: %v; regenerate the admin config", s.cfgPath, err)
	}
	r := manual.NewBuilderWithScheme("kedge")
	var addrs []resolver.Address
	for _, a := range s.cfg.Coordinators {
		// ServerName per address: the serving cert's SANs are the --address
		// hosts given to kedge-coordinator init.
		addrs = append(addrs, resolver.Address{Addr: a, ServerName: a})
	}
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := grpc.NewClient(r.Scheme()+":///coordinators",
		grpc.WithResolvers(r),
		grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"pick_first":{}}]}`),
		// gRPC's default reconnect backoff grows to 2 minutes; `status --wait`
		// across a coordinator restart should notice it back within seconds.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: 10 * time.Second,
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("%s: coordinators %v: %v", s.cfgPath, s.cfg.Coordinators, err)
	}
	s.conn, s.admin = conn, kedgev1.NewAdminServiceClient(conn)
	return s.admin, nil
}

func (s *session) close() {
	if s.conn != nil {
		s.conn.Close()
	}
}

// rpcErr turns a gRPC error into one line: what failed and the status
// message alone (the coordinator's messages name the field and the fix),
// plus a hint where the code says what the operator should check.
func (s *session) rpcErr(what string, err error) error {
	st := status.Convert(err)
	msg := what + ": " + st.Message()
	switch st.Code() {
	case codes.Unavailable:
		msg += fmt.Sprintf(" (coordinators %s from %s: check they are running and reachable)", strings.Join(s.cfg.Coordinators, ","), s.cfgPath)
	case codes.Unauthenticated, codes.PermissionDenied:
		msg += fmt.Sprintf(" (the admin cert in %s was not accepted: use an admin config from this coordinator)", s.cfgPath)
	case codes.DeadlineExceeded:
		msg += " (the coordinator did not answer in time)"
	}
	return errors.New(msg)
}

// call runs a unary RPC with the default timeout.
func call[Req, Resp any](ctx context.Context, s *session, what string, rpc func(kedgev1.AdminServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	var zero Resp
	c, err := s.client()
	if err != nil {
		return zero, err
	}
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	resp, err := rpc(c, ctx, req)
	if err != nil {
		return zero, s.rpcErr(what, err)
	}
	return resp, nil
}
