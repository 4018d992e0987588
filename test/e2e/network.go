package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// The lab LAN: 10.77.0.0/24 on a bridge in its own namespace. The root
// namespace gets no address on it, so no lab traffic leaves the host.
const (
	lanCIDRBits   = 24
	coordinatorIP = "10.77.0.2"
	// NUC n (1-based) gets 10.77.0.(10+n).
	firstNUCHost = 10
	// No one answers here: a default route lets software that wants one
	// (K3s picks its node IP from it) start, while nothing is reachable.
	gatewayIP = "10.77.0.1"
)

// CoordinatorPort is where the lab's coordinator listens.
const CoordinatorPort = 7443

// CoordinatorAddress is HOST:PORT of the lab's coordinator on the LAN.
var CoordinatorAddress = fmt.Sprintf("%s:%d", coordinatorIP, CoordinatorPort)

// network is one lab's LAN: a bridge namespace and the names derived from the
// run prefix (interface names stay under 15 characters).
type network struct {
	prefix string
	lan    string // netns holding the bridge
	state  *stateFile
}

func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func newNetwork(prefix string, state *stateFile) (*network, error) {
	n := &network{prefix: prefix, lan: prefix + "-lan", state: state}
	if err := n.addNetns(n.lan); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"-n", n.lan, "link", "add", "br0", "type", "bridge"},
		{"-n", n.lan, "link", "set", "br0", "up"},
		{"-n", n.lan, "link", "set", "lo", "up"},
	} {
		if err := run("ip", args...); err != nil {
			return nil, err
		}
	}
	return n, nil
}

func (n *network) addNetns(name string) error {
	if err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	n.state.update(func(s *State) { s.Netns = append(s.Netns, name) })
	return nil
}

// attach creates a namespace for a host on the LAN with eth0 at ip, its
// peer (named port, <= 15 chars) on the bridge. The veth is created inside
// the LAN namespace, so the root namespace never sees it.
func (n *network) attach(netns, port, ip string) error {
	if err := n.addNetns(netns); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", n.lan, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns},
		{"-n", n.lan, "link", "set", port, "master", "br0", "up"},
		{"-n", netns, "addr", "add", fmt.Sprintf("%s/%d", ip, lanCIDRBits), "dev", "eth0"},
		{"-n", netns, "link", "set", "eth0", "up"},
		{"-n", netns, "link", "set", "lo", "up"},
		{"-n", netns, "route", "add", "default", "via", gatewayIP},
	} {
		if err := run("ip", args...); err != nil {
			return err
		}
	}
	return nil
}

// setPort takes a host's bridge port down (a partition) or up (healed).
func (n *network) setPort(port string, up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	return run("ip", "-n", n.lan, "link", "set", port, state)
}

// dialInNetns returns a dialer whose sockets live in the named network
// namespace: the test process stays in the root namespace, where the LAN has
// no address, and still talks to the coordinator over it.
func dialInNetns(netns string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		type result struct {
			conn net.Conn
			err  error
		}
		ch := make(chan result, 1)
		go func() {
			// The thread is never unlocked: it exits with the goroutine and
			// takes the switched namespace with it.
			runtime.LockOSThread()
			f, err := os.Open("/run/netns/" + netns)
			if err != nil {
				ch <- result{nil, err}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				ch <- result{nil, fmt.Errorf("enter netns %s: %w", netns, err)}
				return
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", addr)
			ch <- result{c, err}
		}()
		r := <-ch
		return r.conn, r.err
	}
}
