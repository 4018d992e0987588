package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

// flashTokenFile is where the flash command puts the token for the
// installer. The token reaches it through the shell's builtin printf, so it
// never appears in any process's argv (ps, /proc/*/cmdline); the installer
// copies it to its own 0600 file and the command then deletes this one.
const flashTokenFile = "/etc/kedge/bootstrap-token.new"

func tokenCreate(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("token create")
	cluster := fs.String("cluster", "", "cluster the token enrolls into (required)")
	ttl := fs.Duration("ttl", 24*time.Hour, "how long the token is valid")
	uses := fs.Uint("uses", 1, "how many enrollments it allows; 0 is unlimited")
	approval := fs.Bool("require-approval", false, "nodes enrolled with it wait for `kedgectl node approve`")
	desc := fs.String("description", "", "a note shown by token list")
	flash := fs.Bool("print-flash-command", false, "print the kedge-nodeagent install command instead of the token")
	root := fs.String("image-root", "/", "with --print-flash-command: the --root the installer writes into (the mounted image)")
	if _, err := s.parse(fs, args, 0, 0, ""); err != nil {
		return err
	}
	if *cluster == "" {
		return usagef("token create: --cluster is required (the cluster nodes enrolled with this token join)")
	}
	if *ttl <= 0 {
		return usagef("token create: --ttl %s must be positive, e.g. --ttl 24h", *ttl)
	}
	if *uses > 1<<32-1 {
		return usagef("token create: --uses %d is too large; use 0 for unlimited", *uses)
	}
	resp, err := call(ctx, s, "token create", kedgev1.AdminServiceClient.CreateToken, &kedgev1.CreateTokenRequest{
		Cluster:         *cluster,
		Ttl:             durationpb.New(*ttl),
		MaxUses:         uint32(*uses),
		RequireApproval: *approval,
		Description:     *desc,
	})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	if !*flash {
		_, err = fmt.Fprintln(s.env.Stdout, resp.GetToken())
		return err
	}
	addrs, pin := resp.GetCoordinatorAddresses(), resp.GetCaPin()
	if len(addrs) == 0 {
		addrs = s.cfg.Coordinators
	}
	if pin == "" {
		pin = s.cfg.CAPin
	}
	if pin == "" {
		return fmt.Errorf("token create: neither the coordinator nor %s gives the CA pin; add caPin to the config", s.cfgPath)
	}
	return writeFlashCommand(s.env.Stdout, resp.GetToken(), *root, addrs, pin)
}

// writeFlashCommand prints one shell command line that writes the token to
// a 0600 file (umask in a subshell, so the operator's shell keeps its own),
// runs the installer with --token-file, and removes the file whether the
// install worked or not, keeping the installer's exit status.
func writeFlashCommand(w io.Writer, token, root string, addrs []string, pin string) error {
	install := strings.Join([]string{
		"kedge-nodeagent install",
		"--root " + shellQuote(root),
		"--coordinator " + shellQuote(strings.Join(addrs, ",")),
		"--ca-pin " + shellQuote(pin),
		"--token-file " + flashTokenFile,
	}, " ")
	_, err := fmt.Fprintf(w, "(umask 077 && mkdir -p /etc/kedge && printf '%%s\\n' %s > %s && %s; rc=$?; rm -f %s; exit $rc)\n",
		shellQuote(token), flashTokenFile, install, flashTokenFile)
	return err
}

// shellQuote single-quotes s unless it is plainly safe.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:,=+@", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func tokenList(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("token list")
	if _, err := s.parse(fs, args, 0, 0, ""); err != nil {
		return err
	}
	resp, err := call(ctx, s, "token list", kedgev1.AdminServiceClient.ListTokens, &kedgev1.ListTokensRequest{})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	t := newTable(s.env.Stdout, "ID", "CLUSTER", "EXPIRES", "USES", "APPROVAL", "REVOKED", "DESCRIPTION")
	for _, tok := range resp.GetTokens() {
		max := "unlimited"
		if tok.GetMaxUses() > 0 {
			max = fmt.Sprint(tok.GetMaxUses())
		}
		approval := "no"
		if tok.GetRequireApproval() {
			approval = "required"
		}
		revoked := "no"
		if tok.GetRevoked() {
			revoked = "yes"
		}
		t.row(tok.GetId(), tok.GetCluster(),
			timestamp(tok.GetExpiresAt())+" ("+s.until(tok.GetExpiresAt())+")",
			fmt.Sprintf("%d/%s", tok.GetUses(), max), approval, revoked, tok.GetDescription())
	}
	return t.flush()
}

func tokenRevoke(ctx context.Context, s *session, args []string) error {
	fs := s.flagSet("token revoke")
	pos, err := s.parse(fs, args, 1, 1, "token ID")
	if err != nil {
		return err
	}
	// Accept a whole "id.secret" by mistake, but send only the id.
	id, _, _ := strings.Cut(pos[0], ".")
	resp, err := call(ctx, s, "token revoke "+id, kedgev1.AdminServiceClient.RevokeToken, &kedgev1.RevokeTokenRequest{Id: id})
	if err != nil {
		return err
	}
	if s.json() {
		return printJSON(s.env.Stdout, resp)
	}
	_, err = fmt.Fprintf(s.env.Stdout, "token %s revoked; nodes it enrolled keep their identities\n", id)
	return err
}
