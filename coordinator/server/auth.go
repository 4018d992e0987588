package server

import (
	"context"
	"crypto/x509"
	"net"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kedge-io/kedge/coordinator/pki"
	kedgev1 "github.com/kedge-io/kedge/proto/kedge/v1"
)

type ctxKey int

const nodeNameKey ctxKey = iota

// NodeName is the authenticated node's name, from its certificate.
func NodeName(ctx context.Context) string {
	name, _ := ctx.Value(nodeNameKey).(string)
	return name
}

// peerCert is the caller's verified leaf certificate, or nil. The TLS layer
// (VerifyClientCertIfGiven with the coordinator CA as ClientCAs) has already
// checked the chain and the clientAuth usage when VerifiedChains is set.
func peerCert(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 || len(ti.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return ti.State.VerifiedChains[0][0]
}

// peerIP is the caller's IP address as seen by the coordinator.
func peerIP(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return ""
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return p.Addr.String()
	}
	return host
}

const (
	bootstrapPrefix = "/" + "kedge.v1.BootstrapService/"
	nodePrefix      = "/" + "kedge.v1.NodeService/"
	adminPrefix     = "/" + "kedge.v1.AdminService/"
)

// authorize decides whether the caller may call method, returning the
// context to continue with (carrying the node name for NodeService).
func (s *Server) authorize(ctx context.Context, method string) (context.Context, error) {
	switch {
	case strings.HasPrefix(method, nodePrefix):
		cert := peerCert(ctx)
		if cert == nil {
			return nil, status.Error(codes.Unauthenticated, "NodeService needs a node identity cert; enroll first")
		}
		if !slices.Contains(cert.Subject.Organization, pki.OrgNodes) {
			return nil, status.Errorf(codes.PermissionDenied, "%q is not a node identity (organisation %s)", cert.Subject.CommonName, pki.OrgNodes)
		}
		name := cert.Subject.CommonName
		n, _ := s.node(name)
		switch {
		case n == nil:
			return nil, status.Errorf(codes.Unauthenticated, "node %s is unknown to this coordinator; re-flash it to enroll again", name)
		case n.State == kedgev1.NodeState_NODE_STATE_REMOVED:
			return nil, status.Errorf(codes.Unauthenticated, "node %s was removed; re-flash it to enroll again", name)
		case n.State != kedgev1.NodeState_NODE_STATE_ENROLLED:
			return nil, status.Errorf(codes.PermissionDenied, "node %s is %s; an admin must approve it first", name, n.State)
		}
		return context.WithValue(ctx, nodeNameKey, name), nil
	case strings.HasPrefix(method, adminPrefix):
		cert := peerCert(ctx)
		if cert == nil {
			return nil, status.Error(codes.Unauthenticated, "AdminService needs an admin client cert (see admin.yaml)")
		}
		if !slices.Contains(cert.Subject.Organization, pki.OrgAdmins) {
			return nil, status.Errorf(codes.PermissionDenied, "%q is not an admin (organisation %s); node identities may not call AdminService", cert.Subject.CommonName, pki.OrgAdmins)
		}
		return ctx, nil
	default:
		// Bootstrap (authenticated by its token), health and reflection.
		return ctx, nil
	}
}

// UnaryInterceptor enforces who may call what on unary RPCs.
func (s *Server) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := s.authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor enforces who may call what on streaming RPCs.
func (s *Server) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := s.authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
	}
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }
