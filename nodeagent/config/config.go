// Package config reads and writes the node agent's versioned configuration,
// /etc/kedge/agent.yaml, which `kedge-nodeagent install` writes onto an image.
// Loading is strict: an unknown apiVersion, kind or field fails loudly rather
// than being half-understood on a machine nobody is watching.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/kedge-io/kedge/nodeagent/internal/pkiutil"
)

// Version and kind of the file format.
const (
	APIVersion = "kedge/v1"
	Kind       = "NodeAgentConfig"
)

// DefaultHeartbeatInterval is how often the agent reports when nothing changes.
const DefaultHeartbeatInterval = 10 * time.Second

// Config is agent.yaml.
type Config struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	// Coordinators are HOST:PORT addresses, tried in order.
	Coordinators []string `yaml:"coordinators"`
	// CAPin is "sha256:<hex>" of the coordinator CA's SubjectPublicKeyInfo.
	CAPin string `yaml:"caPin"`
	// TokenFile holds the bootstrap token (id.secret), 0600.
	TokenFile         string            `yaml:"tokenFile"`
	Labels            map[string]string `yaml:"labels,omitempty"`
	HeartbeatInterval time.Duration     `yaml:"heartbeatInterval"`
}

// ErrNotFound is returned by Load when the file does not exist.
var ErrNotFound = errors.New("agent config not found")

// Load reads and validates path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s (write it with kedge-nodeagent install)", ErrNotFound, path)
	}
	if err != nil {
		return nil, err
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Parse decodes and validates agent.yaml content.
func Parse(data []byte) (*Config, error) {
	// Check the version first, so a newer format gets a version error, not a
	// confusing unknown-field error.
	var head struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
	}
	if err := yaml.Unmarshal(data, &head); err != nil {
		return nil, fmt.Errorf("not YAML: %w", err)
	}
	if head.APIVersion != APIVersion || head.Kind != Kind {
		return nil, fmt.Errorf("apiVersion %q kind %q: want apiVersion %s, kind %s", head.APIVersion, head.Kind, APIVersion, Kind)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var c Config
	if err := dec.Decode(&c); err != nil {
		return nil, err
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after the first YAML document")
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate checks every field and names the one that is wrong.
func (c *Config) Validate() error {
	if len(c.Coordinators) == 0 {
		return errors.New("coordinators: at least one HOST:PORT is required")
	}
	for _, a := range c.Coordinators {
		if err := ValidateAddress(a); err != nil {
			return fmt.Errorf("coordinators: %w", err)
		}
	}
	if err := pkiutil.ValidatePin(c.CAPin); err != nil {
		return fmt.Errorf("caPin: %w", err)
	}
	if c.TokenFile == "" {
		return errors.New("tokenFile: required")
	}
	if c.HeartbeatInterval < time.Second {
		return fmt.Errorf("heartbeatInterval: %v is below 1s", c.HeartbeatInterval)
	}
	return nil
}

// ValidateAddress checks one HOST:PORT.
func ValidateAddress(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("%q is not HOST:PORT", a)
	}
	return nil
}

// Marshal renders c as agent.yaml.
func (c *Config) Marshal() ([]byte, error) {
	out := *c
	out.APIVersion, out.Kind = APIVersion, Kind
	var buf bytes.Buffer
	buf.WriteString("# kedge node agent configuration, written by kedge-nodeagent install.\n")
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&out); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
