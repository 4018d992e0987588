package server

// ConnectionLostGrace exposes connectionLostGrace to the external tests.
const ConnectionLostGrace = connectionLostGrace
