package k3sdouble

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"go.yaml.in/yaml/v3"
)

const kubectlUsage = "k3s TEST DOUBLE kubectl: supports only `run NAME --image IMAGE [--port N]` and `get nodes` (--kubeconfig FILE)"

func runKubectl(ctx context.Context, args []string, opts Options) error {
	kubeconfig := opts.Getenv("KUBECONFIG")
	var rest []string
	for i := 0; i < len(args); i++ {
		if v, ok := strings.CutPrefix(args[i], "--kubeconfig="); ok {
			kubeconfig = v
		} else if args[i] == "--kubeconfig" && i+1 < len(args) {
			kubeconfig = args[i+1]
			i++
		} else {
			rest = append(rest, args[i])
		}
	}
	if kubeconfig == "" {
		kubeconfig = DefaultKubeconfig // K3s's bundled kubectl defaults to it too
	}
	switch {
	case len(rest) >= 2 && rest[0] == "run":
		return kubectlRun(ctx, kubeconfig, rest[1:], opts)
	case len(rest) == 2 && rest[0] == "get" && (rest[1] == "nodes" || rest[1] == "node" || rest[1] == "no"):
		return kubectlGetNodes(ctx, kubeconfig, opts)
	default:
		return errors.New(kubectlUsage)
	}
}

func kubectlRun(ctx context.Context, kubeconfig string, args []string, opts Options) error {
	name, image, port := args[0], "", 0
	for i := 1; i < len(args); i++ {
		flag, value, hasValue := strings.Cut(args[i], "=")
		if !hasValue && i+1 < len(args) {
			value = args[i+1]
			i++
		}
		switch flag {
		case "--image":
			image = value
		case "--port":
			p, err := strconv.Atoi(value)
			if err != nil {
				return fmt.Errorf("--port %q is not a number", value)
			}
			port = p
		default:
			return fmt.Errorf("unknown flag %s\n%s", flag, kubectlUsage)
		}
	}
	if image == "" {
		return errors.New("error: required flag(s) \"image\" not set")
	}
	container := map[string]any{"name": name, "image": image}
	if port != 0 {
		container["ports"] = []map[string]any{{"containerPort": port}}
	}
	pod, _ := json.Marshal(map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": "default", "labels": map[string]string{"run": name}},
		"spec":     map[string]any{"containers": []any{container}},
	})
	resp, err := apiRequest(ctx, kubeconfig, http.MethodPost, "/api/v1/namespaces/default/pods", pod)
	if err != nil {
		return err
	}
	switch resp.status {
	case http.StatusCreated:
		fmt.Fprintf(opts.Stdout, "pod/%s created\n", name)
		return nil
	case http.StatusConflict:
		return fmt.Errorf("Error from server (AlreadyExists): pods %q already exists", name)
	default:
		return fmt.Errorf("Error from server: %d %s", resp.status, strings.TrimSpace(string(resp.body)))
	}
}

func kubectlGetNodes(ctx context.Context, kubeconfig string, opts Options) error {
	resp, err := apiRequest(ctx, kubeconfig, http.MethodGet, "/api/v1/nodes", nil)
	if err != nil {
		return err
	}
	if resp.status != http.StatusOK {
		return fmt.Errorf("Error from server: %d %s", resp.status, strings.TrimSpace(string(resp.body)))
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name   string            `json:"name"`
				Labels map[string]string `json:"labels"`
			} `json:"metadata"`
		} `json:"items"`
	}
	if err := json.Unmarshal(resp.body, &list); err != nil {
		return fmt.Errorf("node list: %w", err)
	}
	tw := tabwriter.NewWriter(opts.Stdout, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATUS\tROLES")
	for _, n := range list.Items {
		roles := "<none>"
		for label := range n.Metadata.Labels {
			if r, ok := strings.CutPrefix(label, "node-role.kubernetes.io/"); ok {
				roles = r
			}
		}
		fmt.Fprintf(tw, "%s\tReady\t%s\n", n.Metadata.Name, roles)
	}
	return tw.Flush()
}

type apiResponse struct {
	status int
	body   []byte
}

// kubeconfigFile is the part of a kubeconfig the double's kubectl reads.
type kubeconfigFile struct {
	Clusters []struct {
		Cluster struct {
			Server string `yaml:"server"`
			CAData string `yaml:"certificate-authority-data"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Users []struct {
		User struct {
			CertData string `yaml:"client-certificate-data"`
			KeyData  string `yaml:"client-key-data"`
		} `yaml:"user"`
	} `yaml:"users"`
}

func apiRequest(ctx context.Context, kubeconfig, method, path string, body []byte) (*apiResponse, error) {
	raw, err := os.ReadFile(kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	var kc kubeconfigFile
	if err := yaml.Unmarshal(raw, &kc); err != nil || len(kc.Clusters) == 0 || len(kc.Users) == 0 {
		return nil, fmt.Errorf("kubeconfig %s: want one cluster and one user (as K3s writes it)", kubeconfig)
	}
	caPEM, err1 := base64.StdEncoding.DecodeString(kc.Clusters[0].Cluster.CAData)
	certPEM, err2 := base64.StdEncoding.DecodeString(kc.Users[0].User.CertData)
	keyPEM, err3 := base64.StdEncoding.DecodeString(kc.Users[0].User.KeyData)
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("kubeconfig %s: bad base64 data: %w", kubeconfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("kubeconfig %s: certificate-authority-data holds no certificate", kubeconfig)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: client certificate: %w", kubeconfig, err)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
	}}
	req, err := http.NewRequestWithContext(ctx, method, strings.TrimSuffix(kc.Clusters[0].Cluster.Server, "/")+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("The connection to the server was refused: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return nil, err
	}
	return &apiResponse{status: resp.StatusCode, body: b}, nil
}
