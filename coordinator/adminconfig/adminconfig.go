// Package adminconfig is the admin client config that `kedge-coordinator init`
// writes and kedgectl reads: coordinator addresses, the CA, and an admin
// client cert and key inline, like a kubeconfig. The file is a secret (0600).
package adminconfig

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.yaml.in/yaml/v3"

	"github.com/kedge-io/kedge/internal/atomicfile"
)

const (
	APIVersion = "kedge/v1"
	Kind       = "AdminConfig"
)

// Config is one admin's access to a coordinator.
type Config struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	// Coordinators lists HOST:PORT addresses; any may be used.
	Coordinators []string `yaml:"coordinators"`
	CAPin        string   `yaml:"caPin"`
	CAPEM        string   `yaml:"ca"`
	CertPEM      string   `yaml:"cert"`
	KeyPEM       string   `yaml:"key"`
}

// Load reads and validates path; errors name the file and the field.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read admin config: %w", err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if c.APIVersion != APIVersion || c.Kind != Kind {
		return nil, fmt.Errorf("%s: apiVersion/kind is %q/%q; want %s/%s", path, c.APIVersion, c.Kind, APIVersion, Kind)
	}
	if len(c.Coordinators) == 0 {
		return nil, fmt.Errorf("%s: coordinators is empty; list at least one HOST:PORT", path)
	}
	for _, f := range []struct{ name, v string }{{"ca", c.CAPEM}, {"cert", c.CertPEM}, {"key", c.KeyPEM}} {
		if f.v == "" {
			return nil, fmt.Errorf("%s: %s is empty; regenerate the file with kedge-coordinator init or admin create", path, f.name)
		}
	}
	return &c, nil
}

// Save writes c to path, 0600.
func Save(path string, c *Config) error {
	c.APIVersion, c.Kind = APIVersion, Kind
	data, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return atomicfile.WriteFile(path, data, 0o600)
}

// TLSConfig is a TLS 1.3 client config presenting the admin cert and
// trusting only the config's CA.
func (c *Config) TLSConfig() (*tls.Config, error) {
	cert, err := tls.X509KeyPair([]byte(c.CertPEM), []byte(c.KeyPEM))
	if err != nil {
		return nil, fmt.Errorf("admin config: cert/key: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(c.CAPEM)) {
		return nil, errors.New("admin config: ca holds no PEM certificate")
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      pool,
		Certificates: []tls.Certificate{cert},
	}, nil
}
