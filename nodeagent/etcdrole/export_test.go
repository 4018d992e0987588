package etcdrole

// Test hooks: the clock-taking forms of the Ensure functions.
var (
	EnsureCertsAt               = ensureCerts
	EnsureDatastoreClientCertAt = ensureDatastoreClientCert
)
